"""Choose the synthesizer: fit each candidate within a time budget, score it on rows it never saw, rank them.

``auto`` (the default) fits SDV's GaussianCopula and MOSTLY AI's TabularARGN on the training rows less a
validation share, scores each synthetic sample against those validation rows (SDMetrics quality) and checks
its columns (share of zeros, of missing values) against the rows it learnt from. Candidates whose columns
pass rank first, then by score. The stage then keeps the best-ranked candidate that passes the privacy gate.
Measured (benchmarks/tabular_quality.py, four real tables): the network scored higher on all four, but its
rows failed the privacy gate on two (randhie, gapminder), where the copula is what can be released.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import columns as columns_mod
from . import engine
from . import fit as fit_mod
from . import privacy
from .config import TabularConfig
from .metadata import TablePlan

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    name: str
    synthetic: pd.DataFrame
    info: dict = field(default_factory=dict)


def engine_ineligible(plan: TablePlan) -> str | None:
    """Why TabularARGN cannot stand in for SDV on this table (None when it can)."""
    why = engine.available()
    if why:
        return why
    extra = [c for c in plan.data.columns if c not in plan.eval_columns()]
    if plan.faked or plan.constraints or extra:
        # SDV generates fakes for PII columns and keys and enforces constraints; the engine would learn the
        # real PII values instead, so such tables stay with SDV.
        return "the table has PII fakes, keys, constraints or non-statistical columns, which only SDV handles"
    return None


def fit_one(name: str, plan: TablePlan, train: pd.DataFrame, n_rows: int, config: TabularConfig, seconds: float,
            workspace: Path) -> Candidate:
    t = time.perf_counter()
    if name == "tabular_argn":
        syn, info = engine.fit_sample(train, n_rows, config.seed, seconds, workspace)
    else:
        syn = fit_mod.fit_sample(plan, train, n_rows, config.model_copy(update={"synthesizer": name}))
        info = {}
    info["fit_sample_seconds"] = round(time.perf_counter() - t, 2)
    return Candidate(name, syn, info)


def score(cand: Candidate, fit_rows: pd.DataFrame, validation: pd.DataFrame, plan: TablePlan, config: TabularConfig) -> None:
    """Validation quality (SDMetrics against unseen rows) and the per-column checks against the rows learnt from."""
    cols = plan.eval_columns()
    try:
        cand.info["validation_quality"] = privacy.quality(validation, cand.synthetic, plan.eval_metadata())["score"]
    except Exception as e:  # an unusual column breaks SDMetrics: rank this candidate last
        cand.info["validation_quality"] = None
        cand.info["validation_error"] = f"{type(e).__name__}: {e}"
    worst = columns_mod.worst(columns_mod.column_metrics(fit_rows, cand.synthetic, cols))
    g = config.gate
    fails = []
    for check, limit in (("zero_share_diff_max", g.max_zero_share_diff), ("missing_share_diff_max", g.max_missing_share_diff)):
        w = worst[check]
        if limit is not None and w["value"] is not None and w["value"] > limit:
            fails.append(f"{check} {w['value']:.3f} in '{w['column']}'")
    cand.info["column_checks"] = "passed" if not fails else "failed: " + "; ".join(fails)


def rank(cands: list[Candidate]) -> list[Candidate]:
    return sorted(cands, key=lambda c: (c.info.get("column_checks") == "passed", c.info.get("validation_quality") or -1.0),
                  reverse=True)


def fit_candidates(plan: TablePlan, fit_rows: pd.DataFrame, validation: pd.DataFrame, n_rows: int,
                   config: TabularConfig, workspace: Path, load=None, save=None) -> tuple[list[Candidate], dict]:
    """Fit, score and rank the candidates; ``load``/``save`` cache each candidate's rows (resume without refit)."""
    names = ["gaussian_copula"]
    skipped = {}
    why = engine_ineligible(plan)
    if why:
        skipped["tabular_argn"] = why
    else:
        names.append("tabular_argn")
    start = time.perf_counter()
    cands = []
    for i, name in enumerate(names):
        cand = load(name) if load else None
        if cand is None:
            left = config.time_budget_s - (time.perf_counter() - start)
            # the last candidate gets what is left of the budget; an SDV fit is not interruptible, so an
            # earlier one simply runs (the copula takes seconds)
            cand = fit_one(name, plan, fit_rows, n_rows, config, max(left, 10.0), workspace / name)
            if save:
                save(cand)
        if "validation_quality" not in cand.info:
            score(cand, fit_rows, validation, plan, config)
            if save:
                save(cand)
        cands.append(cand)
    return rank(cands), skipped
