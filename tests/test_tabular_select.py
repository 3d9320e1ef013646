"""The default synthesizer choice: GaussianCopula and TabularARGN fitted within a time budget, scored on
validation rows, the best one that passes the gate kept; zero-inflated columns keep their zeros."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from orchard.synth.tabular.api import tabular_stage
from orchard.synth.tabular.config import TabularConfig


def zero_inflated_table(n: int = 700, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return pd.DataFrame({
        "x": np.round(x, 3),
        "visits": np.where(rng.random(n) < 0.7, 0, rng.poisson(4, n) + 1),  # 70% zeros
        "spend": np.where(rng.random(n) < 0.5, 0.0, np.round(np.exp(rng.normal(3 + x, 0.5)), 2)),
        "kind": rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1]),
    })


def test_auto_fits_both_candidates_keeps_zeros_and_says_why(tmp_path):
    table = tmp_path / "zi.csv"
    df = zero_inflated_table()
    df.to_csv(table, index=False)
    cfg = TabularConfig(n_attacks=20, singling_out="off", time_budget_s=25)
    result = tabular_stage(table, tmp_path / "out", tmp_path / "work", cfg)
    report = json.loads((tmp_path / "out" / "privacy_report.json").read_text())
    sel = report["selection"]
    assert sel["mode"] == "auto" and {c["synthesizer"] for c in sel["candidates"]} == {"gaussian_copula", "tabular_argn"}
    assert all(c["fit_sample_seconds"] < 60 for c in sel["candidates"])
    assert result["synthesizer"] == sel["chosen"] and sel["chosen"] in sel["why"]
    assert report["rows"]["validation"] == round(0.15 * 525) or report["rows"]["validation"] > 0
    rows = pd.read_parquet(tmp_path / "out" / "train.parquet")
    for c in ("visits", "spend"):  # every zero share within 0.07 of the real one
        assert abs((rows[c] == 0).mean() - (df[c] == 0).mean()) <= 0.07, c
    assert result["gate"]["checks"]["zero_share_diff_max"]["passed"] is True
    md = (tmp_path / "out" / "privacy_report.md").read_text()
    assert "## Synthesizer" in md and "## Columns (worst first)" in md
