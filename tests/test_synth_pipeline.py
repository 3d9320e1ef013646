"""The pipelined Self-Instruct stage: the same requests and outputs whatever the scheduling, and instance calls
really overlap the bootstrap rounds (the reason it is fast)."""

from __future__ import annotations

import sqlite3
import sys
import threading
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher import FakeTeacher  # noqa: E402
from synth_responder import responder  # noqa: E402

from orchard.synth import api  # noqa: E402
from orchard.synth.teacher import TeacherConfig  # noqa: E402
from orchard.synth.methods_config import SelfInstructConfig, SynthConfig  # noqa: E402

SEEDS = Path(__file__).resolve().parents[1] / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"
CFG = SynthConfig(num=60, report=False, self_instruct=SelfInstructConfig(prompts_per_round=6, max_rounds=40))


def _ok_keys(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return sorted(r[0] for r in con.execute("SELECT key FROM calls WHERE status='ok' AND cached=0"))
    finally:
        con.close()


def _run(srv, d: Path, conc: int) -> dict:
    tc = TeacherConfig(base_url=srv.base_url, model="fake", max_concurrency=conc, max_retries=1)
    return api.instructions_stage(SEEDS, d / "out", d / "work", CFG, tc)


def test_same_requests_and_outputs_at_any_concurrency(tmp_path):
    # 3 ms a call so that with 16 slots answers really come back out of order
    with FakeTeacher(responder=responder, latency_s=0.003) as srv:
        one, many = _run(srv, tmp_path / "c1", 1), _run(srv, tmp_path / "c16", 16)
        assert srv.stats()["max_inflight"] > 8
    assert one["counts"] == many["counts"] and one["rejection_reasons"] == many["rejection_reasons"]
    assert one["counts"]["kept"] > 30 and one["counts"]["rejected"] > 0
    a, b = pd.read_parquet(tmp_path / "c1/out/train.parquet"), pd.read_parquet(tmp_path / "c16/out/train.parquet")
    assert list(a["id"]) == list(b["id"])
    ra, rb = pd.read_parquet(tmp_path / "c1/out/rejected.parquet"), pd.read_parquet(tmp_path / "c16/out/rejected.parquet")
    assert ra.equals(rb)
    # the same cache keys: a run resumed under any concurrency finds every call it made before
    keys = _ok_keys(tmp_path / "c1/work/calls.sqlite")
    assert keys == _ok_keys(tmp_path / "c16/work/calls.sqlite") and len(keys) == one["teacher_usage"]["calls"]


def test_instance_calls_overlap_the_bootstrap_rounds(tmp_path):
    arrivals: list[str] = []
    lock = threading.Lock()

    def logging_responder(messages, body):
        kind = "boot" if messages[-1]["content"].startswith("Come up with") else "other"
        with lock:
            arrivals.append(kind)
        return responder(messages, body)

    with FakeTeacher(responder=logging_responder, latency_s=0.005) as srv:
        man = _run(srv, tmp_path / "p", 8)
    boots = [i for i, k in enumerate(arrivals) if k == "boot"]
    others = [i for i, k in enumerate(arrivals) if k == "other"]
    assert man["counts"]["kept"] > 30 and len(boots) >= 4
    # Phase after phase, every classify/instance call would come after the last bootstrap call (0 here);
    # pipelined, those of the tasks kept before the last round are sent while the rounds are still going (the
    # last bootstrap prompts wait until a shortfall is known: fill starts none that might not be needed).
    during = sum(1 for i in others if i < boots[-1])
    assert during >= 5, (during, len(others), len(boots))
