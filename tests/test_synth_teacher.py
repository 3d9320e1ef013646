"""The teacher client against a real local HTTP server that injects faults: nothing lost, nothing paid twice."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchard.errors import BudgetExhausted
from orchard.synth.teacher import CallLog, ChatRequest, Teacher, TeacherConfig, TeacherError, parse_retry_after

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_teacher import FakeTeacher, FaultPlan  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def cfg(base_url, **kw) -> TeacherConfig:
    base = dict(base_url=base_url, model="fake", max_concurrency=8, timeout_s=5.0, backoff_base_s=0.01,
                backoff_max_s=0.05, max_retries=8)
    base.update(kw)
    return TeacherConfig(**base)


def reqs(n: int, prefix: str = "item") -> list[ChatRequest]:
    return [ChatRequest([{"role": "user", "content": f"{prefix} {i}"}], tag=f"{prefix}-{i}") for i in range(n)]


@pytest.mark.parametrize("transport", ["direct", "aiohttp", "httpx"])
def test_thousand_requests_with_every_fault_nothing_lost_or_duplicated(tmp_path, transport):
    plan = FaultPlan(
        {"500": 0.04, "503": 0.02, "429": 0.03, "timeout": 0.01, "malformed": 0.03, "truncated": 0.03,
         "empty_choices": 0.03, "empty_content": 0.02, "drop": 0.03},
        seed=1, retry_after=0.05, timeout_sleep_s=3.5, per_prompt_max=2,
    )
    with FakeTeacher(faults=plan) as srv:
        # A reply the server completed after the client gave up on it is a legitimate second paid call (the
        # at-least-once cost of a timeout), so the client's timeout sits well above a normal reply's latency on
        # a loaded 2-core CI machine (0.4 s, then 1.0 s were each exceeded once in 1,000 calls), and any
        # duplicate must be explained by such a client-side timeout below.
        t = Teacher(cfg(srv.base_url, max_concurrency=16, timeout_s=2.0, response_format_json=True),
                    tmp_path / "calls.db", transport=transport)
        t0 = time.perf_counter()
        res = t.chat_many(reqs(1000), progress=False)
        elapsed = time.perf_counter() - t0
        st = srv.stats()
    assert len(res) == 1000
    assert all(r.ok for r in res), [r.error for r in res if not r.ok][:5]
    assert [r.tag for r in res] == [f"item-{i}" for i in range(1000)]  # input order
    assert all(json.loads(r.text)["answer"] == f"reply to: item {i}" for i, r in enumerate(res))
    u = t.usage_summary()
    # Server side: every prompt completed successfully, and more than once only where the client timed out on
    # a reply that was not an injected timeout (the client's own slowness under load).
    slow = u["retries"].get("timeout after 2.0s", 0) - st["faults"]["timeout"]
    assert 0 <= st["ok"] - 1000 <= max(slow, 0)
    assert len(st["ok_by_prompt"]) == 1000 and sum(v - 1 for v in st["ok_by_prompt"].values()) <= max(slow, 0)
    assert len(st["ok_by_hash"]) == 1000
    # Every kind of fault was met and survived.
    for f in plan.probs:
        assert st["faults"].get(f, 0) > 0, f
    assert st["max_inflight"] <= 16
    assert u["ok"] == 1000 and u["errors"] == 0 and u["http_requests"] == st["requests"]
    assert u["transport"] == transport
    # Timeouts and dropped connections are told apart whichever transport carries them.
    assert u["retries"]["timeout after 2.0s"] >= st["faults"]["timeout"]
    assert u["retries"]["connection error"] >= st["faults"]["drop"]
    assert u["completion_tokens"] > 0
    log = CallLog(tmp_path / "calls.db")
    assert len(log.ok_keys()) == 1000 and log.summary()["ok"] == 1000
    assert elapsed < 60


def test_retry_after_seconds_is_honoured(tmp_path):
    with FakeTeacher(faults=FaultPlan(sequence=["429"], retry_after=1.0)) as srv:
        t = Teacher(cfg(srv.base_url), None)
        t0 = time.perf_counter()
        r = t.chat([{"role": "user", "content": "x"}])
        elapsed = time.perf_counter() - t0
        assert srv.stats()["requests"] == 2
    assert r.ok and r.attempts == 2
    assert 1.0 <= elapsed < 2.5, elapsed  # backoff alone would be <= 0.05 s


def test_retry_after_http_date_is_honoured():
    with FakeTeacher(faults=FaultPlan(sequence=["429date"], retry_after=2.0)) as srv:
        t = Teacher(cfg(srv.base_url), None)
        t0 = time.perf_counter()
        r = t.chat([{"role": "user", "content": "x"}])
        elapsed = time.perf_counter() - t0
    assert r.ok
    assert 0.9 <= elapsed < 3.5, elapsed  # an HTTP date has whole seconds


def test_parse_retry_after_forms():
    import email.utils

    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "junk"}) is None
    assert parse_retry_after({}) is None
    d = parse_retry_after({"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)})
    assert 28 <= d <= 30.5
    assert parse_retry_after({"retry-after": email.utils.formatdate(time.time() - 30, usegmt=True)}) == 0.0


def test_budget_stops_cleanly_and_rerun_resumes(tmp_path):
    db = tmp_path / "calls.db"
    with FakeTeacher() as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=4, budget={"max_calls": 30}), db)
        with pytest.raises(BudgetExhausted) as ei:
            t.chat_many(reqs(100), progress=False)
        partial = ei.value.results
        done = [r for r in partial if r is not None]
        assert len(done) == 30 and all(r.ok for r in done)
        assert "max_calls=30 reached; 30 paid calls for this output (0 in earlier runs, 30 in this one: 30 " \
               "answered, 0 failed)" in str(ei.value), str(ei.value)
        assert srv.stats()["requests"] == 30
        assert len(CallLog(db).ok_keys()) == 30

        # The budget is for the output, not the invocation: the same budget again pays nothing new.
        t1 = Teacher(cfg(srv.base_url, max_concurrency=4, budget={"max_calls": 30}), db)
        with pytest.raises(BudgetExhausted) as ei:
            t1.chat_many(reqs(100), progress=False)
        assert srv.stats()["requests"] == 30 and sum(r is not None for r in ei.value.results) == 30
        assert "30 paid calls for this output (30 in earlier runs, 0 in this one" in str(ei.value)

        t2 = Teacher(cfg(srv.base_url, max_concurrency=4), db)
        res = t2.chat_many(reqs(100), progress=False)
        st = srv.stats()
    assert all(r.ok for r in res)
    assert sum(r.cached for r in res) == 30
    assert st["requests"] == 100 and set(st["ok_by_prompt"].values()) == {1}
    assert t2.usage_summary()["cache_hits"] == 30 and t2.usage_summary()["calls"] == 70


def test_token_and_cost_budgets(tmp_path):
    with FakeTeacher() as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1, budget={"max_tokens": 50}), None)
        with pytest.raises(BudgetExhausted, match="max_tokens=50"):
            t.chat_many(reqs(100), progress=False)
        assert 50 <= t.usage_summary()["total_tokens"] < 80  # stops within one call of the limit
        t = Teacher(cfg(srv.base_url, max_concurrency=1,
                        budget={"max_cost_usd": 0.01, "price_per_1k_input": 1.0, "price_per_1k_output": 2.0}), None)
        with pytest.raises(BudgetExhausted, match="max_cost_usd"):
            t.chat_many(reqs(100, "cost"), progress=False)
        u = t.usage_summary()
    assert 0.01 <= u["cost_usd"] < 0.02
    assert u["cost_usd"] == pytest.approx((u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1000, abs=1e-6)


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from orchard.synth.teacher import ChatRequest, Teacher, TeacherConfig
    base_url, db, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = Teacher(TeacherConfig(base_url=base_url, model="fake", max_concurrency=8, backoff_base_s=0.01,
                              backoff_max_s=0.05), db)
    t.chat_many([ChatRequest([{"role": "user", "content": f"item {i}"}]) for i in range(n)], progress=False)
""")


