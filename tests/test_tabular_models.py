"""The other SDV synthesizers (CTGAN, TVAE, CopulaGAN) fit and sample on a real table, one epoch each."""

from __future__ import annotations

import pandas as pd
import pytest

from orchard.synth.tabular.api import split_holdout
from orchard.synth.tabular.config import TabularConfig
from orchard.synth.tabular.fit import fit_sample
from orchard.synth.tabular.metadata import build_plan


@pytest.fixture(scope="module")
def plan_and_split():
    from sklearn.datasets import load_iris

    df = load_iris(as_frame=True).frame
    df["target"] = df["target"].map({0: "setosa", 1: "versicolor", 2: "virginica"})
    plan = build_plan(df)
    train, hold = split_holdout(plan.data, 0.25, 0, 10, "iris")
    return plan, train, hold


@pytest.mark.parametrize("name", ["ctgan", "tvae", "copulagan"])
def test_gan_and_vae_synthesizers_fit_on_train_and_sample(plan_and_split, name):
    plan, train, hold = plan_and_split
    config = TabularConfig(synthesizer=name, epochs=1, batch_size=50, seed=0)
    syn = fit_sample(plan, train, 40, config)
    assert list(syn.columns) == list(train.columns) and len(syn) == 40
    assert set(syn["target"]) <= {"setosa", "versicolor", "virginica"}
    # SDV enforces the training range on numeric columns
    assert syn["sepal length (cm)"].between(train["sepal length (cm)"].min(), train["sepal length (cm)"].max()).all()
    assert pd.api.types.is_float_dtype(syn["petal width (cm)"])


def test_dp_mst_states_its_epsilon(tmp_path):
    """Runs only where smartnoise-synth is installed (it cannot share the main environment: see README)."""
    pytest.importorskip("snsynth")
    import json

    import statsmodels.api as sm
    from sklearn.datasets import load_wine

    from orchard.errors import InputError
    from orchard.synth.tabular.api import tabular_stage

    wine = tmp_path / "wine.csv"
    load_wine(as_frame=True).frame.to_csv(wine, index=False)
    with pytest.raises(InputError, match="could not find bounds"):  # 13 continuous columns, 178 rows
        tabular_stage(wine, tmp_path / "o", tmp_path / "w", TabularConfig(dp_epsilon=1.0))
    table = tmp_path / "anes.csv"
    sm.datasets.anes96.load_pandas().data.drop(columns=["logpopul", "popul"]).iloc[:400].to_csv(table, index=False)
    out = tmp_path / "out"
    # MST cannot be seeded (its noise must stay secret), so this test gates only what every run clears: a CI run
    # read 0.58 for age's shape (against 0.6), and closer-to-train, whose estimate from a 100-row holdout is
    # noisy, read 0.37-0.73 over 15 runs here (3 over the default 0.7; one failed CI). This test is about epsilon.
    cfg = TabularConfig(dp_epsilon=2.0, n_attacks=20, singling_out="off",
                        gate={"min_quality_score": 0.3, "max_out_of_range_share": None, "min_column_shape": 0.4,
                              "max_dcr_share_closer_to_train": None})
    result = tabular_stage(table, out, tmp_path / "work", cfg)
    assert result["epsilon"] == 2.0 and result["synthesizer"] == "smartnoise_mst"
    prov = json.loads(pd.read_parquet(out / "train.parquet")["provenance"].iloc[0])
    assert prov["epsilon"] == 2.0 and prov["synthesizer"] == "smartnoise_mst"
    assert "epsilon = 2.0" in (out / "privacy_report.md").read_text()
