"""Fit a synthesizer on the training rows only and sample synthetic rows (SDV 2 API, or smartnoise for DP)."""

from __future__ import annotations

import contextlib
import io
import logging
import random
import warnings

import numpy as np
import pandas as pd

from orchard.errors import InputError

from .config import TabularConfig
from .metadata import TABLE, TablePlan

log = logging.getLogger(__name__)

SDV_CLASSES = {
    "gaussian_copula": "GaussianCopulaSynthesizer",
    "ctgan": "CTGANSynthesizer",
    "tvae": "TVAESynthesizer",
    "copulagan": "CopulaGANSynthesizer",
}

DP_UNAVAILABLE = (
    "differential privacy needs smartnoise-synth (MST), an orchard dependency that is missing from this "
    "environment: `pip install -c constraints-cpu.txt smartnoise-synth` (it brings jax, opacus and SQLAlchemy). "
    "SDV itself has no differential privacy (SDV issue #779)."
)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is only needed by the GAN/VAE synthesizers
        pass


def build_synthesizer(plan: TablePlan, config: TabularConfig, nullable: list[str] = ()):
    import sdv.single_table

    metadata = plan.metadata
    if nullable:  # columns whose zeros are handed to SDV as missing values (zero_inflated)
        from sdv.metadata import Metadata

        spec = metadata.to_dict()
        for c in nullable:
            spec["tables"][TABLE]["columns"][c]["range_is_nullable"] = True
        metadata = Metadata.load_from_dict(spec)
    cls = getattr(sdv.single_table, SDV_CLASSES[config.synthesizer])
    kwargs = {}
    if config.synthesizer != "gaussian_copula":
        kwargs["enable_gpu"] = False  # CPU-only environment; also keeps runs reproducible
        if config.epochs is not None:
            kwargs["epochs"] = config.epochs
        if config.batch_size is not None:
            kwargs["batch_size"] = config.batch_size
    synth = cls(metadata, **kwargs)
    if plan.constraints:
        synth.add_constraints(plan.constraints)
    return synth


def fit_sample(plan: TablePlan, train: pd.DataFrame, n_rows: int, config: TabularConfig) -> pd.DataFrame:
    """Fit on ``train`` (never the holdout) and return ``n_rows`` synthetic rows with ``train``'s columns."""
    _seed_everything(config.seed)
    if config.dp_epsilon is not None:
        return _fit_sample_dp(plan, train, n_rows, config)
    zero_cols = zero_inflated(plan, train)
    with warnings.catch_warnings():
        # SDV's advice to save metadata and to buy range extrapolation is noise in a stage's log.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"sdv\.")
        synth = build_synthesizer(plan, config, zero_cols)
        # SDV 2 fits on a dict of tables and samples a dict back.
        synth.fit({TABLE: _zeros_to_missing(train, zero_cols)})
        out = synth.sample(num_rows=n_rows)
    if isinstance(out, dict):
        out = out[TABLE]
    out = out[list(train.columns)].reset_index(drop=True)
    for c in zero_cols:
        out[c] = out[c].fillna(0).astype(train[c].dtype)
    return out


def zero_inflated(plan: TablePlan, train: pd.DataFrame, min_share: float = 0.05) -> list[str]:
    """Numerical columns with at least ``min_share`` exact zeros and no missing values.

    SDV's copula models a number as one continuous marginal, so a spike of zeros (a count that is 0 for most
    people) is smeared into small values: anes96's popul went from 24% zeros to 1%, fair's affairs from 68%
    to 8%. SDV models missing values as a separate indicator that takes part in the correlations, so these
    zeros are handed to it as missing values and turned back into zeros after sampling.
    """
    out = []
    for c, t in plan.eval_columns().items():
        if t != "numerical" or c not in train or train[c].isna().any():
            continue
        share = float((pd.to_numeric(train[c], errors="coerce") == 0).mean())
        if min_share <= share < 1.0:
            out.append(c)
    return out


def _zeros_to_missing(train: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    if not cols:
        return train
    train = train.copy()
    for c in cols:
        train[c] = train[c].astype("float64").where(train[c] != 0)
    return train


def _fit_sample_dp(plan: TablePlan, train: pd.DataFrame, n_rows: int, config: TabularConfig) -> pd.DataFrame:
    try:
        from snsynth import Synthesizer
    except ImportError:
        raise InputError(DP_UNAVAILABLE, field="dp_epsilon") from None
    eps = float(config.dp_epsilon)
    cols = plan.eval_columns()
    others = [c for c in train.columns if c not in cols]
    if others:
        raise InputError(
            f"the DP synthesizer models only statistical columns; drop or fake these first: {others}", field="dp_epsilon"
        )
    # MST models marginals of discrete columns: numbers with few distinct values are treated as categories
    # (a choice made from the data, like SDV's metadata detection: not covered by epsilon), the others
    # are binned with bounds found under a share of the budget.
    cats = [c for c, t in cols.items() if t in ("categorical", "boolean") or train[c].nunique() <= 32]
    conts = [c for c in cols if c not in cats]
    synth = Synthesizer.create("mst", epsilon=eps)
    pre_eps = eps * 0.3 if conts else 0.0
    log.info("DP synthesizer (MST): epsilon %g, of which %g finds the bounds of the continuous columns (%d) and "
             "%g trains", eps, pre_eps, len(conts), eps - pre_eps)
    # smartnoise prints its own budget split to stdout, where a command's result goes; orchard said it above
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            synth.fit(train, categorical_columns=cats, continuous_columns=conts, preprocessor_eps=pre_eps)
        except ValueError as e:
            if "bounds" not in str(e):
                raise
            raise InputError(
                f"the DP synthesizer could not find bounds for the continuous columns {conts} under epsilon {eps} "
                f"({e}); raise dp_epsilon, or drop or coarsen continuous columns",
                field="dp_epsilon",
            ) from None
        out = synth.sample(n_rows)
    return pd.DataFrame(out)[list(train.columns)].reset_index(drop=True)