def _ok_prompts(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT request_json FROM calls WHERE status='ok' AND cached=0").fetchall()
    except sqlite3.OperationalError:
        return set()
    finally:
        con.close()
    return {json.loads(r[0])["messages"][-1]["content"] for r in rows}


def test_sigkill_midway_then_rerun_repeats_no_completed_call(tmp_path):
    db, n = tmp_path / "calls.db", 300
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    with FakeTeacher(latency_s=0.01, faults=FaultPlan({"500": 0.05}, per_prompt_max=2)) as srv:
        p = subprocess.Popen([sys.executable, str(script), srv.base_url, str(db), str(n)])
        deadline = time.time() + 60
        while time.time() < deadline and len(_ok_prompts(db)) < 80:
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        done_before = _ok_prompts(db)
        before = srv.stats()
        assert 80 <= len(done_before) < n, "the run should have been killed midway"

        t = Teacher(cfg(srv.base_url), db)
        res = t.chat_many([ChatRequest([{"role": "user", "content": f"item {i}"}]) for i in range(n)],
                          progress=False)
        after = srv.stats()
    assert all(r.ok for r in res)
    # No call that had completed (committed to the log) was made again.
    for prompt in done_before:
        assert after["requests_by_prompt"][prompt] == before["requests_by_prompt"][prompt], prompt
    assert sum(r.cached for r in res) == len(done_before)
    # Only calls in flight at the kill (at most max_concurrency) can have been paid twice.
    assert after["ok"] - n <= 8
    assert len(CallLog(db).ok_keys()) == n


def test_cache_hit_makes_no_http_call_and_no_cache_does(tmp_path):
    db = tmp_path / "calls.db"
    with FakeTeacher() as srv:
        first = Teacher(cfg(srv.base_url), db).chat_many(reqs(20), progress=False)
        assert srv.stats()["requests"] == 20
        again = Teacher(cfg(srv.base_url), db).chat_many(reqs(20), progress=False)
        assert srv.stats()["requests"] == 20  # zero HTTP calls
        assert all(r.cached for r in again) and [r.text for r in again] == [r.text for r in first]
        fresh = Teacher(cfg(srv.base_url), db, use_cache=False).chat_many(reqs(20), progress=False)
        assert srv.stats()["requests"] == 40
        assert not any(r.cached for r in fresh)
    s = CallLog(db).summary()
    assert s["ok"] == 40 and s["cache_hits"] == 20  # --no-cache still logs


def test_cache_key_ignores_host_but_not_params_or_seed(tmp_path):
    db = tmp_path / "calls.db"
    with FakeTeacher() as a, FakeTeacher() as b:
        Teacher(cfg(a.base_url), db).chat_many(reqs(5), progress=False)
        # Another replica of the same model: served from the cache.
        Teacher(cfg(b.base_url), db).chat_many(reqs(5), progress=False)
        assert b.stats()["requests"] == 0
        # Other sampling parameters or seeds: new calls. N samples of one prompt are N calls.
        Teacher(cfg(b.base_url, temperature=0.2), db).chat_many(reqs(5), progress=False)
        assert b.stats()["requests"] == 5
        samples = [ChatRequest([{"role": "user", "content": "same"}], seed=s) for s in range(4)]
        samples += [ChatRequest([{"role": "user", "content": "same"}], sample=k) for k in range(1, 3)]
        out = Teacher(cfg(b.base_url), db).chat_many(samples, progress=False)
        assert b.stats()["requests"] == 5 + 6 and len({r.key for r in out}) == 6
        # A different model: new calls.
        Teacher(cfg(b.base_url, model="other"), db).chat_many(reqs(5), progress=False)
        assert b.stats()["requests"] == 16


def test_same_request_twice_in_one_batch_is_paid_once():
    with FakeTeacher(latency_s=0.05) as srv:
        r = reqs(3) + reqs(3)
        out = Teacher(cfg(srv.base_url), None).chat_many(r, progress=False)
        assert srv.stats()["requests"] == 3
    assert all(x.ok for x in out) and [x.text for x in out[:3]] == [x.text for x in out[3:]]


def test_api_key_never_reaches_the_log_or_logs(tmp_path, monkeypatch, caplog, capfd):
    key = "sk-SECRETSECRET-0123456789abcdef"
    monkeypatch.setenv("ORCHARD_TEST_KEY", key)
    db = tmp_path / "calls.db"
    caplog.set_level(logging.DEBUG)
    with FakeTeacher(always="401", echo_key=True) as bad, FakeTeacher(
        faults=FaultPlan({"500": 0.2, "400": 0.05}, per_prompt_max=2)
    ) as good:
        c = cfg(None, model=None, endpoints=[
            {"base_url": bad.base_url, "model": "fake", "api_key_env": "ORCHARD_TEST_KEY"},
            {"base_url": good.base_url, "model": "fake", "api_key_env": "ORCHARD_TEST_KEY"},
        ])
        t = Teacher(c, db)
        res = t.chat_many(reqs(40), progress=True)
        summary = json.dumps(t.usage_summary())
        t.close()
    assert sum(r.ok for r in res) >= 30
    assert bad.stats()["requests"] >= 1  # it did see (and echo) the key
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("calls.db"))
    assert key.encode() not in blobs and b"SECRETSECRET" not in blobs
    out = capfd.readouterr()
    for text in (summary, caplog.text, out.out, out.err, " ".join(str(r.error) for r in res)):
        assert "SECRETSECRET" not in text
    assert "rejected the API key" in summary  # the reason is kept, the key is not


