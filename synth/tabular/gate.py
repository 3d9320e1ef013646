"""The privacy gate: thresholds applied to the measured numbers, and the check downstream stages call.

A gate is ``{"passed": bool, "checks": {name: {"value", "threshold", "passed"}}}``; the runner copies the
stage's returned dict into ``manifest.json``, so ``manifest["gate"]["passed"]`` is what consumers read.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from orchard.dataio import read_manifest
from orchard.errors import GateFailed, InputError

from .config import GateThresholds

# check name -> (threshold field, direction, where the value lives in the metrics)
CHECKS = {
    "exact_copy_excess": ("max_exact_copy_excess", "max", ("distance", "exact_copies", "excess")),
    "near_copy_excess": ("max_near_copy_excess", "max", ("distance", "near_copies", "excess")),
    "dcr_median_ratio": ("min_dcr_median_ratio", "min", ("distance", "dcr", "median_ratio")),
    "dcr_p05_ratio": ("min_dcr_p05_ratio", "min", ("distance", "dcr", "p05_ratio")),
    "dcr_share_closer_to_train": ("max_dcr_share_closer_to_train", "max", ("distance", "share_closer_to_train_equal_size")),
    "nndr_median_ratio": ("min_nndr_median_ratio", "min", ("distance", "nndr", "median_ratio")),
    "singling_out_risk": ("max_singling_out_risk", "max", ("anonymeter", "singling_out", "value")),
    "linkability_risk": ("max_linkability_risk", "max", ("anonymeter", "linkability", "value")),
    "inference_risk": ("max_inference_risk", "max", ("anonymeter", "inference", "value")),
    "quality_score": ("min_quality_score", "min", ("quality", "score")),
    "column_shape_min": ("min_column_shape", "min", ("columns", "worst", "column_shape_min", "value")),
    "zero_share_diff_max": ("max_zero_share_diff", "max", ("columns", "worst", "zero_share_diff_max", "value")),
    "missing_share_diff_max": ("max_missing_share_diff", "max", ("columns", "worst", "missing_share_diff_max", "value")),
    "out_of_range_share_max": ("max_out_of_range_share", "max", ("columns", "worst", "out_of_range_share_max", "value")),
    "utility_ratio": ("min_utility_ratio", "min", ("utility", "ratio")),
}
# Risks: an attack that ran but could not be measured fails the gate even where its threshold is report-only
# (not measured is not zero); an attack that is switched off in the config is simply absent.
RISKS = ("singling_out_risk", "linkability_risk", "inference_risk")


def _dig(d: dict, path: tuple) -> float | None:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _measured(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def evaluate_gate(metrics: dict, thresholds: GateThresholds) -> dict:
    """Apply every threshold that is set; a set threshold whose number could not be measured fails.

    Failing closed matters: a risk anonymeter could not estimate is not a risk shown to be low. A check
    without a threshold is report-only: its ``passed`` is None (it neither passes nor fails), except an
    unmeasured risk, which fails.
    """
    checks = {}
    for name, (field, direction, path) in CHECKS.items():
        threshold = getattr(thresholds, field)
        value = _dig(metrics, path)
        present = _dig(metrics, path[:-1]) is not None
        col = _dig(metrics, path[:-1] + ("column",)) if path[0] == "columns" else None
        extra = {"column": col} if col is not None else {}
        if threshold is None:
            if _measured(value):
                checks[name] = {"value": value, "threshold": None, "passed": None, "gated": False, **extra}
            elif name in RISKS and present:
                checks[name] = {"value": None, "threshold": None, "direction": direction, "passed": False,
                                "gated": False, "reason": "not measured", **extra}
            continue
        ok = _measured(value) and (value <= threshold if direction == "max" else value >= threshold)
        checks[name] = {"value": value, "threshold": threshold, "direction": direction, "passed": bool(ok), "gated": True, **extra}
    return {"passed": all(c["passed"] is not False for c in checks.values()), "checks": checks}


def failing_summary(gate: dict) -> str:
    """One line per failed check, with the number and the threshold, for GateFailed's message."""
    lines = []
    for name, c in gate["checks"].items():
        if c["passed"] is False:
            op = "<=" if c.get("direction") == "max" else ">="
            value = "not measured" if c["value"] is None else f"{c['value']:.4g}"
            where = f" in column '{c['column']}'" if c.get("column") else ""
            need = f"needs {op} {c['threshold']}" if c["threshold"] is not None else "a risk must be measured"
            lines.append(f"{name} = {value}{where} ({need})")
    return "; ".join(lines)


def raise_if_failed(gate: dict, report_path: Path) -> None:
    if not gate["passed"]:
        raise GateFailed(f"privacy gate failed: {failing_summary(gate)}. Full report: {report_path}")


def read_gated_records(folder: str | Path, split: str = "train") -> tuple[dict, list[dict]]:
    """The one gate every consumer of gated records calls: ``(gate, rows)`` or InputError.

    Refuses a folder whose manifest records no passing gate, and a records file whose content hash is not
    the one the gate recorded (a table swapped in after the gate ran has not passed it). The rows are parsed
    from the very bytes that were hashed, so a file swapped between the check and the read cannot slip by.
    """
    import io

    import pyarrow.parquet as pq

    folder = Path(folder)
    gate = _passing_gate(folder)
    records = folder / f"{split}.parquet"
    if not records.is_file():
        raise InputError(f"no {records.name}: not a tabular records folder", path=folder, field="gate.records_sha256")
    data = records.read_bytes()
    if hashlib.sha256(data).hexdigest() != gate["records_sha256"]:
        raise InputError(f"{records.name} changed after its privacy gate ran (its content hash is not the gate's); "
                         "refusing to use it", path=records, field="gate.records_sha256")
    return gate, pq.read_table(io.BytesIO(data)).to_pylist()


def require_passing_gate(folder: str | Path) -> dict:
    """Raise InputError unless ``folder`` holds records that passed their gate unchanged; return that gate."""
    return read_gated_records(folder)[0]


def _passing_gate(folder: Path) -> dict:
    manifest = read_manifest(folder)
    if not manifest:
        raise InputError("no manifest.json: this folder was not produced by a gated tabular stage; refusing to use it",
                         path=folder)
    gate = manifest.get("gate")
    if not isinstance(gate, dict) or "passed" not in gate:
        raise InputError("the manifest has no privacy gate; run `orchard synth tabular` on the table first",
                         path=folder / "manifest.json", field="gate.passed")
    if gate["passed"] is not True:
        failed = [k for k, c in (gate.get("checks") or {}).items() if isinstance(c, dict) and c.get("passed") is False]
        raise InputError(f"the privacy gate did not pass (failed: {', '.join(failed) or 'unknown'}); refusing to use "
                         "these records", path=folder / "manifest.json", field="gate.passed")
    if not isinstance(gate.get("records_sha256"), str):
        # Fail closed: without the hash nothing ties this gate to these records.
        raise InputError("the gate records no content hash of its records, so it cannot vouch for them; re-run "
                         "`orchard synth tabular`", path=folder / "manifest.json", field="gate.records_sha256")
    return gate
