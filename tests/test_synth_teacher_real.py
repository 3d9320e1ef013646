"""The teacher client against a real OpenAI-compatible server (`transformers serve` with the tiny model).

The tiny random-weight model answers every prompt with newlines until max_tokens (measured: '\\n' x 8,
finish_reason=length). That is exactly the "empty answer" a flaky teacher gives, so this checks, on a real
server, that it becomes a clear error (never an empty row), is not paid for again within the run, that the
server's usage numbers are summed, and that errors are logged but not served from the cache.
"""

from __future__ import annotations

import pytest

from orchard.serve import TeacherServer
from orchard.synth.teacher import CallLog, ChatRequest, Teacher, TeacherConfig

pytestmark = pytest.mark.server


def test_teacher_against_transformers_serve(tiny_model_dir, tmp_path):
    db = tmp_path / "calls.sqlite"
    reqs = [ChatRequest([{"role": "user", "content": f"Question number {i}?"}], tag=f"q{i}") for i in range(4)]
    reqs.append(ChatRequest([{"role": "user", "content": "Answer in JSON."}], json=True))
    with TeacherServer(tiny_model_dir) as srv:
        cfg = TeacherConfig(base_url=srv.base_url, model=srv.model, temperature=0, max_tokens=8, max_concurrency=4,
                            timeout_s=60, backoff_base_s=0.05, backoff_max_s=0.5, max_retries=3, seed=1)
        t = Teacher(cfg, db)
        res = t.chat_many(reqs, progress=False)
        u = t.usage_summary()
        for r in res:
            assert (r.ok and r.text.strip()) or (not r.ok and r.error and r.text is None)
        assert all(not r.ok and "finish_reason=length: raise max_tokens" in r.error for r in res)
        assert u["http_requests"] == 5  # not retried: the same request would end the same way
        # The server's own usage numbers (8 completion tokens each), not an estimate; paid tokens count.
        assert u["usage_estimated"] == 0 and u["completion_tokens"] == 5 * 8 and u["prompt_tokens"] > 5 * 5
        assert u["endpoints"][0]["json_mode"] in (None, True)  # response_format was accepted (no 400)
        # Errors are logged but never served from the cache: a re-run asks again.
        t2 = Teacher(cfg, db)
        t2.chat_many(reqs[:1], progress=False)
        assert t2.usage_summary()["http_requests"] == 1 and t2.usage_summary()["cache_hits"] == 0
    s = CallLog(db).summary()
    assert s["errors"] == 6 and s["ok"] == 0 and s["completion_tokens"] == 48 and s["latency_p50_s"] > 0
