"""A scripted OpenAI-compatible server for tests and benchmarks: a real HTTP server on 127.0.0.1.

It answers ``POST /v1/chat/completions`` (non-streaming, ``response_format`` JSON supported or refused),
``GET /v1/models`` and ``GET /health``, with text from a *responder* (messages -> str) and faults from a
*plan* (a fixed sequence and/or probabilities): HTTP 500/503, 429 with Retry-After (seconds or an HTTP
date), timeouts (sleeping past the client's timeout), malformed JSON bodies, truncated output
(finish_reason=length: the first half of the answer), empty ``choices``, empty content, dropped connections,
400/401/404. ``cut_at_max_tokens``: like a real server, an answer longer than the request's ``max_tokens`` (counted
in words, as its ``usage`` is) is cut there with finish_reason=length, so asking again with more tokens helps.

It counts requests and successful completions per prompt (the last user message), so tests can assert
that no completed call was ever repeated. ``GET /_stats`` returns those counts as JSON, for a server run
in another process (``python tests/fake_teacher.py --port 0``; prints ``PORT <n>`` when ready).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import email.utils
import hashlib
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Callable, Iterator, Optional

FAULTS = (
    "ok", "500", "503", "429", "429date", "timeout", "malformed", "truncated", "empty_choices",
    "empty_content", "empty_length", "refusal", "drop", "400", "401", "404",
)


def request_hash(body: dict) -> str:
    """A stable hash of a chat request body (key order does not matter)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def default_responder(messages: list[dict], body: dict) -> str:
    """A JSON object echoing the prompt: valid both as text and as a JSON-mode answer."""
    last = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    return json.dumps({"answer": f"reply to: {str(last)[:200]}", "seed": body.get("seed")})


class FaultPlan:
    """Which fault each request meets: ``sequence`` first (one entry per request, in arrival order),
    then ``probs`` (fault -> probability, the rest is ``ok``), drawn from a seeded RNG.

    ``per_prompt_max``: a prompt meets at most this many faults, so a test's retries surely end.
    ``targets``: prompt substring -> fault that every prompt containing it meets, every time (a lost item).
    """

    def __init__(self, probs: Optional[dict[str, float]] = None, sequence: Optional[list[str]] = None,
                 seed: int = 0, retry_after: float = 1.0, timeout_sleep_s: float = 2.0,
                 per_prompt_max: Optional[int] = None, targets: Optional[dict[str, str]] = None):
        self.targets = dict(targets or {})
        for f in list(probs or {}) + list(sequence or []) + list(self.targets.values()):
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}; known: {FAULTS}")
        if probs and sum(probs.values()) > 1:
            raise ValueError("fault probabilities sum above 1")
        self.probs = dict(probs or {})
        self.sequence = collections.deque(sequence or [])
        self.rng = random.Random(seed)
        self.retry_after = retry_after
        self.timeout_sleep_s = timeout_sleep_s
        self.per_prompt_max = per_prompt_max
        self._faults_by_prompt: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    def next(self, prompt: str) -> str:
        with self._lock:
            hit = next((f for k, f in self.targets.items() if k in prompt), None)
            if hit is not None:
                return hit
            if self.sequence:
                f = self.sequence.popleft()
            else:
                f, r = "ok", self.rng.random()
                for name, p in self.probs.items():
                    if r < p:
                        f = name
                        break
                    r -= p
            if f != "ok" and self.per_prompt_max is not None:
                if self._faults_by_prompt[prompt] >= self.per_prompt_max:
                    return "ok"
                self._faults_by_prompt[prompt] += 1
            return f


