"""Ctrl-C during `orchard synth instructions` (a real process, a real HTTP fake teacher): the first SIGINT lets the
calls in flight land in calls.sqlite and exits 130, the resume repeats no completed call; a second SIGINT aborts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_teacher import FakeTeacher  # noqa: E402
from synth_responder import responder  # noqa: E402

from orchard.dataio import read_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"


def _cmd(url: str, out: Path, num: int) -> list[str]:
    return [sys.executable, "-m", "orchard.cli", "synth", "instructions", str(SEEDS), "--out", str(out),
            "--base-url", url, "--model", "fake", "--num", str(num), "--concurrency", "16"]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _default_sigint() -> None:
    # As in a terminal: a test run started in the background (`&`) has SIGINT ignored, and children inherit it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _logged_ok(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM calls WHERE status='ok' AND cached=0").fetchone()[0]
    finally:
        con.close()


def _wait_ok(srv: FakeTeacher, n: int, p: subprocess.Popen, limit: float = 60) -> None:
    deadline = time.time() + limit
    while srv.stats()["ok"] < n:
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, "the run never got going"
        time.sleep(0.01)


def test_sigint_saves_calls_in_flight_and_resume_repeats_none(tmp_path):
    out, num = tmp_path / "synth", 150
    db = tmp_path / ".work" / "synth" / "calls.sqlite"
    # 50 ms a call, 16 at once: 16 calls are in flight whenever the signal lands.
    with FakeTeacher(responder=responder, latency_s=0.05) as srv:
        p = subprocess.Popen(_cmd(srv.base_url, out, num), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
        _wait_ok(srv, 60, p)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        st = srv.stats()
        assert p.returncode == 130, err
        assert 60 <= st["ok"] < 250, "the stop must come midway"
        # Every call the server answered was committed before the process exited: nothing to pay again.
        assert _logged_ok(db) == st["ok"], err
        assert st["requests"] == st["ok"]
        assert not out.exists(), "an interrupted stage must not leave a half-written output folder"
        assert "finishing the" in err and "in flight" in err, err
        assert "run the same command again to resume" in err, err

        r = subprocess.run(_cmd(srv.base_url, out, num), env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        after = srv.stats()
    assert len(read_rows(out)) > 0
    assert max(after["ok_by_hash"].values()) == 1, "a completed call was made again after the resume"
    assert after["requests"] == after["ok"] == _logged_ok(db)


def test_second_sigint_aborts_at_once(tmp_path):
    with FakeTeacher(responder=responder, latency_s=5.0) as srv:  # calls that would take 5 s to finish
        p = subprocess.Popen(_cmd(srv.base_url, tmp_path / "synth", 50), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
        deadline = time.time() + 60
        while srv.stats()["requests"] < 8:
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.01)
        p.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert p.poll() is None, "the first Ctrl-C waits for the calls in flight"
        t0 = time.perf_counter()
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        took = time.perf_counter() - t0
    assert p.returncode == 130, err
    assert took < 2.0, f"the second Ctrl-C took {took:.1f} s to stop the run"
