"""The privacy numbers are a function of the data and the seed: anonymeter's singling-out queries come from a
module-level generator nothing seeded: the same table and seed gave other risks (multivariate), and on anes96 one
`orchard synth tabular` run in three built no query, so the gate failed closed."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("OMP_NUM_THREADS", "1")


def test_anonymeter_risks_repeat_exactly_with_the_same_seed():
    import statsmodels.api as sm

    from orchard.synth.tabular.privacy import anonymeter_risks

    df = sm.datasets.anes96.load_pandas().data  # a real table, with natural duplicates
    train, holdout = df.iloc[:700], df.iloc[700:]
    synthetic = train.sample(n=300, random_state=1).reset_index(drop=True)
    cols = list(df.columns)

    def run(seed):
        r = anonymeter_risks(train, holdout, synthetic, cols, 60, [cols[0]], seed=seed, singling_out_attacks=60,
                             singling_out="multivariate")
        return re.sub(r'"seconds": [0-9.e-]+', "", json.dumps(r, sort_keys=True, default=str))

    first = run(3)
    assert '"singling_out"' in first
    assert run(3) == first


def test_report_says_when_singling_out_built_fewer_queries_than_attacks():
    """anonymeter warns on the console that few queries mean an underestimate; the console keeps library logging
    quiet, so the report carries it."""
    from orchard.synth.tabular.report import markdown

    def report(n_queries):
        so = {"value": 0.01, "ci": [0.0, 0.05], "mode": "univariate", "n_attacks": 100, "n_queries": n_queries}
        return {"gate": {"passed": True, "checks": {}}, "rows": {"train": 300, "holdout": 100, "synthetic": 300},
                "synthesizer": "gaussian_copula", "table_hash": "0" * 64,
                "metrics": {"anonymeter": {"n_attacks": 100, "singling_out": so}}}

    assert "only 12 of 100 singling-out queries could be built" in markdown(report(12))
    assert "singling-out queries could be built" not in markdown(report(100))
