"""Teacher calls kept in flight on one event loop, by priority, with a Ctrl-C that never pays twice.

``Teacher.run(main)`` runs ``main(pool)`` on a fresh event loop with a ``CallPool`` (through ``run_with_pool``):
``max_concurrency`` workers take requests from a priority queue (lower number first, first come first served
among equals), so a caller can keep every slot busy with work of several kinds (Self-Instruct: the next round's
bootstrap calls first, the instance calls of tasks already accepted in the gaps) instead of waiting for the slowest
call of a batch. ``Teacher.chat_many`` goes through the same pool.

Ctrl-C (SIGINT, when run from the main thread): the first one stops new calls from starting, lets the calls in
flight finish and be committed to the call log (at most the request timeout, ``timeout_s``, plus a second), then
the run raises ``TeacherInterrupted`` (a ``KeyboardInterrupt``): nothing that the server answered is lost, so
the same command resumes without paying for any completed call again. A second Ctrl-C aborts at once.
Budget stops and fatal teacher errors drain the calls in flight the same way before they are raised.

The pool drives a teacher through its public run API (``send``, ``stop``, ``stop_error``, ``budget_reason``,
``budget_message``, ``aclose``) and does not import the client, which imports it.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import sys
import threading
from typing import Awaitable, Callable, Iterable, Optional, TypeVar

from orchard.errors import BudgetExhausted

from .chat import ChatRequest, as_request
from .errors import RUN_STOPS, InterruptRequested, TeacherInterrupted

T = TypeVar("T")


class CallPool:
    """Workers running a Teacher's requests from a priority queue; see the module docstring."""

    def __init__(self, teacher, workers: int):
        self.teacher = teacher
        self._queue: asyncio.PriorityQueue = asyncio.PriorityQueue()
        self._order = itertools.count()  # ties in priority: first submitted, first sent
        self._running: set[asyncio.Future] = set()
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(max(1, workers))]

    def submit(self, req: ChatRequest | dict, priority: int = 0) -> asyncio.Future:
        """Queue one request; the future gets its ChatResult (or the error that stopped the run)."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((priority, next(self._order), as_request(req), fut))
        return fut

    async def gather(self, requests: Iterable, priority: int = 0, progress: bool = False) -> list:
        """All results in input order. A budget stop, fatal error or Ctrl-C raises once the calls in flight are
        done, with ``.results`` holding the results so far (None where not run)."""
        futs = [self.submit(r, priority) for r in requests]
        if not futs:
            return []
        bar = progress_bar(len(futs), progress)
        if bar is not None:
            for f in futs:
                f.add_done_callback(lambda _f: bar.update(1))
        try:
            await asyncio.wait(futs)  # every future ends: a stop fails the queued ones at once
        finally:
            if bar is not None:
                bar.close()
        errs = [f.exception() for f in futs if not f.cancelled() and f.exception() is not None]
        if errs:
            await self.drain()
            # The error that stopped the run (the first one raised), else this batch's first.
            stop = self.teacher.stop_error
            err = stop if stop is not None and any(e is stop for e in errs) else errs[0]
            _final_counts(err, self.teacher)
            err.results = [f.result() if f.done() and not f.cancelled() and f.exception() is None else None
                           for f in futs]
            raise err
        return [f.result() for f in futs]

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def drain(self, timeout: Optional[float] = None) -> int:
        """Wait until no call is in flight (at most ``timeout`` s, default the request timeout + 1 s); returns
        how many calls were still running when it gave up."""
        if not self._running:
            return 0
        if timeout is None:
            timeout = self.teacher.config.timeout_s + 1.0
        _, pending = await asyncio.wait(set(self._running), timeout=timeout)
        return len(pending)

    async def close(self) -> None:
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            *_, fut = self._queue.get_nowait()
            fut.cancel()

    async def _work(self) -> None:
        t = self.teacher
        loop = asyncio.get_running_loop()
        while True:
            _, _, req, fut = await self._queue.get()
            if fut.done():  # its caller gave up on it (cancelled) before it was sent
                continue
            if t.stop_error is not None:  # stopped: what was not started fails at once, nothing new is sent
                _fail(fut, t.stop_error)
                continue
            # The call itself is tracked, not ``fut``: a caller may cancel fut, the call still lands in the log.
            running = loop.create_future()
            self._running.add(running)
            try:
                res = await t.send(req)
            except RUN_STOPS as e:
                t.stop(e)  # calls waiting for a slot or an endpoint stop too
                _fail(fut, e)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as e:  # noqa: BLE001  handed to whoever awaits this request
                _fail(fut, e)
            else:
                if not fut.done():
                    fut.set_result(res)
            finally:
                self._running.discard(running)
                running.set_result(None)


def _final_counts(err: BaseException, teacher) -> None:
    """A budget stop's message counts the calls that were still in flight when it was raised."""
    if isinstance(err, BudgetExhausted) and teacher.budget_reason:
        err.args = (teacher.budget_message(),)


