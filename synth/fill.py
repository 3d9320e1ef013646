"""Generation until ``num`` pairs: the loop every instruction method runs under, so that ``num`` means pairs written.

A method cuts its work into *units* in a fixed order (a Self-Instruct bootstrap prompt, one seed's evolution
chain, one document chunk), each a paid call that yields *candidates* (new instructions), and finishes each
candidate with its own calls (a response). ``fill`` starts units and finishes candidates in that order, only as
many as could still be needed if everything in flight succeeded, and keeps the first ``num`` rows that pass every
filter. So nothing is paid for only to be thrown away as over target: a lost or filtered item makes room for the
next one, and the last unit's extra candidates (asked for in the same call) are the only ones left unused.

Results are taken strictly in order, so the rows kept, the ledger and the requests sent do not depend on which
call lands first; each unit's and candidate's requests depend only on its own place in the order (and on the
answers it is built from), never on another item's fault, so a faulty run resumed on a healthy teacher converges
on the clean run's rows.

A budget stop ends the loop with what it has (``stopped_by`` says why); Ctrl-C and fatal teacher errors raise.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from orchard.errors import BudgetExhausted

from .ledger import Ledger


class Method:
    """What ``fill`` needs from a generation method (see the module docstring). ``accept`` and ``conclude`` run
    in order and write the ledger; ``fetch`` and ``finish`` only make calls."""

    per_unit: int = 1  # the most candidates one unit usually yields (how many units to start at once)
    cap: str = ""  # what ends ``units()`` (said when it stops the run short), e.g. "max_rounds=50"

    def start(self, seeds: list[dict]) -> None:
        self.seeds = seeds

    def run(self, seeds: list[dict], keep: Callable[[list[dict]], list[dict]], progress: bool = True) -> "FillResult":
        """Generate on the teacher's event loop (``self.teacher``) until ``self.cfg.num`` rows pass ``keep``."""
        self.start(seeds)
        return self.teacher.run(lambda pool: fill(pool, self, self.cfg.num, keep, self.ledger, progress))

    def units(self) -> Iterator[Any]:
        raise NotImplementedError

    async def fetch(self, pool, unit) -> Any:
        raise NotImplementedError

    def started(self, unit, task: asyncio.Future) -> None:
        """``unit``'s fetch is under way as ``task`` (for units whose requests are built from others' answers)."""

    def accept(self, unit, answer) -> list:
        raise NotImplementedError

    async def finish(self, pool, cand) -> Any:
        return None

    def conclude(self, cand, result) -> Optional[dict]:
        raise NotImplementedError

    def candidate_text(self, cand) -> str:
        raise NotImplementedError


@dataclass
class FillResult:
    rows: list[dict] = field(default_factory=list)
    stopped_by: Optional[str] = None  # a budget's message when it stopped the run
    exhausted: bool = False  # the method had no more units (its cap)


class _Item:
    """A unit or candidate with its place in the order (``key``) and, once started, its task."""

    __slots__ = ("key", "obj", "task")

    def __init__(self, key: tuple, obj: Any):
        self.key, self.obj, self.task = key, obj, None


