"""`orchard synth calls`: lists and summarises a real call log written by the teacher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchard.errors import InputError
from orchard.synth.cli_calls import register
from orchard.synth.teacher import CALL_LOG_NAME, ChatRequest, Teacher, TeacherConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_teacher import FakeTeacher, FaultPlan  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    db = d / ".work" / "synth" / CALL_LOG_NAME
    with FakeTeacher(faults=FaultPlan(sequence=["ok", "400"])) as srv:
        cfg = TeacherConfig(base_url=srv.base_url, model="fake", max_concurrency=1, backoff_base_s=0.01,
                            backoff_max_s=0.02, budget={"price_per_1k_input": 1.0, "price_per_1k_output": 1.0})
        reqs = [ChatRequest([{"role": "user", "content": f"q{i}"}], tag=f"t{i}") for i in range(6)]
        Teacher(cfg, db).chat_many(reqs, progress=False)
        Teacher(cfg, db).chat_many(reqs[:3], progress=False)  # cache hits (one is the 400: re-made)
    return d


def _app():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root():  # keep `calls` a sub-command, as under `orchard synth`
        pass

    return app


def test_calls_json_summary_counts(run_dir):
    r = CliRunner().invoke(_app(), ["calls", "--db", str(run_dir), "--json", "--summary"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)["summary"]
    assert s["ok"] == 6 and s["errors"] == 1 and s["cache_hits"] == 2
    assert s["prompt_tokens"] > 0 and s["cost_usd"] > 0 and s["latency_p95_s"] >= s["latency_p50_s"] > 0


def test_calls_json_lists_recent_without_full_text(run_dir):
    r = CliRunner().invoke(_app(), ["calls", "--db", str(run_dir), "--json", "--limit", "3"])
    out = json.loads(r.output)
    assert len(out["calls"]) == 3 and "request_json" not in out["calls"][0]
    assert out["calls"][0]["id"] > out["calls"][1]["id"]


def test_calls_table_and_help(run_dir):
    r = CliRunner().invoke(_app(), ["calls", "--db", str(run_dir)])
    assert r.exit_code == 0 and "summary" in r.output and "cache_hits" in r.output and "recent calls" in r.output
    h = CliRunner().invoke(_app(), ["calls", "--help"])
    assert "Example: orchard synth calls" in h.output


def test_calls_missing_db_is_input_error(tmp_path):
    r = CliRunner().invoke(_app(), ["calls", "--db", str(tmp_path / "nope")])
    assert isinstance(r.exception, InputError) and "does not exist" in str(r.exception)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    r = CliRunner().invoke(_app(), ["calls", "--db", str(tmp_path / "junk.sqlite")])
    assert isinstance(r.exception, InputError) and "not a teacher call log" in str(r.exception)


def test_calls_filters_by_status_and_tag(run_dir):
    r = CliRunner().invoke(_app(), ["calls", "--db", str(run_dir), "--json", "--status", "error"])
    calls = json.loads(r.output)["calls"]
    assert len(calls) == 1 and calls[0]["status"] == "error" and calls[0]["tag"] == "t1"
    assert "HTTP 400" in calls[0]["error"]
    r = CliRunner().invoke(_app(), ["calls", "--db", str(run_dir), "--json", "--status", "cached"])
    assert len(json.loads(r.output)["calls"]) == 2
    r = CliRunner().invoke(_app(), ["calls", "--db", str(run_dir), "--json", "--tag", "t1"])
    assert {c["tag"] for c in json.loads(r.output)["calls"]} == {"t1"}
    r = CliRunner().invoke(_app(), ["calls", "--db", str(run_dir), "--status", "bogus"])
    assert isinstance(r.exception, InputError) and "--status" in str(r.exception)