def _fail(fut: asyncio.Future, e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)
        fut.exception()  # retrieved: a caller that stopped waiting must not log "never retrieved"


class _CtrlC:
    """First SIGINT: stop the teacher gracefully (see the module docstring); the second: the default handler
    raises KeyboardInterrupt wherever the program is, aborting at once."""

    def __init__(self, teacher, pool: CallPool, enabled: bool):
        self.teacher, self.pool, self.fired = teacher, pool, False
        self.loop = asyncio.get_running_loop()
        self.enabled = enabled
        if enabled:
            self.loop.add_signal_handler(signal.SIGINT, self._first)

    def _first(self) -> None:
        self.fired = True
        self.loop.remove_signal_handler(signal.SIGINT)  # back to the default: a second Ctrl-C raises at once
        t = self.teacher
        t.stop(InterruptRequested("interrupted (Ctrl-C)"))
        print(f"\ninterrupt: finishing the {self.pool.in_flight} teacher calls in flight (at most "
              f"{t.config.timeout_s:g} s) so that none is paid twice; Ctrl-C again aborts now",
              file=sys.stderr, flush=True)

    def remove(self) -> None:
        if self.enabled and not self.fired:
            self.loop.remove_signal_handler(signal.SIGINT)


async def run_with_pool(teacher, main: Callable[[CallPool], Awaitable[T]], graceful_sigint: bool) -> T:
    """``main(pool)`` on the running loop (``Teacher.run`` calls this, having cleared the teacher's stop); drains
    calls in flight on any error; turns a Ctrl-C stop into TeacherInterrupted once they are saved."""
    pool = CallPool(teacher, teacher.config.max_concurrency)
    ctrl_c = _CtrlC(teacher, pool, graceful_sigint)
    left, failed, result = 0, False, None
    try:
        result = await main(pool)
    except asyncio.CancelledError:  # aborted (a second Ctrl-C): nothing to wait for
        raise
    except BaseException as e:
        failed = True
        teacher.stop(e)  # nothing new is sent while the calls in flight finish
        left = await pool.drain()  # budget stop, fatal error or Ctrl-C: the calls in flight land in the log
        _final_counts(e, teacher)
        if not ctrl_c.fired:
            raise
    finally:
        ctrl_c.remove()
        await pool.close()
        await teacher.aclose()  # also logs the cache hits not yet written
    if failed:  # only after a Ctrl-C: the work was cut short, and everything paid for is saved
        where = f" in {teacher.log_path}" if teacher.log_path else ""
        lost = f"; {left} calls still running after the timeout were dropped" if left else ""
        raise TeacherInterrupted(f"interrupted: every completed teacher call is saved{where}{lost}; "
                                 "run the same command again to resume without paying for them twice")
    return result


def graceful_sigint_possible() -> bool:
    """True where a loop signal handler can take Ctrl-C: the main thread, with Python's default handler."""
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def progress_bar(total: int, enabled: bool):
    """A tqdm bar over ``total`` teacher calls, or None when disabled or there is nothing to count."""
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="teacher", unit="call", leave=False)
