"""``report.md`` for a synth stage: counts per step and per rejection reason, length histograms, diversity
(distinct-1/2, embedding spread when embeddings are on) and the judge-score distribution, with PNG plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, median

from .dedup import words
from .ledger import Ledger


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over the texts (0 when there are none)."""
    total, uniq = 0, set()
    for t in texts:
        w = words(t)
        grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        uniq.update(grams)
    return round(len(uniq) / total, 4) if total else 0.0


def embedding_spread(texts: list[str], model: str) -> float | None:
    """Mean pairwise cosine distance of the texts' embeddings (higher: more spread out)."""
    if len(texts) < 2:
        return None
    from .dedup import embed
    from .methods_config import SemanticDedupConfig

    e = embed(texts[:2000], SemanticDedupConfig(enabled=True, model=model))
    sim = e @ e.T
    n = len(e)
    return round(float(1 - (sim.sum() - n) / (n * (n - 1))), 4)


def _hist(ax, data, title, xlabel):
    ax.hist(data or [0], bins=30, color="#4C72B0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def write_report(out_dir: Path, title: str, ledger: Ledger, prompts: list[str], responses: list[str],
                 judge_scores: list[float] | None = None, embed_model: str | None = None,
                 extra: dict | None = None) -> dict:
    """Write report.md + plots into ``out_dir``; return the metrics for the manifest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    reasons = ledger.reasons()
    metrics = {
        "steps": dict(ledger.steps), "rejected": len(ledger.rejected), "rejection_reasons": reasons,
        "distinct_1": distinct_n(prompts, 1), "distinct_2": distinct_n(prompts, 2),
        "response_distinct_1": distinct_n(responses, 1), "response_distinct_2": distinct_n(responses, 2),
        "prompt_words_mean": round(mean(len(p.split()) for p in prompts), 2) if prompts else 0,
        "response_words_mean": round(mean(len(r.split()) for r in responses), 2) if responses else 0,
    }
    if embed_model and prompts:
        metrics["embedding_spread"] = embedding_spread(prompts, embed_model)
    if judge_scores:
        metrics["judge_overall_mean"] = round(mean(judge_scores), 4)
        metrics["judge_overall_median"] = round(median(judge_scores), 4)
    metrics.update(extra or {})

    plots = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    steps = dict(ledger.steps)
    axes[0].bar(list(steps), list(steps.values()), color="#55A868")
    axes[0].set_title("items per step")
    axes[0].tick_params(axis="x", rotation=30)
    axes[1].barh(list(reasons)[::-1] or ["(none)"], list(reasons.values())[::-1] or [0], color="#C44E52")
    axes[1].set_title("rejections by reason")
    fig.tight_layout()
    fig.savefig(out_dir / "counts.png", dpi=90)
    plt.close(fig)
    plots.append("counts.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    _hist(axes[0], [len(p.split()) for p in prompts], "instruction length", "words")
    _hist(axes[1], [len(r.split()) for r in responses], "response length", "words")
    fig.tight_layout()
    fig.savefig(out_dir / "lengths.png", dpi=90)
    plt.close(fig)
    plots.append("lengths.png")

    if judge_scores:
        fig, ax = plt.subplots(figsize=(6, 4))
        _hist(ax, judge_scores, "judge overall score", "mean of criteria (1-5)")
        fig.tight_layout()
        fig.savefig(out_dir / "judge_scores.png", dpi=90)
        plt.close(fig)
        plots.append("judge_scores.png")

    lines = [f"# {title}", "", "## Counts", "", "| step | items |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in steps.items()]
    lines += ["", f"Rejected: **{len(ledger.rejected)}** (every one with its reason in `rejected.parquet`).", "",
              "| reason | count |", "|---|---:|"]
    lines += [f"| `{k}` | {v} |" for k, v in reasons.items()] or ["| (none) | 0 |"]
    lines += ["", "## Diversity and length", "", "| metric | value |", "|---|---:|"]
    for k in ("distinct_1", "distinct_2", "response_distinct_1", "response_distinct_2", "prompt_words_mean",
              "response_words_mean", "embedding_spread", "judge_overall_mean", "judge_overall_median"):
        if k in metrics and metrics[k] is not None:
            lines.append(f"| {k} | {metrics[k]} |")
    for k, v in (extra or {}).items():
        lines.append(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    metrics["plots"] = plots
    return metrics
