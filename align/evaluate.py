"""Evaluation stage: held-out loss/perplexity (base, SFT, DPO), preference accuracy and reward margins,
a forgetting check on general text, judge win-rates (from synth's judge on our head-to-head samples),
and ``report.md`` with plots.

Each model is loaded on its own (non-quantized by default), scored, and freed before the next, so the
evaluation never holds two models at once; implicit DPO rewards are combined from stored log-probs.
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path

import torch

from orchard.dataio import atomic_write_json, atomic_write_text, provenance, read_rows

from . import data as D
from .config import EvalConfig
from .modeling import load_inference_policy, policy_tokenizer, read_policy_info
from .plots import plot_bars, plot_curves
from .score import completion_logps, sft_loss
from .verdicts import loss_change_summary, win_rate_summary


def _judged_scores(judged_dir: Path, candidates_dir: Path) -> tuple[list[float], list[bool], int, list[str]]:
    """Per candidate row: 1 if its first completion won, 0.5 for a tie, 0 if it lost; whether the judge's two
    orders agreed; how many rows the judge could not decide (errors) and the policies' names.

    Decisive verdicts are the judged folder's rows (matched to candidates by ``parent_id``); ties are in its
    ``rejected.parquet`` as ``pref:tie`` (a tie is a result, not a loss of data), next to the judge's errors.
    """
    import pandas as pd

    cands = read_rows(candidates_dir)
    names = next((provenance(c).get("policies") for c in cands if provenance(c).get("policies")), None)
    decided: dict[str, tuple[float, bool]] = {}
    by_id = {c["id"]: c for c in cands}
    by_prompt = {json.dumps(list(c["prompt"]), sort_keys=True): c for c in cands}
    for j in read_rows(judged_dir):
        # synth's judge names the candidate row it judged (parent_id); older folders are matched by prompt
        c = by_id.get(provenance(j).get("parent_id")) or by_prompt.get(json.dumps(list(j["prompt"]), sort_keys=True))
        if c is None:
            continue
        pw = provenance(j).get("pairwise") or {}
        chosen = j["chosen"][-1]["content"].strip()
        a, b = c["completions"][0].strip(), c["completions"][1].strip()
        score = 1.0 if chosen == a and chosen != b else 0.0 if chosen == b and chosen != a else 0.5
        if pw.get("winner") == "tie":
            score = 0.5
        decided[c["id"]] = (score, bool(pw.get("orders_agree", True)))
    # Identical answers need no judge: a tie whichever way it is asked.
    for c in cands:
        if c["id"] not in decided and c["completions"][0].strip() == c["completions"][1].strip():
            decided[c["id"]] = (0.5, True)
    errors = 0
    rej = Path(judged_dir) / "rejected.parquet"
    if rej.exists():
        for r in pd.read_parquet(rej).to_dict("records"):
            if r.get("parent_id") not in by_id or r.get("parent_id") in decided:
                continue
            if r.get("reason") == "pref:tie":
                detail = json.loads(r["detail"]) if r.get("detail") else {}
                decided[r["parent_id"]] = (0.5, bool((detail.get("pairwise") or {}).get("orders_agree", False)))
            else:
                errors += 1
    order = [c["id"] for c in cands if c["id"] in decided]
    return [decided[i][0] for i in order], [decided[i][1] for i in order], errors, names


def win_rates(judged_dir: Path, candidates_dir: Path) -> dict:
    """Win-rate of ``completions[0]``'s policy over ``completions[1]``'s, from a judged preferences folder.

    Ties (both orders disagreeing, or the judge saying so) count half; rows the judge could not decide are left
    out and counted (``undecided``). The interval is a bootstrap over prompts; the verdict reads it against 0.5.
    """
    scores, agree, errors, names = _judged_scores(Path(judged_dir), Path(candidates_dir))
    out = win_rate_summary(scores, agree)
    out.update({"policies": names, "prompts": len(read_rows(candidates_dir)), "undecided": errors})
    return out


def _free(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _pair_logps(model, tok, rows, config: EvalConfig) -> tuple[list[float], list[float]]:
    ch = completion_logps(model, tok, [(r["prompt"], r["chosen"]) for r in rows], config.batch_size,
                          config.max_length)
    rj = completion_logps(model, tok, [(r["prompt"], r["rejected"]) for r in rows], config.batch_size,
                          config.max_length)
    return [x for x, _ in ch], [x for x, _ in rj]


def eval_stage(sft_data_dir: Path, pairs_dir: Path | None, sft_dir: Path, dpo_dir: Path | None, out_dir: Path,
               work_dir: Path, config: EvalConfig, judged: dict[str, tuple[Path, Path]] | None = None,
               base_model: str | None = None) -> dict:
    """Score base / SFT / DPO on held-out data; write metrics.json, report.md and PNGs into ``out_dir``.

    ``judged`` maps a comparison name (e.g. ``"dpo_vs_sft"``) to (judged preferences folder, candidates
    folder from ``sample_policies_stage``) to add judge win-rates to the report.
    """
    t0 = time.perf_counter()
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = read_policy_info(sft_dir)
    base_model = base_model or info["base_model"]
    rows = D.read_sft(sft_data_dir, config.split)
    if config.max_examples:
        rows = rows[: config.max_examples]
    pairs = D.read_pairs(pairs_dir, config.split, required=False) if pairs_dir else None
    if pairs and config.max_examples:
        pairs = pairs[: config.max_examples]
    general = None
    if config.general_dir:
        general = D.read_sft(config.general_dir, config.general_split)
        if config.max_examples:
            general = general[: config.max_examples]
    tok = policy_tokenizer(sft_dir, info)

    policies: dict[str, Path | None] = {}
    if config.include_base:
        policies["base"] = None
    policies["sft"] = Path(sft_dir)
    if dpo_dir:
        policies[read_policy_info(dpo_dir).get("stage", "dpo")] = Path(dpo_dir)
    scores: dict[str, dict] = {}
    logps: dict[str, tuple[list[float], list[float]]] = {}
    for name, d in policies.items():
        model, _, _ = load_inference_policy(d, base_model=base_model if d is None else None,
                                            quantized=config.quantized, dtype=config.dtype)
        s = {"heldout": sft_loss(model, tok, rows, config.batch_size, config.max_length)}
        if general:
            s["general"] = sft_loss(model, tok, general, config.batch_size, config.max_length)
        if pairs:
            logps[name] = _pair_logps(model, tok, pairs, config)
            c, r = logps[name]
            s["logp_preference_accuracy"] = sum(x > y for x, y in zip(c, r)) / len(pairs)
        scores[name] = s
        _free(model)

    # Implicit rewards of every trained policy against the SFT policy (the DPO reference).
    prefs = {}
    if pairs and "sft" in logps:
        rc, rr = logps["sft"]
        for name, (pc, pr) in logps.items():
            if name in ("sft", "base"):
                continue
            m = [config.beta * ((a - b) - (c - d)) for a, b, c, d in zip(pc, pr, rc, rr)]
            prefs[name] = {"pairs": len(m), "accuracy": sum(x > 0 for x in m) / len(m),
                           "margin_mean": sum(m) / len(m), "margins": m}

    wr = {k: win_rates(Path(j), Path(c)) for k, (j, c) in (judged or {}).items()}

    metrics = {
        "stage": "eval",
        "heldout_examples": len(rows),
        "heldout_pairs": len(pairs or []),
        "general_examples": len(general or []),
        "loss": {k: v["heldout"]["loss"] for k, v in scores.items()},
        "perplexity": {k: v["heldout"]["perplexity"] for k, v in scores.items()},
        "general_loss": {k: v["general"]["loss"] for k, v in scores.items() if "general" in v} or None,
        "general_perplexity": {k: v["general"]["perplexity"] for k, v in scores.items() if "general" in v} or None,
        "logp_preference_accuracy": {k: v.get("logp_preference_accuracy") for k, v in scores.items()} if pairs
        else None,
        "reward_accuracy": {k: v["accuracy"] for k, v in prefs.items()} or None,
        "reward_margin": {k: v["margin_mean"] for k, v in prefs.items()} or None,
        "win_rates": {k: v["win_rate"] for k, v in wr.items()} or None,
        "win_rate_details": wr or None,
        "time_s": None,
    }
    if general and "base" in scores:
        # Forgetting: how much worse (ratio of perplexities) each trained policy is on general text than the base.
        metrics["forgetting_ppl_ratio"] = {k: scores[k]["general"]["perplexity"] / scores["base"]["general"][
            "perplexity"] for k in scores if k != "base"}
    metrics["stage_verdicts"] = stage_verdicts(list(scores), scores, wr)
    metrics["regressions"] = regressions(metrics["stage_verdicts"], metrics)
    plots = _plots(out_dir, metrics, sft_dir, dpo_dir, prefs)
    metrics["plots"] = plots
    metrics["time_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "report.md", _report(metrics, info, sft_dir, dpo_dir))
    return metrics


MIN_JUDGE_CONSISTENCY = 0.6  # share of prompts whose two orders agree, below which the judge decides no verdict


def stage_verdicts(names: list[str], scores: dict[str, dict], wr: dict[str, dict]) -> dict:
    """Each trained policy against the one it was trained from (SFT against the base, DPO against SFT): judge
    win-rate, held-out loss and general-text loss (forgetting, against the base), each with its interval, and one
    verdict per stage: the win-rate's where the judge measured it, else the held-out loss's."""
    out = {}
    for i, name in enumerate(names):
        if name == "base" or i == 0:
            continue
        prev = names[i - 1]
        v: dict = {"against": prev}
        w = wr.get(f"{name}_vs_{prev}")
        if w is not None:
            v["win_rate"] = {k: w[k] for k in ("win_rate", "ci95", "verdict", "judged", "wins", "ties", "losses",
                                                "order_consistency")}
        v["heldout_loss"] = loss_change_summary(scores[name]["heldout"]["per_example"],
                                                scores[prev]["heldout"]["per_example"])
        if "general" in scores[name] and "base" in scores:
            v["general_loss_vs_base"] = loss_change_summary(scores[name]["general"]["per_example"],
                                                            scores["base"]["general"]["per_example"])
        primary = v.get("win_rate", {}).get("verdict")
        consistency = v.get("win_rate", {}).get("order_consistency")
        if primary not in (None, "not measured") and (consistency is None or consistency < MIN_JUDGE_CONSISTENCY):
            # A judge whose verdict flips when the answers swap places is guessing: its win-rate decides nothing.
            v["win_rate"]["unreliable"] = True
            primary = None
        v["verdict"] = primary if primary not in (None, "not measured") else v["heldout_loss"]["verdict"]
        v["verdict_from"] = "judge win-rate" if primary not in (None, "not measured") else "held-out loss"
        out[name] = v
    return out


def regressions(verdicts: dict, m: dict) -> list[str]:
    """Every measure by which a stage made its model worse, in words, for the top of the report."""
    lines = []
    for name, v in verdicts.items():
        prev = v["against"]
        if v.get("win_rate", {}).get("verdict") == "worse":
            w = v["win_rate"]
            lines.append(f"{name} loses to {prev} by the judge: win-rate {w['win_rate']:.2f} "
                         f"(95% CI {w['ci95'][0]:.2f}-{w['ci95'][1]:.2f})")
        if v["heldout_loss"]["verdict"] == "worse":
            p0, p1 = m["perplexity"].get(prev), m["perplexity"].get(name)
            lines.append(f"{name} raises held-out perplexity from {p0:.4g} to {p1:.4g} against {prev} "
                         f"(loss {v['heldout_loss']['mean_change']:+.3f} per token, 95% CI "
                         f"{v['heldout_loss']['ci95'][0]:+.3f} to {v['heldout_loss']['ci95'][1]:+.3f})")
        g = v.get("general_loss_vs_base")
        if g and g["verdict"] == "worse":
            lines.append(f"{name} forgets: general-text loss {g['mean_change']:+.3f} per token against the base "
                         f"(95% CI {g['ci95'][0]:+.3f} to {g['ci95'][1]:+.3f}); general perplexity "
                         f"{m['general_perplexity']['base']:.4g} -> {m['general_perplexity'][name]:.4g}")
    return lines


def _history(d: Path | None) -> list[dict]:
    if d is None or not (Path(d) / "log_history.json").exists():
        return []
    return json.loads((Path(d) / "log_history.json").read_text(encoding="utf-8"))


def _plots(out_dir: Path, m: dict, sft_dir, dpo_dir, prefs) -> list[str]:
    made = []
    p = plot_curves(_history(sft_dir), {"train": "loss", "validation": "eval_loss"}, out_dir / "sft_loss.png",
                    "SFT loss", "loss")
    made += [p.name] if p else []
    dh = _history(dpo_dir)
    p = plot_curves(dh, {"train margin": "rewards/margins", "held-out margin": "eval_rewards/margins"},
                    out_dir / "dpo_margins.png", "DPO reward margins", "chosen - rejected reward")
    made += [p.name] if p else []
    p = plot_bars(m["perplexity"], out_dir / "heldout_perplexity.png", "Held-out perplexity (lower is better)",
                  "perplexity")
    made += [p.name] if p else []
    if m.get("general_perplexity"):
        p = plot_bars(m["general_perplexity"], out_dir / "general_perplexity.png",
                      "General-text perplexity (forgetting check)", "perplexity")
        made += [p.name] if p else []
    if m.get("win_rates"):
        p = plot_bars(m["win_rates"], out_dir / "win_rates.png", "Judge win-rate", "win-rate")
        made += [p.name] if p else []
    if prefs:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k, v in prefs.items():
            ax.hist(v["margins"], bins=20, alpha=0.6, label=k)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel("implicit reward margin vs SFT (held-out pairs)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "heldout_margins.png", dpi=100)
        plt.close(fig)
        made.append("heldout_margins.png")
    return made


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _ci(c) -> str:
    return f"{c[0]:+.3f} to {c[1]:+.3f}" if c else "–"


def _verdict_lines(m: dict) -> list[str]:
    """The report's opening: regressions first, then one verdict per stage with the numbers behind it."""
    lines = []
    if m.get("regressions"):
        lines += ["**Regressions**", ""] + [f"- ⚠ {r}" for r in m["regressions"]] + [""]
    if m.get("stage_verdicts"):
        lines += ["| stage | against | verdict | judge win-rate (95% CI) | held-out loss change (95% CI) | "
                  "general loss vs base (95% CI) |", "|---|---|---|---|---|---|"]
        for name, v in m["stage_verdicts"].items():
            w = v.get("win_rate")
            wtxt = (f"{w['win_rate']:.2f} ({w['ci95'][0]:.2f}-{w['ci95'][1]:.2f}), {w['judged']} prompts"
                    if w and w.get("ci95") else "not measured")
            if w and w.get("unreliable"):
                wtxt += f"; judge unreliable (orders agree {w['order_consistency'] or 0:.0%})"
            h, g = v["heldout_loss"], v.get("general_loss_vs_base")
            htxt = f"{h['mean_change']:+.3f} ({_ci(h['ci95'])}): {h['verdict']}" if h["mean_change"] is not None else "–"
            gtxt = f"{g['mean_change']:+.3f} ({_ci(g['ci95'])}): {g['verdict']}" if g and g["mean_change"] is not None else "–"
            lines.append(f"| {name} | {v['against']} | **{v['verdict']}** (by {v['verdict_from']}) | {wtxt} | "
                         f"{htxt} | {gtxt} |")
        lines += ["", "A verdict is 'better' or 'worse' only when the whole 95% interval (bootstrap over prompts) "
                      "is on one side; otherwise 'no change'. It comes from the judge's win-rate when the judge "
                      f"gives the same verdict with the answers swapped on at least {MIN_JUDGE_CONSISTENCY:.0%} of "
                      "prompts, else from the held-out loss.", ""]
    return lines


