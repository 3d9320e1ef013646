"""The tabular stage: real table -> train/holdout split -> synthesizer -> privacy report -> gate -> records.

``tabular_stage`` is what the runner and ``orchard synth tabular`` call. Everything the user can get
wrong is checked before anything is written; a failing gate leaves its report in ``work_dir`` and raises
``GateFailed``; fitted samples and measurements are cached in ``work_dir`` so a re-run resumes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pandas as pd

from orchard.dataio import atomic_write_json, content_hash, file_hash, write_split
from orchard.errors import InputError

from . import fit as fit_mod
from . import privacy
from .config import TabularConfig
from .gate import evaluate_gate, raise_if_failed
from .metadata import build_plan
from .report import write_report
from .table import read_table

log = logging.getLogger(__name__)
RECORDS = "train.parquet"


def split_holdout(df: pd.DataFrame, holdout: float, seed: int, min_rows: int, path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle and split; refuse a table whose holdout or train part would be too small to measure."""
    from sklearn.model_selection import train_test_split

    n_hold = math.ceil(len(df) * holdout)
    n_train = len(df) - n_hold
    if n_hold < min_rows or n_train < min_rows:
        raise InputError(
            f"the table has {len(df)} rows: too few to hold out {holdout:.0%} ({n_hold} holdout, {n_train} train; "
            f"each needs at least {min_rows} rows)",
            path=path,
            field="holdout",
        )
    train, hold = train_test_split(df, test_size=n_hold, random_state=seed, shuffle=True)
    return train, hold


def _check_config(config: TabularConfig, plan, path) -> None:
    cols = plan.eval_columns()
    if config.target is not None and config.target not in cols:
        why = "not in the table" if config.target not in plan.data.columns else "not a statistical column"
        raise InputError(f"target column '{config.target}' is {why} (choose from: {', '.join(cols)})", path=path, field="target")
    for s in config.inference_secrets or []:
        if s not in cols:
            raise InputError(f"inference secret '{s}' is not a statistical column of the table", path=path, field="inference_secrets")
    if config.dp_epsilon is not None:
        try:
            import snsynth  # noqa: F401
        except ImportError:
            raise InputError(fit_mod.DP_UNAVAILABLE, field="dp_epsilon") from None
        if config.synthesizer != "gaussian_copula":
            raise InputError("dp_epsilon uses smartnoise's MST; leave synthesizer at its default", field="synthesizer")


def _records(synthetic: pd.DataFrame, provenance: dict) -> "datasets.Dataset":  # noqa: F821
    import datasets

    df = synthetic.reset_index(drop=True).copy()
    plain = json.loads(df.to_json(orient="records", date_format="iso"))  # JSON-safe values for hashing
    ids = [content_hash(r) for r in plain]
    df["id"] = ids
    df["seed_id"] = ids  # a synthetic record is its own lineage root
    df["provenance"] = [json.dumps({**provenance, "seed_id": i}, sort_keys=True) for i in ids]
    return datasets.Dataset.from_pandas(df, preserve_index=False)


