"""Reading and checking align's input dataset folders (SFT `messages`, preference pairs, prompts).

Bad rows raise InputError naming the file, the row (as `line`, 1-based) and the field, before any model loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from orchard.dataio import read_rows
from orchard.errors import InputError


def _split_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"{split}.parquet"


def _read(folder: str | Path, split: str, required: bool = True) -> list[dict] | None:
    path = _split_path(Path(folder), split)
    if not path.exists():
        if required:
            raise InputError(f"missing split '{split}'", path=path)
        return None
    return read_rows(folder, split)


def _check_messages(msgs, path, i, field) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise InputError("expected a non-empty list of messages", path=path, line=i + 1, field=field)
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool") or not isinstance(
            m.get("content"), str
        ):
            raise InputError("each message needs a role (system/user/assistant) and string content",
                             path=path, line=i + 1, field=field)


def read_sft(folder: str | Path, split: str = "train", required: bool = True) -> list[dict] | None:
    """Rows of an SFT folder, each with `messages` ending in an assistant turn."""
    rows = _read(folder, split, required)
    if rows is None:
        return None
    path = _split_path(Path(folder), split)
    for i, r in enumerate(rows):
        if "messages" not in r:
            raise InputError("SFT rows need a `messages` column", path=path, line=i + 1, field="messages")
        _check_messages(r["messages"], path, i, "messages")
        if r["messages"][-1]["role"] != "assistant":
            raise InputError("the last message must be the assistant's", path=path, line=i + 1, field="messages")
    if required and not rows:
        raise InputError("no rows", path=path)
    return rows


def read_pairs(folder: str | Path, split: str = "train", required: bool = True) -> list[dict] | None:
    """Rows of a preference folder: prompt (messages), chosen and rejected (assistant message lists)."""
    rows = _read(folder, split, required)
    if rows is None:
        return None
    path = _split_path(Path(folder), split)
    for i, r in enumerate(rows):
        for f in ("prompt", "chosen", "rejected"):
            if f not in r:
                raise InputError(f"preference rows need `{f}`", path=path, line=i + 1, field=f)
            _check_messages(r[f], path, i, f)
        if r["prompt"][-1]["role"] != "user":
            raise InputError("the prompt must end with the user turn", path=path, line=i + 1, field="prompt")
    if required and not rows:
        raise InputError("no rows", path=path)
    return rows


def prompt_of(row: dict) -> list[dict]:
    """The prompt messages of a row in any of our formats (prompt column, or messages minus the answer)."""
    if row.get("prompt") is not None:
        return list(row["prompt"])
    msgs = list(row["messages"])
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def read_prompts(folder: str | Path, split: str = "train") -> list[dict]:
    rows = _read(folder, split, True)
    path = _split_path(Path(folder), split)
    for i, r in enumerate(rows):
        if r.get("prompt") is None and r.get("messages") is None:
            raise InputError("rows need `prompt` or `messages`", path=path, line=i + 1, field="prompt")
        p = prompt_of(r)
        _check_messages(p, path, i, "prompt")
        if p[-1]["role"] != "user":
            raise InputError("the prompt must end with the user turn", path=path, line=i + 1, field="prompt")
    return rows


def lineage_split(rows: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split rows into (train, validation) by hashing seed_id, so a seed's family stays on one side."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    def bucket(r: dict) -> float:
        key = f"{seed}:{r.get('seed_id') or r.get('id') or r['messages']}"
        return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    train = [r for r in rows if bucket(r) >= fraction]
    val = [r for r in rows if bucket(r) < fraction]
    if not val or not train:
        # Few lineages: fall back to the smallest non-empty validation set that keeps families together.
        seeds = sorted({r.get("seed_id") or r.get("id") for r in rows}, key=lambda s: bucket({"seed_id": s}))
        if len(seeds) < 2:
            return rows, []
        held = {seeds[0]}
        train = [r for r in rows if (r.get("seed_id") or r.get("id")) not in held]
        val = [r for r in rows if (r.get("seed_id") or r.get("id")) in held]
    return train, val


def drop_overlap(train: list[dict], test: list[dict] | None) -> tuple[list[dict], int]:
    """Remove train rows whose id or conversation also appears in the held-out split: never train on test."""
    if not test:
        return train, 0
    ids = {r.get("id") for r in test if r.get("id")}
    texts = {repr(r.get("messages")) for r in test}
    kept = [r for r in train if r.get("id") not in ids and repr(r.get("messages")) not in texts]
    return kept, len(train) - len(kept)