def _report(m: dict, info: dict, sft_dir, dpo_dir) -> str:
    names = list(m["loss"])
    lines = ["# Alignment evaluation", ""]
    lines += _verdict_lines(m)
    lines += [f"Base model: `{info.get('base_model')}` · method: {info.get('method')} · SFT: `{sft_dir}`"
              + (f" · preference-tuned: `{dpo_dir}`" if dpo_dir else ""), "",
             f"Held-out examples: {m['heldout_examples']} · held-out pairs: {m['heldout_pairs']} · "
             f"general examples: {m['general_examples']}", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    rows = [("held-out loss", m["loss"]), ("held-out perplexity", m["perplexity"])]
    if m.get("general_perplexity"):
        rows += [("general loss", m["general_loss"]), ("general perplexity", m["general_perplexity"])]
    if m.get("logp_preference_accuracy"):
        rows.append(("log-prob preference accuracy", m["logp_preference_accuracy"]))
    if m.get("reward_accuracy"):
        rows += [("reward accuracy vs SFT", m["reward_accuracy"]), ("reward margin vs SFT", m["reward_margin"])]
    for label, d in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt((d or {}).get(n)) for n in names) + " |")
    if m.get("forgetting_ppl_ratio"):
        lines += ["", "Forgetting (general perplexity / base): " + ", ".join(
            f"{k} {_fmt(v)}x" for k, v in m["forgetting_ppl_ratio"].items())]
    if m.get("win_rate_details"):
        lines += ["", "## Judge win-rates", "",
                  "| comparison | judged | wins | ties | losses | undecided | win-rate | 95% CI | verdict | "
                  "orders agree |", "|---|---|---|---|---|---|---|---|---|---|"]
        for k, v in m["win_rate_details"].items():
            ci = f"{v['ci95'][0]:.2f}-{v['ci95'][1]:.2f}" if v.get("ci95") else "–"
            lines.append(f"| {k} | {v['judged']} | {v['wins']} | {v['ties']} | {v['losses']} | {v['undecided']} | "
                         f"{_fmt(v['win_rate'])} | {ci} | {v['verdict']} | {_fmt(v['order_consistency'])} |")
        lines += ["", "Each prompt is judged twice, the answers swapped; when the two verdicts disagree it is a tie "
                      "(half a win). 'Orders agree' is the share of prompts where they agreed: a judge near 0.5 "
                      "is mostly guessing, and its win-rates say little."]
    lines += ["", "Reward accuracy/margin: DPO implicit reward beta·(Δ log π − Δ log π_SFT) on held-out pairs; "
              "log-prob preference accuracy: the share of held-out pairs where the model gives the chosen answer "
              "a higher total log-probability than the rejected one.", "", "## Plots", ""]
    lines += [f"![{p}]({p})" for p in m.get("plots", [])]
    return "\n".join(lines) + "\n"
