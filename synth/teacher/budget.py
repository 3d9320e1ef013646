"""The teacher's budget for one output: calls, tokens and cost, counted over every run that wrote to its call log.

The client (``client.py``) asks ``Budget.check`` before each paid call and prices each answer with
``Budget.cost``; a stop raises ``BudgetExhausted``, whose message (``Budget.message``) gives exact counts once the
calls in flight have landed. Checked before each call, a run may go past a token or cost limit by at most the
calls already in flight (``max_concurrency``); ``max_calls`` is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from orchard.errors import BudgetExhausted

from .config import BudgetConfig


class Budget:
    """``config``'s limits against what this output paid: ``paid_before`` (what its call log already holds, from
    ``CallLog.paid``) plus this session's usage, a dict with ``calls``, ``ok``, ``errors``, ``prompt_tokens``,
    ``completion_tokens`` and ``cost_usd`` (the client's counters)."""

    def __init__(self, config: BudgetConfig, paid_before: dict, log_path: Optional[Path] = None):
        self.config, self.before, self.log_path = config, paid_before, log_path
        self.started = 0  # paid logical calls started this session (max_calls counts them as they start)
        self.why: Optional[str] = None  # why the budget stopped this session, once it did

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """USD for these tokens at the configured prices (0 without prices)."""
        b = self.config
        return (prompt_tokens * b.price_per_1k_input + completion_tokens * b.price_per_1k_output) / 1000

    def check(self, usage: dict) -> None:
        """Raise ``BudgetExhausted`` if a limit is reached (before starting one more paid call)."""
        b, before = self.config, self.before
        tokens = before["tokens"] + usage["prompt_tokens"] + usage["completion_tokens"]
        cost = before["cost_usd"] + usage["cost_usd"]
        why = None
        if b.max_calls is not None and before["calls"] + self.started >= b.max_calls:
            why = f"max_calls={b.max_calls} reached"
        elif b.max_tokens is not None and tokens >= b.max_tokens:
            why = f"max_tokens={b.max_tokens} reached ({tokens} used)"
        elif b.max_cost_usd is not None and cost >= b.max_cost_usd:
            why = f"max_cost_usd={b.max_cost_usd} reached (${cost:.4f} spent)"
        if why:
            self.why = why
            raise BudgetExhausted(self.message(usage))

    def message(self, usage: dict) -> str:
        """Why the budget stopped the run, with exact counts of what was paid for this output."""
        before = self.before
        where = f" in {self.log_path}" if self.log_path else ""
        tokens = before["tokens"] + usage["prompt_tokens"] + usage["completion_tokens"]
        return (f"teacher budget: {self.why}; {before['calls'] + usage['calls']} paid calls for this output "
                f"({before['calls']} in earlier runs, {usage['calls']} in this one: {usage['ok']} answered, "
                f"{usage['errors']} failed), {tokens} tokens, ${before['cost_usd'] + usage['cost_usd']:.4f}. Every "
                f"answer is saved{where}: a re-run replays them free and pays nothing new until the budget is raised.")
