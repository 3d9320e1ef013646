"""Bookkeeping of a synth run: how many items each step produced and why every discarded item was discarded.

The invariant the report checks and tests assert: items generated = items kept + items rejected, and every
rejected item carries a reason (a short code such as ``filter:keyword`` or ``near_dup``).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path


class Ledger:
    def __init__(self) -> None:
        self.rejected: list[dict] = []
        self.steps: collections.Counter = collections.Counter()  # step name -> items entering/produced

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
        })

    def reasons(self) -> dict[str, int]:
        return dict(collections.Counter(r["reason"] for r in self.rejected).most_common())

    def write(self, out_dir: Path) -> Path:
        """``rejected.parquet``: one row per discarded item with its reason (written even when empty)."""
        import pandas as pd

        cols = ["text", "reason", "step", "seed_id", "parent_id", "detail"]
        df = pd.DataFrame(self.rejected)
        for c in cols:
            if c not in df.columns:
                df[c] = pd.Series(dtype=str)
        path = Path(out_dir) / "rejected.parquet"
        tmp = path.with_name(".tmp-rejected.parquet")
        df.to_parquet(tmp, index=False)
        tmp.replace(path)
        return path
