"""Leaks planted into honest synthetic tables fail the gate on every table here, natural duplicates or not.

Tables: anes96 (statsmodels, shipped in data/tables), fair (statsmodels: 22% of unseen rows equal a training
row) and one generated here with mixed types, duplicates, a zero-inflated count, missing values and rare
categories. On each, an honest GaussianCopula sample passes the copy and distance checks, and leaked,
near-copied and mixed sets of 1%, 5%, 30% and 100% of the synthetic rows fail them. `tabular-check` runs
the whole report and gate on a planted leak and on bad input (exit codes 3 and 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchard.synth.tabular.api import split_holdout
from orchard.synth.tabular.config import GateThresholds, TabularConfig
from orchard.synth.tabular.fit import fit_sample
from orchard.synth.tabular.gate import evaluate_gate
from orchard.synth.tabular.metadata import build_plan
from orchard.synth.tabular.privacy import distance_metrics

REPO = Path(__file__).resolve().parents[1]
# the copy and distance checks alone (quality has its own tests)
PRIVACY_ONLY = GateThresholds(max_linkability_risk=None, min_quality_score=None, min_column_shape=None,
                              max_zero_share_diff=None, max_missing_share_diff=None, max_out_of_range_share=None)


def generated_table(n: int = 1200, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.integers(18, 90, n),
        "income": np.round(np.exp(rng.normal(10, 0.6, n)), 2),
        "visits": np.where(rng.random(n) < 0.6, 0, rng.poisson(3, n) + 1),  # zero-inflated count
        "region": rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1]),
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "score": np.round(rng.normal(50, 10, n), 1),
    })
    df.loc[rng.choice(n, 4, replace=False), "region"] = "islands"  # a rare category
    df.loc[rng.random(n) < 0.05, "score"] = np.nan
    # natural duplicates: a coarse record type many people share
    common = rng.choice(n, 150, replace=False)
    df.loc[common, ["income", "score"]] = [30000.0, 50.0]
    df.loc[common, "age"] = 40
    df.loc[common, "visits"] = 0
    return df


def _table(name: str) -> pd.DataFrame:
    if name == "anes96":
        return pd.read_csv(REPO / "data" / "tables" / "anes96.csv").drop(columns=["logpopul"])
    if name == "fair":
        import statsmodels.api as sm

        return sm.datasets.fair.load_pandas().data
    return generated_table()


@pytest.fixture(scope="module", params=["anes96", "fair", "generated"])
def honest(request):
    df = _table(request.param)
    plan = build_plan(df)
    train, hold = split_holdout(plan.data, 0.25, 0, 10, request.param)
    syn = fit_sample(plan, train, len(train), TabularConfig(synthesizer="gaussian_copula"))
    return {"name": request.param, "train": train, "hold": hold, "syn": syn, "cols": plan.eval_columns()}


def _near(rows: pd.DataFrame, train: pd.DataFrame, cols: dict, rng) -> pd.DataFrame:
    """Training rows with every number moved by 1% of its column's spread (categories kept)."""
    rows = rows.copy()
    for c, t in cols.items():
        if t == "numerical":
            rows[c] = rows[c] + rng.normal(0, 0.01 * train[c].std(), len(rows))
    return rows


