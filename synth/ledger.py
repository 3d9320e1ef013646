"""Bookkeeping of a synth run: how many items each step produced and why every discarded item was discarded.

The invariant the report checks and tests assert: items generated = items kept + items rejected, and every
rejected item carries a reason (a short code such as ``filter:keyword`` or ``near_dup``).
"""

from __future__ import annotations

import collections
import contextlib
import json
from pathlib import Path


class Ledger:
    def __init__(self) -> None:
        self.rejected: list[dict] = []
        self.steps: collections.Counter = collections.Counter()  # step name -> items entering/produced
        self._key: tuple = ()  # the current item's place in the generation order (``at``)

    @contextlib.contextmanager
    def at(self, key: tuple):
        """Rejections recorded inside are written in the order of ``key`` (an item's place in the generation
        order), not in the order results happened to come back, so rejected.parquet is the same on every run."""
        old, self._key = self._key, key
        try:
            yield
        finally:
            self._key = old

    def count(self, step: str, n: int = 1) -> None:
        self.steps[step] += n

    def reject(self, text: str, reason: str, step: str, seed_id: str = "", parent_id: str = "",
               detail: object = None, **extra) -> None:
        if not reason:
            raise ValueError("a rejected item needs a reason")
        self.rejected.append({
            "text": text or "", "reason": reason, "step": step, "seed_id": seed_id or "", "parent_id": parent_id or "",
            "detail": json.dumps(detail, ensure_ascii=False, default=str) if detail is not None else "",
            **{k: (v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)) for k, v in extra.items()},
            "_order": self._key,
        })

    def lost(self) -> dict[str, int]:
        """Items lost to the teacher (a call that failed after every retry), by reason: ``lost:<why>``."""
        return {k: v for k, v in self.reasons().items() if k.startswith("lost:")}

    def lose(self, text: str, res, step: str, seed_id: str = "", parent_id: str = "", **detail) -> None:
        """Record an item lost because its teacher call ``res`` failed after every retry (a re-run asks again)."""
        self.reject(text, f"lost:{res.reason or 'gave_up'}", step, seed_id, parent_id,
                    {"error": res.error, **detail})

    def reasons(self) -> dict[str, int]:
        return dict(collections.Counter(r["reason"] for r in self.rejected).most_common())

    def outcome(self, written: int, asked: int | None = None, min_num: int | None = None,
                stopped_by: str | None = None, what: str = "rows") -> dict:
        """How the run ended, for the manifest and the exit code (``orchard.errors.OUTCOME_EXIT``): ``empty``
        (nothing kept), ``short`` (fewer than ``min_num``, default ``asked``), ``lost`` (items lost after every
        retry), else ``complete``; ``message`` says how many and why in one line."""
        from orchard.errors import OUTCOME_EXIT

        lost = self.lost()
        n_lost = sum(lost.values()) + self.steps.get("lost_calls", 0)
        need = min_num if min_num is not None else asked
        status = ("empty" if written == 0 else "short" if need is not None and written < need
                  else "lost" if n_lost else "complete")
        of = f"{written} of {asked} {what}" if asked is not None else f"{written} {what}"
        words = {"complete": "complete", "lost": "lost work", "short": "stopped short", "empty": "nothing kept"}
        msg = f"{words[status]}: {of} written"
        if need is not None and written < asked:
            msg += f" (at least {need} asked)" if need != asked else ""
            msg += f"; stopped by {stopped_by}" if stopped_by else ""
        if n_lost:
            calls = self.steps.get("lost_calls", 0)
            why = ", ".join([f"{k} {v}" for k, v in lost.items()] + ([f"lost calls {calls}"] if calls else []))
            msg += (f"; {n_lost} items lost after every retry ({why}), listed in rejected.parquet: run the same "
                    "command again to ask for them again")
        return {"status": status, "exit_code": OUTCOME_EXIT[status], "asked": asked, "min_num": need,
                "written": written, "lost": n_lost, "lost_reasons": lost, "stopped_by": stopped_by, "message": msg}

    def write(self, out_dir: Path) -> Path:
        """``rejected.parquet``: one row per discarded item with its reason (written even when empty)."""
        import pandas as pd

        cols = ["text", "reason", "step", "seed_id", "parent_id", "detail"]
        ordered = sorted(self.rejected, key=lambda r: r["_order"])  # stable: same key, recording order
        df = pd.DataFrame([{k: v for k, v in r.items() if k != "_order"} for r in ordered])
        for c in cols:
            if c not in df.columns:
                df[c] = pd.Series(dtype=str)
        path = Path(out_dir) / "rejected.parquet"
        tmp = path.with_name(".tmp-rejected.parquet")
        df.to_parquet(tmp, index=False)
        tmp.replace(path)
        return path
