"""The one interface every execution backend implements, and the task states they report.

The CLI (and ``download``) talk to a backend only through :class:`Backend`, picked by name from
what the state DB recorded for a tag; they never know whether PanDA or a local process pool runs
the jobs. Output containers are the same on both: ``TaskRecord.outputs`` in the state DB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from upp_grid.errors import UppGridError
from upp_grid.grid.tasks import TaskSpec
from upp_grid.grid.state import StateDB, Submission, TaskRecord

# Task states, backend-independent.
SUBMITTED = "submitted"  # accepted, nothing ran yet
RUNNING = "running"
DONE = "done"            # every input file processed
PARTIAL = "partial"      # finished, some input files failed
FAILED = "failed"        # finished, nothing (or too little) succeeded; retryable
BROKEN = "broken"        # PanDA gave up on the task itself (bad parameters, …)
ABORTED = "aborted"      # killed
STATES = (SUBMITTED, RUNNING, DONE, PARTIAL, FAILED, BROKEN, ABORTED)
# nothing changes any more without a retry (or at all)
SETTLED = frozenset({DONE, PARTIAL, FAILED, BROKEN, ABORTED})
RETRYABLE = frozenset({PARTIAL, FAILED})
BACKENDS = ("panda", "local")


class Backend(Protocol):
    """Runs the tasks of a tag and reports their state into the state DB."""

    name: str

    def submit(self, submission: Submission, specs: Sequence[TaskSpec],
               sandbox: Callable[[], Path]) -> list[TaskRecord]:
        """Start the tasks of ``specs``; record each as it is accepted.

        ``sandbox()`` builds (or reuses) the sandbox and returns its path; a backend calls it
        after its own checks, so a missing credential fails before a slow build.
        """
        ...

    def refresh(self, submission: Submission) -> list[TaskRecord]:
        """Bring the recorded state of the tag's tasks up to date."""
        ...

    def retry(self, submission: Submission) -> list[TaskRecord]:
        """Rerun what failed (failed or partial tasks, failed jobs)."""
        ...

    def kill(self, submission: Submission) -> list[TaskRecord]:
        """Stop every task of the tag that is still active."""
        ...


def open_backend(name: str, state: StateDB, *, workers: int | None = None) -> Backend:
    """The backend called ``name``, working on ``state``."""
    if name == "panda":
        from upp_grid.grid.panda import PandaBackend

        return PandaBackend(state)
    if name == "local":
        from upp_grid.grid.local import LocalBackend

        return LocalBackend(state, workers=workers)
    raise UppGridError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
