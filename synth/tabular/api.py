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
from .evaluate import distances, measure
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
        if config.synthesizer not in ("auto", "gaussian_copula"):
            raise InputError("dp_epsilon uses smartnoise's MST; leave synthesizer at its default", field="synthesizer")
    elif config.synthesizer == "tabular_argn":
        from .select import engine_ineligible

        why = engine_ineligible(plan)
        if why:
            raise InputError(f"synthesizer tabular_argn: {why}", field="synthesizer")


def _records(synthetic: pd.DataFrame, provenance: dict) -> "datasets.Dataset":  # noqa: F821
    import datasets

    df = synthetic.reset_index(drop=True).copy()
    plain = json.loads(df.to_json(orient="records", date_format="iso"))  # JSON-safe values for hashing
    ids = [content_hash(r) for r in plain]
    df["id"] = ids
    df["seed_id"] = ids  # a synthetic record is its own lineage root
    df["provenance"] = [json.dumps({**provenance, "seed_id": i}, sort_keys=True) for i in ids]
    return datasets.Dataset.from_pandas(df, preserve_index=False)


def _cached_candidate(cache: Path):
    """Load and save one candidate's synthetic rows and scores in the stage's cache (resume without refitting)."""
    from .select import Candidate

    def load(name):
        syn, info = cache / f"synthetic-{name}.parquet", cache / f"candidate-{name}.json"
        if syn.exists() and info.exists():
            log.info("resuming: %s rows from %s", name, syn)
            return Candidate(name, pd.read_parquet(syn), json.loads(info.read_text()))
        return None

    def save(cand):
        tmp = cache / f".tmp-synthetic-{cand.name}.parquet"
        cand.synthetic.to_parquet(tmp, index=False)
        tmp.replace(cache / f"synthetic-{cand.name}.parquet")
        atomic_write_json(cache / f"candidate-{cand.name}.json", cand.info)

    return load, save


def _measure_cached(cache: Path, name: str, train, hold, synthetic, plan, config) -> tuple[dict, dict]:
    """Metrics of one candidate; the slow ones (attacks, quality) are cached, the distances recomputed for plots."""
    path = cache / f"metrics-{name}.json"
    if path.exists():
        metrics = json.loads(path.read_text())
        dist = distances(train, hold, synthetic, plan.eval_columns(), config)
        arrays = dist.pop("_arrays")
        metrics["distance"] = dist
        return metrics, arrays
    metrics, arrays = measure(train, hold, synthetic, plan.eval_columns(), plan.eval_metadata(), config)
    atomic_write_json(path, metrics)
    return metrics, arrays


