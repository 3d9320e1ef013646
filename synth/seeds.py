"""Seed examples: load the user's seed file (JSONL, CSV or Parquet) into contract-shaped seed rows.

Accepted row shapes: Self-Instruct tasks (``id, name, instruction, instances[{input, output}], is_classification``),
plain ``{instruction, input?, output?}`` rows, and chat rows ``{messages: [...]}``. Every problem raises
``InputError`` naming the file and line (1-based; for CSV/Parquet the data row number) before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchard.dataio import content_hash
from orchard.errors import InputError

SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def prompt_text(instruction: str, input_text: str) -> str:
    """The user message per the contract: instruction alone, or instruction + blank line + input."""
    return instruction if not input_text else f"{instruction}\n\n{input_text}"


def make_row(
    instruction: str,
    input_text: str = "",
    output: str = "",
    is_classification: bool = False,
    messages: list[dict] | None = None,
    extra_prov: dict | None = None,
) -> dict:
    """One seed row (``seed_id == id``, provenance method ``seed``)."""
    if messages is None:
        messages = [{"role": "user", "content": prompt_text(instruction, input_text)}]
        if output:
            messages.append({"role": "assistant", "content": output})
    rid = content_hash({"messages": messages})
    prov = {"method": "seed", "seed_id": rid, **(extra_prov or {})}
    return {
        "id": rid,
        "seed_id": rid,
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "is_classification": bool(is_classification),
        "messages": messages,
        "provenance": json.dumps(prov, sort_keys=True, ensure_ascii=False),
    }


def _text(v: Any, path: Path, line: int, field: str, required: bool) -> str:
    if v is None or (isinstance(v, float) and v != v):  # None or NaN (pandas' empty CSV cell)
        if required:
            raise InputError("missing required field", path=path, line=line, field=field)
        return ""
    if not isinstance(v, str):
        raise InputError(f"expected text, got {type(v).__name__}", path=path, line=line, field=field)
    if required and not v.strip():
        raise InputError("field is empty", path=path, line=line, field=field)
    return v.strip()


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y")
    return bool(v) if v is not None and v == v else False


def row_from_record(rec: Any, path: Path, line: int) -> dict:
    """Turn one record of any accepted shape into a seed row, or raise InputError naming the line."""
    if not isinstance(rec, dict):
        raise InputError(f"expected a JSON object, got {type(rec).__name__}", path=path, line=line)
    src = {k: rec[k] for k in ("id", "name") if rec.get(k) not in (None, "")}
    src = {f"source_{k}": str(v) for k, v in src.items()}
    src["source_file"] = path.name
    if "messages" in rec and rec["messages"] is not None and "instruction" not in rec:
        msgs = rec["messages"]
        if hasattr(msgs, "tolist"):
            msgs = msgs.tolist()
        if not isinstance(msgs, list) or not msgs:
            raise InputError("must be a non-empty list of {role, content}", path=path, line=line, field="messages")
        clean = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise InputError(f"message {i} needs role system|user|assistant", path=path, line=line, field="messages")
            clean.append({"role": m["role"], "content": _text(m.get("content"), path, line, f"messages[{i}].content", True)})
        users = [m["content"] for m in clean if m["role"] == "user"]
        if not users:
            raise InputError("no user message", path=path, line=line, field="messages")
        outs = [m["content"] for m in clean if m["role"] == "assistant"]
        return make_row(users[0], "", outs[-1] if outs else "", _bool(rec.get("is_classification")), clean, src)
    instruction = _text(rec.get("instruction"), path, line, "instruction", True)
    if "instances" in rec and rec["instances"] is not None:
        inst = rec["instances"]
        if hasattr(inst, "tolist"):
            inst = inst.tolist()
        if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
            raise InputError("must be a non-empty list of {input, output}", path=path, line=line, field="instances")
        # Self-Instruct tasks carry one instance each in practice; the first is the seed's example.
        inp = _text(inst[0].get("input"), path, line, "instances[0].input", False)
        out = _text(inst[0].get("output"), path, line, "instances[0].output", True)
        src["num_instances"] = len(inst)
    else:
        inp = _text(rec.get("input"), path, line, "input", False)
        out = _text(rec.get("output"), path, line, "output", False)
    return make_row(instruction, inp, out, _bool(rec.get("is_classification")), None, src)


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise InputError(f"not UTF-8 text (byte 0x{raw[e.start]:02x})", path=path, line=line) from None
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"bad JSON: {e.msg}", path=path, line=e.lineno) from None
        return [(i + 1, r) for i, r in enumerate(data)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise InputError(f"bad JSON: {e.msg} (column {e.colno})", path=path, line=n) from None
    return out


def _read_table(path: Path, kind: str) -> list[tuple[int, Any]]:
    import pandas as pd

    try:
        if kind == "csv":
            raw = path.read_bytes()
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise InputError(f"not UTF-8 text (byte 0x{raw[e.start]:02x})", path=path, line=line) from None
            df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
            first = 2  # line 1 is the header
        else:
            df = pd.read_parquet(path)
            first = 1
    except InputError:
        raise
    except pd.errors.EmptyDataError:
        raise InputError("file is empty", path=path) from None
    except Exception as e:  # pyarrow / pandas parse errors: say which file and what
        raise InputError(f"cannot read {kind}: {e}", path=path) from None
    return [(i + first, r) for i, r in enumerate(df.to_dict(orient="records"))]


def load_seeds(path: str | Path) -> list[dict]:
    """Seed rows from a JSONL / JSON / CSV / Parquet file; duplicates (same content) are kept once."""
    path = Path(path)
    if not path.is_file():
        raise InputError("seed file not found", path=path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"unsupported seed file type '{path.suffix}' (use .jsonl, .csv or .parquet)", path=path)
    if path.stat().st_size == 0:
        raise InputError("file is empty", path=path)
    records = _read_jsonl(path) if kind == "jsonl" else _read_table(path, kind)
    if not records:
        raise InputError("no seed rows in file", path=path)
    rows, seen = [], set()
    for line, rec in records:
        row = row_from_record(rec, path, line)
        if row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows
