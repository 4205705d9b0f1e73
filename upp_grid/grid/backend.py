"""The one interface every execution backend implements, and the task states they report.

The CLI (and ``download``) talk to a backend only through :class:`Backend`, picked by name from
what the state DB recorded for a tag; they never know whether PanDA or a local process pool runs
the jobs. Output containers are the same on both: ``TaskRecord.outputs`` in the state DB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from upp_grid.errors import UppGridError
from upp_grid.grid.state import StateDB, Submission, TaskRecord
from upp_grid.grid.tasks import TaskSpec

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


@dataclass(frozen=True)
class RetryParams:
    """New task parameters for ``upp-grid retry`` that JEDI merges into the task."""

    memory_mb: int | None = None
    site: str | None = None
    excluded_sites: tuple[str, ...] = ()
    gb_per_job: int | None = None

    def jedi(self) -> dict[str, Any]:
        """As ``retryTask(newParams=...)`` takes them (JediTaskSpec attribute names)."""
        out: dict[str, Any] = {}
        if self.memory_mb is not None:
            out["ramCount"] = self.memory_mb
        if self.site is not None:
            out["site"] = self.site
        if self.excluded_sites:
            out["excludedSite"] = list(self.excluded_sites)
        if self.gb_per_job is not None:
            out["nGBPerJob"] = self.gb_per_job
        return out

    def __bool__(self) -> bool:
        return bool(self.jedi())


@dataclass(frozen=True)
class TaskAction:
    """What the backend said to ``retry`` or ``kill`` of one task."""

    container: str
    task: str  #: ``jediTaskID=1001`` or ``local task 3``
    accepted: bool
    message: str
    sent: bool = True  #: False: not sent (nothing to do in the task's state)


@dataclass
class ActionReport:
    """The tasks after ``retry``/``kill``, and what happened to each one acted on."""

    tasks: list[TaskRecord]
    actions: list[TaskAction] = field(default_factory=list)


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

    def retry(self, submission: Submission, params: RetryParams | None = None) -> ActionReport:
        """Rerun what failed (failed, partial or aborted tasks, failed jobs), every task on its
        own: one refusal does not stop the others."""
        ...

    def kill(self, submission: Submission) -> ActionReport:
        """Stop every task of the tag that is still active, each on its own."""
        ...

    def failed_jobs(self, submission: Submission) -> list[FailedJob]:
        """The failed jobs of the tag: id, inputs, error code, diagnostic, log."""
        ...


@dataclass(frozen=True)
class FailedJob:
    """One failed job, as ``status --failed`` lists it."""

    container: str
    job: str  #: PandaID or local job index
    inputs: tuple[str, ...]
    error_code: str
    diagnostic: str
    log: str


def open_backend(name: str, state: StateDB, *, workers: int | None = None) -> Backend:
    """The backend called ``name``, working on ``state``."""
    if name == "panda":
        from upp_grid.grid.panda import PandaBackend

        return PandaBackend(state)
    if name == "local":
        from upp_grid.grid.local import LocalBackend

        return LocalBackend(state, workers=workers)
    raise UppGridError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})")