def tabular_stage(table_path: str | Path, out_dir: Path, work_dir: Path, config: TabularConfig) -> dict:
    """Synthesize ``table_path``, measure privacy, gate, and write ``train.parquet`` plus the report to ``out_dir``.

    Returns the manifest dict (counts, metrics, ``gate``). Raises InputError for bad input (nothing written)
    and GateFailed when the gate fails (report in ``work_dir/report/``).
    """
    t0 = time.perf_counter()
    table_path, out_dir, work_dir = Path(table_path), Path(out_dir), Path(work_dir)
    df = read_table(table_path)
    plan = build_plan(df, config.metadata)
    _check_config(config, plan, table_path)
    train, hold = split_holdout(plan.data, config.holdout, config.seed, config.min_holdout_rows, table_path)
    n_rows = config.rows or len(train)
    table_hash = file_hash(table_path)
    meta_hash = file_hash(config.metadata) if config.metadata else None

    key = content_hash({"table": table_hash, "metadata": meta_hash, "config": config.model_dump(exclude={"gate"})})
    cache = work_dir / key
    cache.mkdir(parents=True, exist_ok=True)
    # Which source rows were held out (row numbers only, never values): lets an auditor check the split.
    atomic_write_json(cache / "split.json", {"holdout_rows": sorted(int(i) for i in hold.index), "train_rows": len(train)})

    syn_path = cache / "synthetic.parquet"
    fit_seconds = 0.0
    if syn_path.exists():
        synthetic = pd.read_parquet(syn_path)
        log.info("resuming: synthetic rows from %s", syn_path)
    else:
        t = time.perf_counter()
        synthetic = fit_mod.fit_sample(plan, train, n_rows, config)
        fit_seconds = time.perf_counter() - t
        tmp = cache / ".tmp-synthetic.parquet"
        synthetic.to_parquet(tmp, index=False)
        tmp.replace(syn_path)

    columns = plan.eval_columns()
    metrics_path = cache / "metrics.json"
    t = time.perf_counter()
    dist = privacy.distance_metrics(train, hold, synthetic, columns, config.seed)
    arrays = dist.pop("_arrays")
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        metrics["distance"] = dist
    else:
        secrets = config.inference_secrets or ([config.target] if config.target else list(columns)[:3])
        metrics = {"distance": dist}
        metrics["anonymeter"] = privacy.anonymeter_risks(
            train, hold, synthetic, list(columns), config.n_attacks, secrets, config.seed,
            config.singling_out, config.singling_out_attacks
        )
        # A measurement that breaks is recorded, not fatal: its gate check then fails closed ("not
        # measured") and the report still tells the user what happened.
        try:
            metrics["quality"] = privacy.quality(train, synthetic, plan.eval_metadata())
        except Exception as e:  # SDMetrics raises assorted errors on unusual columns
            log.warning("quality report failed: %s", e)
            metrics["quality"] = {"score": None, "error": f"{type(e).__name__}: {e}"}
        if config.target:
            try:
                metrics["utility"] = privacy.utility(train, hold, synthetic, columns, config.target, config.seed)
            except Exception as e:  # e.g. a target with a single class in the synthetic rows
                log.warning("utility test failed: %s", e)
                metrics["utility"] = {"ratio": None, "error": f"{type(e).__name__}: {e}"}
        atomic_write_json(metrics_path, metrics)
    eval_seconds = time.perf_counter() - t

    gate = evaluate_gate(metrics, config.gate)
    report = {
        "synthesizer": "smartnoise_mst" if config.dp_epsilon else config.synthesizer,
        "epsilon": config.dp_epsilon,
        "differentially_private": config.dp_epsilon is not None,
        "table_hash": table_hash,
        "rows": {"table": len(df), "train": len(train), "holdout": len(hold), "synthetic": len(synthetic)},
        "dropped_columns": plan.dropped,
        "faked_columns": plan.faked,
        "gate": gate,
        "metrics": metrics,
        "seconds": {"fit_sample": round(fit_seconds, 3), "evaluate": round(eval_seconds, 3)},
    }
    if not gate["passed"]:
        write_report(work_dir / "report", report, arrays, train, synthetic, columns)
        raise_if_failed(gate, work_dir / "report" / "privacy_report.md")

    provenance = {
        "method": "synthetic_table",
        "synthesizer": report["synthesizer"],
        "table_hash": table_hash,
        **({"epsilon": config.dp_epsilon} if config.dp_epsilon else {}),
    }
    write_split(out_dir, "train", _records(synthetic, provenance))
    gate["records_sha256"] = file_hash(out_dir / RECORDS)
    write_report(out_dir, report, arrays, train, synthetic, columns)
    return {
        "counts": {"train": len(synthetic), "real_train": len(train), "real_holdout": len(hold)},
        "synthesizer": report["synthesizer"],
        "epsilon": config.dp_epsilon,
        "table_hash": table_hash,
        "gate": gate,
        "metrics": {
            "exact_copy_share": metrics["distance"]["exact_copies"]["synthetic_share"],
            "dcr_median_ratio": metrics["distance"]["dcr"]["median_ratio"],
            "quality_score": (metrics.get("quality") or {}).get("score"),
            "utility_ratio": (metrics.get("utility") or {}).get("ratio"),
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
