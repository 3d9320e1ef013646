"""``tabular-check``: the stage's report and gate for a synthetic table made by any tool (CTGAN, Gretel, SDV...).

TRAIN is what the other tool learnt from, SYNTHETIC what it made, HOLDOUT real rows it never saw. Without a
holdout the privacy checks that need one are recorded as not measured and the gate fails closed. Tests
plant leaks through here too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchard.dataio import file_hash
from orchard.errors import InputError

from .config import TabularConfig
from .evaluate import measure
from .gate import evaluate_gate
from .metadata import build_plan
from .report import write_report
from .table import RESERVED, read_table


def _same_columns(df: pd.DataFrame, like: pd.DataFrame, path: Path) -> pd.DataFrame:
    df = df.drop(columns=[c for c in RESERVED if c in df.columns and c not in like.columns])  # orchard's own output
    missing = [c for c in like.columns if c not in df.columns]
    if missing:
        raise InputError(f"missing the training table's columns {missing} (it has {list(df.columns)})", path=path)
    extra = [c for c in df.columns if c not in like.columns]
    if extra:
        raise InputError(f"columns the training table does not have: {extra}", path=path)
    return df[list(like.columns)]


def tabular_check(train_path: str | Path, synthetic_path: str | Path, holdout_path: str | Path | None,
                  out_dir: str | Path, config: TabularConfig) -> dict:
    """Measure SYNTHETIC against TRAIN (and HOLDOUT), write the report to ``out_dir``, return ``{gate, ...}``."""
    train_path, synthetic_path, out_dir = Path(train_path), Path(synthetic_path), Path(out_dir)
    train = read_table(train_path)
    synthetic = _same_columns(read_table(synthetic_path), train, synthetic_path)
    holdout = _same_columns(read_table(holdout_path), train, Path(holdout_path)) if holdout_path else None
    plan = build_plan(train, config.metadata)
    cols = plan.eval_columns()
    if config.target is not None and config.target not in cols:
        raise InputError(f"target column '{config.target}' is not a statistical column of the table", path=train_path, field="target")
    metrics, arrays = measure(plan.data, holdout, synthetic, cols, plan.eval_metadata(), config)
    gate = evaluate_gate(metrics, config.gate)
    report = {
        "synthesizer": f"external ({synthetic_path.name})",
        "epsilon": None,
        "differentially_private": False,
        "table_hash": file_hash(train_path),
        "synthetic_hash": file_hash(synthetic_path),
        "rows": {"train": len(train), "holdout": len(holdout) if holdout is not None else None, "synthetic": len(synthetic)},
        "degenerate_columns": metrics["columns"]["degenerate"],
        "gate": gate,
        "metrics": metrics,
    }
    write_report(out_dir, report, arrays, plan.data, synthetic, cols)
    return {"gate": gate, "report": str(out_dir / "privacy_report.md"), "rows": report["rows"]}