async def fill(pool, method: Method, num: int, keep: Callable[[list[dict]], list[dict]], ledger: Ledger,
               progress: bool = False) -> FillResult:
    """Run ``method`` until ``num`` rows pass ``keep`` (which records what it drops), its units run out, or a
    budget stops it."""
    from .teacher import progress_bar

    out = FillResult()
    units = iter(method.units())
    fetching: deque[_Item] = deque()  # units under way, in order
    waiting: deque[_Item] = deque()  # candidates not started yet, in order
    finishing: deque[_Item] = deque()  # candidates under way, in order
    bar = progress_bar(num, progress)
    k = 0
    try:
        while len(out.rows) < num:
            _take_done(method, fetching, finishing, waiting, out, num, keep, ledger, bar)
            if len(out.rows) >= num:
                break
            if out.stopped_by is None:
                while waiting and len(out.rows) + len(finishing) < num:
                    c = waiting.popleft()
                    c.task = asyncio.ensure_future(method.finish(pool, c.obj))
                    finishing.append(c)
                # Start a unit only if what is under way could not reach num even if all of it succeeded.
                could = len(out.rows) + len(finishing) + len(waiting) + method.per_unit * len(fetching)
                while could < num and not out.exhausted:
                    unit = next(units, None)
                    if unit is None:
                        out.exhausted = True
                        break
                    u = _Item((k,), unit)
                    k += 1
                    u.task = asyncio.ensure_future(method.fetch(pool, unit))
                    method.started(unit, u.task)
                    fetching.append(u)
                    could += method.per_unit
            heads = [q[0].task for q in (fetching, finishing) if q]
            if not heads:
                break  # nothing under way and nothing more to start
            # Results are taken in order: the heads decide when the next step can happen.
            await asyncio.wait(heads, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _cancel([x.task for x in (*fetching, *finishing)])
        raise
    finally:
        if bar is not None:
            bar.close()
    # Whatever is still under way is not needed: num was reached, or the budget stopped the run.
    await _cancel([x.task for x in (*fetching, *finishing)])
    if out.stopped_by is not None and getattr(pool.teacher, "budget_reason", None):
        out.stopped_by = pool.teacher.budget_message()  # now that the calls in flight have landed: exact counts
    why = "unused:num_reached" if len(out.rows) >= num else "stopped:budget"
    for c in (*finishing, *waiting):
        _reject(method, ledger, c, why)
    return out


def _take_done(method, fetching, finishing, waiting, out, num, keep, ledger, bar) -> None:
    """Take every finished head, in order: candidates (they may complete num), then units."""
    while True:
        if finishing and finishing[0].task.done() and len(out.rows) < num:
            c = finishing.popleft()
            err = _stop_error(c.task)
            if err is not None:
                out.stopped_by = out.stopped_by or str(err)
                _reject(method, ledger, c, "stopped:budget")
                continue
            with ledger.at(c.key):
                row = method.conclude(c.obj, c.task.result())
                got = keep([row]) if row is not None else []
            out.rows += got
            if bar is not None and got:
                bar.update(len(got))
        elif fetching and fetching[0].task.done():
            u = fetching.popleft()
            err = _stop_error(u.task)
            if err is not None:
                out.stopped_by = out.stopped_by or str(err)
                continue
            with ledger.at(u.key):
                cands = method.accept(u.obj, u.task.result())
            waiting.extend(_Item(u.key + (j,), c) for j, c in enumerate(cands))
        else:
            return


def _reject(method, ledger: Ledger, c: _Item, why: str) -> None:
    o = c.obj
    ids = [o.get(k, "") if isinstance(o, dict) else getattr(o, k, "") for k in ("seed_id", "parent_id")]
    with ledger.at(c.key):
        ledger.reject(method.candidate_text(o), why, "fill", *ids)


async def _cancel(tasks: list) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _stop_error(task: asyncio.Future) -> Optional[BaseException]:
    """The budget stop that ended this task (it then has no result), or None; any other error is raised."""
    err = task.exception()
    if err is None or isinstance(err, BudgetExhausted):
        return err
    raise err


class RowKeeper:
    """``keep(rows)``: the final row filters (decontamination, PII, semantic duplicates, exact duplicates), each
    row judged against every row kept before it, so that rows can be kept one at a time as they are finished."""

    def __init__(self, cfg, ledger: Ledger, step: str = "final"):
        from .filters import Decontaminator

        self.sem = cfg.semantic
        # Semantic dedup is done here, against all rows kept so far; final_filters does the rest row by row.
        self.cfg = cfg.model_copy(update={"semantic": cfg.semantic.model_copy(update={"enabled": False})})
        self.ledger, self.step = ledger, step
        self.decontam = Decontaminator(cfg.decontam)
        self.seen: set[str] = set()
        self.ids: list[str] = []  # rows kept, and their prompts' embeddings (semantic dedup)
        self.emb: list = []

    def __call__(self, rows: list[dict]) -> list[dict]:
        from orchard.dataio import content_hash

        from .filters import final_filters, row_text

        out = []
        for r in final_filters(rows, self.cfg, self.ledger, step=self.step, decontam=self.decontam):
            r["id"] = content_hash({"messages": r["messages"]})  # masking may have changed the text
            if r["id"] in self.seen:
                self.ledger.reject(row_text(r)[0], "exact_dup", self.step, r["seed_id"], r["id"])
                continue
            if self.sem.enabled and not self._semantic_ok(r, row_text(r)[0]):
                continue
            self.seen.add(r["id"])
            out.append(r)
        return out

    def _semantic_ok(self, row: dict, text: str) -> bool:
        """Keep-first semantic dedup, as ``dedup.semantic_filter``: a duplicate of its nearest kept row."""
        import numpy as np

        from .dedup import embed

        e = embed([text], self.sem)[0]
        if self.ids:
            cos = np.asarray(self.emb, dtype="float32") @ e
            j = int(np.argmax(cos))
            if cos[j] >= self.sem.threshold:
                self.ledger.reject(text, "semantic_dup", self.step, row.get("seed_id", ""), row.get("id", ""),
                                   {"dup_of": self.ids[j], "cosine": round(float(cos[j]), 4)})
                return False
        self.ids.append(row["id"])
        self.emb.append(e)
        return True
