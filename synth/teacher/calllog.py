"""SQLite log and cache of every teacher call: what was asked, what came back, what it cost.

One row per call outcome (``status`` ok or error) and one light row per cache hit (``cached=1``).
The cache key is a hash of the request itself (model, messages, sampling params, seed) and never of the
endpoint host or key, so a re-run against another replica of the same model still hits the cache.
WAL mode lets several processes (a stage and ``orchard synth calls``) read while one writes; every
outcome is committed before the caller sees it, so a killed run loses nothing it paid for.

The file's layout has a version (SQLite's ``PRAGMA user_version``, ``SCHEMA_VERSION``). Opening an older file
for writing migrates it in place, in one transaction, keeping every cached answer; a file from a newer orchard is
refused (``CallLogVersionError``, naming the file) rather than written in a layout it does not know.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Optional

from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

from orchard.errors import InputError

# The layout this code writes. Version 0 is the layout of orchard versions before the call log had a version:
# the same `calls` table and indexes, with user_version left at 0.
SCHEMA_VERSION = 1

# The current layout, for a new file.
_CREATE = [
    """CREATE TABLE calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    ts REAL NOT NULL,
    status TEXT NOT NULL,              -- ok | error
    cached INTEGER NOT NULL DEFAULT 0, -- 1: served from this log, no HTTP call
    model TEXT,
    endpoint TEXT,                     -- host[:port] only, never a key
    tag TEXT,
    request_json TEXT,
    response_text TEXT,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    latency_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
)""",
    "CREATE INDEX calls_key ON calls(key, status, cached)",
    "CREATE INDEX calls_ts ON calls(ts)",
]

# _MIGRATIONS[v]: the statements that take a file of version v to version v + 1, run in one transaction with the
# version stamp. A layout change adds a step here and raises SCHEMA_VERSION; old files then follow every step.
_MIGRATIONS: dict[int, list[str]] = {
    # 0 -> 1: the layout is unchanged, only stamped; the indexes are made if missing, as the unversioned code
    # did on every open.
    0: ["CREATE INDEX IF NOT EXISTS calls_key ON calls(key, status, cached)",
        "CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts)"],
}

# File name stages use for their call log, under the stage's work_dir (survives a crash; resumes from it).
CALL_LOG_NAME = "calls.sqlite"

_COLUMNS = (
    "key ts status cached model endpoint tag request_json response_text finish_reason prompt_tokens "
    "completion_tokens cost_usd latency_s attempts error"
).split()


class CallLogVersionError(InputError):
    """A call log written by a newer orchard, in a layout this one does not know: it is not touched."""


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


@retry(retry=retry_if_exception(_locked), wait=wait_random_exponential(multiplier=0.02, max=0.5),
       stop=stop_after_delay(30), reraise=True)
def _setup_retrying(db: sqlite3.Connection, path: Optional[Path] = None) -> None:
    # Two processes opening a new log at once (a stage and `orchard synth calls`, two workers) race to switch it
    # to WAL; SQLite answers that race with "database is locked" at once, without waiting out the connection's
    # busy timeout, so the setup is retried.
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives the process being killed (it is in the WAL file);
    # only a power cut could drop the last commits, and those calls would simply be re-made.
    db.execute("PRAGMA synchronous=NORMAL")
    if _version(db, path) == SCHEMA_VERSION:
        return
    # Create or migrate under the write lock, so that of two processes opening the same old file one migrates and
    # the other then finds it current; a failure rolls back to the file as it was.
    db.execute("BEGIN IMMEDIATE")
    try:
        version = _version(db, path)
        if version < SCHEMA_VERSION:
            fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='calls'").fetchone() is None
            for sql in _CREATE if fresh else [s for v in range(version, SCHEMA_VERSION) for s in _MIGRATIONS[v]]:
                db.execute(sql)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # transactional: stamped with the change, or not
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _version(db: sqlite3.Connection, path: Optional[Path]) -> int:
    """The file's layout version; one newer than ``SCHEMA_VERSION`` is refused."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise CallLogVersionError(
            f"this teacher call log has layout version {version}, written by a newer orchard (this one knows "
            f"versions up to {SCHEMA_VERSION}); upgrade orchard, or move the file away to start a new log",
            path=path if path is not None else ":memory:")
    return version


