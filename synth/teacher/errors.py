"""The teacher's errors: what a person must fix, and the signals that stop a run of calls.

Every module of the teacher sub-package may import this one; it imports nothing of theirs.
"""

from __future__ import annotations

from orchard.errors import BudgetExhausted, OrchardError


class TeacherError(OrchardError):
    """A teacher failure a person must fix (bad key, unknown model or URL); retrying cannot help."""


class InterruptRequested(OrchardError):
    """The stop signal inside the event loop after a first Ctrl-C: calls not yet sent fail with it while the calls
    in flight finish and are saved (a KeyboardInterrupt would escape the loop at once). ``pool.run_with_pool``
    turns it into ``TeacherInterrupted`` once they are."""


class TeacherInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after the calls in flight were saved; the same command resumes from the call log."""


# The errors that stop a whole run, not just the one call that raised them: the calls in flight finish and are
# logged, nothing new is sent.
RUN_STOPS = (BudgetExhausted, TeacherError, InterruptRequested)
