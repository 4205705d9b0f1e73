"""The PanDA backend: one prun task per container, submitted with pandaclient in-process.

prun's own logic builds the task parameters and uploads the sandbox (once: later tasks reuse it
by size and checksum); ``Client.insertTaskParams`` submits them and the jediTaskID is recorded
right away. Status comes from ``getTaskStatus`` (the JEDI state) and ``getJediTaskDetails`` (file
counts, when PanDA gives them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from upp_grid.grid import backend as states
from upp_grid.grid.tasks import TaskSpec
from upp_grid.grid.panda_client import PandaClient, check_credentials, prun_task_params
from upp_grid.grid.state import StateDB, Submission, TaskRecord

log = logging.getLogger(__name__)

# JEDI task states -> upp-grid task states
JEDI_STATES = {
    **dict.fromkeys(("registered", "defined", "assigning", "ready", "pending", "topreprocess",
                     "preprocessing"), states.SUBMITTED),
    **dict.fromkeys(("scouting", "scouted", "running", "prepared", "throttled", "paused",
                     "toretry", "rerefine", "finishing", "passed"), states.RUNNING),
    "done": states.DONE,
    "finished": states.PARTIAL,
    "failed": states.FAILED,
    "exhausted": states.FAILED,
    **dict.fromkeys(("broken", "tobroken"), states.BROKEN),
    **dict.fromkeys(("aborted", "aborting", "toabort"), states.ABORTED),
}
# JEDI states in which nothing changes any more, not even through a retry
_JEDI_FINAL = frozenset({"done", "broken", "aborted"})
_RETRYABLE_JEDI = frozenset({"finished", "failed", "exhausted"})
_DOING = {"retry": "retrying", "kill": "killing"}


def task_state(jedi_status: str) -> str:
    """The upp-grid state of a JEDI task state (unknown ones count as running)."""
    return JEDI_STATES.get(jedi_status, states.RUNNING)


def _counts(details: dict[str, Any]) -> tuple[int | None, int | None, int | None] | None:
    values = [details.get(k) for k in ("nFiles", "nFilesFinished", "nFilesFailed")]
    if all(v is None for v in values):
        return None
    return tuple(int(v) if isinstance(v, int | str) and str(v).isdigit() else None
                 for v in values)  # type: ignore[return-value]


class PandaBackend:
    """Tasks on PanDA; credentials and the server are checked before the first request."""

    name = "panda"

    def __init__(self, state: StateDB) -> None:
        self.state = state
        self._client: PandaClient | None = None

    def _connect(self) -> PandaClient:
        if self._client is None:
            check_credentials()
            client = PandaClient()
            client.hello()
            self._client = client
        return self._client

    def submit(self, submission: Submission, specs: Sequence[TaskSpec],
               sandbox: Callable[[], Path]) -> list[TaskRecord]:
        client = self._connect()
        tarball = sandbox()
        prun_dir = tarball.parent / "prun"
        records = []
        for spec in specs:
            args = [*spec.prun_args, "--inTarBall", str(tarball.absolute()),
                    "--tmpDir", str(prun_dir)]
            params = prun_task_params(args, prun_dir, dry_run=False)
            task_id = client.submit(params)
            log.info("submitted %s as jediTaskID=%d", spec.container, task_id)
            records.append(self.state.record_task(
                submission, spec, status=states.SUBMITTED, jedi_task_id=task_id, params=params,
                detail=f"jediTaskID={task_id}"))
        return records

    def refresh(self, submission: Submission) -> list[TaskRecord]:
        tasks = self.state.tasks(submission.tag)
        todo = [t for t in tasks if t.jedi_task_id is not None
                and t.backend_status not in _JEDI_FINAL]
        if not todo:
            return tasks
        client = self._connect()
        for task in todo:
            assert task.jedi_task_id is not None
            jedi = client.status(task.jedi_task_id)
            counts = _counts(client.details(task.jedi_task_id))
            self.state.update_task(task.id, status=task_state(jedi), backend_status=jedi,
                                   counts=counts)
        return self.state.tasks(submission.tag)

    def retry(self, submission: Submission) -> list[TaskRecord]:
        return self._act(submission, "retry", PandaClient.retry,
                         lambda t: t.backend_status in _RETRYABLE_JEDI)

    def kill(self, submission: Submission) -> list[TaskRecord]:
        return self._act(submission, "kill", PandaClient.kill,
                         lambda t: t.status not in states.SETTLED)

    def _act(self, submission: Submission, action: str,
             call: Callable[[PandaClient, int], None],
             pick: Callable[[TaskRecord], bool]) -> list[TaskRecord]:
        """``call`` each task ``pick`` selects after a refresh, log it; then refresh again."""
        tasks = self.refresh(submission)
        picked = [t for t in tasks if pick(t)]
        for task in picked:
            assert task.jedi_task_id is not None
            call(self._connect(), task.jedi_task_id)
            self.state.add_event(task.tag, task.container, action,
                                 f"jediTaskID={task.jedi_task_id}")
            log.info("%s %s (jediTaskID=%d)", _DOING[action], task.container, task.jedi_task_id)
        return self.refresh(submission) if picked else tasks
