"""MOSTLY AI's open-source engine (``mostlyai-engine``, TabularARGN, Apache-2.0) as an orchard synthesizer, on CPU.

An autoregressive network over the columns: it keeps zero-inflated and skewed columns that SDV's
GaussianCopula smooths away (statsmodels' randhie: no exact zeros from the copula in columns that are
24-83% zeros). It trains with early stopping on a validation share of the rows it is given, under a
time cap. Installed CPU-only and without torchvision (scripts/setup.sh says how).
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

import pandas as pd

from orchard.errors import InputError

UNAVAILABLE = (
    "the TabularARGN synthesizer needs mostlyai-engine, which is missing from this environment "
    "(scripts/setup.sh installs it CPU-only: `pip install --no-deps mostlyai-engine==2.7.3 opacus==1.6.0`)"
)


def available() -> str | None:
    """None when the engine can be imported, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mostlyai.engine  # noqa: F401
    except Exception as e:  # ImportError, or a broken optional dependency underneath
        return f"{UNAVAILABLE} ({type(e).__name__}: {e})"
    return None


def _restore_types(out: pd.DataFrame, like: pd.DataFrame) -> pd.DataFrame:
    """The engine returns pandas' nullable dtypes; give each column its training dtype back where it fits."""
    out = out[list(like.columns)].copy()
    for c in like.columns:
        want = like[c].dtype
        try:
            if pd.api.types.is_integer_dtype(want) and out[c].notna().all():
                out[c] = out[c].astype(want)
            elif pd.api.types.is_numeric_dtype(want) and not pd.api.types.is_bool_dtype(want):
                out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
            elif pd.api.types.is_datetime64_any_dtype(want):
                out[c] = pd.to_datetime(out[c], errors="coerce")
            elif pd.api.types.is_bool_dtype(want) and out[c].notna().all():
                out[c] = out[c].astype(bool)
            else:
                out[c] = out[c].astype(object).where(out[c].notna(), None)
        except (TypeError, ValueError):
            out[c] = out[c].astype(object)
    return out


def fit_sample(train: pd.DataFrame, n_rows: int, seed: int, seconds: float, workspace: Path,
               max_epochs: int = 100) -> tuple[pd.DataFrame, dict]:
    """Fit TabularARGN on ``train`` (CPU, seeded, at most ``seconds``) and sample ``n_rows``; plus what happened."""
    why = available()
    if why:
        raise InputError(why, field="synthesizer")
    from mostlyai.engine import TabularARGN

    workspace = Path(workspace)
    shutil.rmtree(workspace, ignore_errors=True)  # a killed run's half-written workspace
    workspace.mkdir(parents=True)
    t0 = time.perf_counter()
    logging.getLogger("mostlyai").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = TabularARGN(max_training_time=max(seconds, 1.0) / 60.0, max_epochs=max_epochs, device="cpu",
                                random_state=seed, workspace_dir=workspace, verbose=0)
            model.fit(train.reset_index(drop=True))
            fit_s = time.perf_counter() - t0
            # Rare categories are protected by the engine; sample a non-rare one instead of a "_RARE_" token.
            out = model.sample(n_samples=n_rows, rare_category_replacement_method="sample")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    info = {"fit_seconds": round(fit_s, 2), "time_cap_seconds": round(seconds, 1),
            # Early stopping ends training well before the cap on small tables; a run stopped by the cap
            # depends on the machine's speed, so its rows may differ between runs with the same seed.
            "stopped_by_time_cap": fit_s >= 0.95 * seconds}
    return _restore_types(out, train).reset_index(drop=True), info
