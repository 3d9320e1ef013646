"""The privacy gate: thresholds applied to the measured numbers, and the check downstream stages call.

A gate is ``{"passed": bool, "checks": {name: {"value", "threshold", "passed"}}}``; the runner copies the
stage's returned dict into ``manifest.json``, so ``manifest["gate"]["passed"]`` is what consumers read.
"""

from __future__ import annotations

import math
from pathlib import Path

from orchard.dataio import file_hash, read_manifest
from orchard.errors import GateFailed, InputError

from .config import GateThresholds

# check name -> (threshold field, direction, where the value lives in the metrics)
CHECKS = {
    "exact_copy_excess": ("max_exact_copy_excess", "max", ("distance", "exact_copies", "excess")),
    "dcr_median_ratio": ("min_dcr_median_ratio", "min", ("distance", "dcr", "median_ratio")),
    "dcr_p05_ratio": ("min_dcr_p05_ratio", "min", ("distance", "dcr", "p05_ratio")),
    "dcr_share_closer_to_train": ("max_dcr_share_closer_to_train", "max", ("distance", "share_closer_to_train_equal_size")),
    "nndr_median_ratio": ("min_nndr_median_ratio", "min", ("distance", "nndr", "median_ratio")),
    "singling_out_risk": ("max_singling_out_risk", "max", ("anonymeter", "singling_out", "value")),
    "linkability_risk": ("max_linkability_risk", "max", ("anonymeter", "linkability", "value")),
    "inference_risk": ("max_inference_risk", "max", ("anonymeter", "inference", "value")),
    "quality_score": ("min_quality_score", "min", ("quality", "score")),
    "utility_ratio": ("min_utility_ratio", "min", ("utility", "ratio")),
}


def _dig(d: dict, path: tuple) -> float | None:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def evaluate_gate(metrics: dict, thresholds: GateThresholds) -> dict:
    """Apply every threshold that is set; a set threshold whose number could not be measured fails.

    Failing closed matters: a risk anonymeter could not estimate is not a risk shown to be low.
    """
    checks = {}
    for name, (field, direction, path) in CHECKS.items():
        threshold = getattr(thresholds, field)
        value = _dig(metrics, path)
        if threshold is None:
            if value is not None:
                checks[name] = {"value": value, "threshold": None, "passed": True, "gated": False}
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            ok = False
        else:
            ok = value <= threshold if direction == "max" else value >= threshold
        checks[name] = {"value": value, "threshold": threshold, "direction": direction, "passed": bool(ok), "gated": True}
    return {"passed": all(c["passed"] for c in checks.values()), "checks": checks}


def failing_summary(gate: dict) -> str:
    """One line per failed check, with the number and the threshold, for GateFailed's message."""
    lines = []
    for name, c in gate["checks"].items():
        if not c["passed"]:
            op = "<=" if c.get("direction") == "max" else ">="
            value = "not measured" if c["value"] is None else f"{c['value']:.4g}"
            lines.append(f"{name} = {value} (needs {op} {c['threshold']})")
    return "; ".join(lines)


def raise_if_failed(gate: dict, report_path: Path) -> None:
    if not gate["passed"]:
        raise GateFailed(f"privacy gate failed: {failing_summary(gate)}. Full report: {report_path}")


def require_passing_gate(folder: str | Path) -> dict:
    """Raise InputError unless ``folder``'s manifest records a passing gate; return that gate.

    When the gate records the hash of ``train.parquet``, the file must still match it (a table swapped
    in after the gate ran has not passed it).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not manifest:
        raise InputError("no manifest.json: this folder was not produced by a gated tabular stage", path=folder)
    gate = manifest.get("gate")
    if not isinstance(gate, dict) or "passed" not in gate:
        raise InputError("the manifest has no privacy gate; run `orchard synth tabular` on the table first", path=folder / "manifest.json", field="gate.passed")
    if gate["passed"] is not True:
        failed = [k for k, c in (gate.get("checks") or {}).items() if not c.get("passed")]
        raise InputError(f"the privacy gate did not pass (failed: {', '.join(failed) or 'unknown'})", path=folder / "manifest.json", field="gate.passed")
    expected = gate.get("records_sha256")
    if expected:
        records = folder / "train.parquet"
        if not records.exists() or file_hash(records) != expected:
            raise InputError("train.parquet changed after its privacy gate ran", path=records, field="gate.records_sha256")
    return gate
