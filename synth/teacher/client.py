"""The teacher client: every call orchard makes to a teacher LLM goes through ``Teacher``.

It speaks the OpenAI chat-completions protocol, one POST per call, through one of the HTTP paths of
``transports.py``. On top it adds what a long, paid generation run needs: bounded concurrency, retries with
exponential backoff and jitter (tenacity) that honour ``Retry-After``, several endpoints with weighted load
spreading and fall-back, a budget that stops the run cleanly (``budget.py``, ``BudgetExhausted``), and a SQLite
call log that is also the cache (``calllog.py``), so a re-run or a resumed crash never pays twice for a call that
completed. Results come back in input order, each either text or an error with its reason — never a silent empty
string.

    teacher = Teacher(TeacherConfig(base_url="http://127.0.0.1:8000/v1", model="m"), work_dir / "calls.sqlite")
    results = teacher.chat_many([ChatRequest(messages, seed=i, tag=row_id) for ...])  # input order
    manifest["teacher_usage"] = teacher.usage_summary()

A stop raises ``BudgetExhausted`` (or ``TeacherError`` for a fault a person must fix) after the calls in flight
are logged, with ``.results``. Many calls at once run through a ``CallPool`` (``pool.py``, ``Teacher.run``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import re
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable, Optional

from tenacity import (AsyncRetrying, retry_if_exception, retry_if_exception_type, stop_after_attempt,
                      wait_random_exponential)

from orchard.dataio import content_hash
from orchard.errors import BudgetExhausted

from .budget import Budget
from .calllog import CallLog
from .chat import ChatRequest, ChatResult, as_request, parse_json_text
from .config import EndpointConfig, TeacherConfig
from .errors import InterruptRequested, TeacherError
from .pool import graceful_sigint_possible, run_with_pool
from .transports import HTTPStatusError, Transport, TransportError, open_transport, resolve_transport

log = logging.getLogger(__name__)

_DUMMY_KEY = "sk-orchard-local-no-key"
# A fresh endpoint failure streak this long takes the endpoint out of rotation for a while.
_BREAKER_STREAK = 3
# This many endpoint failures in a row, before any success, mean the teacher is down: stop the run.
_DOWN_STREAK = 20
# Paid answers that are cut off (finish_reason=length) or fail the format check (JSON, ``ChatRequest.check``)
# are asked again at most this many times, a cut-off one with twice the max_tokens each time (up to the cap).
_MAX_BAD_ANSWERS = 2


# --------------------------------------------------------------------------------------------------
# Internal failure kinds


class _Retryable(Exception):
    """Worth trying again (maybe on another endpoint). ``kind``: the lost-item reason if the retries run out."""

    def __init__(self, reason: str, retry_after: Optional[float] = None, immediate: bool = False,
                 kind: str = "gave_up"):
        super().__init__(reason)
        self.reason, self.retry_after, self.immediate, self.kind = reason, retry_after, immediate, kind


class _RequestFailed(Exception):
    """This request cannot succeed as sent (HTTP 400, 422; a refusal; answers cut off again and again): recorded
    as its error with ``kind`` (``ChatResult.reason``), the run goes on."""

    def __init__(self, message: str, kind: str = "request_failed"):
        super().__init__(message)
        self.kind = kind


class _Endpoint:
    """One endpoint's state in this session: what it was learnt to accept, and its failures."""

    def __init__(self, idx: int, cfg: EndpointConfig):
        self.idx, self.cfg, self.host = idx, cfg, cfg.host
        self.supports_json: Optional[bool] = None  # learnt: None until tried
        # Newer OpenAI models reject `max_tokens` and want `max_completion_tokens`: learnt on the first 400.
        self.max_tokens_param = "max_tokens"
        self.dead: Optional[str] = None  # why it was taken out for good (401/403/404)
        self.streak = 0
        self.down_until = 0.0
        self.requests = 0
        self.failures = 0


class _LoopState:
    """Things bound to one asyncio event loop (each chat_many call runs its own)."""

    def __init__(self, n: int, transport: Transport):
        self.sem = asyncio.Semaphore(n)
        self.transport = transport  # its HTTP connections belong to this loop
        self.inflight: dict[str, asyncio.Future] = {}
        # Group commit: rows of calls finishing in the same loop turn share one SQLite transaction.
        self.rows: list[dict] = []
        self.commit: Optional[asyncio.Future] = None