def plant(h: dict, kind: str, share: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    syn, train = h["syn"].copy(), h["train"]
    k = max(1, int(round(share * len(syn))))
    src = train.sample(k, random_state=seed)
    if kind == "near":
        src = _near(src, train, h["cols"], rng)
    elif kind == "mixed":
        src = pd.concat([src.iloc[: k // 2], _near(src.iloc[k // 2:], train, h["cols"], rng)])
    if kind != "verbatim":  # moved numbers stay moved: integer columns become float, not truncated back
        syn = syn.astype({c: "float64" for c, t in h["cols"].items() if t == "numerical"})
    idx = rng.choice(len(syn), k, replace=False)
    for c in syn.columns:
        syn.iloc[idx, syn.columns.get_loc(c)] = src[c].to_numpy()
    return syn


def _gate(h, syn):
    metrics = {"distance": distance_metrics(h["train"], h["hold"], syn, h["cols"])}
    metrics["distance"].pop("_arrays")
    return metrics, evaluate_gate(metrics, PRIVACY_ONLY)


def test_honest_synthetic_rows_pass_the_copy_and_distance_checks(honest):
    metrics, gate = _gate(honest, honest["syn"])
    assert gate["passed"], (honest["name"], gate)
    assert metrics["distance"]["exact_copies"]["excess"] == 0.0
    assert 0.35 <= metrics["distance"]["share_closer_to_train_equal_size"] <= 0.65


@pytest.mark.parametrize("kind", ["verbatim", "near", "mixed"])
def test_leaks_of_every_size_fail(honest, kind):
    for share in (0.01, 0.05, 0.30, 1.0):
        metrics, gate = _gate(honest, plant(honest, kind, share))
        failed = [k for k, c in gate["checks"].items() if c["passed"] is False]
        assert failed, f"{honest['name']}: {kind} {share:.0%} passed: {gate['checks']}"
        d = metrics["distance"]
        if kind == "verbatim":
            assert d["exact_copies"]["excess"] > 0, (honest["name"], kind, share, d["exact_copies"])
        if share == 1.0:  # tie-aware: copying every row reads ~1.0, also with fair's natural duplicates
            assert d["share_closer_to_train_equal_size"] > 0.85


@pytest.mark.parametrize("honest", ["fair"], indirect=True)
def test_the_scan_finds_one_percent_near_copies_on_a_discrete_table(honest):
    """fair's values are discrete: unseen rows come within 0.0003 of a train part, so the fixed scale sits below
    rows moved by 1% of each column's spread (DCR 0.001-0.002) and 1% of them passed; the scan at the synthetic
    rows' own distance quantiles finds them (train parts own ~37 rows within the 1% quantile, the holdout 1)."""
    honest_scan = _gate(honest, honest["syn"])[0]["distance"]["near_copies"]["scan"]
    assert honest_scan["excess"] == 0.0 and honest_scan["p_value"] > 0.1
    near = _gate(honest, plant(honest, "near", 0.01))[0]["distance"]["near_copies"]
    assert near["fixed"]["excess"] == 0.0  # the holdout-set scale that let them through before
    assert near["scan"]["p_value"] < 0.01 and near["scan"]["excess"] > 0 and near["excess"] == near["scan"]["excess"]


def test_a_holdout_that_duplicates_train_fails_the_distance_ratios_closed(honest):
    train = honest["train"]
    dup_hold = train.sample(len(honest["hold"]), random_state=2)  # every unseen row equals a training row
    d = distance_metrics(train, dup_hold, honest["syn"], honest["cols"])
    d.pop("_arrays")
    gate = evaluate_gate({"distance": d}, PRIVACY_ONLY)
    for name in ("dcr_median_ratio", "dcr_p05_ratio"):
        assert gate["checks"][name]["value"] is None and gate["checks"][name]["passed"] is False, name


def _cli(args):
    from typer.testing import CliRunner

    from orchard.synth.tabular.cli import app

    return CliRunner().invoke(app, ["tabular-check", *map(str, args)])


@pytest.fixture(scope="module")
def anes():
    df = _table("anes96")
    plan = build_plan(df)
    train, hold = split_holdout(plan.data, 0.25, 0, 10, "anes96")
    syn = fit_sample(plan, train, len(train), TabularConfig(synthesizer="gaussian_copula"))
    return {"name": "anes96", "train": train, "hold": hold, "syn": syn, "cols": plan.eval_columns()}


def test_tabular_check_gates_a_table_from_any_tool(tmp_path, anes):
    """The CLI round trip on anes96 (the checks themselves run on all three tables above)."""
    honest = anes
    train, hold = tmp_path / "train.csv", tmp_path / "holdout.parquet"
    honest["train"].to_csv(train, index=False)
    honest["hold"].to_parquet(hold, index=False)
    good, leak = tmp_path / "good.csv", tmp_path / "leak.csv"
    honest["syn"].to_csv(good, index=False)
    plant(honest, "mixed", 0.05).to_csv(leak, index=False)
    r = _cli([train, good, "--holdout", hold, "--out", tmp_path / "r_good"])
    assert "exact_copy_excess" in r.output and "report only" in r.output
    # the honest copula sample passes every privacy check (its per-column checks may not)
    report = json.loads((tmp_path / "r_good" / "privacy_report.json").read_text())
    assert all(c["passed"] for k, c in report["gate"]["checks"].items() if k in ("exact_copy_excess", "near_copy_excess"))
    assert r.exit_code == (0 if report["gate"]["passed"] else 3)
    r = _cli([train, leak, "--holdout", hold, "--out", tmp_path / "r_leak"])
    assert r.exit_code == 3, r.output
    assert "FAILED" in r.output and "exact_copy_excess" in r.output
    md = (tmp_path / "r_leak" / "privacy_report.md").read_text()
    assert "Gate: FAILED" in md and "**DCR**" in md and "**NNDR**" in md
    # without a holdout: what cannot be measured is said, and the gate fails closed
    r = _cli([train, good, "--out", tmp_path / "r_noh"])
    assert r.exit_code == 3 and "not measured" in r.output
    assert "no holdout" in (tmp_path / "r_noh" / "privacy_report.md").read_text()
    # bad input: exit 2, naming the file
    bad = tmp_path / "bad.csv"
    honest["syn"].drop(columns=["age"]).to_csv(bad, index=False)
    r = _cli([train, bad, "--holdout", hold, "--out", tmp_path / "r_bad"])
    assert r.exit_code == 2 and "bad.csv" in r.output and "age" in r.output
    r = _cli([train, tmp_path / "nope.csv", "--out", tmp_path / "r_bad"])
    assert r.exit_code == 2 and "no such table file" in r.output