def test_failing_endpoint_the_other_takes_the_load(tmp_path):
    with FakeTeacher(always="500") as bad, FakeTeacher() as good:
        c = cfg(None, model=None, endpoints=[{"base_url": bad.base_url, "model": "fake", "weight": 3},
                                             {"base_url": good.base_url, "model": "fake"}])
        t = Teacher(c, tmp_path / "c.db")
        res = t.chat_many(reqs(300), progress=False)
        assert all(r.ok for r in res)
        assert good.stats()["ok"] == 300
        # The breaker takes the failing endpoint out of rotation: it sees a small share despite weight 3.
        assert bad.stats()["requests"] < 60, bad.stats()["requests"]
    # A dead port (connection refused) is just another failing endpoint.
    with FakeTeacher() as good:
        c = cfg(None, model=None, endpoints=[{"base_url": "http://127.0.0.1:9/v1", "model": "fake"},
                                             {"base_url": good.base_url, "model": "fake"}])
        res = Teacher(c, None).chat_many(reqs(50), progress=False)
        assert all(r.ok for r in res) and good.stats()["ok"] == 50


def test_401_is_a_clear_error_and_not_retried(monkeypatch):
    monkeypatch.setenv("ORCHARD_TEST_KEY", "sk-wrongwrongwrong")
    with FakeTeacher(always="401") as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1, api_key_env="ORCHARD_TEST_KEY"), None)
        t0 = time.perf_counter()
        with pytest.raises(TeacherError) as ei:
            t.chat_many(reqs(10), progress=False)
        assert time.perf_counter() - t0 < 2
        assert srv.stats()["requests"] == 1
    msg = str(ei.value)
    assert "rejected the API key" in msg and "ORCHARD_TEST_KEY" in msg and "401" in msg
    assert "wrongwrong" not in msg


