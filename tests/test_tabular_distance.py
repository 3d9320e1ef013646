"""DCR/NNDR on a hand-built table (hand-computed values), agreement with SDMetrics, and the gate's arithmetic."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from orchard.errors import GateFailed, InputError
from orchard.synth.tabular.config import GateThresholds
from orchard.synth.tabular.distance import dcr, nndr
from orchard.synth.tabular.gate import evaluate_gate, failing_summary, raise_if_failed
from orchard.synth.tabular.privacy import distance_metrics

COLS = {"a": "numerical", "c": "categorical"}
TRAIN = pd.DataFrame({"a": [0.0, 10.0, 5.0], "c": ["x", "y", "x"]})
# an exact copy; an in-range row; a row beyond the range with an unseen category; a missing number
SYN = pd.DataFrame({"a": [0.0, 2.0, 20.0, np.nan], "c": ["x", "y", "z", "x"]})


def test_dcr_hand_computed():
    # range(a) = 10. Row 2 -> (10,y): (0.8 + 0)/2 = 0.4. Row 3: every |diff|/10 clips at 1, 'z' mismatches: 1.
    # Row 4: missing against present counts 1, 'x' matches (0,x): 0.5.
    assert dcr(SYN, TRAIN, COLS) == pytest.approx([0.0, 0.4, 1.0, 0.5], abs=1e-12)


def test_nndr_hand_computed():
    # Row 2: nearest 0.4, second (0,x): (0.2 + 1)/2 = 0.6 -> 0.667. Copies score 0; ties score 1.
    assert nndr(SYN, TRAIN, COLS) == pytest.approx([0.0, 0.4 / 0.6, 1.0, 1.0], abs=1e-12)


def test_dcr_matches_sdmetrics_on_hand_case_and_random_mixed_table():
    from sdmetrics.single_table.privacy.dcr_utils import calculate_dcr

    meta = {"columns": {k: {"sdtype": v} for k, v in COLS.items()}}
    assert dcr(SYN, TRAIN, COLS) == pytest.approx(calculate_dcr(SYN, TRAIN, meta).to_numpy(), abs=1e-12)

    rng = np.random.default_rng(1)

    def table(n, shift):
        df = pd.DataFrame({
            "x": rng.normal(shift, 1, n),
            "k": rng.integers(0, 4, n).astype(float),
            "cat": rng.choice(list("abcd"), n),
            "when": pd.Timestamp("2021-01-01") + pd.to_timedelta(rng.integers(0, 400, n), unit="D"),
            "flag": rng.choice([True, False], n),
            "hi": rng.integers(0, 500, n).astype(str),  # high cardinality: exercises the exact path
        })
        df.loc[rng.random(n) < 0.1, "x"] = np.nan
        df.loc[rng.random(n) < 0.1, "cat"] = None
        return df

    cols = {"x": "numerical", "k": "numerical", "cat": "categorical", "when": "datetime", "flag": "boolean"}
    q, r = table(120, 0.7), table(150, 0.0)
    # like SDMetrics' random baseline: float values in categorical columns, unseen in the reference
    q_unseen = q.assign(cat=rng.random(len(q)), flag=rng.random(len(q)))
    for query, use in ((q, cols), (q, cols | {"hi": "categorical"}), (q_unseen, cols)):
        meta = {"columns": {k: {"sdtype": v} for k, v in use.items()}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = calculate_dcr(query, r, meta).to_numpy()
        assert dcr(query, r, use) == pytest.approx(expected, abs=1e-12)


def test_distance_metrics_copies_and_ratios():
    train = pd.DataFrame({"a": np.arange(0, 100, 2.0), "c": ["x", "y"] * 25})
    hold = pd.DataFrame({"a": np.arange(1, 41, 4.0), "c": ["x"] * 10})
    syn = pd.concat([train.iloc[:5], hold.iloc[:5]], ignore_index=True)  # 5 copies of 10 rows
    m = distance_metrics(train, hold, syn, COLS)
    assert m["exact_copies"]["synthetic_rows_copied"] == 5
    assert m["exact_copies"]["synthetic_share"] == 0.5
    assert m["exact_copies"]["holdout_share"] == 0.0
    # 5 copies owned by train, 5 rows owned by the holdout (its own rows): no excess over the holdout's count
    ec = m["exact_copies"]
    assert (ec["train_rows"], ec["holdout_rows"]) == (5, 5) and ec["excess"] == 0.0
    # holdout rows sit one unit (1/98 of the range) from a train row, half of them also off in category
    assert m["dcr"]["holdout_to_train"]["p50"] == pytest.approx(0.5 / 98, abs=1e-12)
    # the ratios leave out exact matches; a synthetic set of nothing but copies reads 0, not "1.0 (0/0)"
    only = distance_metrics(train, hold, train.iloc[:10], COLS)
    assert only["dcr"]["median_ratio"] == 0.0 and only["dcr"]["p05_ratio"] == 0.0
    assert only["exact_copies"]["excess"] > 0


def test_gate_thresholds_and_failure_message():
    metrics = {
        "distance": {"exact_copies": {"excess": 0.1}, "dcr": {"median_ratio": 1.2, "p05_ratio": 0.3}, "nndr": {"median_ratio": 1.0}, "share_closer_to_train_equal_size": 0.5},
        "anonymeter": {"singling_out": {"value": 0.05}, "linkability": {"value": None}, "inference": {"value": 0.6}},
        "quality": {"score": 0.8},
    }
    gate = evaluate_gate(metrics, GateThresholds())
    assert gate["passed"] is False
    checks = gate["checks"]
    assert checks["exact_copy_excess"] == {"value": 0.1, "threshold": 0.0, "direction": "max", "passed": False, "gated": True}
    assert checks["dcr_median_ratio"]["passed"] and not checks["dcr_p05_ratio"]["passed"]
    assert checks["linkability_risk"]["passed"] is False  # not measured -> fails closed
    # report-only never reads "passed"
    assert checks["singling_out_risk"]["gated"] is False and checks["singling_out_risk"]["passed"] is None
    assert "utility_ratio" not in checks  # neither measured nor gated
    msg = failing_summary(gate)
    assert "exact_copy_excess = 0.1 (needs <= 0.0)" in msg and "dcr_p05_ratio = 0.3 (needs >= 0.5)" in msg
    with pytest.raises(GateFailed, match="linkability_risk = not measured"):
        raise_if_failed(gate, "report.md")
    relaxed = GateThresholds(max_exact_copy_excess=0.2, min_dcr_p05_ratio=None, max_linkability_risk=None,
                             max_near_copy_excess=None, min_column_shape=None, max_zero_share_diff=None,
                             max_missing_share_diff=None, max_out_of_range_share=None)
    relaxed_gate = evaluate_gate(metrics, relaxed)
    # an attack that ran but was not measured fails even where its threshold is report-only
    assert [k for k, c in relaxed_gate["checks"].items() if c["passed"] is False] == ["linkability_risk"]
    metrics["anonymeter"]["linkability"] = {"value": 0.01}
    assert evaluate_gate(metrics, relaxed)["passed"] is True


def test_gate_config_forbids_unknown_keys():
    from pydantic import ValidationError

    from orchard.synth.tabular.config import TabularConfig

    with pytest.raises(ValidationError):
        TabularConfig(gate={"max_copies": 0.1})
    with pytest.raises(ValidationError):
        TabularConfig(synthesizer="bayes_net")
    assert isinstance(InputError("x"), Exception)


def test_equal_size_share_is_half_for_fresh_rows_and_high_for_memorised_ones():
    rng = np.random.default_rng(3)
    cols = {"x": "numerical", "y": "numerical"}

    def draw(n):
        return pd.DataFrame({"x": rng.normal(size=n), "y": rng.normal(size=n)})

    train, hold = draw(600), draw(200)
    fresh = distance_metrics(train, hold, draw(400), cols)
    assert 0.42 <= fresh["share_closer_to_train_equal_size"] <= 0.58
    assert fresh["exact_copies"]["synthetic_share"] == 0.0
    # near-copies (tiny noise on training rows) are not exact copies, but the share and p05 ratio see them
    near = train.iloc[:400] + rng.normal(scale=1e-3, size=(400, 2))
    memorised = distance_metrics(train, hold, near, cols)
    assert memorised["exact_copies"]["synthetic_share"] == 0.0
    assert memorised["share_closer_to_train_equal_size"] > 0.6
    assert memorised["dcr"]["p05_ratio"] < 0.1


def test_numpy_fallback_matches_the_compiled_kernel(monkeypatch):
    import orchard.synth.tabular.distance as distance

    rng = np.random.default_rng(7)
    n = 150
    df = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(list("abc"), n), "z": rng.integers(0, 3, n).astype(float)})
    df.loc[rng.random(n) < 0.1, "z"] = np.nan
    q, r = df.iloc[:60], df.iloc[60:]
    cols = {"x": "numerical", "c": "categorical", "z": "numerical"}
    compiled = distance.nearest_distances(q, r, cols, k=2)
    monkeypatch.setattr(distance, "_compiled", None)
    fallback = distance.nearest_distances(q, r, cols, k=2)
    assert distance.dcr(q, r, cols) == pytest.approx(compiled[:, 0], abs=1e-12)
    assert fallback == pytest.approx(compiled, abs=1e-12)
