"""Verdicts an evaluation can stand behind: a 95% confidence interval on every comparison, and a word for it.

A win-rate of 0.56 on 16 prompts says nothing; a held-out loss 2% lower may be noise. Each comparison here is a
per-prompt (paired) quantity with a bootstrap interval (scipy's, percentile method, fixed seed): judge scores
(win 1, tie 0.5, loss 0) against 0.5, and per-example loss differences against 0. The verdict is "better" or
"worse" only when the whole interval lies on one side, else "no change"; too few examples give "not measured".
"""

from __future__ import annotations

import math

MIN_EXAMPLES = 3


def bootstrap_ci(values: list[float], confidence: float = 0.95, resamples: int = 5000, seed: int = 0
                 ) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (None for fewer than MIN_EXAMPLES values)."""
    import numpy as np
    from scipy.stats import bootstrap

    vals = [v for v in values if v is not None and math.isfinite(v)]
    if len(vals) < MIN_EXAMPLES:
        return None
    arr = np.asarray(vals, dtype=float)
    if float(arr.std()) == 0.0:  # every resample has the same mean
        return float(arr[0]), float(arr[0])
    res = bootstrap((arr,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def verdict(ci: tuple[float, float] | None, null: float, higher_is_better: bool = True) -> str:
    if ci is None:
        return "not measured"
    lo, hi = ci
    if lo > null:
        return "better" if higher_is_better else "worse"
    if hi < null:
        return "worse" if higher_is_better else "better"
    return "no change"


def win_rate_summary(scores: list[float], orders_agree: list[bool]) -> dict:
    """Win-rate of a head-to-head from per-prompt scores (1 win, 0.5 tie, 0 loss), with its interval and verdict."""
    n = len(scores)
    ci = bootstrap_ci(scores)
    return {
        "judged": n, "wins": sum(s == 1.0 for s in scores), "ties": sum(s == 0.5 for s in scores),
        "losses": sum(s == 0.0 for s in scores), "win_rate": sum(scores) / n if n else None,
        "ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None, "verdict": verdict(ci, 0.5),
        "order_consistency": sum(orders_agree) / len(orders_agree) if orders_agree else None,
    }


def loss_change_summary(new: list[float], old: list[float]) -> dict:
    """Paired per-example loss change (new - old): mean, interval, and the verdict (lower loss is better)."""
    diffs = [a - b for a, b in zip(new, old) if a is not None and b is not None]
    ci = bootstrap_ci(diffs)
    return {"examples": len(diffs), "mean_change": sum(diffs) / len(diffs) if diffs else None,
            "ci95": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
            "verdict": verdict(ci, 0.0, higher_is_better=False)}
