"""Privacy, quality and utility measurements of a synthetic table against its real train and holdout rows.

The holdout rows never reached the synthesizer, so they are the baseline: synthetic rows should sit no
closer to the training rows than those unseen real rows do.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pandas as pd

from .distance import dcr, nndr

log = logging.getLogger(__name__)


def _quantiles(x: np.ndarray) -> dict:
    return {f"p{q:02d}": float(np.quantile(x, q / 100)) for q in (1, 5, 25, 50, 75, 95)} | {"mean": float(np.mean(x))}


def _ratio(a: float, b: float) -> float:
    """a / b, kept finite for JSON: a zero baseline gives 1.0 (equally close) or 1e9 (farther)."""
    if b == 0:
        return 1e9 if a > 0 else 1.0
    return float(a / b)


def distance_metrics(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, columns: dict[str, str], seed: int = 0) -> dict:
    """Exact copies, DCR against the holdout baseline, NNDR, and the closer-to-train shares."""
    t0 = time.perf_counter()
    # Equal-sized reference sets make "closer to train than to holdout" a fair coin for a synthesizer that
    # did not memorise (Platzer & Reutterer's holdout-based DCR share): sample train down to the holdout.
    # Both distances on one scale (ranges of the two together): otherwise the set with the wider sample
    # range looks closer.
    train_eq = train.sample(n=min(len(train), len(holdout)), random_state=seed)
    both = pd.concat([train_eq, holdout])
    d_eq = dcr(synthetic, train_eq, columns, range_from=both)
    d_eq_hold = dcr(synthetic, holdout, columns, range_from=both)
    dcr_syn = dcr(synthetic, train, columns)
    dcr_hold = dcr(holdout, train, columns)
    dcr_syn_to_hold = dcr(synthetic, holdout, columns)
    nndr_syn = nndr(synthetic, train, columns)
    nndr_hold = nndr(holdout, train, columns)
    copies_syn = float(np.mean(dcr_syn == 0))
    copies_hold = float(np.mean(dcr_hold == 0))
    closer = float(np.mean(dcr_syn < dcr_syn_to_hold))
    share_eq = float(np.mean(d_eq < d_eq_hold) + 0.5 * np.mean(d_eq == d_eq_hold))
    out = {
        "columns_compared": columns,
        "exact_copies": {
            "synthetic_rows_copied": int(np.sum(dcr_syn == 0)),
            "synthetic_share": copies_syn,
            "holdout_share": copies_hold,
            "excess": max(0.0, copies_syn - copies_hold),
        },
        "dcr": {
            "synthetic_to_train": _quantiles(dcr_syn),
            "holdout_to_train": _quantiles(dcr_hold),
            "median_ratio": _ratio(float(np.median(dcr_syn)), float(np.median(dcr_hold))),
            "p05_ratio": _ratio(float(np.quantile(dcr_syn, 0.05)), float(np.quantile(dcr_hold, 0.05))),
        },
        "nndr": {
            "synthetic_median": float(np.median(nndr_syn)),
            "holdout_median": float(np.median(nndr_hold)),
            "median_ratio": _ratio(float(np.median(nndr_syn)), float(np.median(nndr_hold))),
        },
        # Share of synthetic rows closer to an equal-sized train sample than to the holdout (ties count
        # half): about 0.5 unless the synthesizer memorised its training rows.
        "share_closer_to_train_equal_size": share_eq,
        # SDMetrics' DCROverfittingProtection: share of synthetic rows closer to train than to holdout.
        # With a holdout smaller than train this share exceeds 0.5 even for honest data, so it is reported,
        # not gated.
        "closer_to_train_share": closer,
        "dcr_overfitting_protection_score": min((1.0 - closer) * 2, 1.0),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    out["_arrays"] = {"dcr_synthetic": dcr_syn, "dcr_holdout": dcr_hold}
    return out


def anonymeter_risks(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    synthetic: pd.DataFrame,
    columns: list[str],
    n_attacks: int,
    secrets: list[str],
    seed: int,
    singling_out: str = "univariate",
    singling_out_attacks: int = 100,
) -> dict:
    """Singling-out, linkability and inference risks (anonymeter), holdout as the control set."""
    from anonymeter.evaluators import InferenceEvaluator, LinkabilityEvaluator, SinglingOutEvaluator

    ori, syn, ctl = train[columns], synthetic[columns], holdout[columns]
    n = int(min(n_attacks, len(ctl), len(ori)))
    out: dict = {"n_attacks": n}
    np.random.seed(seed)  # anonymeter samples targets with numpy's global generator

    def risk(ev) -> dict:
        r = ev.risk(confidence_level=0.95)
        return {"value": float(r.value), "ci": [float(r.ci[0]), float(r.ci[1])]}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        if singling_out != "off":
            try:
                n_so = int(min(singling_out_attacks, n))
                ev = SinglingOutEvaluator(ori=ori, syn=syn, control=ctl, n_attacks=n_so, n_cols=min(3, len(columns)))
                ev.evaluate(mode=singling_out)
                out["singling_out"] = risk(ev) | {"mode": singling_out, "n_attacks": n_so}
            except Exception as e:  # anonymeter raises when it cannot build enough queries
                out["singling_out"] = {"value": None, "error": str(e)}
        half = len(columns) // 2
        try:
            ev = LinkabilityEvaluator(ori=ori, syn=syn, control=ctl, n_attacks=n, aux_cols=(columns[:half], columns[half:]), n_neighbors=1)
            ev.evaluate(n_jobs=1)
            out["linkability"] = risk(ev)
        except Exception as e:
            out["linkability"] = {"value": None, "error": str(e)}
        per_secret = {}
        for secret in secrets:
            aux = [c for c in columns if c != secret]
            try:
                ev = InferenceEvaluator(ori=ori, syn=syn, control=ctl, aux_cols=aux, secret=secret, n_attacks=n)
                ev.evaluate(n_jobs=1)
                per_secret[secret] = risk(ev)
            except Exception as e:
                per_secret[secret] = {"value": None, "error": str(e)}
        values = [v["value"] for v in per_secret.values() if v.get("value") is not None]
        out["inference"] = {"value": max(values) if values else None, "per_secret": per_secret}
        out["seconds"] = round(time.perf_counter() - t, 3)
    return out


def quality(train: pd.DataFrame, synthetic: pd.DataFrame, eval_metadata: dict) -> dict:
    """SDMetrics QualityReport: column shapes, column pair trends and their mean."""
    with warnings.catch_warnings():
        # The single-table report is deprecated for a unified one whose score also averages multi-table
        # properties; the single-table one is the score this gate means.
        warnings.simplefilter("ignore", FutureWarning)
        from sdmetrics.reports.single_table import QualityReport

    cols = list(eval_metadata["columns"])
    report = QualityReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report.generate(train[cols], synthetic[cols], eval_metadata, verbose=False)
    props = report.get_properties()
    by_name = dict(zip(props["Property"], props["Score"]))
    shapes = report.get_details("Column Shapes")
    per_col = {str(r["Column"]): float(r["Score"]) for _, r in shapes.iterrows() if pd.notna(r.get("Score"))}
    return {
        "score": float(report.get_score()),
        "column_shapes": float(by_name.get("Column Shapes", float("nan"))),
        "column_pair_trends": float(by_name.get("Column Pair Trends", float("nan"))),
        "column_shapes_per_column": per_col,
    }


def _features(df: pd.DataFrame, columns: dict[str, str], target: str) -> pd.DataFrame:
    parts = {}
    for c, t in columns.items():
        if c == target:
            continue
        if t == "datetime":
            parts[c] = pd.to_datetime(df[c], errors="coerce").astype("int64") / 1e9
        elif t == "numerical":
            parts[c] = pd.to_numeric(df[c], errors="coerce")
        else:
            parts[c] = df[c].astype(str)
    return pd.DataFrame(parts, index=df.index)


def utility(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, columns: dict[str, str], target: str, seed: int) -> dict:
    """Train on synthetic, test on the real holdout (TSTR), against train on real, test on holdout (TRTR)."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.metrics import accuracy_score, r2_score

    classify = columns.get(target) in ("categorical", "boolean") or train[target].nunique() <= 10
    feats = {k: v for k, v in columns.items() if k != target}
    frames = [_features(d, columns, target) for d in (train, synthetic, holdout)]
    # One encoding for all three, so a category missing from one table still lines up.
    enc = pd.get_dummies(pd.concat(frames, keys=["train", "syn", "hold"]), dummy_na=False).fillna(0.0)
    X = {k: enc.xs(k) for k in ("train", "syn", "hold")}
    ys = {"train": train[target], "syn": synthetic[target], "hold": holdout[target]}
    if classify:
        ys = {k: v.astype(str) for k, v in ys.items()}
        make = lambda: RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)  # noqa: E731
        score, metric = accuracy_score, "accuracy"
    else:
        ys = {k: pd.to_numeric(v, errors="coerce").fillna(0.0) for k, v in ys.items()}
        make = lambda: RandomForestRegressor(n_estimators=100, random_state=seed, n_jobs=1)  # noqa: E731
        score, metric = r2_score, "r2"
    real = score(ys["hold"], make().fit(X["train"], ys["train"]).predict(X["hold"]))
    synth = score(ys["hold"], make().fit(X["syn"], ys["syn"]).predict(X["hold"]))
    return {
        "target": target,
        "task": "classification" if classify else "regression",
        "metric": metric,
        "features": list(feats),
        "train_real_test_holdout": float(real),
        "train_synthetic_test_holdout": float(synth),
        "ratio": _ratio(float(synth), float(real)) if real > 0 else None,
    }
