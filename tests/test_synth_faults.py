"""synth under faults, against the project's fault-injecting teacher server (tests/fake_teacher.py): no cut-off answer
kept, nothing paid twice across runs, a lost answer shifts no other request, exit codes that say what was lost,
`--num` means pairs, one writer per output, errors that name their field."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher import FakeTeacher, FaultPlan  # noqa: E402
from synth_responder import responder  # noqa: E402
from test_synth_interrupt import _env, _wait_ok  # noqa: E402

from orchard.dataio import provenance, read_manifest, read_rows  # noqa: E402
from orchard.standalone import run_standalone  # noqa: E402
from orchard.synth import api  # noqa: E402
from orchard.synth.cli import app  # noqa: E402
from orchard.synth.teacher import TeacherConfig  # noqa: E402
from orchard.synth.methods_config import GroundedConfig, SelfInstructConfig, SynthConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"
# Every fault the server knows that a retry can get past, truncation included (a third of all requests).
HEAVY = {"500": 0.06, "503": 0.04, "429": 0.04, "malformed": 0.04, "truncated": 0.08, "empty_choices": 0.03,
         "empty_content": 0.02, "drop": 0.03}
SI = SynthConfig(num=40, report=False, self_instruct=SelfInstructConfig(prompts_per_round=4))


def _tc(srv, **kw) -> TeacherConfig:
    base = dict(base_url=srv.base_url, model="fake", max_concurrency=8, backoff_base_s=0.01, backoff_max_s=0.02,
                max_retries=6)
    return TeacherConfig(**{**base, **kw})


def _paid_twice(db: Path) -> int:
    """Requests whose answer was paid for more than once (the call log holds every paid answer)."""
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT COUNT(*) FROM (SELECT key FROM calls WHERE status='ok' AND cached=0 "
                           "GROUP BY key HAVING COUNT(*) > 1)").fetchone()[0]
    finally:
        con.close()


def _requests_by_tag(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT tag, request_json FROM calls WHERE cached=0 AND tag IS NOT NULL"))
    finally:
        con.close()


def _ids(folder: Path) -> list[str]:
    return [r["id"] for r in read_rows(folder)]


def test_faulty_run_resumed_on_a_healthy_teacher_converges_on_the_clean_run(tmp_path):
    with FakeTeacher(responder=responder) as clean:
        api.instructions_stage(SEEDS, tmp_path / "clean", tmp_path / "wc", SI, _tc(clean))
    # Two attempts a call under heavy faults: some calls fail twice and their items are lost.
    with FakeTeacher(responder=responder, faults=FaultPlan(HEAVY, seed=3, retry_after=0.02)) as bad:
        man = api.instructions_stage(SEEDS, tmp_path / "faulty", tmp_path / "w", SI, _tc(bad, max_retries=1))
        assert bad.stats()["faults"]["truncated"] > 5
    oc = man["outcome"]
    assert oc["lost"] > 0 and oc["status"] == "lost" and oc["exit_code"] == 3, oc
    rej = pd.read_parquet(tmp_path / "faulty" / "rejected.parquet")
    assert (rej["reason"].str.startswith("lost:")).sum() == oc["lost"]
    assert "lost:truncated" in set(rej["reason"]) or "lost:gave_up" in set(rej["reason"])
    # No cut-off answer was kept or cached as one.
    con = sqlite3.connect(tmp_path / "w" / "calls.sqlite")
    assert con.execute("SELECT COUNT(*) FROM calls WHERE status='ok' AND finish_reason='length'").fetchone()[0] == 0
    con.close()
    for r in read_rows(tmp_path / "faulty"):
        assert r["messages"][-1]["content"].startswith("Here is a clear answer number") or provenance(r)[
            "is_classification"]

    with FakeTeacher(responder=responder) as healthy:
        man2 = api.instructions_stage(SEEDS, tmp_path / "resumed", tmp_path / "w", SI, _tc(healthy))
    assert man2["outcome"]["status"] == "complete" and man2["outcome"]["written"] == 40
    assert _ids(tmp_path / "resumed") == _ids(tmp_path / "clean")
    assert _paid_twice(tmp_path / "w" / "calls.sqlite") == 0


def test_a_lost_answer_shifts_no_other_request(tmp_path):
    cfg = SI.model_copy(update={"num": 30})
    with FakeTeacher(responder=responder) as clean:
        api.instructions_stage(SEEDS, tmp_path / "c", tmp_path / "wc", cfg.model_copy(update={"num": 60}),
                               _tc(clean))
    clean_reqs = _requests_by_tag(tmp_path / "wc" / "calls.sqlite")
    # Lose one bootstrap answer of round 0 (its prompt always gets a 400) and one task's classification call.
    boot = json.loads(clean_reqs["self_instruct:r0:p1"])["messages"][0]["content"]
    cls_tag = next(k for k in clean_reqs if k.startswith("classify:"))
    cls = json.loads(clean_reqs[cls_tag])["messages"][0]["content"]
    with FakeTeacher(responder=responder, faults=FaultPlan(targets={boot: "400", cls: "400"})) as bad:
        man = api.instructions_stage(SEEDS, tmp_path / "f", tmp_path / "w", cfg, _tc(bad))
    assert man["outcome"]["lost_reasons"]["lost:request_failed"] == 2
    faulty_reqs = _requests_by_tag(tmp_path / "w" / "calls.sqlite")
    common = set(faulty_reqs) & set(clean_reqs)
    # Every request both runs made is the same request: nothing was shifted by the lost answers.
    assert len(common) >= 0.9 * len(faulty_reqs) and len(common) > 60
    assert [t for t in common if faulty_reqs[t] != clean_reqs[t]] == []
    # The task whose classification was lost got no instance call (its prompt depends on that answer).
    assert cls_tag in faulty_reqs and "instance:" + cls_tag.split(":", 1)[1] not in faulty_reqs


def test_num_means_pairs_for_every_method(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(" ".join(f"Glaciers{i} carve valleys slowly over centuries" for i in range(200)))
    with FakeTeacher(responder=responder) as srv:
        for method, extra in [("self_instruct", {}), ("evol", {}),
                              ("grounded", {"grounded": GroundedConfig(documents=docs, chunk_words=40,
                                                                       overlap_words=5)})]:
            cfg = SynthConfig(method=method, num=25, report=False, **extra)
            man = api.instructions_stage(SEEDS, tmp_path / method, tmp_path / f"w{method}", cfg, _tc(srv))
            oc = man["outcome"]
            assert oc["status"] == "complete" and len(read_rows(tmp_path / method)) == 25, (method, oc)
            # Nothing is thrown away as over target: at most the rest of the last answer goes unused.
            assert "over_target" not in man["rejection_reasons"]
            assert man["rejection_reasons"].get("unused:num_reached", 0) < cfg.self_instruct.tasks_per_prompt
            assert man["counts"]["generated"] == man["counts"]["kept"] + man["counts"]["rejected"]


def _invoke(args, **kw):
    r = CliRunner().invoke(app, [str(a) for a in args], terminal_width=200, **kw)
    return r, r.output + (r.stderr if r.stderr_bytes is not None else "")


def test_a_cap_stops_num_short_with_its_message_and_exit_code(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("synth:\n  self_instruct:\n    max_rounds: 1\n    prompts_per_round: 2\n")
    with FakeTeacher(responder=responder) as srv:
        common = ["--base-url", srv.base_url, "--model", "fake", "--config", cfg]
        r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "o", "--num", 20, *common])
        assert r.exit_code == 4, out
        n = len(read_rows(tmp_path / "o"))
        assert 0 < n < 20
        assert f"stopped short: {n} of 20 pairs written; stopped by self_instruct.max_rounds=1 (2 prompts a " \
               "round) reached" in out, out
        assert read_manifest(tmp_path / "o")["status"] == "incomplete"
        # Asking for no more than that minimum is success.
        r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "o", "--num", 20, "--min-num", n, *common])
        assert r.exit_code == 0 and read_manifest(tmp_path / "o")["status"] == "complete", out


def test_budget_counts_what_this_output_already_paid(tmp_path):
    with FakeTeacher(responder=responder) as srv:
        common = ["--out", tmp_path / "o", "--base-url", srv.base_url, "--model", "fake", "--num", 40]
        r, out = _invoke(["instructions", SEEDS, *common, "--max-calls", 60])
        assert r.exit_code == 4, out
        assert srv.stats()["requests"] == 60
        assert "max_calls=60 reached; 60 paid calls for this output (0 in earlier runs, 60 in this one: 60 " \
               "answered, 0 failed)" in out, out
        written = len(read_rows(tmp_path / "o"))
        assert 0 < written < 40 and f"stopped short: {written} of 40 pairs written" in out
        r, out = _invoke(["instructions", SEEDS, *common, "--max-calls", 60])
        assert r.exit_code == 4 and srv.stats()["requests"] == 60, out  # the same budget: nothing new paid
        # Which answers landed before the first run's budget stop depends on timing, so the re-run may finish a
        # different number of items from the same 60 paid calls (a loaded CI run: 6 against the first run's count).
        assert "(60 in earlier runs, 0 in this one" in out and len(read_rows(tmp_path / "o")) > 0
        r, out = _invoke(["instructions", SEEDS, *common, "--max-calls", 1000, "--timeout", 5])
        assert r.exit_code == 0 and "complete: 40 of 40 pairs written" in out, out
        assert max(srv.stats()["ok_by_hash"].values()) == 1


def test_exit_codes_for_lost_work_and_for_nothing_kept(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("synth:\n  self_instruct:\n    max_rounds: 2\n    prompts_per_round: 2\n")
    with FakeTeacher(responder=responder, faults=FaultPlan(targets={"Can this task": "400"})) as srv:
        # OPENAI_BASE_URL names the endpoint when --base-url is absent.
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "lost", "--model", "fake", "--num", 3])
        assert r.exit_code == 5, out  # every classification call fails: nothing kept
        assert "nothing kept: 0 of 3 pairs written" in out and "lost after every retry (lost:request_failed" in out
        rej = pd.read_parquet(tmp_path / "lost" / "rejected.parquet")
        assert (rej["reason"] == "lost:request_failed").sum() >= 3
        assert set(rej.loc[rej["reason"] == "lost:request_failed", "step"]) == {"classify"}
    with FakeTeacher(responder=responder) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "ok", "--model", "fake", "--num", 6])
        assert r.exit_code == 0 and "complete: 6 of 6 pairs written" in out, out
    reqs = _requests_by_tag(tmp_path / ".work" / "ok" / "calls.sqlite")
    first = json.loads(next(v for k, v in reqs.items() if k.startswith("instance:")))["messages"][0]["content"]
    # One item's instance call fails for good, the others make up the number: exit 3, not 0.
    with FakeTeacher(responder=responder, faults=FaultPlan(targets={first: "400"})) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "l2", "--model", "fake", "--num", 6])
        assert r.exit_code == 3, out
        assert "lost work: 6 of 6 pairs written; 1 items lost after every retry (lost:request_failed 1)" in out
        assert read_manifest(tmp_path / "l2")["status"] == "incomplete"


def test_errors_name_their_field_and_missing_paths_are_not_found(tmp_path):
    exe = Path(sys.executable).with_name("orchard")
    base = [str(exe), "synth", "instructions", "--out", str(tmp_path / "o"), "--model", "m"]
    r = subprocess.run(base + [str(tmp_path / "nope"), "--base-url", "http://127.0.0.1:9/v1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and f"{tmp_path / 'nope'}: not found" in r.stderr, r.stderr
    r = subprocess.run(base + [str(SEEDS), "--base-url", "ftp://x/v1"], capture_output=True, text=True)
    assert r.returncode == 2 and "[--base-url]: base_url must look like http(s)://" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    bad = tmp_path / "c.yaml"
    bad.write_text("synth:\n  num: 0\n")
    r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "o", "--model", "m", "--base-url",
                      "http://127.0.0.1:9/v1", "--config", bad])
    assert f"{bad}:2: 'synth.num'" in str(r.exception)  # the file, the line and the key
    r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "o", "--model", "m", "--base-url",
                      "http://127.0.0.1:9/v1", "--num", 5, "--min-num", 9])
    assert "min_num (9) must not be above num (5)" in str(r.exception)
    for opt in ("--num", "--concurrency"):
        r, out = _invoke(["instructions", SEEDS, "--out", tmp_path / "o", "--model", "m", opt, -5])
        assert r.exit_code == 2 and opt in out, out
    assert not (tmp_path / "o").exists()


def test_stale_temporary_folders_of_this_output_only_are_removed(tmp_path):
    (tmp_path / ".tmp-seeds-ab12cd_9").mkdir()  # left by a killed writer of seeds/
    (tmp_path / ".old-seeds-4242").mkdir()
    (tmp_path / ".tmp-seeds-b-ab12cd_9").mkdir()  # another output's (seeds-b/), maybe being written now
    run_standalone(api.seeds_stage, tmp_path / "seeds", seed_path=SEEDS, name="seeds")
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left == [".tmp-seeds-b-ab12cd_9", ".work"]


def _cli(url: str, out: Path, num: int, *extra) -> list[str]:
    return [sys.executable, "-m", "orchard.cli", "synth", "instructions", str(SEEDS), "--out", str(out),
            "--base-url", url, "--model", "fake", "--num", str(num), "--concurrency", "8", *extra]


def test_a_second_writer_of_the_same_output_is_refused_and_told_who(tmp_path):
    out = tmp_path / "o"
    with FakeTeacher(responder=responder, latency_s=0.05) as srv:
        first = subprocess.Popen(_cli(srv.base_url, out, 200), env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        _wait_ok(srv, 10, first)
        r = subprocess.run(_cli(srv.base_url, out, 200), env=_env(), capture_output=True, text=True, timeout=60)
        first.kill()
        first.wait()
    assert r.returncode == 2, r.stderr
    assert f"another orchard process is writing {out} (pid {first.pid}: " in r.stderr, r.stderr
    assert "synth instructions" in r.stderr


def test_sigkill_with_truncation_then_resume_on_a_healthy_teacher_is_the_clean_run(tmp_path):
    num = 60
    with FakeTeacher(responder=responder) as clean:
        subprocess.run(_cli(clean.base_url, tmp_path / "clean", num), env=_env(), check=True, capture_output=True)
    out, db = tmp_path / "o", tmp_path / ".work" / "o" / "calls.sqlite"
    plan = FaultPlan({"truncated": 0.15, "500": 0.05, "drop": 0.03}, seed=5, retry_after=0.02)
    with FakeTeacher(responder=responder, faults=plan, latency_s=0.01) as bad:
        p = subprocess.Popen(_cli(bad.base_url, out, num), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        _wait_ok(bad, 60, p)
        p.kill()
        p.wait()
        assert bad.stats()["faults"].get("truncated", 0) > 0
    assert not out.exists()
    with FakeTeacher(responder=responder) as healthy:
        r = subprocess.run(_cli(healthy.base_url, out, num), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _ids(out) == _ids(tmp_path / "clean")
    assert _paid_twice(db) <= 8  # only calls in flight at the kill (--concurrency 8) can be paid again
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".tmp-")]