class FakeTeacher:
    """Context manager: ``with FakeTeacher(...) as srv: srv.base_url`` (a free port on 127.0.0.1).

    ``always``: a fault every request meets (e.g. "500", "401"). ``latency_s``: sleep before answering
    (0 = zero-latency mode for benchmarks). ``supports_json_format=False``: refuse response_format with 400.
    ``echo_key``: a 401's message quotes the Authorization header (to test that clients redact it).
    """

    def __init__(self, responder: Callable[[list[dict], dict], str] = default_responder,
                 faults: Optional[FaultPlan] = None, always: Optional[str] = None, latency_s: float = 0.0,
                 supports_json_format: bool = True, model: str = "fake-teacher", echo_key: bool = False,
                 send_usage: bool = True, wants_max_completion_tokens: bool = False, port: int = 0,
                 cut_at_max_tokens: bool = False):
        self.responder, self.faults, self.always = responder, faults, always
        self.cut_at_max_tokens = cut_at_max_tokens
        self.latency_s, self.supports_json_format, self.model = latency_s, supports_json_format, model
        self.echo_key, self.send_usage = echo_key, send_usage
        self.wants_max_completion_tokens = wants_max_completion_tokens
        self._port = port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.reset_stats()
        self._server: Optional[ThreadingHTTPServer] = None
        self.shared = None  # multiprocessing.Array('q', 2) [requests, ok] when run as several processes
        self.reuse_port = False

    # -- stats -------------------------------------------------------------------------------------
    def reset_stats(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.requests = 0
            self.ok = 0
            self.inflight = 0
            self.max_inflight = 0
            self.requests_by_prompt: collections.Counter = collections.Counter()
            # Keyed by a hash of the whole request body (model, messages, sampling params, seed).
            self.requests_by_hash: collections.Counter = collections.Counter()
            self.ok_by_hash: collections.Counter = collections.Counter()
            self.ok_by_prompt: collections.Counter = collections.Counter()
            self.faults_seen: collections.Counter = collections.Counter()
            self.response_format_requests = 0
            self.seeds_seen: collections.Counter = collections.Counter()
            self.max_tokens_seen: list = []

    def stats(self) -> dict:
        if self.shared is not None:  # one of several worker processes: totals over all of them
            with self.shared.get_lock():
                return {"requests": self.shared[0], "ok": self.shared[1]}
        with self._lock:
            return {
                "requests": self.requests, "ok": self.ok, "max_inflight": self.max_inflight,
                "requests_by_prompt": dict(self.requests_by_prompt), "ok_by_prompt": dict(self.ok_by_prompt),
                "requests_by_hash": dict(self.requests_by_hash), "ok_by_hash": dict(self.ok_by_hash),
                "faults": dict(self.faults_seen), "response_format_requests": self.response_format_requests,
                "max_tokens_seen": list(self.max_tokens_seen),
            }

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeTeacher":
        handler = type("Handler", (_Handler,), {"fake": self})
        server_cls = type("Server", (_Server,), {"allow_reuse_port": self.reuse_port})
        self._server = server_cls(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- one request -------------------------------------------------------------------------------
    def _chat(self, h: "_Handler", body: dict) -> None:
        messages = body.get("messages") or []
        prompt = next((str(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        rhash = request_hash(body)
        with self._lock:
            self.requests_by_hash[rhash] += 1
            self.requests += 1
            if self.shared is not None:
                with self.shared.get_lock():
                    self.shared[0] += 1
            self.requests_by_prompt[prompt] += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            if body.get("response_format"):
                self.response_format_requests += 1
            self.max_tokens_seen.append(body.get("max_tokens"))
        try:
            fault = self.always or (self.faults.next(prompt) if self.faults else "ok")
            if fault == "ok" and body.get("response_format") and not self.supports_json_format:
                fault = "reject_json"
            if fault == "ok" and "max_tokens" in body and self.wants_max_completion_tokens:
                fault = "reject_max_tokens"
            with self._lock:
                self.faults_seen[fault] += 1
            if self.latency_s:
                time.sleep(self.latency_s)
            self._answer(h, body, messages, prompt, fault, rhash)
        finally:
            with self._lock:
                self.inflight -= 1

    def _answer(self, h, body, messages, prompt, fault, rhash) -> None:
        plan = self.faults
        if fault in ("500", "503"):
            return h.send_json(int(fault), {"error": {"message": "internal error", "type": "server_error"}})
        if fault in ("429", "429date"):
            ra = plan.retry_after if plan else 1.0
            value = str(ra) if fault == "429" else email.utils.formatdate(time.time() + ra, usegmt=True)
            return h.send_json(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                               {"Retry-After": value})
        if fault == "timeout":
            self._stopping.wait(plan.timeout_sleep_s if plan else 5.0)
            return h.send_json(504, {"error": {"message": "too slow"}})
        if fault == "drop":
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return None
        if fault == "malformed":
            return h.send_raw(200, b'{"id": "x", "choices": [{"message": {"content": "tru', "application/json")
        if fault == "401":
            auth = h.headers.get("Authorization", "")
            msg = f"Incorrect API key provided: {auth.removeprefix('Bearer ')}" if self.echo_key else "bad key"
            return h.send_json(401, {"error": {"message": msg, "type": "invalid_request_error"}})
        if fault == "404":
            return h.send_json(404, {"error": {"message": f"model {body.get('model')} not found"}})
        if fault == "400":
            return h.send_json(400, {"error": {"message": "context length exceeded", "type": "invalid_request"}})
        if fault == "reject_max_tokens":
            return h.send_json(400, {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported "
                                              "with this model. Use 'max_completion_tokens' instead."}})
        if fault == "reject_json":
            return h.send_json(400, {"error": {"message": "response_format is not supported by this model"}})

        text = self.responder(messages, body)
        finish = "stop"
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        if self.cut_at_max_tokens and limit and len(text.split()) > int(limit):
            text, finish = " ".join(text.split()[: int(limit)]), "length"
        choices = [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]
        if fault == "truncated":
            choices[0]["message"]["content"] = text[: max(1, len(text) // 2)]
            choices[0]["finish_reason"] = "length"
        elif fault == "empty_choices":
            choices = []
        elif fault == "empty_content":
            choices[0]["message"]["content"] = ""
        elif fault == "empty_length":
            choices[0]["message"]["content"] = ""
            choices[0]["finish_reason"] = "length"
        elif fault == "refusal":
            choices[0]["message"]["content"] = None
            choices[0]["message"]["refusal"] = "I can't help with that."
        n_prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        n_out = len(text.split())
        payload = {
            "id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model), "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
        }
        if not self.send_usage:
            del payload["usage"]
        sent = h.send_json(200, payload)
        if fault == "ok" and finish == "stop" and sent:
            with self._lock:
                self.ok += 1
                if self.shared is not None:
                    with self.shared.get_lock():
                        self.shared[1] += 1
                self.ok_by_prompt[prompt] += 1
                self.ok_by_hash[rhash] += 1


class _Server(ThreadingHTTPServer):
    # The stdlib default backlog of 5 makes concurrent clients' connects wait for SYN retries (1 s).
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True
    fake: FakeTeacher

    def log_message(self, *args):  # quiet
        pass

    def send_raw(self, code: int, data: bytes, ctype: str, headers: Optional[dict] = None) -> bool:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
            return True
        except OSError:  # the client went away (it timed out): not a delivered answer
            self.close_connection = True
            return False

    def send_json(self, code: int, obj, headers: Optional[dict] = None) -> bool:
        return self.send_raw(code, json.dumps(obj).encode(), "application/json", headers)

    def do_GET(self):
        if self.path == "/health":
            return self.send_json(200, {"status": "ok"})
        if self.path == "/v1/models":
            return self.send_json(200, {"object": "list", "data": [{"id": self.fake.model, "object": "model"}]})
        if self.path == "/_stats":
            return self.send_json(200, self.fake.stats())
        return self.send_json(404, {"error": {"message": "not found"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
        try:
            body = json.loads(raw)
        except ValueError:
            return self.send_json(400, {"error": {"message": "body is not JSON"}})
        self.fake._chat(self, body)


# --------------------------------------------------------------------------------------------------
# Out-of-process use (benchmarks: the server then has its own interpreters and GILs)


@contextlib.contextmanager
def fake_teacher_process(latency_s: float = 0.0, probs: Optional[dict] = None, seed: int = 0,
                         retry_after: float = 1.0, workers: int = 1) -> Iterator[SimpleNamespace]:
    """Run a FakeTeacher in child process(es) sharing one port (SO_REUSEPORT when ``workers`` > 1).

    Yields ``.base_url`` and ``.pids`` (for CPU accounting). Totals: ``remote_stats(base_url)``.
    """
    cmd = [sys.executable, __file__, "--port", "0", "--latency", str(latency_s), "--seed", str(seed),
           "--retry-after", str(retry_after), "--workers", str(workers)]
    if probs:
        cmd += ["--faults", json.dumps(probs)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"fake teacher did not start: {line!r}")
        parts = line.split()
        pids = [int(x) for x in parts[3].split(",")] if len(parts) > 3 else [p.pid]
        url = f"http://127.0.0.1:{int(parts[1])}/v1"
        deadline = time.time() + 10
        while True:  # every worker listening before the clock starts
            try:
                remote_stats(url)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        yield SimpleNamespace(base_url=url, pids=pids)
    finally:
        p.terminate()
        p.wait(10)


def remote_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/_stats", timeout=10) as r:
        return json.loads(r.read())


def _serve(port: int, a, shared, reuse: bool, ready) -> None:
    plan = FaultPlan(json.loads(a.faults), seed=a.seed, retry_after=a.retry_after) if a.faults else None
    kw = {}
    if a.responder == "synth":
        from synth_responder import responder

        kw["responder"] = responder
    srv = FakeTeacher(faults=plan, latency_s=a.latency, port=port, cut_at_max_tokens=a.cut_at_max_tokens, **kw)
    srv.shared, srv.reuse_port = shared, reuse
    srv.start()
    if ready is not None:
        ready.put(srv.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    finally:
        srv.stop()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Run the fault-injecting fake OpenAI-compatible server.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--faults", default=None, help='JSON {"500": 0.05, "429": 0.02}')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    ap.add_argument("--responder", choices=["default", "synth"], default="default",
                    help="synth: tests/synth_responder.py's plausible answers to synth's prompts")
    ap.add_argument("--cut-at-max-tokens", action="store_true", help="cut answers at max_tokens words (length)")
    a = ap.parse_args(argv)
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    shared = ctx.Array("q", 2) if a.workers > 1 else None
    ready = ctx.Queue()
    first = ctx.Process(target=_serve, args=(a.port, a, shared, a.workers > 1, ready), daemon=True)
    first.start()
    port = ready.get(timeout=30)
    procs = [first] + [ctx.Process(target=_serve, args=(port, a, shared, True, None), daemon=True)
                       for _ in range(a.workers - 1)]
    for pr in procs[1:]:
        pr.start()
    print(f"PORT {port} PIDS {','.join(str(pr.pid) for pr in procs)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for pr in procs:
            pr.terminate()
        for pr in procs:
            pr.join(5)


if __name__ == "__main__":
    main()
