"""TeacherServer: a real `transformers serve` child answering the `openai` client, and no process left behind."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from orchard.errors import InputError
from orchard.serve import ServerError, TeacherServer

pytestmark = pytest.mark.server


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # still in the table: only acceptable as a zombie (it is not: stop() reaps it)
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def test_serves_openai_chat_and_stops_cleanly(tiny_model_dir, tmp_path):
    import openai

    log = tmp_path / "logs" / "server.log"
    with TeacherServer(tiny_model_dir, log_path=log) as srv:
        pid = srv.pid
        assert srv.base_url == f"http://127.0.0.1:{srv.port}/v1"
        assert srv.model == str(tiny_model_dir.resolve())
        assert srv.start_seconds is not None and srv.start_seconds < 120
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=60)
        r = client.chat.completions.create(model=srv.model, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "Name a red fruit."}])
        assert isinstance(r.choices[0].message.content, str)
        assert 1 <= r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 5
        # greedy decoding is deterministic, also under concurrent load (continuous batching is on)
        prompts = [f"Question number {i}?" for i in range(4)]

        def ask(p):
            return client.chat.completions.create(model=srv.model, max_tokens=6, temperature=0,
                                                  messages=[{"role": "user", "content": p}]).choices[0].message.content

        with ThreadPoolExecutor(4) as pool:
            concurrent = list(pool.map(ask, prompts))
        assert concurrent == [ask(p) for p in prompts]
        # /v1/models needs an existing HF_HUB_CACHE folder: the server sets one
        with urllib.request.urlopen(srv.base_url + "/models", timeout=10) as resp:
            assert resp.status == 200 and json.loads(resp.read())["object"] == "list"
        rss_kb = int(open(f"/proc/{srv.pid}/status").read().split("VmRSS:")[1].split()[0])
        assert rss_kb < 2_000_000, "continuous batching's KV cache must be sized, not a share of all RAM"
    assert srv.proc is None and _gone(pid)
    assert log.exists()


def test_exception_inside_block_still_stops_server(tiny_model_dir):
    srv = TeacherServer(tiny_model_dir, continuous_batching=False)
    with pytest.raises(KeyboardInterrupt):
        with srv:
            pid = srv.pid
            raise KeyboardInterrupt  # what Ctrl-C raises in the caller
    t = time.perf_counter()
    while not _gone(pid) and time.perf_counter() - t < 5:
        time.sleep(0.1)
    assert _gone(pid)


def test_killed_parent_leaves_no_server(tiny_model_dir, tmp_path):
    """SIGKILL to the owning process (no cleanup code runs) still takes the server down (parent-death signal)."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time\n"
            "from orchard.serve import TeacherServer\n"
            f"srv = TeacherServer({str(tiny_model_dir)!r}, continuous_batching=False).start()\n"
            "print(srv.pid, flush=True)\n"
            "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(owner.stdout.readline())
        assert not _gone(server_pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        t = time.perf_counter()
        while not _gone(server_pid) and time.perf_counter() - t < 20:
            time.sleep(0.2)
        assert _gone(server_pid)
    finally:
        owner.kill()


def test_bad_model_folder(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        TeacherServer(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    srv = TeacherServer(tmp_path, startup_timeout=120)
    with pytest.raises(ServerError, match="exited with code") as e:
        srv.start()
    assert srv.proc is None
    assert "Traceback" in str(e.value) or "Error" in str(e.value)  # the log tail explains why
