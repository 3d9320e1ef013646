"""The tabular stage end to end on real tables shipped in statsmodels and scikit-learn.

Honest runs pass the gate; real rows injected into the synthesizer's output fail it; the holdout never
reaches the synthesizer; bad input gets a clear InputError and writes nothing; re-runs resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchard.dataio import atomic_write_json, read_manifest
from orchard.errors import GateFailed, InputError
from orchard.synth.tabular import fit as fit_mod
from orchard.synth.tabular.api import tabular_stage
from orchard.synth.tabular.config import TabularConfig
from orchard.synth.tabular.gate import require_passing_gate

# Small anonymeter budgets keep each run to seconds; singling-out (slow, report-only) is off unless tested.
FAST = dict(n_attacks=40, singling_out="off", target="vote", synthesizer="gaussian_copula")


@pytest.fixture(scope="module")
def anes(tmp_path_factory) -> Path:
    import statsmodels.api as sm

    df = sm.datasets.anes96.load_pandas().data.drop(columns=["logpopul"]).iloc[:400]
    path = tmp_path_factory.mktemp("tables") / "anes96.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def honest(anes, tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    out, work = root / "out", root / "work"
    calls = []
    orig = fit_mod.fit_sample

    import sdv.single_table as st

    orig_fit = st.GaussianCopulaSynthesizer.fit

    def spy_fit(self, data):  # records exactly what the synthesizer is shown
        calls.append(next(iter(data.values())).copy())
        return orig_fit(self, data)

    st.GaussianCopulaSynthesizer.fit = spy_fit
    try:
        result = tabular_stage(anes, out, work, TabularConfig(**FAST))
    finally:
        st.GaussianCopulaSynthesizer.fit = orig_fit
    atomic_write_json(out / "manifest.json", result)  # what the runner does with the returned dict
    assert fit_mod.fit_sample is orig
    return {"result": result, "out": out, "work": work, "fit_data": calls}


def test_honest_run_passes_and_writes_records_and_report(honest, anes):
    result, out = honest["result"], honest["out"]
    assert result["gate"]["passed"] is True, result["gate"]
    checks = result["gate"]["checks"]
    assert {"exact_copy_excess", "dcr_median_ratio", "dcr_p05_ratio", "dcr_share_closer_to_train", "linkability_risk", "quality_score"} <= {k for k, c in checks.items() if c["gated"]}
    assert checks["inference_risk"]["gated"] is False and 0.0 <= checks["inference_risk"]["value"] <= 1.0
    assert all(set(c) >= {"value", "threshold", "passed"} for c in checks.values())
    assert checks["utility_ratio"]["value"] > 0.5  # TSTR accuracy on 'vote' is close to TRTR's
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["gate"] == result["gate"]
    for name in ("privacy_report.md", "dcr_hist.png", "columns.png"):
        assert (out / name).stat().st_size > 500
    assert "Gate: PASSED" in (out / "privacy_report.md").read_text()
    rows = pd.read_parquet(out / "train.parquet")
    assert len(rows) == result["counts"]["train"] == 300  # as many as the train split by default
    assert (rows["id"] == rows["seed_id"]).all()
    prov = json.loads(rows["provenance"].iloc[0])
    assert prov["synthesizer"] == "gaussian_copula" and len(prov["table_hash"]) == 64 and "epsilon" not in prov
    real = pd.read_csv(anes)
    assert list(rows.columns[: len(real.columns)]) == list(real.columns)
    assert require_passing_gate(out)["passed"] is True


def test_holdout_never_reaches_the_synthesizer(honest, anes):
    (fitted,) = honest["fit_data"]
    split = json.loads(next(honest["work"].glob("*/split.json")).read_text())
    holdout = set(split["holdout_rows"])
    assert len(holdout) == 100 and len(fitted) == split["train_rows"] == 300
    assert holdout.isdisjoint(fitted.index)  # row numbers of the source table
    real = pd.read_csv(anes)
    # zero-inflated columns reach SDV with their zeros as missing values (fit.zero_inflated), nothing else changes
    assert honest["result"]["metrics"]["quality_score"] > 0.8
    fitted = fitted.fillna(0)
    pd.testing.assert_frame_equal(fitted.sort_index(), real.drop(index=sorted(holdout)), check_dtype=False)


def test_injected_real_rows_fail_the_gate(anes, tmp_path, monkeypatch):
    orig = fit_mod.fit_sample

    def leaky(plan, train, n_rows, config):  # a synthesizer that memorised a fifth of its training rows
        syn = orig(plan, train, n_rows, config)
        k = n_rows // 5
        syn.iloc[:k] = train.iloc[:k].to_numpy()
        return syn

    monkeypatch.setattr(fit_mod, "fit_sample", leaky)
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(GateFailed) as e:
        tabular_stage(anes, out, work, TabularConfig(**FAST))
    assert "exact_copy_excess = 0.18" in str(e.value) and "near_copy_excess" in str(e.value)
    assert not out.exists()  # nothing for downstream stages
    report = json.loads((work / "report" / "privacy_report.json").read_text())
    assert report["gate"]["passed"] is False
    assert report["metrics"]["distance"]["exact_copies"]["synthetic_rows_copied"] >= 60
    # exact copies are the copy check's: the DCR ratios look only at rows that are not exact matches
    assert report["metrics"]["distance"]["exact_copies"]["train_rows"] >= 55
    assert report["gate"]["checks"]["dcr_p05_ratio"]["passed"] is True
    assert "FAILED" in (work / "report" / "privacy_report.md").read_text()


def test_rerun_resumes_from_work_dir_without_refitting(honest, anes, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("refit on resume")

    monkeypatch.setattr(fit_mod, "fit_sample", boom)
    result = tabular_stage(anes, tmp_path / "out2", honest["work"], TabularConfig(**FAST))
    assert result["gate"] == {k: v for k, v in honest["result"]["gate"].items()}
    # a stricter gate re-evaluates the cached numbers without refitting
    with pytest.raises(GateFailed, match="quality_score"):
        tabular_stage(anes, tmp_path / "out3", honest["work"], TabularConfig(**FAST, gate={"min_quality_score": 0.99}))


def test_require_passing_gate_refuses(tmp_path, honest):
    with pytest.raises(InputError, match="no manifest"):
        require_passing_gate(tmp_path)
    atomic_write_json(tmp_path / "manifest.json", {"counts": {"train": 3}})
    with pytest.raises(InputError, match="no privacy gate"):
        require_passing_gate(tmp_path)
    atomic_write_json(tmp_path / "manifest.json", {"gate": {"passed": False, "checks": {"dcr_p05_ratio": {"passed": False}}}})
    with pytest.raises(InputError, match="dcr_p05_ratio"):
        require_passing_gate(tmp_path)
    # a passing manifest whose records were swapped afterwards
    gate = read_manifest(honest["out"])["gate"]
    atomic_write_json(tmp_path / "manifest.json", {"gate": gate})
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(InputError, match="changed after"):
        require_passing_gate(tmp_path)


def _wine(tmp_path) -> Path:
    from sklearn.datasets import load_wine

    path = tmp_path / "wine.csv"
    load_wine(as_frame=True).frame.to_csv(path, index=False)
    return path


def _bad(tmp_path, table, match, **cfg):
    out, work = tmp_path / "out", tmp_path / "work"
    with pytest.raises(InputError, match=match) as e:
        tabular_stage(table, out, work, TabularConfig(**cfg))
    assert not out.exists() and not work.exists(), "bad input must write nothing"
    return e.value


def test_bad_tables_get_clear_errors_and_write_nothing(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _bad(tmp_path, empty, "empty")
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n")
    _bad(tmp_path, header_only, "empty")
    one = tmp_path / "one.csv"
    pd.DataFrame({"age": range(100)}).to_csv(one, index=False)
    _bad(tmp_path, one, "one column")
    small = tmp_path / "small.csv"
    pd.DataFrame({"a": range(30), "b": range(30)}).to_csv(small, index=False)
    _bad(tmp_path, small, "too few to hold out")
    mixed = tmp_path / "mixed.csv"
    df = pd.DataFrame({"a": [str(i) for i in range(100)], "b": range(100)})
    df.loc[41, "a"] = "forty-one"
    df.to_csv(mixed, index=False)
    err = _bad(tmp_path, mixed, "mixes numbers and text")
    assert err.line == 43 and err.field == "a"  # header is line 1, row 41 is line 43
    reserved = tmp_path / "reserved.csv"
    pd.DataFrame({"id": range(100), "b": range(100)}).to_csv(reserved, index=False)
    _bad(tmp_path, reserved, "clashes")
    _bad(tmp_path, tmp_path / "nope.csv", "no such table")


def test_mixed_python_types_in_a_column_are_refused():
    from orchard.synth.tabular.table import validate_table

    with pytest.raises(InputError, match="mixes number and str"):
        validate_table(pd.DataFrame({"a": [1, 2, "three"], "b": [1, 2, 3]}), "t.parquet")


def test_metadata_yaml_errors_name_the_line(tmp_path):
    wine = _wine(tmp_path)
    meta = tmp_path / "meta.yaml"
    meta.write_text("columns:\n  alcohol: {sdtype: numerical}\n  colour: {sdtype: categorical}\n")
    err = _bad(tmp_path, wine, "unknown column 'colour'", metadata=str(meta))
    assert err.line == 3 and err.field == "columns.colour"
    meta.write_text("pii:\n  ssn: drop\n")
    _bad(tmp_path, wine, "unknown column 'ssn'", metadata=str(meta))
    meta.write_text("colums: {}\n")
    _bad(tmp_path, wine, "unknown key 'colums'", metadata=str(meta))
    meta.write_text("constraints:\n  - {type: Inequality, low_column_name: alcohol, high_column_name: nope}\n")
    _bad(tmp_path, wine, "unknown column 'nope'", metadata=str(meta))
    _bad(tmp_path, wine, "target column 'nope'", target="nope")


def test_dp_request_without_smartnoise_explains_why_not(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "snsynth", None)  # as if smartnoise-synth were not installed
    _bad(tmp_path, _wine(tmp_path), "smartnoise-synth", dp_epsilon=1.0)


def test_metadata_yaml_pii_rename_key_and_constraint(tmp_path):
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({
        "id": [f"P{i:04d}" for i in range(n)],
        "ssn": [f"{rng.integers(100, 999)}-{i:04d}" for i in range(n)],
        "email": [f"patient{i}@clinic.example" for i in range(n)],
        "age": rng.integers(20, 80, n),
        "admitted": rng.integers(0, 100, n),
        "ward": rng.choice(["A", "B", "C"], n),
    })
    df["discharged"] = df["admitted"] + rng.integers(1, 20, n)
    table = tmp_path / "patients.parquet"
    df.to_parquet(table)
    meta = tmp_path / "meta.yaml"
    meta.write_text(
        "rename: {id: patient_id}\nprimary_key: patient_id\npii:\n  ssn: drop\n  email: email\n"
        "columns:\n  ward: {sdtype: categorical}\n"
        "constraints:\n  - {type: Inequality, low_column_name: admitted, high_column_name: discharged}\n"
    )
    out = tmp_path / "out"
    result = tabular_stage(table, out, tmp_path / "work", TabularConfig(metadata=str(meta), n_attacks=30, singling_out="off"))
    rows = pd.read_parquet(out / "train.parquet")
    assert "ssn" not in rows.columns and "patient_id" in rows.columns
    assert not set(rows["email"]) & set(df["email"])  # realistic fakes, no real address
    assert rows["email"].str.contains("@").all()
    assert (rows["discharged"] > rows["admitted"]).all()  # the constraint holds in every synthetic row
    report = json.loads((out / "privacy_report.json").read_text())
    assert report["dropped_columns"] == ["ssn"] and report["faked_columns"] == {"email": "email"}
    assert set(report["metrics"]["distance"]["columns_compared"]) == {"age", "admitted", "discharged", "ward"}
    assert result["gate"]["passed"] is True, result["gate"]


def test_singling_out_is_measured_when_enabled(anes, tmp_path):
    cfg = TabularConfig(n_attacks=30, singling_out="univariate", singling_out_attacks=15, rows=120)
    result = tabular_stage(anes, tmp_path / "out", tmp_path / "work", cfg)
    so = result["gate"]["checks"]["singling_out_risk"]
    assert 0.0 <= so["value"] <= 1.0 and so["threshold"] is None


def test_cli_writes_a_dataset_folder_with_its_gate(tmp_path):
    from typer.testing import CliRunner

    from orchard.synth.tabular.cli import app

    wine = _wine(tmp_path)
    out = tmp_path / "synth_wine"
    r = CliRunner().invoke(app, ["tabular", str(wine), "--out", str(out), "--target", "target", "--rows", "150"])
    assert r.exit_code == 0, r.output
    assert "gate: PASSED" in r.output
    assert read_manifest(out)["gate"]["passed"] is True
    assert len(pd.read_parquet(out / "train.parquet")) == 150
    require_passing_gate(out)
    r = CliRunner().invoke(app, ["tabular", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no such table file" in r.output
    assert not (tmp_path / "x").exists()
    r = CliRunner().invoke(app, ["tabular", "--help"])
    assert "Example: orchard synth tabular" in r.output


def test_a_broken_measurement_fails_the_gate_closed_and_is_reported(anes, tmp_path, monkeypatch):
    from orchard.synth.tabular import privacy

    def broken(*a, **k):
        raise ValueError("synthetic column is constant")

    monkeypatch.setattr(privacy, "quality", broken)
    work = tmp_path / "work"
    with pytest.raises(GateFailed, match="quality_score = not measured"):
        tabular_stage(anes, tmp_path / "out", work, TabularConfig(**FAST))
    md = (work / "report" / "privacy_report.md").read_text()
    assert "Not measured: ValueError: synthetic column is constant" in md


def test_degenerate_columns_are_reported_and_left_to_the_other_checks(anes, tmp_path):
    """An all-null column and constant ones are synthesized as they are, named in the report, and fail no check:
    the gate judges the columns a synthesizer can learn from (they are compared too: missing 100% -> 100%)."""
    df = pd.read_csv(anes).assign(empty=np.nan, const=7.0, flag="yes")
    table = tmp_path / "degenerate.csv"
    df.to_csv(table, index=False)
    result = tabular_stage(table, tmp_path / "out", tmp_path / "work", TabularConfig(**{**FAST, "target": None}))
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    assert report["degenerate_columns"] == {"empty": "all values missing", "const": "one value only (np.float64(7.0))",
                                            "flag": "one value only ('yes')"}
    assert result["gate"]["passed"] is True, result["gate"]
    per = report["metrics"]["columns"]["per_column"]
    assert per["empty"]["missing_real"] == per["empty"]["missing_synthetic"] == 1.0
    md = (tmp_path / "out" / "privacy_report.md").read_text()
    for c in ("empty", "const", "flag"):
        assert f"Degenerate column `{c}`" in md
    rows = pd.read_parquet(tmp_path / "out" / "train.parquet")
    assert rows["empty"].isna().all() and (rows["const"] == 7.0).all() and (rows["flag"] == "yes").all()


def test_utility_line_stays_when_the_train_on_real_baseline_is_not_above_zero(tmp_path):
    """A target no column predicts: train-on-real R^2 on the holdout is below 0, so the ratio is undefined. The report
    says so (the line used to vanish); a utility threshold then fails closed instead of dividing by it."""
    from orchard.synth.tabular.check import tabular_check
    from orchard.synth.tabular.config import GateThresholds

    rng = np.random.default_rng(7)

    def draw(n):
        return pd.DataFrame({"x1": rng.normal(size=n).round(3), "x2": rng.normal(size=n).round(3),
                             "noise": rng.normal(size=n).round(3)})

    paths = {}
    for name, n in (("train", 240), ("holdout", 80), ("synthetic", 240)):
        paths[name] = tmp_path / f"{name}.csv"
        draw(n).to_csv(paths[name], index=False)
    cfg = TabularConfig(target="noise", n_attacks=20, singling_out="off")
    out = tabular_check(paths["train"], paths["synthetic"], paths["holdout"], tmp_path / "r1", cfg)
    u = json.loads((tmp_path / "r1" / "privacy_report.json").read_text())["metrics"]["utility"]
    assert u["train_real_test_holdout"] <= 0 and u["ratio"] is None
    assert "ratio not defined: the train-on-real score is not above 0" in (tmp_path / "r1" / "privacy_report.md").read_text()
    assert "utility_ratio" not in out["gate"]["checks"]  # report-only by default: nothing to show
    gated = cfg.model_copy(update={"gate": GateThresholds(min_utility_ratio=0.5)})
    out = tabular_check(paths["train"], paths["synthetic"], paths["holdout"], tmp_path / "r2", gated)
    assert out["gate"]["checks"]["utility_ratio"] == {**out["gate"]["checks"]["utility_ratio"], "value": None, "passed": False}
