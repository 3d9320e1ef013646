"""The call log's layout version: an old file (as orchard wrote it before versions) is migrated in place without
losing a cached answer, a failed migration leaves the file as it was, and a file from a newer orchard is refused."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchard.synth.cli_calls import register
from orchard.synth.teacher import (SCHEMA_VERSION, CallLog, CallLogVersionError, ChatRequest, Teacher, TeacherConfig,
                                   calllog)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_teacher import FakeTeacher  # noqa: E402

# Version 0: the layout orchard wrote before the call log had a version (synth/calllog.py up to this change), copied
# here verbatim so that the fixture stays what old files hold whatever the code does next.
V0_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
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
);
CREATE INDEX IF NOT EXISTS calls_key ON calls(key, status, cached);
CREATE INDEX IF NOT EXISTS calls_ts ON calls(ts);
"""

REQS = [ChatRequest([{"role": "user", "content": f"old question {i}"}], tag=f"q{i}") for i in range(3)]


def _cfg(base_url: str) -> TeacherConfig:
    return TeacherConfig(base_url=base_url, model="fake", backoff_base_s=0.01, backoff_max_s=0.02)


def _v0_file(path: Path, base_url: str) -> None:
    """A call log as the old code wrote it: WAL, the v0 tables, user_version 0, one paid answer per request."""
    keys = Teacher(_cfg(base_url), None).request_key  # the cache key did not change with the layout
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V0_SCHEMA)
    for i, r in enumerate(REQS):
        db.execute("INSERT INTO calls (key, ts, status, cached, model, endpoint, tag, request_json, response_text, "
                   "finish_reason, prompt_tokens, completion_tokens, cost_usd, latency_s, attempts, error) "
                   "VALUES (?, ?, 'ok', 0, 'fake', '127.0.0.1:1', ?, '{}', ?, 'stop', 10, 5, 0.5, 0.1, 1, NULL)",
                   (keys(r), time.time(), r.tag, f"the old answer {i}"))
    db.close()


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_an_old_call_log_is_migrated_in_place_and_its_answers_served_free(tmp_path):
    path = tmp_path / "calls.sqlite"
    with FakeTeacher() as srv:
        _v0_file(path, srv.base_url)
        assert _user_version(path) == 0
        t = Teacher(_cfg(srv.base_url), path)
        res = t.chat_many(REQS, progress=False)
        t.close()
        assert srv.stats()["requests"] == 0, "a cached answer of the old file was paid again"
    assert [r.text for r in res] == [f"the old answer {i}" for i in range(3)] and all(r.cached for r in res)
    assert _user_version(path) == SCHEMA_VERSION
    # What the old run paid still counts for the budget of this output.
    assert CallLog(path, readonly=True).paid() == {"calls": 3, "tokens": 45, "cost_usd": 1.5}


def test_a_new_call_log_is_created_at_the_current_version(tmp_path):
    CallLog(tmp_path / "new.sqlite").close()
    assert _user_version(tmp_path / "new.sqlite") == SCHEMA_VERSION
    CallLog(tmp_path / "new.sqlite").close()  # opening a current file changes nothing
    assert _user_version(tmp_path / "new.sqlite") == SCHEMA_VERSION


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "calls.sqlite"
    _v0_file(path, "http://127.0.0.1:1/v1")
    monkeypatch.setitem(calllog._MIGRATIONS, 0, ["CREATE TABLE half_done (x)", "SELECT * FROM no_such_table"])
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        CallLog(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    assert db.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchone() is None
    assert db.execute("SELECT COUNT(*) FROM calls").fetchone()[0] == 3
    db.close()
    monkeypatch.undo()
    CallLog(path).close()  # the real migration then goes through
    assert _user_version(path) == SCHEMA_VERSION


def test_a_call_log_from_a_newer_orchard_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "calls.sqlite"
    CallLog(path).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    for open_it in (lambda: CallLog(path), lambda: CallLog(path, readonly=True),
                    lambda: Teacher(_cfg("http://127.0.0.1:1/v1"), path)):
        with pytest.raises(CallLogVersionError, match="newer orchard") as e:
            open_it()
        assert str(path) in str(e.value)
    assert _user_version(path) == SCHEMA_VERSION + 1  # not touched
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root():  # keep `calls` a sub-command, as under `orchard synth`
        pass

    r = CliRunner().invoke(app, ["calls", "--db", str(path)])
    assert isinstance(r.exception, CallLogVersionError) and str(path) in str(r.exception)
