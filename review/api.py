"""The review stage as the runner calls it: automatic policy, or push → wait → pull on Argilla."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from orchard.dataio import read_rows, write_split
from orchard.errors import InputError

from .config import ReviewConfig
from .policy import apply_auto_policy


def _load_sft(sft_dir: Path) -> list[dict]:
    try:
        rows = read_rows(sft_dir, "train")
    except FileNotFoundError as e:
        raise InputError(str(e), path=Path(sft_dir) / "train.parquet") from e
    for i, row in enumerate(rows):
        if "id" not in row or "messages" not in row:
            raise InputError("an SFT row needs 'id' and 'messages'", path=Path(sft_dir) / "train.parquet", line=i + 1)
    return rows


def review_stage(sft_dir, out_dir, work_dir, config: ReviewConfig) -> dict:
    """Review an SFT dataset folder; write accepted rows to `out_dir/train.parquet`.

    `mode: auto`: the acceptance policy decides; rejected rows go to `out_dir/rejected.parquet`.
    `mode: argilla`: push the rows (only new ones), wait if asked, pull what reviewers submitted. While records
    are still unreviewed the result has `"status": "pending"` (run the stage again later to resume).
    """
    sft_dir, out_dir, work_dir = Path(sft_dir), Path(out_dir), Path(work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = _load_sft(sft_dir)

    if config.mode == "auto":
        accepted, rejected = apply_auto_policy(rows, config.auto)
        write_split(out_dir, "train", accepted)
        write_split(out_dir, "rejected", rejected)
        reasons = Counter(json.loads(r["provenance"])["review"]["reason"].split(":")[0] for r in rejected)
        return {
            "mode": "auto",
            "status": "done",
            "counts": {"input": len(rows), "accepted": len(accepted), "rejected": len(rejected)},
            "reject_reasons": dict(reasons),
        }

    from .workflow import argilla_review  # the Argilla path needs the SDK and a server

    return argilla_review(rows, out_dir, work_dir, config.argilla)
