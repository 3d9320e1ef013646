"""The privacy report: JSON (machine-readable), Markdown (for people) and PNG plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orchard.dataio import atomic_write_json, atomic_write_text

from .fit import DP_UNAVAILABLE


def plot_dcr(dcr_syn: np.ndarray, dcr_hold: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    hi = float(max(dcr_syn.max(initial=0), dcr_hold.max(initial=0))) or 1.0
    bins = np.linspace(0, hi, 30)
    ax.hist(dcr_hold, bins=bins, alpha=0.6, density=True, label=f"holdout → train (n={len(dcr_hold)})")
    ax.hist(dcr_syn, bins=bins, alpha=0.6, density=True, label=f"synthetic → train (n={len(dcr_syn)})")
    ax.axvline(np.median(dcr_hold), color="C0", ls="--")
    ax.axvline(np.median(dcr_syn), color="C1", ls="--")
    ax.set_xlabel("distance to closest training record")
    ax.set_ylabel("density")
    ax.set_title("DCR: synthetic rows against the holdout baseline")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_columns(train: pd.DataFrame, synthetic: pd.DataFrame, columns: dict[str, str], path: Path, limit: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(columns)[:limit]
    n = max(1, len(cols))
    ncols = min(3, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        if columns[c] in ("numerical", "datetime"):
            conv = (lambda s: pd.to_datetime(s, errors="coerce").astype("int64") / 86400e9) if columns[c] == "datetime" else (lambda s: pd.to_numeric(s, errors="coerce"))
            a, b = conv(train[c]).dropna(), conv(synthetic[c]).dropna()
            both = pd.concat([a, b])
            bins = np.linspace(both.min(), both.max(), 25) if len(both) and both.min() < both.max() else 10
            ax.hist(a, bins=bins, alpha=0.6, density=True, label="real (train)")
            ax.hist(b, bins=bins, alpha=0.6, density=True, label="synthetic")
        else:
            a = train[c].astype(str).value_counts(normalize=True)
            b = synthetic[c].astype(str).value_counts(normalize=True)
            cats = list(a.index[:15])
            x = np.arange(len(cats))
            ax.bar(x - 0.2, a.reindex(cats).fillna(0), width=0.4, label="real (train)")
            ax.bar(x + 0.2, b.reindex(cats).fillna(0), width=0.4, label="synthetic")
            ax.set_xticks(x, cats, rotation=45, fontsize=7)
        ax.set_title(c, fontsize=9)
    for ax in list(axes.flat)[len(cols):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(report: dict) -> str:
    gate, m = report["gate"], report["metrics"]
    d = m["distance"]
    lines = [
        "# Privacy report",
        "",
        f"**Gate: {'PASSED' if gate['passed'] else 'FAILED'}** — synthesizer `{report['synthesizer']}`, "
        f"{report['rows']['train']} training rows, {report['rows']['holdout']} holdout rows (never shown to the "
        f"synthesizer), {report['rows']['synthetic']} synthetic rows. Table sha256 `{report['table_hash'][:16]}`.",
        "",
        "| check | value | threshold | passed |",
        "|---|---|---|---|",
    ]
    for name, c in gate["checks"].items():
        op = "" if c["threshold"] is None else ("≤ " if c.get("direction") == "max" else "≥ ")
        thr = "report only" if c["threshold"] is None else f"{op}{c['threshold']}"
        lines.append(f"| {name} | {_fmt(c['value'])} | {thr} | {'yes' if c['passed'] else '**no**'} |")
    ec = d["exact_copies"]
    lines += [
        "",
        "## Distances (SDMetrics' DCR definition)",
        "",
        f"- Exact copies of training rows: {ec['synthetic_rows_copied']} synthetic rows ({ec['synthetic_share']:.2%}); "
        f"holdout rows that equal a training row: {ec['holdout_share']:.2%}.",
        f"- Median DCR to train: synthetic {d['dcr']['synthetic_to_train']['p50']:.4f}, holdout "
        f"{d['dcr']['holdout_to_train']['p50']:.4f} (ratio {d['dcr']['median_ratio']:.3f}); 5th percentile: synthetic "
        f"{d['dcr']['synthetic_to_train']['p05']:.4f}, holdout {d['dcr']['holdout_to_train']['p05']:.4f}.",
        f"- Median nearest-neighbour distance ratio: synthetic {d['nndr']['synthetic_median']:.3f}, holdout "
        f"{d['nndr']['holdout_median']:.3f}.",
        f"- Synthetic rows closer to an equal-sized train sample than to the holdout: "
        f"{d['share_closer_to_train_equal_size']:.2%} (about 50% unless training rows were memorised).",
        f"- Synthetic rows closer to train than to holdout: {d['closer_to_train_share']:.2%} (SDMetrics "
        "DCROverfittingProtection; above 50% is expected when the holdout is smaller than train).",
        f"- Computed in {d['seconds']} s.",
        "",
        "![DCR histograms](dcr_hist.png)",
        "",
    ]
    a = m.get("anonymeter") or {}
    if a:
        lines += ["## Attacks (anonymeter, holdout as control)", "", f"{a.get('n_attacks')} attacks each."]
        for k in ("singling_out", "linkability", "inference"):
            v = a.get(k) or {}
            extra = f" (error: {v['error']})" if v.get("error") else ""
            lines.append(f"- {k.replace('_', '-')}: risk {_fmt(v.get('value'))}{extra}")
        lines.append("")
    q = m.get("quality")
    if q and q.get("error"):
        lines += ["## Quality (SDMetrics)", "", f"- Not measured: {q['error']}", ""]
    elif q:
        lines += ["## Quality (SDMetrics)", "", f"- Overall {q['score']:.3f}: column shapes {q['column_shapes']:.3f}, "
                  f"column pair trends {q['column_pair_trends']:.3f}.", "", "![Column distributions](columns.png)", ""]
    u = m.get("utility")
    if u and u.get("error"):
        lines += ["## Utility", "", f"- Not measured: {u['error']}", ""]
    elif u:
        lines += ["## Utility", "", f"- Target `{u['target']}` ({u['task']}, {u['metric']}): train on synthetic → "
                  f"{u['train_synthetic_test_holdout']:.3f}, train on real → {u['train_real_test_holdout']:.3f} "
                  f"(both tested on the real holdout; ratio {_fmt(u['ratio'])}).", ""]
    lines += ["## Differential privacy", ""]
    if report.get("epsilon") is not None:
        lines.append(f"Synthesized with smartnoise-synth MST at epsilon = {report['epsilon']}.")
    else:
        lines.append("Not differentially private. " + DP_UNAVAILABLE)
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict, arrays: dict, train: pd.DataFrame, synthetic: pd.DataFrame, columns: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plot_dcr(arrays["dcr_synthetic"], arrays["dcr_holdout"], folder / "dcr_hist.png")
    plot_columns(train, synthetic, columns, folder / "columns.png")
    atomic_write_json(folder / "privacy_report.json", report)
    atomic_write_text(folder / "privacy_report.md", markdown(report))