def test_404_model_is_a_clear_error():
    with FakeTeacher(always="404") as srv:
        with pytest.raises(TeacherError, match="does not know this URL or model"):
            Teacher(cfg(srv.base_url, max_concurrency=1), None).chat_many(reqs(3), progress=False)
        assert srv.stats()["requests"] == 1


def test_400_fails_only_that_request_and_is_not_cached(tmp_path):
    db = tmp_path / "c.db"
    with FakeTeacher(faults=FaultPlan(sequence=["400"])) as srv:
        res = Teacher(cfg(srv.base_url, max_concurrency=1), db).chat_many(reqs(5), progress=False)
        assert [r.ok for r in res] == [False, True, True, True, True]
        assert "HTTP 400" in res[0].error and "not retried" in res[0].error and res[0].text is None
        assert srv.stats()["requests"] == 5
        res2 = Teacher(cfg(srv.base_url, max_concurrency=1), db).chat_many(reqs(5), progress=False)
        assert all(r.ok for r in res2) and srv.stats()["requests"] == 6  # only the failed one again


def test_json_mode_rejection_is_remembered():
    with FakeTeacher(supports_json_format=False) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1, response_format_json=True), None)
        res = t.chat_many(reqs(20), progress=False)
        st = srv.stats()
    assert all(r.ok for r in res)
    assert st["response_format_requests"] == 1 and st["requests"] == 21
    assert t.usage_summary()["endpoints"][0]["json_mode"] is False


