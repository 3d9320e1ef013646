"""Per-column fidelity: shape, share of zeros, share of missing values and range, real against synthetic.

The overall SDMetrics score averages columns, so one distorted column (a zero-inflated count whose zeros
vanish) hides behind the others. These numbers are per column, the gate takes the worst column of each,
and the report names the worst columns. Degenerate real columns (all missing, or one value) are listed too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .distance import NUMERIC, numeric_values


def _range_stats(real: np.ndarray, syn: np.ndarray) -> dict:
    real, syn = real[~np.isnan(real)], syn[~np.isnan(syn)]
    if not len(real) or not len(syn):
        return {"out_of_range_share": None, "range_coverage": None}
    lo, hi = float(real.min()), float(real.max())
    out = float(np.mean((syn < lo) | (syn > hi)))
    if hi == lo:
        cover = 1.0 if np.any(syn == lo) else 0.0
    else:
        cover = max(0.0, min(hi, float(syn.max())) - max(lo, float(syn.min()))) / (hi - lo)
    return {"out_of_range_share": out, "range_coverage": cover}


def degenerate_columns(df: pd.DataFrame) -> dict[str, str]:
    """Columns a synthesizer cannot learn anything from: all missing, or a single value."""
    out = {}
    for c in df.columns:
        s = df[c]
        if s.isna().all():
            out[str(c)] = "all values missing"
        elif s.nunique(dropna=True) == 1:
            out[str(c)] = f"one value only ({s.dropna().iloc[0]!r})" + (", some missing" if s.isna().any() else "")
    return out


def column_metrics(real: pd.DataFrame, synthetic: pd.DataFrame, columns: dict[str, str], shapes: dict[str, float] | None = None) -> dict:
    """Per column: shape score (SDMetrics KS/TV complement, if given), zero and missing shares, range."""
    per = {}
    for c, t in columns.items():
        r, s = real[c], synthetic[c]
        row = {"sdtype": t, "shape": (shapes or {}).get(c),
               "missing_real": float(r.isna().mean()), "missing_synthetic": float(s.isna().mean())}
        row["missing_diff"] = abs(row["missing_real"] - row["missing_synthetic"])
        if t in NUMERIC:
            rv, sv = numeric_values(r, t), numeric_values(s, t)
            if t == "numerical":
                # share of zeros among all rows: a zero-inflated count keeps its zeros or it is distorted
                row["zeros_real"] = float(np.mean(rv == 0)) if len(rv) else 0.0
                row["zeros_synthetic"] = float(np.mean(sv == 0)) if len(sv) else 0.0
                row["zeros_diff"] = abs(row["zeros_real"] - row["zeros_synthetic"])
            row |= _range_stats(rv, sv)
        per[c] = row
    return {"per_column": per, "degenerate": degenerate_columns(real[list(columns)] if columns else real)}


# gate check -> (per-column key, worst is the "max" or the "min")
WORST = {
    "column_shape_min": ("shape", "min"),
    "zero_share_diff_max": ("zeros_diff", "max"),
    "missing_share_diff_max": ("missing_diff", "max"),
    "out_of_range_share_max": ("out_of_range_share", "max"),
}


def worst(metrics: dict) -> dict:
    """For each per-column number, its worst value over the columns and which column has it."""
    per = metrics.get("per_column") or {}
    out = {}
    for name, (key, how) in WORST.items():
        vals = {c: v[key] for c, v in per.items() if v.get(key) is not None}
        if not vals:
            out[name] = {"value": None, "column": None}
            continue
        c = (min if how == "min" else max)(vals, key=vals.get)
        out[name] = {"value": float(vals[c]), "column": c}
    return out


def worst_columns(metrics: dict, n: int = 5) -> list[tuple[str, dict]]:
    """The ``n`` columns that look least like the real ones (lowest shape score, then largest zero/missing gap)."""
    per = metrics.get("per_column") or {}

    def badness(item):
        v = item[1]
        shape = v.get("shape")
        return -(1.0 - (shape if shape is not None else 1.0)) - (v.get("zeros_diff") or 0.0) - v.get("missing_diff", 0.0)

    return sorted(per.items(), key=badness)[:n]
