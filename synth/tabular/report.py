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
            if both.empty:  # a degenerate, all-missing column: nothing to draw
                ax.text(0.5, 0.5, "all values missing", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(c, fontsize=9)
                continue
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
        return "not measured"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


TERMS = [
    "**DCR** (distance to closest record): for a row, the distance to the most similar training row, the mean over "
    "columns of |a - b| / range for numbers and 0/1 for categories (SDMetrics' definition); 0 is an exact copy.",
    "**NNDR** (nearest-neighbour distance ratio): the distance to the closest training row divided by the distance to "
    "the second closest; near 0 means the row sits on one particular training row rather than among several.",
]


def _checks_table(gate: dict) -> list[str]:
    lines = ["| check | value | threshold | result |", "|---|---|---|---|"]
    for name, c in gate["checks"].items():
        op = "≤ " if c.get("direction") == "max" else "≥ "
        thr = "report only" if c["threshold"] is None else f"{op}{c['threshold']}"
        if c["passed"] is None:
            result = "report only"
        elif c["passed"]:
            result = "passed"
        else:
            result = "**failed**" + (" (not measured)" if c["value"] is None else "")
        col = f" (`{c['column']}`)" if c.get("column") else ""
        lines.append(f"| {name} | {_fmt(c['value'])}{col} | {thr} | {result} |")
    return lines


def _distance_lines(d: dict) -> list[str]:
    if d.get("error"):
        return ["## Distances", "", f"- {d['error']}: copies, near copies, DCR and NNDR against unseen rows.", ""]
    ec, nc, parts = d["exact_copies"], d["near_copies"], d["closer_to_train_parts"]
    pos_med, pos_p05 = d["dcr"]["positive_median"], d["dcr"]["positive_p05"]
    lines = [
        "## Distances",
        "",
        *[f"- {t}" for t in TERMS],
        f"- Training rows were cut into {parts['parts']} parts the size of the holdout; each synthetic row is compared "
        "with every part and with the holdout (rows the synthesizer never saw).",
        f"- Exact matches: {ec['synthetic_rows_copied']} synthetic rows ({ec['synthetic_share']:.2%}) equal a training "
        f"row; {ec['holdout_share']:.2%} of holdout rows do too (natural duplicates). Copies owned by one train part "
        f"alone: {ec['train_rows']}, against {ec['expected_train_rows']} expected from the holdout's {ec['holdout_rows']} "
        f"(noise allowance {ec['noise_allowance_rows']} rows): excess {ec['excess']:.2%} of synthetic rows.",
    ]
    if nc.get("error"):
        lines.append(f"- Near copies: not measured ({nc['error']}).")
    else:
        sc = nc["fixed"]
        lines.append(f"- Near copies within {sc['threshold']:.4g} (a quarter of the closest any holdout row comes to a "
                     f"train part, {sc['closest_holdout_distance']:.4g}): train owns {sc['train_rows']}, expected "
                     f"{sc['expected_train_rows']} (allowance {sc['noise_allowance_rows']}): excess {sc['excess']:.2%}.")
        scan = nc.get("scan") or {}
        if scan.get("thresholds"):
            at = next(t for t in scan["thresholds"] if t["quantile"] == scan["at_quantile"])
            lines.append(f"- Near copies scanned at {len(scan['thresholds'])} thresholds (low quantiles of the synthetic "
                         f"rows' own distances, exact matches left to the copy check); strongest at the "
                         f"{at['quantile']:.2%} quantile ({at['threshold']:.4g}): train owns {at['train_rows']}, expected "
                         f"{at['expected_train_rows']}; one-sided p = {scan['p_value']:.3g} after Bonferroni (fails below "
                         f"{scan['alpha']}): excess {scan['excess']:.2%}.")
    lines += [
        f"- DCR to train, rows that are not exact matches: median synthetic {_fmt(pos_med['synthetic'])}, holdout "
        f"{_fmt(pos_med['holdout'])} (ratio {_fmt(d['dcr']['median_ratio'])}); 5th percentile synthetic "
        f"{_fmt(pos_p05['synthetic'])}, holdout {_fmt(pos_p05['holdout'])} (ratio {_fmt(d['dcr']['p05_ratio'])}).",
        f"- Median NNDR: synthetic {d['nndr']['synthetic_median']:.3f}, holdout {d['nndr']['holdout_median']:.3f}.",
        f"- Closer to train than to the holdout (ties shared, holdout-sized parts): {parts['share']:.3f} "
        "(0.5 by chance, 1.0 when every row is a copy).",
        f"- Closer to all of train than to the holdout (SDMetrics DCROverfittingProtection, report only): "
        f"{d['closer_to_train_share']:.2%}.",
        "",
        "![DCR histograms](dcr_hist.png)",
        "",
    ]
    return lines


def _column_lines(cols: dict) -> list[str]:
    from .columns import worst_columns

    lines = ["## Columns (worst first)", "", "| column | shape | zeros real → synthetic | missing real → synthetic | outside real range |",
             "|---|---|---|---|---|"]
    for c, v in worst_columns(cols):
        zeros = f"{v['zeros_real']:.1%} → {v['zeros_synthetic']:.1%}" if "zeros_real" in v else "—"
        out = f"{v['out_of_range_share']:.1%}" if v.get("out_of_range_share") is not None else "—"
        lines.append(f"| {c} | {_fmt(v.get('shape'))} | {zeros} | {v['missing_real']:.1%} → {v['missing_synthetic']:.1%} | {out} |")
    for c, why in (cols.get("degenerate") or {}).items():
        lines.append(f"- Degenerate column `{c}`: {why}; a synthesizer learns nothing from it.")
    return lines + [""]


def markdown(report: dict) -> str:
    gate, m = report["gate"], report["metrics"]
    r = report["rows"]
    hold = f"{r['holdout']} holdout rows (never shown to the synthesizer)" if r.get("holdout") is not None else "no holdout"
    lines = [
        "# Privacy report",
        "",
        f"**Gate: {'PASSED' if gate['passed'] else 'FAILED'}** — synthesizer `{report['synthesizer']}`, "
        f"{r['train']} training rows, {hold}, {r['synthetic']} synthetic rows. Table sha256 `{report['table_hash'][:16]}`.",
        "",
        *_checks_table(gate),
        "",
    ]
    sel = report.get("selection") or {}
    if sel.get("why"):
        lines += ["## Synthesizer", "", sel["why"], ""]
        for c in sel.get("candidates", []):
            if c.get("stopped_by_time_cap"):
                lines.append(f"- {c['synthesizer']} stopped at the time budget, so a re-run may give other rows.")
    lines += _distance_lines(m.get("distance") or {"error": "not measured"})
    a = m.get("anonymeter") or {}
    if a:
        lines += ["## Attacks (anonymeter, holdout as control)", "", f"{a.get('n_attacks', 0)} attacks each."]
        for k in ("singling_out", "linkability", "inference"):
            if k not in a:
                continue
            v = a[k] or {}
            extra = f" ({v['error']})" if v.get("error") else ""
            if not extra and v.get("n_queries") is not None and v["n_queries"] < v.get("n_attacks", 0):
                # anonymeter's own warning says so on the console, which orchard keeps quiet: the report says it
                extra = (f" (only {v['n_queries']} of {v['n_attacks']} singling-out queries could be built on this "
                         "table, so the risk may be underestimated)")
            lines.append(f"- {k.replace('_', '-')}: risk {_fmt(v.get('value'))}{extra}")
        lines.append("")
    q = m.get("quality")
    if q and q.get("error"):
        lines += ["## Quality (SDMetrics)", "", f"- Not measured: {q['error']}", ""]
    elif q:
        lines += ["## Quality (SDMetrics)", "", f"- Overall {q['score']:.3f}: column shapes {q['column_shapes']:.3f}, "
                  f"column pair trends {q['column_pair_trends']:.3f}.", "", "![Column distributions](columns.png)", ""]
    if m.get("columns"):
        lines += _column_lines(m["columns"])
    u = m.get("utility")
    if u and "train_real_test_holdout" in u:
        ratio = _fmt(u["ratio"]) if u["ratio"] is not None else "not defined: the train-on-real score is not above 0"
        lines += ["## Utility", "", f"- Target `{u['target']}` ({u['task']}, {u['metric']}): train on synthetic → "
                  f"{u['train_synthetic_test_holdout']:.3f}, train on real → {u['train_real_test_holdout']:.3f} "
                  f"(both tested on the real holdout; ratio {ratio}).", ""]
    elif u:
        lines += ["## Utility", "", f"- Not measured: {u.get('error')}", ""]
    lines += ["## Differential privacy", ""]
    if report.get("epsilon") is not None:
        lines.append(f"Synthesized with smartnoise-synth MST at epsilon = {report['epsilon']}. Its noise comes from "
                     "the operating system's secure generator, so two fresh runs differ; a re-run in the same work "
                     "folder reuses the cached rows.")
    else:
        lines.append("Not differentially private (no `dp_epsilon` was set). " + dp_hint())
    return "\n".join(lines) + "\n"


def dp_hint() -> str:
    """What to do for differential privacy, saying 'missing' only when smartnoise-synth really is."""
    try:
        import snsynth  # noqa: F401
    except ImportError:
        return DP_UNAVAILABLE
    return "Set `dp_epsilon` (or `--dp-epsilon`) for smartnoise-synth's MST; SDV itself has no differential privacy."


def write_report(folder: Path, report: dict, arrays: dict, train: pd.DataFrame, synthetic: pd.DataFrame, columns: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if arrays:
        plot_dcr(arrays["dcr_synthetic"], arrays["dcr_holdout"], folder / "dcr_hist.png")
    plot_columns(train, synthetic, columns, folder / "columns.png")
    atomic_write_json(folder / "privacy_report.json", report)
    atomic_write_text(folder / "privacy_report.md", markdown(report))
