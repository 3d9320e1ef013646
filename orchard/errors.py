"""Errors a user can act on. The CLI prints these without a traceback and exits with code 2.

Also the exit codes of commands that write data, which a script can rely on (``OUTCOME_EXIT``): a stage's result
may carry an ``outcome`` whose ``status`` is one of its keys.
"""

from __future__ import annotations

# complete: everything asked for was written; lost: items were lost to the teacher after every retry (a re-run
# asks for them again); short: fewer rows than asked (min_num) were written; empty: nothing was kept.
OUTCOME_EXIT = {"complete": 0, "lost": 3, "short": 4, "empty": 5}
EXIT_CODES_HELP = ("Exit codes: 0 complete; 2 bad input or a teacher error to fix; 3 items lost after every retry "
                   "(in rejected.parquet as lost:*; run again to ask again); 4 fewer rows than asked (--min-num, "
                   "default --num); 5 nothing kept; 6 a privacy gate failed (orchard run); 130 interrupted (run "
                   "again to resume).")
GATE_FAILED_EXIT = 6  # `orchard run` when a stage stops on a privacy gate (`synth tabular`/`tabular-check`: 3)


class OrchardError(Exception):
    """Base class for errors that carry a message meant for the user."""


class InputError(OrchardError):
    """Bad user input: names the file, line and/or field, and what was expected."""

    def __init__(self, message: str, path=None, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "")
        if field:
            where = f"{where} [{field}]" if where else f"[{field}]"
        super().__init__(f"{where}: {message}" if where else message)


class BudgetExhausted(OrchardError):
    """A teacher budget (calls, tokens or cost) ran out; the stage stopped cleanly and can resume."""


class GateFailed(OrchardError):
    """A privacy or quality gate did not pass; the numbers that failed are in the message."""
