"""Agreement between reviewers (Cohen's and Fleiss' kappa, Krippendorff's alpha), between reviewers and the AI
judge, and the judge threshold that best matches the reviewers (calibration). Library implementations only:
scikit-learn, statsmodels, krippendorff."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any


def _clean(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def reviewer_agreement(labels: dict[str, dict[str, Any]], level: str = "nominal") -> dict:
    """`labels`: item id -> {reviewer: label}. Items rated by fewer than two reviewers carry no agreement."""
    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score
    from statsmodels.stats.inter_rater import fleiss_kappa

    items = {i: r for i, r in labels.items() if len(r) >= 2}
    raters = sorted({name for r in items.values() for name in r})
    categories = sorted({v for r in items.values() for v in r.values()}, key=str)
    out: dict = {"items": len(items), "reviewers": raters, "cohen_kappa": {}, "fleiss_kappa": None,
                 "krippendorff_alpha": None, "percent_agreement": None}
    if not items:
        return out
    for a, b in itertools.combinations(raters, 2):
        both = [(r[a], r[b]) for r in items.values() if a in r and b in r]
        if len(both) >= 2:
            ya, yb = zip(*both)
            kappa = cohen_kappa_score(ya, yb) if len(set(ya) | set(yb)) > 1 else 1.0
            out["cohen_kappa"][f"{a}~{b}"] = {"kappa": _clean(kappa), "n": len(both)}
    # Fleiss' kappa needs the same number of ratings per item: use the most common count.
    k = Counter(len(r) for r in items.values()).most_common(1)[0][0]
    table = np.array([[list(r.values()).count(c) for c in categories] for r in items.values() if len(r) == k])
    if len(table) >= 2 and len(categories) > 1:
        out["fleiss_kappa"] = _clean(fleiss_kappa(table, method="fleiss"))
        out["fleiss_items"] = int(len(table))
    code = {c: i for i, c in enumerate(categories)}
    data = np.array([[code[r[name]] if name in r else np.nan for r in items.values()] for name in raters], dtype=float)
    if len(categories) > 1:
        domain = list(range(len(categories))) if level == "nominal" else None
        out["krippendorff_alpha"] = _clean(krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                                                               value_domain=domain))
    out["percent_agreement"] = _clean(sum(len(set(r.values())) == 1 for r in items.values()) / len(items))
    return out


def judge_agreement(human: list[str], judge: list[str]) -> dict:
    """Reviewers' majority decision against the AI judge's decision on the same items."""
    from sklearn.metrics import cohen_kappa_score

    if not human:
        return {"n": 0, "accuracy": None, "cohen_kappa": None}
    acc = sum(h == j for h, j in zip(human, judge)) / len(human)
    kappa = cohen_kappa_score(human, judge) if len(set(human) | set(judge)) > 1 else 1.0
    return {"n": len(human), "accuracy": _clean(acc), "cohen_kappa": _clean(kappa)}


def calibrate(scores: list[float], accepted: list[bool]) -> dict | None:
    """The judge threshold (accept when score >= t) that best matches the reviewers' decisions.

    Chooses the highest accuracy, then the highest F1 of "accept", then the lower threshold; reports the
    precision and recall of "accept" measured on the reviewed items.
    """
    if not scores:
        return None
    best = None
    for t in sorted(set(scores)) + [math.inf]:
        pred = [s >= t for s in scores]
        tp = sum(p and a for p, a in zip(pred, accepted))
        fp = sum(p and not a for p, a in zip(pred, accepted))
        fn = sum((not p) and a for p, a in zip(pred, accepted))
        acc = sum(p == a for p, a in zip(pred, accepted)) / len(scores)
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        cand = {"threshold": t if t != math.inf else None, "accuracy": round(acc, 6), "precision": precision,
                "recall": recall, "f1": round(f1, 6), "n": len(scores)}
        if best is None or (acc, f1) > (best["accuracy"], best["f1"]):
            best = cand
    return best
