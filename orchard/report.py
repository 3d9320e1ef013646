"""The run report: one Markdown page at ``runs/<name>/report.md`` that says what every stage did.

It reads only manifests and the files stages left (their own reports and PNG plots), so it can be rebuilt at any
time with ``orchard report RUN_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchard.dataio import MANIFEST, atomic_write_text, read_manifest

_HEADLINE_KEYS = (
    "seeds", "generated", "kept", "rejected", "accepted", "train", "test", "test_fraction", "pairs",
    "train_loss", "eval_loss", "eval_perplexity", "final_eval_loss", "steps", "rewards/margins",
    "train_margin_before", "train_margin_after", "heldout_accuracy", "gate_passed", "calls", "cost_usd",
    "train_pairs", "test_pairs", "train_pairs_margin", "test_margin", "test_accuracy", "test_loss", "passed",
)
_HEADLINE_GROUPS = ("loss", "perplexity", "reward_accuracy", "reward_margin", "win_rates")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_run_report(run_dir: str | Path, stages: list[str]) -> Path:
    run_dir = Path(run_dir)
    lines = [f"# orchard run `{run_dir.name}`", ""]
    # Stages that lost items or wrote fewer rows than asked come first, in their own words.
    warn = [f"- **{name}: {oc.get('message', oc.get('status'))}**" for name in stages
            for oc in [read_manifest(run_dir / name).get("result", {}).get("outcome") or {}]
            if oc.get("status", "complete") != "complete"]
    lines += warn + ([""] if warn else [])
    lines += ["| stage | seconds | headline numbers |", "|---|---:|---|"]
    sections = []
    for name in stages:
        m = read_manifest(run_dir / name)
        res = m.get("result", {})
        flat = _flatten(res)
        head = [f"{k}={_fmt(v)}" for k, v in flat.items()
                if k.split(".")[-1] in _HEADLINE_KEYS or k.split(".")[0] in _HEADLINE_GROUPS][:10]
        lines.append(f"| {name} | {m.get('seconds', 0):.1f} | {', '.join(head) or '—'} |")
        sec = [f"## {name}", "", f"Output: `{name}/`  ·  fingerprint `{m.get('fingerprint', '')[:12]}`", ""]
        for png in sorted((run_dir / name).rglob("*.png")):
            rel = png.relative_to(run_dir).as_posix()
            sec.append(f"![{png.stem}]({rel})")
        for md in sorted((run_dir / name).rglob("*.md")):
            rel = md.relative_to(run_dir).as_posix()
            sec.append(f"- report: [{rel}]({rel})")
        if flat:
            sec += ["", "<details><summary>all numbers</summary>", "", "```json",
                    json.dumps(res, indent=2, default=str)[:6000], "```", "</details>"]
        sections.append("\n".join(sec))
    lines += ["", *sections, ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def completed_stages(run_dir: str | Path) -> list[str]:
    from orchard.recipe import STAGE_ORDER

    run_dir = Path(run_dir)
    return [n for n in STAGE_ORDER if (run_dir / n / MANIFEST).exists()]