def tabular_stage(table_path: str | Path, out_dir: Path, work_dir: Path, config: TabularConfig) -> dict:
    """Synthesize ``table_path``, measure privacy, gate, and write ``train.parquet`` plus the report to ``out_dir``.

    Returns the manifest dict (counts, metrics, ``gate``). Raises InputError for bad input (nothing written)
    and GateFailed when the gate fails (report in ``work_dir/report/``).
    """
    from . import select

    t0 = time.perf_counter()
    table_path, out_dir, work_dir = Path(table_path), Path(out_dir), Path(work_dir)
    df = read_table(table_path)
    plan = build_plan(df, config.metadata)
    _check_config(config, plan, table_path)
    train, hold = split_holdout(plan.data, config.holdout, config.seed, config.min_holdout_rows, table_path)
    table_hash = file_hash(table_path)
    meta_hash = file_hash(config.metadata) if config.metadata else None

    key = content_hash({"table": table_hash, "metadata": meta_hash, "config": config.model_dump(exclude={"gate"})})
    cache = work_dir / key
    cache.mkdir(parents=True, exist_ok=True)
    # Which source rows were held out (row numbers only, never values): lets an auditor check the split.
    atomic_write_json(cache / "split.json", {"holdout_rows": sorted(int(i) for i in hold.index), "train_rows": len(train)})

    load, save = _cached_candidate(cache)
    auto = config.synthesizer == "auto" and config.dp_epsilon is None
    selection: dict = {"mode": "auto" if auto else "fixed"}
    if auto:
        # The candidates learn from train less a validation share; those rows score them and are then
        # neither training rows (the synthesizer never saw them) nor holdout rows (they chose it).
        from sklearn.model_selection import train_test_split

        fit_rows, validation = train_test_split(train, test_size=config.validation, random_state=config.seed)
        n_rows = config.rows or len(train)
        cands, skipped = select.fit_candidates(plan, fit_rows, validation, n_rows, config, cache / "workspace", load, save)
        selection |= {"validation_rows": len(validation), "skipped": skipped, "time_budget_s": config.time_budget_s}
        train = fit_rows
    else:
        name = "smartnoise_mst" if config.dp_epsilon else config.synthesizer
        n_rows = config.rows or len(train)
        cand = load(name)
        if cand is None:
            cand = select.fit_one(name if name != "smartnoise_mst" else "gaussian_copula", plan, train, n_rows, config,
                                  config.time_budget_s, cache / "workspace")
            cand.name = name
            save(cand)
        cands = [cand]
    t = time.perf_counter()
    tried, results = [], []
    for cand in cands:
        metrics, arrays = _measure_cached(cache, cand.name, train, hold, cand.synthetic, plan, config)
        gate = evaluate_gate(metrics, config.gate)
        results.append((cand, metrics, arrays, gate))
        tried.append({"synthesizer": cand.name, **cand.info, "gate_passed": gate["passed"],
                      "quality_score": (metrics.get("quality") or {}).get("score")})
        if gate["passed"]:
            break
    eval_seconds = time.perf_counter() - t
    # the first that passed, or (none passed) the best-ranked one, whose failing report the user sees
    chosen, metrics, arrays, gate = results[-1] if results[-1][3]["passed"] else results[0]
    selection["candidates"] = tried + [{"synthesizer": c.name, **c.info, "gate_passed": None} for c in cands[len(tried):]]
    selection["chosen"] = chosen.name
    selection["why"] = _why(selection, gate["passed"])
    synthetic = chosen.synthetic
    columns = plan.eval_columns()
    report = {
        "synthesizer": chosen.name,
        "epsilon": config.dp_epsilon,
        "differentially_private": config.dp_epsilon is not None,
        "table_hash": table_hash,
        "rows": {"table": len(df), "train": len(train), "holdout": len(hold), "synthetic": len(synthetic),
                 **({"validation": selection["validation_rows"]} if auto else {})},
        "dropped_columns": plan.dropped,
        "faked_columns": plan.faked,
        "degenerate_columns": metrics["columns"]["degenerate"],
        "selection": selection,
        "gate": gate,
        "metrics": metrics,
        "seconds": {"fit_sample": sum(c.info.get("fit_sample_seconds", 0.0) for c in cands), "evaluate": round(eval_seconds, 3)},
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
        "selection": {k: selection[k] for k in ("mode", "chosen", "why")},
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


def _why(selection: dict, passed: bool) -> str:
    """One sentence for the report: which synthesizer and why."""
    if selection["mode"] != "auto":
        return f"{selection['chosen']} was asked for."
    tried = selection["candidates"]
    parts = [f"{c['synthesizer']}: validation quality {c.get('validation_quality') if c.get('validation_quality') is None else round(c['validation_quality'], 3)}, "
             f"columns {c.get('column_checks')}" + ("" if c.get("gate_passed") is None else f", gate {'passed' if c['gate_passed'] else 'failed'}")
             for c in tried]
    skipped = "".join(f" {k} not tried: {v}." for k, v in selection.get("skipped", {}).items())
    head = (f"{selection['chosen']} ranked best of the candidates that passed the gate" if passed
            else "no candidate passed the gate; the report shows the best-ranked one")
    return f"{head} ({'; '.join(parts)}).{skipped}"