def test_a_cut_off_answer_is_never_returned_or_cached_as_good(tmp_path):
    db = tmp_path / "calls.sqlite"
    with FakeTeacher(faults=FaultPlan(sequence=["truncated", "ok", "truncated"])) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1, max_tokens=50), db)
        r = t.chat([{"role": "user", "content": "plain"}])
        # Plain text too: asked again with twice the tokens, and the whole answer comes back.
        assert r.ok and not r.truncated and r.text == json.dumps({"answer": "reply to: plain", "seed": 0})
        r = t.chat([{"role": "user", "content": "as json"}], json=True)
        assert r.ok and not r.truncated and r.json()["answer"] == "reply to: as json"
        assert srv.stats()["requests"] == 4 and srv.stats()["max_tokens_seen"] == [50, 100, 50, 100]
    # A server that cuts every answer at max_tokens: the cap is reached, the item is lost with its reason,
    # nothing is cached as an answer, and a re-run against a healthy teacher asks again.
    with FakeTeacher(responder=lambda m, b: "word " * 500, cut_at_max_tokens=True) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1, max_tokens=50, max_tokens_cap=150), db)
        r = t.chat([{"role": "user", "content": "long"}])
        assert not r.ok and r.reason == "truncated" and "finish_reason=length" in r.error, r.error
        assert srv.stats()["max_tokens_seen"] == [50, 100, 150]
        assert r.usage["completion_tokens"] == 300  # the paid, useless answers are still counted
    assert CallLog(db).lookup(Teacher(cfg("http://127.0.0.1:9/v1", max_tokens=50), None).request_key(
        ChatRequest([{"role": "user", "content": "long"}]))) is None
    with FakeTeacher(responder=lambda m, b: "fine answer") as srv:
        r = Teacher(cfg(srv.base_url, max_tokens=50), db).chat([{"role": "user", "content": "long"}])
        assert r.ok and not r.cached and srv.stats()["requests"] == 1


def test_a_cut_off_answer_cached_by_an_older_version_is_asked_again(tmp_path):
    db = tmp_path / "calls.sqlite"
    with FakeTeacher() as srv:
        t = Teacher(cfg(srv.base_url), db)
        req = ChatRequest([{"role": "user", "content": "old"}])
        CallLog(db).record(key=t.request_key(req), status="ok", response_text="cut o", finish_reason="length")
        r = t.chat_many([req], progress=False)[0]
        assert r.ok and not r.cached and r.text.endswith("}") and srv.stats()["requests"] == 1


def test_a_request_check_treats_an_unfinished_format_like_a_cut_off_answer():
    answers = iter(["Input: x\nOutp", "Input: x\nOutput: y"])
    with FakeTeacher(responder=lambda m, b: next(answers)) as srv:
        t = Teacher(cfg(srv.base_url), None)
        r = t.chat_many([ChatRequest([{"role": "user", "content": "q"}],
                                     check=lambda s: None if "Output:" in s else "no Output: label")],
                        progress=False)[0]
        assert r.ok and r.text.endswith("Output: y") and srv.stats()["requests"] == 2


def test_empty_answers_become_errors_never_empty_rows():
    with FakeTeacher(always="empty_content") as srv:
        res = Teacher(cfg(srv.base_url, max_retries=2), None).chat_many(reqs(3), progress=False)
        assert srv.stats()["requests"] == 9
    assert all(not r.ok and r.text is None and "empty completion" in r.error for r in res)
    assert all("gave up after 3 attempts" in r.error for r in res)


def test_missing_key_for_a_remote_endpoint_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ORCHARD_NO_SUCH_KEY", raising=False)
    t = Teacher(cfg("https://api.example.invalid/v1", api_key_env="ORCHARD_NO_SUCH_KEY"), None)
    with pytest.raises(TeacherError, match="ORCHARD_NO_SUCH_KEY is not set"):
        t.chat_many(reqs(2), progress=False)