# --------------------------------------------------------------------------------------------------
# The client


class Teacher:
    """A teacher LLM behind one or more OpenAI-compatible endpoints.

    ``log_path``: the SQLite call log / cache (None: in memory, this session only). ``use_cache=False``
    makes every call afresh (still logged). ``transport``: ``auto`` takes the config's (see ``transports.py``).
    """

    def __init__(self, config: TeacherConfig, log_path: Optional[Path | str] = None, use_cache: bool = True,
                 transport: str = "auto"):
        self.config = config
        self.use_cache = use_cache
        self.endpoints = [_Endpoint(i, e) for i, e in enumerate(config.resolved_endpoints())]
        self.transport = resolve_transport(config.transport if transport == "auto" else transport,
                                           [e.cfg for e in self.endpoints])
        self.log = CallLog(log_path)
        self.log_path = None if log_path is None else Path(log_path)
        # The cache key names the model(s), not hosts: replicas of one model share cached answers.
        self.model_id = "|".join(sorted({e.cfg.model for e in self.endpoints}))
        self._rng = random.Random()
        # Per event loop (chat_many runs its own; callers may use several threads): semaphore, connections.
        self._states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]" = weakref.WeakKeyDictionary()
        self._pending_hits: list[dict] = []
        self._stop: Optional[BaseException] = None
        # What this output's call log already paid in earlier runs: budgets count it, so a re-run with the same
        # budget pays nothing new once it is spent.
        paid = self.log.paid() if use_cache else {"calls": 0, "tokens": 0, "cost_usd": 0.0}
        self._budget = Budget(config.budget, paid, self.log_path)
        self._fail_streak = 0  # endpoint failures in a row, over all calls
        self._t0 = time.time()
        self._u = {
            "calls": 0,  # logical calls that reached the network
            "http_requests": 0,
            "ok": 0,
            "errors": 0,
            "cache_hits": 0,
            "deduped": 0,
            "usage_estimated": 0,  # responses without `usage`: tokens estimated from characters
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "retries": {},
        }

    # -- public API ----------------------------------------------------------------------------------
    def chat_many(self, requests: Iterable[ChatRequest | dict], progress: bool = True) -> list[ChatResult]:
        """Run many requests with bounded concurrency on their own event loop (in a thread if one is already
        running), through a ``CallPool``; results in input order. On BudgetExhausted or TeacherError the calls in
        flight finish (and are logged), then the error is raised with ``.results`` holding the results so far
        (None where not run); Ctrl-C lets the calls in flight land in the log first (``pool.py``)."""
        reqs = list(requests)
        return self.run(lambda pool: pool.gather(reqs, progress=progress))

    def run(self, main):
        """``main(pool)``, a coroutine function given a ``pool.CallPool``, on a fresh event loop (in a thread
        if one is already running); returns what it returns. On a budget stop, a fatal teacher error or Ctrl-C
        the calls in flight finish and are logged first; Ctrl-C then raises ``TeacherInterrupted``."""
        self._stop = None
        return _run_sync(lambda in_thread: run_with_pool(
            self, main, graceful_sigint=not in_thread and graceful_sigint_possible()))

    def chat(self, messages: list[dict], **kw) -> ChatResult:
        """Synchronous single call."""
        own = {k: kw.pop(k) for k in ("seed", "sample", "tag", "json") if k in kw}
        return self.chat_many([ChatRequest(messages=messages, params=kw, **own)], progress=False)[0]

    async def achat(self, messages: list[dict], *, seed: Optional[int] = None, sample: int = 0,
                    tag: Optional[str] = None, json: Optional[bool] = None, **params) -> ChatResult:
        """One chat completion on the running loop (cached, retried, budgeted). Raises BudgetExhausted or
        TeacherError. Call ``aclose`` on that loop when done."""
        req = as_request(ChatRequest(messages=messages, params=params, seed=seed, sample=sample, tag=tag, json=json))
        try:
            return await self.send(req)
        finally:
            self._flush_hits()

    async def send(self, req: ChatRequest) -> ChatResult:
        """One checked request (``chat.as_request``) on the running loop: from the cache, shared with the same
        request in flight, or paid (budget checked, retried), its outcome committed to the call log before it
        returns. Raises the error that stops the run (``errors.RUN_STOPS``). The pool's workers call this."""
        st = self._loop_state()
        key = self.request_key(req)
        if self.use_cache:
            row = self.log.lookup(key, truncated_ok=req.cut_ok is not None)
            if row is not None:
                return self._from_cache(row, req, key)
        # The same request twice in one batch: pay once, share the answer.
        if key in st.inflight:
            self._u["deduped"] += 1
            res = await asyncio.shield(st.inflight[key])
            return dataclasses.replace(res, tag=req.tag, cached=True)
        fut = asyncio.get_running_loop().create_future()
        st.inflight[key] = fut
        try:
            async with st.sem:
                if self._stop is not None:
                    raise self._stop
                try:
                    self._budget.check(self._u)
                except BudgetExhausted as e:
                    raise self.stop(e)
                self._budget.started += 1
                res = await self._call(req, key, st)
            # Durable before anyone uses it: a kill after this line loses nothing paid for.
            await self._record(req, key, res, st)
            fut.set_result(res)
            return res
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # mark retrieved: nobody may be waiting
            raise
        finally:
            st.inflight.pop(key, None)

    # -- stopping a run (the pool, the budget and fatal errors) -------------------------------------
    @property
    def stop_error(self) -> Optional[BaseException]:
        """The error that stops the current run (None while it runs): calls not yet sent fail with it."""
        return self._stop

    def stop(self, error: BaseException) -> BaseException:
        """Stop the current run with ``error`` unless it is already stopped; returns the error that stops it.
        Calls in flight finish; calls waiting for a slot or an endpoint fail with it."""
        if self._stop is None:
            self._stop = error
        return self._stop

    @property
    def budget_reason(self) -> Optional[str]:
        """Why the budget stopped this session (``max_calls=60 reached``), or None."""
        return self._budget.why

    def budget_message(self) -> str:
        """Why the budget stopped the run, with exact counts of what was paid for this output (call this after
        the calls in flight landed, as the pool does, for final numbers)."""
        return self._budget.message(self._u)

    # -- usage, keys, closing ------------------------------------------------------------------------
    def usage_summary(self) -> dict:
        """Usage of this session, JSON-ready for a manifest (no keys, hosts only)."""
        u = dict(self._u)
        u["retries"] = dict(self._u["retries"])
        u["cost_usd"] = round(u["cost_usd"], 6)
        u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
        u["elapsed_s"] = round(time.time() - self._t0, 3)
        u["teacher"] = self.config.provenance()
        u["transport"] = self.transport
        u["endpoints"] = [
            {"host": e.host, "model": e.cfg.model, "requests": e.requests, "failures": e.failures,
             "json_mode": e.supports_json, "disabled": e.dead}
            for e in self.endpoints
        ]
        if self.log_path is not None:
            u["call_log"] = str(self.log_path)
        return u

    def request_key(self, req: ChatRequest) -> str:
        """The cache key of a request: model(s), messages, effective sampling params, seed, sample, JSON mode."""
        key = {"model": self.model_id, "messages": req.messages, "params": self._params(req),
               "seed": self._seed(req), "sample": req.sample, "json": self._json(req)}
        if req.prompt is not None:  # only then: the keys of chat requests stay what they were
            key["prompt"] = req.prompt
        return content_hash(key, n=32)

    async def aclose(self) -> None:
        """Close this event loop's HTTP connections and log pending cache hits (for ``achat`` users; ``run`` and
        ``chat_many`` do it themselves)."""
        st = self._states.pop(asyncio.get_running_loop(), None)
        if st is not None:
            await st.transport.aclose()
        self._flush_hits()

    def close(self) -> None:
        self._flush_hits()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one request ---------------------------------------------------------------------------------
    async def _call(self, req: ChatRequest, key: str, st: _LoopState) -> ChatResult:
        cfg = self.config
        acc = {"prompt_tokens": 0, "completion_tokens": 0, "attempts": 0, "last_ep": None}
        t0 = time.perf_counter()
        self._u["calls"] += 1
        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.max_retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(_Retryable) & retry_if_exception(self._not_interrupted),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    res = await self._attempt(req, st, acc)
        except _Retryable as e:
            res = ChatResult(error=f"gave up after {acc['attempts']} attempts: {e.reason}", reason=e.kind)
        except _RequestFailed as e:
            res = ChatResult(error=str(e), reason=e.kind)
        res.key, res.tag, res.attempts = key, req.tag, acc["attempts"]
        res.latency_s = time.perf_counter() - t0
        res.usage = {"prompt_tokens": acc["prompt_tokens"], "completion_tokens": acc["completion_tokens"]}
        res.cost_usd = self._budget.cost(acc["prompt_tokens"], acc["completion_tokens"])
        if res.endpoint is None and acc["last_ep"] is not None:
            res.endpoint, res.model = acc["last_ep"].host, acc["last_ep"].cfg.model
        return res

    async def _attempt(self, req: ChatRequest, st: _LoopState, acc: dict) -> ChatResult:
        ep = await self._pick_endpoint(avoid=acc["last_ep"])
        acc["last_ep"] = ep
        acc["attempts"] += 1
        ep.requests += 1
        self._u["http_requests"] += 1
        want_json = self._json(req)
        raw = req.prompt is not None
        kwargs = {"model": ep.cfg.model, **({"prompt": req.prompt} if raw else {"messages": req.messages}),
                  **self._params(req)}
        if acc.get("max_tokens") and "max_tokens" in kwargs:
            # The last answer was cut off: the same budget would cut it off again (and be paid again).
            kwargs["max_tokens"] = acc["max_tokens"]
        if ep.max_tokens_param != "max_tokens" and "max_tokens" in kwargs:
            kwargs[ep.max_tokens_param] = kwargs.pop("max_tokens")
        seed = self._seed(req)
        if seed is not None:
            kwargs["seed"] = seed
        use_rf = want_json and ep.supports_json is not False and not raw
        if use_rf:
            kwargs["response_format"] = {"type": "json_object"}
        try:
            data = await st.transport.post(ep.cfg, "/completions" if raw else "/chat/completions", kwargs,
                                           self._api_key(ep))
        except TransportError as e:
            raise self._fail(ep, e.reason)
        except HTTPStatusError as e:
            raise self._status_error(e, ep, use_rf)

        usage = data.get("usage") if isinstance(data, dict) else None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise self._fail(ep, f"response without choices ({ep.host})")
        msg = ({"content": choices[0].get("text")} if raw else choices[0].get("message")) or {}
        text = msg.get("content") if isinstance(msg, dict) else None
        finish = choices[0].get("finish_reason")
        self._count_usage(acc, usage, req.prompt_messages(), text)
        refusal = msg.get("refusal") if isinstance(msg, dict) else None
        if refusal or finish == "content_filter":
            # A refusal is an answer, and asking again would pay again for the same one.
            raise _RequestFailed(f"teacher refused ({finish}): {str(refusal or '')[:200]}", kind="refused")
        if not isinstance(text, str) or not text.strip():
            if finish == "length":
                # All tokens went elsewhere (e.g. hidden reasoning): the same request would end the same way.
                raise _RequestFailed("empty completion with finish_reason=length: raise max_tokens", kind="truncated")
            raise self._fail(ep, f"empty completion (finish_reason={finish}) ({ep.host})")
        if use_rf and ep.supports_json is None:
            ep.supports_json = True
        self._check_answer(req, text, finish, kwargs.get(ep.max_tokens_param), acc, ep, want_json)
        ep.streak = 0
        self._fail_streak = 0
        return ChatResult(text=text, finish_reason=finish, model=data.get("model") or ep.cfg.model, endpoint=ep.host)

    def _check_answer(self, req: ChatRequest, text: str, finish, sent_max: Optional[int], acc: dict,
                      ep: _Endpoint, want_json: bool) -> None:
        """Raise if a paid answer is cut off (finish_reason=length) or stops inside its format (JSON, the
        request's ``check``): it is asked again, a cut-off one with twice the max_tokens up to the cap; after
        ``_MAX_BAD_ANSWERS`` more answers it is recorded as failed. Never returned, so never cached as good."""
        problem, kind = None, "bad_format"
        if finish == "length" and not (req.cut_ok is not None and req.cut_ok(text)):
            problem, kind = f"truncated (finish_reason=length at max_tokens={sent_max})", "truncated"
        elif want_json:
            try:
                parse_json_text(text)
            except ValueError:
                problem = "invalid JSON in completion"
        elif req.check is not None:
            problem = req.check(text)
        if not problem:
            return
        acc["bad_answers"] = acc.get("bad_answers", 0) + 1
        cap = None
        if kind == "truncated" and sent_max:
            cap = req.max_tokens_cap or self.config.max_tokens_cap or 4 * int(self._params(req).get("max_tokens")
                                                                              or sent_max)
            acc["max_tokens"] = min(cap, 2 * int(sent_max))
        # Each of these answers was paid for: ask again, but only a couple of times, and never with a budget
        # that already gave a cut-off answer (the same request would be cut off again).
        if acc["bad_answers"] > _MAX_BAD_ANSWERS or (cap is not None and int(sent_max) >= cap):
            raise _RequestFailed(f"{problem}, {acc['bad_answers']} answers in a row: not asking again", kind=kind)
        raise self._fail(ep, problem, endpoint_fault=False, kind=kind)

    def _count_usage(self, acc: dict, usage, messages: list[dict], text) -> None:
        """Add a response's tokens; servers that omit ``usage`` get a chars/4 estimate so budgets still hold."""
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            acc["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            acc["completion_tokens"] += int(usage.get("completion_tokens") or 0)
            return
        self._u["usage_estimated"] += 1
        acc["prompt_tokens"] += sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
        acc["completion_tokens"] += len(text) // 4 + 1 if isinstance(text, str) else 0

    # -- failures, retries, endpoints ----------------------------------------------------------------
    def _fail(self, ep: _Endpoint, reason: str, retry_after: Optional[float] = None,
              endpoint_fault: bool = True, alive: bool = False, kind: str = "gave_up") -> Exception:
        """Count a failed attempt; the retryable error to raise, or TeacherError when the teacher seems down.

        ``endpoint_fault``: the endpoint misbehaved (not the answer's content). ``alive``: it answered
        sensibly (429), so it does not count towards "the teacher is down".
        """
        ep.failures += 1
        what = reason.split(" (")[0].split(":")[0]
        self._u["retries"][what] = self._u["retries"].get(what, 0) + 1
        now = time.monotonic()
        if retry_after is not None:
            # The endpoint asked everyone to back off: keep all requests off it until then.
            ep.down_until = max(ep.down_until, now + min(retry_after, self.config.max_retry_after_s))
        if endpoint_fault and not alive:
            self._fail_streak += 1
        if retry_after is None and endpoint_fault:
            ep.streak += 1
            if ep.streak >= _BREAKER_STREAK and len(self.endpoints) > 1:
                ep.down_until = max(ep.down_until, now + min(30.0, 0.5 * 2 ** (ep.streak - _BREAKER_STREAK)))
        reason = self._redact(reason)
        log.debug("teacher retry: %s", reason)
        if self._fail_streak >= max(_DOWN_STREAK, 3 * self.config.max_concurrency):
            # Everything fails, over many requests: a down server or a wrong URL. Retrying each remaining
            # request with backoff would take hours to say so; stop (resumable) and say it now.
            return TeacherError(f"teacher failing: {self._fail_streak} failed attempts in a row over all "
                                f"endpoints (last: {reason}); completed calls are saved, re-run to resume")
        return _Retryable(reason, retry_after=retry_after, kind=kind)

    def _status_error(self, e: HTTPStatusError, ep: _Endpoint, used_rf: bool) -> Exception:
        code, detail = e.status, self._redact(e.detail)
        if code == 429:
            ra = e.retry_after
            cap = self.config.max_retry_after_s
            if ra is not None and ra > cap:
                # A quota, not a hiccup (e.g. "retry after 86400"): stalling the run for it helps nobody.
                self._fail(ep, f"rate limited 429 ({ep.host})", alive=True)
                ep.down_until = time.monotonic() + ra
                now = time.monotonic()
                if not any(x.dead is None and x.down_until <= now for x in self.endpoints):
                    return TeacherError(
                        f"{ep.host} rate-limits us for {ra:.0f} s (over max_retry_after_s={cap:g}); completed "
                        "calls are saved: re-run later to resume"
                    )
                return _Retryable(f"rate limited 429 for {ra:.0f} s ({ep.host})", immediate=True)
            return self._fail(ep, f"rate limited 429 ({ep.host})", retry_after=ra, alive=True)
        if code in (408, 409) or code >= 500:
            return self._fail(ep, f"server error {code} ({ep.host})", retry_after=e.retry_after)
        if code in (400, 422) and used_rf and re.search(r"response_format|json", detail, re.I):
            # The endpoint cannot do JSON mode: remember, and ask again without it (prompt still asks JSON).
            ep.supports_json = False
            log.info("%s rejects response_format=json_object; asking for JSON in the prompt only", ep.host)
            return _Retryable("endpoint rejected response_format", immediate=True)
        if code == 400 and ep.max_tokens_param == "max_tokens" and "max_completion_tokens" in detail:
            ep.max_tokens_param = "max_completion_tokens"
            log.info("%s wants max_completion_tokens instead of max_tokens; switching", ep.host)
            return _Retryable("endpoint wants max_completion_tokens", immediate=True)
        if code in (401, 403, 404):
            what = {401: "rejected the API key", 403: "refused access", 404: "does not know this URL or model"}[code]
            ep.dead = (
                f"{ep.host} {what} (HTTP {code}; model {ep.cfg.model!r}, key from ${ep.cfg.api_key_env}): {detail}"
            )
            if any(x.dead is None for x in self.endpoints):
                return _Retryable(f"endpoint disabled: HTTP {code} ({ep.host})", immediate=True)
            return TeacherError("teacher unusable: " + "; ".join(x.dead for x in self.endpoints))
        return _RequestFailed(f"HTTP {code} from {ep.host} (not retried): {detail}")

    def _not_interrupted(self, _exc) -> bool:
        # After Ctrl-C a call in flight gets no more attempts: the stop waits at most one request timeout.
        return not isinstance(self._stop, InterruptRequested)

    def _wait(self, retry_state) -> float:
        exc = retry_state.outcome.exception()
        if isinstance(exc, _Retryable):
            if exc.immediate:
                return 0.0
            if exc.retry_after is not None and not self._other_endpoint_up():
                # Honour Retry-After as given (capped), plus a little jitter so waiters don't stampede.
                ra = min(exc.retry_after, self.config.max_retry_after_s)
                return ra + self._rng.uniform(0, min(0.05 * ra, 1.0))
        return wait_random_exponential(multiplier=self.config.backoff_base_s, max=self.config.backoff_max_s)(
            retry_state
        )

    def _other_endpoint_up(self) -> bool:
        now = time.monotonic()
        return sum(1 for e in self.endpoints if e.dead is None and e.down_until <= now) > 0 and len(self.endpoints) > 1

    async def _pick_endpoint(self, avoid: Optional[_Endpoint]) -> _Endpoint:
        while True:
            alive = [e for e in self.endpoints if e.dead is None]
            if not alive:
                raise TeacherError("teacher unusable: " + "; ".join(x.dead for x in self.endpoints))
            now = time.monotonic()
            up = [e for e in alive if e.down_until <= now]
            if not up:
                # Everyone asked us to back off (Retry-After) or is cooling down: wait for the first,
                # in short naps so that a run being stopped (budget, fatal error) is not held up.
                await asyncio.sleep(min(min(e.down_until for e in alive) - now, 0.5))
                if self._stop is not None:
                    raise self._stop
                continue
            if avoid is not None and len(up) > 1 and avoid in up:
                up.remove(avoid)
            if len(up) == 1:
                return up[0]
            return self._rng.choices(up, weights=[e.cfg.weight for e in up])[0]

    def _api_key(self, ep: _Endpoint) -> str:
        key = os.environ.get(ep.cfg.api_key_env)
        if not key:
            if not ep.cfg.is_local:
                raise TeacherError(f"environment variable {ep.cfg.api_key_env} is not set (the API key for {ep.host})")
            key = _DUMMY_KEY  # local servers rarely check keys; the SDK insists on one
        return key

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        st = self._states.get(loop)
        if st is None:
            st = self._states[loop] = _LoopState(self.config.max_concurrency,
                                                 open_transport(self.transport, self.config.timeout_s))
        return st

    # -- params, bookkeeping -------------------------------------------------------------------------
    def _params(self, req: ChatRequest) -> dict:
        c = self.config
        p = {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens}
        p.update({k: v for k, v in req.params.items() if v is not None})
        return p

    def _seed(self, req: ChatRequest) -> Optional[int]:
        return self.config.seed if req.seed is None else req.seed

    def _json(self, req: ChatRequest) -> bool:
        return self.config.response_format_json if req.json is None else bool(req.json)

    async def _record(self, req: ChatRequest, key: str, res: ChatResult, st: _LoopState) -> None:
        """Log the outcome and wait until it is committed (batched with others finishing now)."""
        st.rows.append(self._row(req, key, res))
        if st.commit is None:
            st.commit = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._commit_rows, st)
        await asyncio.shield(st.commit)

    def _commit_rows(self, st: _LoopState) -> None:
        rows, fut = st.rows, st.commit
        st.rows, st.commit = [], None
        try:
            self.log.record_many(rows)
        except BaseException as e:  # every waiter sees the failure; nothing is used uncommitted
            fut.set_exception(e)
            fut.exception()
        else:
            fut.set_result(None)

    def _row(self, req: ChatRequest, key: str, res: ChatResult) -> dict:
        u = self._u
        u["prompt_tokens"] += res.usage["prompt_tokens"]
        u["completion_tokens"] += res.usage["completion_tokens"]
        u["cost_usd"] += res.cost_usd
        u["ok" if res.ok else "errors"] += 1
        request = {"model": self.model_id, "messages": req.messages, "params": self._params(req),
                   "seed": self._seed(req), "sample": req.sample, "json": self._json(req)}
        if req.prompt is not None:
            request["prompt"] = req.prompt
        return dict(
            key=key, status="ok" if res.ok else "error", cached=0, model=res.model, endpoint=res.endpoint,
            tag=req.tag, request_json=request, response_text=res.text, finish_reason=res.finish_reason,
            prompt_tokens=res.usage["prompt_tokens"], completion_tokens=res.usage["completion_tokens"],
            cost_usd=res.cost_usd, latency_s=res.latency_s, attempts=res.attempts, error=res.error, ts=time.time(),
        )

    def _from_cache(self, row: dict, req: ChatRequest, key: str) -> ChatResult:
        self._u["cache_hits"] += 1
        # Cache hits are free and need not be durable: logged in batches.
        self._pending_hits.append({"key": key, "status": "ok", "cached": 1, "model": row["model"],
                                   "endpoint": row["endpoint"], "tag": req.tag, "ts": time.time()})
        if len(self._pending_hits) >= 256:
            self._flush_hits()
        return ChatResult(
            text=row["response_text"], finish_reason=row["finish_reason"], cached=True, attempts=0,
            usage={"prompt_tokens": 0, "completion_tokens": 0}, model=row["model"], endpoint=row["endpoint"],
            key=key, tag=req.tag, latency_s=0.0,
        )

    def _flush_hits(self) -> None:
        if self._pending_hits:
            rows, self._pending_hits = self._pending_hits, []
            self.log.record_many(rows)

    def _redact(self, text: str) -> str:
        for e in self.endpoints:
            k = os.environ.get(e.cfg.api_key_env)
            if k and len(k) >= 4:
                text = text.replace(k, "***")
        # Servers echo masked keys (sk-ab***yz) in 401 messages: drop those too.
        text = re.sub(r"\b(sk|key|api)[-_][A-Za-z0-9_\-\*\.]{4,}", r"\1-***", text)
        return re.sub(r"(?i)bearer\s+\S+", "Bearer ***", text)


def _run_sync(make_coro):
    """asyncio.run(make_coro(False)), or make_coro(True) in a helper thread when the caller already runs a loop
    (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro(False))
    box: dict = {}

    def target():
        try:
            box["v"] = asyncio.run(make_coro(True))
        except BaseException as e:  # re-raised in the caller's thread
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]
