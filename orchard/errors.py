"""Errors a user can act on. The CLI prints these without a traceback and exits with code 2."""

from __future__ import annotations


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