def test_achat_concurrency_is_bounded():
    async def go(t):
        try:
            return await asyncio.gather(*(t.achat([{"role": "user", "content": f"c {i}"}], tag=str(i))
                                          for i in range(40)))
        finally:
            await t.aclose()

    with FakeTeacher(latency_s=0.02) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=5), None)
        out = asyncio.run(go(t))
        assert srv.stats()["max_inflight"] <= 5
    assert all(r.ok for r in out) and [r.tag for r in out] == [str(i) for i in range(40)]


def test_chat_many_inside_a_running_loop_works():
    async def go(t):
        return t.chat_many(reqs(3), progress=False)

    with FakeTeacher() as srv:
        out = asyncio.run(go(Teacher(cfg(srv.base_url), None)))
    assert all(r.ok for r in out)


@pytest.mark.parametrize("bad, msg", [
    ({"model": "m"}, "teacher needs base_url"),
    ({"base_url": "localhost:8000", "model": "m"}, "base_url must look like"),
    ({"base_url": "http://u:p@h/v1", "model": "m"}, "must not contain credentials"),
    ({"base_url": "http://h/v1", "model": "m", "endpoints": [{"base_url": "http://h/v1", "model": "m"}]},
     "not both"),
    ({"base_url": "http://h/v1", "model": "m", "budget": {"max_cost_usd": 1}}, "price_per_1k"),
    ({"base_url": "http://h/v1", "model": "m", "max_concurrency": 0}, "max_concurrency"),
    ({"base_url": "http://h/v1", "model": "m", "api_key": "sk-x"}, "api_key"),
    ({"base_url": "http://h/v1", "model": "m", "backoff_base_s": 5, "backoff_max_s": 1}, "backoff_max_s"),
])
def test_config_validation_messages(bad, msg):
    with pytest.raises(ValidationError, match=msg):
        TeacherConfig(**bad)


def test_provenance_has_hosts_not_keys():
    c = TeacherConfig(endpoints=[{"base_url": "http://a:1/v1", "model": "m"},
                                 {"base_url": "https://b/v1", "model": "m"}])
    assert c.provenance() == {"model": "m", "hosts": ["a:1", "b"]}


def test_missing_usage_is_estimated_so_token_budgets_still_hold():
    with FakeTeacher(send_usage=False) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1, budget={"max_tokens": 100}), None)
        with pytest.raises(BudgetExhausted, match="max_tokens=100"):
            t.chat_many(reqs(100), progress=False)
        u = t.usage_summary()
        assert u["usage_estimated"] == u["calls"] and 3 <= u["calls"] < 20


def test_refusals_and_empty_length_are_clear_errors_not_paid_again():
    with FakeTeacher(faults=FaultPlan(sequence=["refusal", "empty_length"])) as srv:
        res = Teacher(cfg(srv.base_url, max_concurrency=1), None).chat_many(reqs(3), progress=False)
        assert srv.stats()["requests"] == 3  # neither was retried
    assert "teacher refused" in res[0].error and "can't help" in res[0].error
    assert "raise max_tokens" in res[1].error and res[2].ok


def test_max_completion_tokens_is_learnt():
    with FakeTeacher(wants_max_completion_tokens=True) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1), None)
        res = t.chat_many(reqs(5), progress=False)
        assert all(r.ok for r in res) and srv.stats()["requests"] == 6


def test_one_teacher_shared_by_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with FakeTeacher(latency_s=0.005) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=4), tmp_path / "c.db")
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda k: t.chat_many(reqs(40, f"thread{k}"), progress=False), range(3)))
        assert srv.stats()["ok"] == 120 and set(srv.stats()["ok_by_prompt"].values()) == {1}
    assert all(r.ok for out in outs for r in out)
    assert len(CallLog(tmp_path / "c.db").ok_keys()) == 120