class CallLog:
    """Append-only call log that doubles as a response cache. ``path=None`` keeps it in memory.

    Opening a file for writing creates it or brings its layout up to ``SCHEMA_VERSION``; ``readonly`` reads it as
    it is. Either way a file from a newer orchard raises ``CallLogVersionError``."""

    def __init__(self, path: Optional[Path | str] = None, readonly: bool = False):
        self.path = None if path is None else Path(path)
        if self.path is None:
            uri, kw = ":memory:", {}
        elif readonly:
            uri, kw = f"file:{self.path}?mode=ro", {"uri": True}
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            uri, kw = str(self.path), {}
        # isolation_level=None: we open transactions ourselves, so a commit happens exactly where we say.
        self._db = sqlite3.connect(uri, timeout=30.0, isolation_level=None, check_same_thread=False, **kw)
        self._db.row_factory = sqlite3.Row
        # The Teacher writes from one event-loop thread; the lock only guards odd callers using threads.
        self._lock = threading.Lock()
        try:
            if readonly:
                # Read as it is: older layouts read the same (a migration only adds), newer ones are refused.
                _version(self._db, self.path)
            else:
                _setup_retrying(self._db, self.path)
        except BaseException:
            self._db.close()
            raise

    # -- writing ---------------------------------------------------------------------------------
    def record(self, **fields: Any) -> int:
        """Append one row and commit it before returning (durable before the result is used)."""
        return self.record_many([fields])[-1]

    def record_many(self, rows: list[dict]) -> list[int]:
        """Append rows in one transaction (one commit), returning their ids."""
        ids = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for fields in rows:
                    unknown = set(fields) - set(_COLUMNS)
                    if unknown:
                        raise ValueError(f"unknown call-log fields: {sorted(unknown)}")
                    fields.setdefault("ts", time.time())
                    cols = [c for c in _COLUMNS if c in fields]
                    cur = self._db.execute(
                        f"INSERT INTO calls ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                        [_sqlable(fields[c]) for c in cols],
                    )
                    ids.append(cur.lastrowid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    # -- reading ---------------------------------------------------------------------------------
    def lookup(self, key: str, truncated_ok: bool = False) -> Optional[dict]:
        """The latest successful, paid response for ``key``, or None. A cut-off answer (finish_reason=length) is
        not one unless ``truncated_ok`` (the caller accepted it as whole): logs written before cut-off answers were
        refused may hold some, and they are asked again."""
        cut = "" if truncated_ok else " AND finish_reason IS NOT 'length'"
        with self._lock:
            row = self._db.execute(
                f"SELECT * FROM calls WHERE key=? AND status='ok' AND cached=0{cut} ORDER BY id DESC LIMIT 1", (key,)
            ).fetchone()
        return None if row is None else dict(row)

    def paid(self) -> dict:
        """What every paid call in this log cost together (answers and failures; cache hits are free)."""
        with self._lock:
            r = self._db.execute("SELECT COUNT(*), COALESCE(SUM(prompt_tokens + completion_tokens), 0), "
                                 "COALESCE(SUM(cost_usd), 0) FROM calls WHERE cached=0").fetchone()
        return {"calls": r[0], "tokens": r[1], "cost_usd": r[2]}

    def ok_keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT DISTINCT key FROM calls WHERE status='ok' AND cached=0")}

    def recent(self, limit: int = 20, status: Optional[str] = None, tag_prefix: Optional[str] = None) -> list[dict]:
        """Newest rows first; ``status`` ok/error/cached and ``tag_prefix`` filter them."""
        where, args = [], []
        if status == "cached":
            where.append("cached=1")
        elif status in ("ok", "error"):
            where += ["status=?", "cached=0"]
            args.append(status)
        elif status is not None:
            raise ValueError(f"status must be ok, error or cached, not {status!r}")
        if tag_prefix:
            where.append("tag LIKE ? ESCAPE '\\'")
            args.append(tag_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        sql = "SELECT * FROM calls" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [dict(r) for r in rows]

    def summary(self, since_id: int = 0) -> dict:
        """Counts, tokens, cost and latency percentiles of the calls logged after ``since_id``."""
        with self._lock:
            agg = self._db.execute(
                """SELECT COUNT(*) n,
                          SUM(status='ok' AND cached=0) ok,
                          SUM(status='error') errors,
                          SUM(cached) cache_hits,
                          SUM(CASE WHEN cached=0 THEN attempts ELSE 0 END) attempts,
                          SUM(prompt_tokens) pt, SUM(completion_tokens) ct, SUM(cost_usd) cost,
                          MIN(ts) first_ts, MAX(ts) last_ts
                   FROM calls WHERE id > ?""",
                (since_id,),
            ).fetchone()
            lat = [
                r[0]
                for r in self._db.execute(
                    "SELECT latency_s FROM calls WHERE id > ? AND cached=0 AND latency_s IS NOT NULL "
                    "ORDER BY latency_s",
                    (since_id,),
                )
            ]
            errors = {
                r[0]: r[1]
                for r in self._db.execute(
                    "SELECT substr(error, 1, 60), COUNT(*) FROM calls WHERE id > ? AND status='error' "
                    "GROUP BY 1 ORDER BY 2 DESC LIMIT 5",
                    (since_id,),
                )
            }
        return {
            "rows": agg["n"] or 0,
            "ok": agg["ok"] or 0,
            "errors": agg["errors"] or 0,
            "cache_hits": agg["cache_hits"] or 0,
            "attempts": agg["attempts"] or 0,
            "prompt_tokens": agg["pt"] or 0,
            "completion_tokens": agg["ct"] or 0,
            "cost_usd": round(agg["cost"] or 0.0, 6),
            "latency_p50_s": _pct(lat, 50),
            "latency_p95_s": _pct(lat, 95),
            "first_ts": agg["first_ts"],
            "last_ts": agg["last_ts"],
            "top_errors": errors,
        }

    def max_id(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def find_call_log(path: Path | str) -> Path:
    """A call-log file: ``path`` itself, or the most recently written one under a folder (runs/, a run)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = [f for f in p.rglob(CALL_LOG_NAME) if f.is_file()]
        if found:
            return max(found, key=lambda f: max(f.stat().st_mtime, _wal_mtime(f)))
        raise FileNotFoundError(f"no {CALL_LOG_NAME} under {p}")
    raise FileNotFoundError(f"{p} does not exist")


def _wal_mtime(f: Path) -> float:
    w = f.with_name(f.name + "-wal")
    return w.stat().st_mtime if w.exists() else 0.0


def _sqlable(v: Any) -> Any:
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False, sort_keys=True)
    if isinstance(v, bool):
        return int(v)
    return v


def _pct(sorted_vals: list[float], p: float) -> Optional[float]:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, round(p / 100 * len(sorted_vals) + 0.5) - 1))
    return round(sorted_vals[k], 4)
