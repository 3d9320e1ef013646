"""Measure a synthetic table against its real train and holdout rows: the numbers the gate and report read.

One function for both ways in: the tabular stage (orchard's own synthesizers) and ``tabular-check`` (a table
made by any tool). Without a holdout the privacy numbers that need one are recorded as not measured, and
the gate then fails closed.
"""

from __future__ import annotations

import logging

import pandas as pd

from . import columns as columns_mod
from . import privacy
from .config import TabularConfig

log = logging.getLogger(__name__)

NEEDS_HOLDOUT = "not measured: no holdout (real rows kept out of the synthesizer's training) was given"


def distances(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame, eval_columns: dict[str, str],
              config: TabularConfig) -> dict:
    """The copy, near-copy and distance numbers with the config's noise allowance and scan level."""
    return privacy.distance_metrics(train, holdout, synthetic, dict(eval_columns), config.seed, config.copy_noise_z,
                                    config.near_copy_alpha)


def measure(train: pd.DataFrame, holdout: pd.DataFrame | None, synthetic: pd.DataFrame, eval_columns: dict[str, str],
            eval_metadata: dict, config: TabularConfig) -> tuple[dict, dict]:
    """``(metrics, arrays)``: distances, attacks, quality, per-column fidelity and utility (arrays for plots)."""
    cols = dict(eval_columns)
    metrics: dict = {}
    arrays: dict = {}
    if holdout is not None:
        dist = distances(train, holdout, synthetic, cols, config)
        arrays = dist.pop("_arrays")
        metrics["distance"] = dist
        secrets = config.inference_secrets or ([config.target] if config.target else list(cols)[:3])
        metrics["anonymeter"] = privacy.anonymeter_risks(
            train, holdout, synthetic, list(cols), config.n_attacks, secrets, config.seed,
            config.singling_out, config.singling_out_attacks)
    else:
        metrics["distance"] = {"error": NEEDS_HOLDOUT}
        metrics["anonymeter"] = {k: {"value": None, "error": NEEDS_HOLDOUT} for k in ("linkability", "inference")}
    # A measurement that breaks is recorded, not fatal: its gate check then fails closed ("not measured")
    # and the report still tells the user what happened.
    shapes = None
    try:
        metrics["quality"] = privacy.quality(train, synthetic, eval_metadata)
        shapes = metrics["quality"]["column_shapes_per_column"]
    except Exception as e:  # SDMetrics raises assorted errors on unusual columns
        log.warning("quality report failed: %s", e)
        metrics["quality"] = {"score": None, "error": f"{type(e).__name__}: {e}"}
    col = columns_mod.column_metrics(train, synthetic, cols, shapes)
    col["worst"] = columns_mod.worst(col)
    metrics["columns"] = col
    if config.target:
        if holdout is None:
            metrics["utility"] = {"ratio": None, "error": NEEDS_HOLDOUT}
        else:
            try:
                metrics["utility"] = privacy.utility(train, holdout, synthetic, cols, config.target, config.seed)
            except Exception as e:  # e.g. a target with a single class in the synthetic rows
                log.warning("utility test failed: %s", e)
                metrics["utility"] = {"ratio": None, "error": f"{type(e).__name__}: {e}"}
    return metrics, arrays