def test_quota_sized_retry_after_stops_the_run_instead_of_stalling(tmp_path):
    db = tmp_path / "c.db"
    with FakeTeacher(faults=FaultPlan(sequence=["ok", "ok", "429"], retry_after=3600)) as srv:
        t = Teacher(cfg(srv.base_url, max_concurrency=1, max_retry_after_s=5), db)
        t0 = time.perf_counter()
        with pytest.raises(TeacherError, match="rate-limits us for 3600 s") as ei:
            t.chat_many(reqs(10), progress=False)
        assert time.perf_counter() - t0 < 3
        assert sum(r is not None and r.ok for r in ei.value.results) == 2
        assert srv.stats()["requests"] == 3
        # The two completed calls are saved: a re-run resumes after them.
        res = Teacher(cfg(srv.base_url, max_concurrency=1), db).chat_many(reqs(10), progress=False)
        assert all(r.ok for r in res) and srv.stats()["requests"] == 11


def test_weights_spread_the_load():
    with FakeTeacher() as a, FakeTeacher() as b:
        c = cfg(None, model=None, endpoints=[{"base_url": a.base_url, "model": "fake", "weight": 3},
                                             {"base_url": b.base_url, "model": "fake", "weight": 1}])
        res = Teacher(c, None).chat_many(reqs(200), progress=False)
        na, nb = a.stats()["ok"], b.stats()["ok"]
    assert all(r.ok for r in res) and na + nb == 200
    assert 0.65 < na / 200 < 0.85, (na, nb)


def test_truncated_json_is_asked_again_with_more_tokens_and_only_twice():
    with FakeTeacher(faults=FaultPlan(sequence=["truncated", "ok"])) as srv:
        r = Teacher(cfg(srv.base_url, max_tokens=100), None).chat([{"role": "user", "content": "j"}], json=True)
        assert r.ok and srv.stats()["max_tokens_seen"] == [100, 200]
    with FakeTeacher(always="truncated") as srv:
        r = Teacher(cfg(srv.base_url, max_tokens=100), None).chat([{"role": "user", "content": "j"}], json=True)
        assert not r.ok and "3 answers in a row" in r.error
        assert srv.stats()["max_tokens_seen"] == [100, 200, 400]
    assert r.usage["completion_tokens"] > 0  # the paid, useless answers are still counted


_WRITER_SCRIPT = textwrap.dedent("""
    import sys
    from orchard.synth.teacher import ChatRequest, Teacher, TeacherConfig
    base_url, db, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    t = Teacher(TeacherConfig(base_url=base_url, model="fake", max_concurrency=8), db)
    res = t.chat_many([ChatRequest([{"role": "user", "content": f"{prefix} {i}"}]) for i in range(150)],
                      progress=False)
    assert all(r.ok for r in res)
""")


def test_two_processes_share_one_call_log(tmp_path):
    db, script = tmp_path / "calls.sqlite", tmp_path / "w.py"
    script.write_text(_WRITER_SCRIPT)
    with FakeTeacher(latency_s=0.002) as srv:
        procs = [subprocess.Popen([sys.executable, str(script), srv.base_url, str(db), p]) for p in ("a", "b")]
        assert [p.wait(60) for p in procs] == [0, 0]
        assert srv.stats()["ok"] == 300
    assert len(CallLog(db).ok_keys()) == 300


@pytest.mark.parametrize("transport", ["direct", "aiohttp", "httpx"])
def test_a_down_teacher_stops_the_run_quickly_instead_of_retrying_every_item(tmp_path, transport):
    t = Teacher(cfg("http://127.0.0.1:9/v1", max_concurrency=4, backoff_base_s=0.05, backoff_max_s=0.2), None,
                transport=transport)
    t0 = time.perf_counter()
    with pytest.raises(TeacherError, match="teacher failing: 20 failed attempts in a row") as ei:
        t.chat_many(reqs(200), progress=False)
    assert time.perf_counter() - t0 < 10
    assert "connection error" in str(ei.value) and "re-run to resume" in str(ei.value)
    assert t.usage_summary()["http_requests"] < 40


