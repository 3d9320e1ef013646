"""Datasets on disk: the only way orchard's packages talk to each other.

A *dataset folder* holds one Parquet file per split (``train.parquet``, optionally ``test.parquet``)
plus ``manifest.json``. Rows follow TRL's formats (``messages``; ``prompt``/``chosen``/``rejected``)
and always carry ``id`` (a stable content hash), ``seed_id`` (the seed the row grew from: its lineage)
and ``provenance`` (a JSON object as a string, so that new keys never break a schema).

Everything here is small on purpose: hashing, atomic writes, and reading/writing those folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

MANIFEST = "manifest.json"


def content_hash(obj: Any, n: int = 16) -> str:
    """A stable short hash of any JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:n]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_hash(path: str | Path, ignore: Iterable[str] = ()) -> str:
    """Hash of a file or a folder's files (names and bytes), for manifests' input hashes."""
    p = Path(path)
    if p.is_file():
        return file_hash(p)
    h = hashlib.sha256()
    skip = set(ignore)
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p).as_posix()
        if rel in skip or any(part.startswith(".tmp") for part in f.relative_to(p).parts):
            continue
        h.update(rel.encode())
        h.update(file_hash(f).encode())
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write a file so that readers see the old content or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", mode)


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` in one rename.

    On an exception (or Ctrl-C) the temporary folder is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def provenance(row: dict) -> dict:
    """The provenance column of a row, decoded."""
    p = row.get("provenance")
    if p is None or p == "":
        return {}
    return json.loads(p) if isinstance(p, str) else dict(p)


def with_provenance(row: dict, **updates: Any) -> dict:
    """Return a copy of ``row`` whose provenance has ``updates`` merged in (never dropping keys)."""
    prov = provenance(row)
    prov.update(updates)
    out = dict(row)
    out["provenance"] = json.dumps(prov, sort_keys=True, ensure_ascii=False, default=str)
    return out


def write_split(folder: str | Path, split: str, rows: list[dict] | Any) -> Path:
    """Write one split (a list of dicts or a ``datasets.Dataset``) as ``<folder>/<split>.parquet``."""
    import datasets

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ds = rows if isinstance(rows, datasets.Dataset) else _rows_to_dataset(rows)
    path = folder / f"{split}.parquet"
    tmp = folder / f".tmp-{split}.parquet"
    ds.to_parquet(str(tmp))
    os.replace(tmp, path)
    return path


def _rows_to_dataset(rows: list[dict]):
    import datasets

    rows = [dict(r) for r in rows]
    for r in rows:
        if "provenance" in r and not isinstance(r["provenance"], str):
            r["provenance"] = json.dumps(r["provenance"], sort_keys=True, ensure_ascii=False, default=str)
    if not rows:
        return datasets.Dataset.from_dict({"id": [], "seed_id": [], "provenance": []})
    return datasets.Dataset.from_list(rows)


def read_split(folder: str | Path, split: str = "train"):
    """Read ``<folder>/<split>.parquet`` as a ``datasets.Dataset`` (no hub, no cache folder)."""
    import datasets

    import pyarrow.parquet as pq

    path = Path(folder) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such split '{split}' in dataset folder {folder}")
    # Read the table directly: no cache folder, and an empty split reads as an empty dataset
    # (datasets' parquet builder refuses a file with no rows).
    return datasets.Dataset(pq.read_table(str(path)))


def read_rows(folder: str | Path, split: str = "train") -> list[dict]:
    return read_split(folder, split).to_list()


def splits(folder: str | Path) -> list[str]:
    return sorted(p.stem for p in Path(folder).glob("*.parquet") if not p.name.startswith("."))


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))