def test_request_params_that_would_break_accounting_are_refused():
    t = Teacher(cfg("http://127.0.0.1:9/v1"), None)
    for bad, msg in [({"n": 3}, "one choice per call"), ({"stream": True}, "not supported"),
                     ({"response_format": {"type": "json_object"}}, "json=True")]:
        with pytest.raises(ValueError, match=msg):
            t.chat_many([ChatRequest([{"role": "user", "content": "x"}], params=bad)], progress=False)
    with pytest.raises(ValueError, match="non-empty list"):
        t.chat_many([{"messages": []}], progress=False)


def test_transport_auto_is_direct_only_for_a_teacher_on_this_machine():
    """The openai SDK for hosted endpoints; the direct POST (half the client CPU per call) for loopback ones."""
    from pydantic import ValidationError

    from orchard.synth.teacher import EndpointConfig, Teacher

    def tr(**kw):
        return Teacher(TeacherConfig(**kw)).transport

    assert tr(base_url="http://127.0.0.1:8000/v1", model="m") == "direct"
    assert tr(base_url="http://localhost:8000/v1", model="m") == "direct"
    assert tr(base_url="http://[::1]:8000/v1", model="m") == "direct"
    assert tr(base_url="https://api.openai.com/v1", model="m") == "aiohttp"  # the SDK on aiohttp
    mixed = [EndpointConfig(base_url="http://127.0.0.1:8000/v1", model="m"),
             EndpointConfig(base_url="https://api.example.com/v1", model="m")]
    assert tr(endpoints=mixed) == "aiohttp"
    assert tr(base_url="http://127.0.0.1:8000/v1", model="m", transport="httpx") == "httpx"
    with pytest.raises(ValidationError, match="transport"):
        TeacherConfig(base_url="http://127.0.0.1:8000/v1", model="m", transport="curl")


def test_call_log_setup_retries_the_wal_switch_race(tmp_path):
    """Two processes opening a new log at once: SQLite answers the loser's switch to WAL with "database is
    locked" without waiting (seen in CI: a worker died). The setup retries instead of failing."""
    import sqlite3

    from orchard.synth.teacher import calllog

    real = sqlite3.connect(tmp_path / "c.sqlite", isolation_level=None)
    fails = [2]

    class Racy:
        def execute(self, sql, *a):
            if sql.startswith("PRAGMA journal_mode") and fails[0]:
                fails[0] -= 1
                raise sqlite3.OperationalError("database is locked")
            return real.execute(sql, *a)

        def executescript(self, sql):
            return real.executescript(sql)

    calllog._setup_retrying(Racy())
    assert fails == [0]
    assert real.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert real.execute("SELECT count(*) FROM calls").fetchone()[0] == 0
    with pytest.raises(sqlite3.OperationalError, match="no such table"):  # other errors are not retried
        calllog._setup_retrying.retry_with(stop=calllog.stop_after_delay(0))(type("Bad", (), {
            "execute": lambda self, sql, *a: real.execute("SELECT * FROM nope")})())


def test_cut_ok_keeps_a_cut_off_answer_that_is_whole_all_the_same(tmp_path):
    db = tmp_path / "calls.sqlite"
    yes = ChatRequest([{"role": "user", "content": "classify?"}], params={"max_tokens": 2},
                      cut_ok=lambda s: "yes" in s.lower())
    with FakeTeacher(responder=lambda m, b: "Yes it is one of those tasks", cut_at_max_tokens=True) as srv:
        r = Teacher(cfg(srv.base_url), db).chat_many([yes], progress=False)[0]
        assert r.ok and r.text == "Yes it" and srv.stats()["requests"] == 1
        r = Teacher(cfg(srv.base_url), db).chat_many([yes], progress=False)[0]
        assert r.cached and srv.stats()["requests"] == 1  # kept as whole: a re-run pays nothing
    # Cut before its first word: not whole, asked again with more tokens.
    with FakeTeacher(responder=lambda m, b: "Yes", faults=FaultPlan(sequence=["truncated"])) as srv:
        r = Teacher(cfg(srv.base_url), None).chat_many([ChatRequest(yes.messages, params={"max_tokens": 2},
                                                                   cut_ok=lambda s: "yes" in s.lower())],
                                                       progress=False)[0]
        assert r.ok and r.text == "Yes" and srv.stats()["max_tokens_seen"] == [2, 4]
