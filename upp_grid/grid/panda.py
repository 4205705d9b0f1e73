"""The PanDA backend: one prun task per container, submitted with pandaclient in-process.

prun's own logic builds the task parameters and uploads the sandbox (once: later tasks reuse it
by size and checksum); ``Client.insertTaskParams`` submits them. The server's answer is taken as
the real server gives it (``task_event_module.insertTaskParamsPanda``): code 0 is a new task and
is recorded; code 2 (the name is held by an active or broken task) and code 3 (an old task of
that name reactivated, with its OLD parameters and sandbox) are errors, and the name is recorded
as used so the next submission takes a new outDS.

Status comes from ``get_tasks_detailed_info_since`` (state, file counts, ``errorDialog``), one
call per 500 tasks (:meth:`PandaClient.tasks_info`); failed jobs from ``get_job_descriptions``.
``retry`` sends ``retryTask`` (with ``newParams`` when given), ``kill`` sends ``killTask``, each
task on its own, reporting the server's answer per task.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from upp_grid.errors import UppGridError
from upp_grid.grid import backend as states
from upp_grid.grid.backend import ActionReport, FailedJob, RetryParams, TaskAction
from upp_grid.grid.panda_client import (
    PandaClient,
    PandaError,
    SubmitAnswer,
    check_credentials,
    one_line,
    prun_task_params,
)
from upp_grid.grid.sandbox import tarball_sha256
from upp_grid.grid.state import StateDB, Submission, TaskRecord
from upp_grid.grid.tasks import TaskSpec

log = logging.getLogger(__name__)


class NameInUseError(PandaError):
    """PanDA did not make a new task for an outDS (held by another task, or reactivated)."""


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
_KILLABLE_JEDI = frozenset(JEDI_STATES) - {"finished", "done", "prepared", "broken", "aborted",
                                            "toabort", "aborting", "failed"}
# a plain retry is refused by the server in these (sendCommandTaskPanda._check_command_allowed:
# aborted always, exhausted without a production role); a retry with new parameters goes through
# insertTaskParamsPanda's reactivation (incexec), which takes them
_PLAIN_RETRY_REFUSED = frozenset({"aborted", "exhausted"})


def task_state(jedi_status: str) -> str:
    """The upp-grid state of a JEDI task state (unknown ones count as running)."""
    return JEDI_STATES.get(jedi_status, states.RUNNING)


def _count(details: dict[str, Any], key: str) -> int | None:
    value = details.get(key)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else None


def _since(tasks: Sequence[TaskRecord]) -> datetime | None:
    try:
        return min(datetime.fromisoformat(t.submitted_at) for t in tasks)
    except ValueError:
        return None


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
        submission = replace(submission, sandbox_sha256=tarball_sha256(tarball))
        prun_dir = tarball.parent / "prun"
        records = []
        refused: list[NameInUseError] = []
        for spec in specs:
            args = [*spec.prun_args, "--inTarBall", str(tarball.absolute()),
                    "--tmpDir", str(prun_dir)]
            params = prun_task_params(args, prun_dir, dry_run=False)
            answer = client.submit(params)
            if not answer.new_task:  # recorded as used; the other tasks still go
                refused.append(self._not_new(submission, spec, answer))
                log.error("%s", refused[-1])
                continue
            assert answer.task_id is not None
            log.info("submitted %s as jediTaskID=%d (outDS %s)", spec.container, answer.task_id,
                     spec.out_ds)
            records.append(self.state.record_task(
                submission, spec, status=states.SUBMITTED, jedi_task_id=answer.task_id,
                params=params, detail=f"jediTaskID={answer.task_id} attempt {spec.attempt}"))
        if refused:
            more = (f" (+{len(refused) - 1} more, listed above)" if len(refused) > 1 else "")
            raise NameInUseError(f"{refused[0]}{more}; {len(records)} other task(s) of this "
                                 "submission were recorded")
        return records

    def _not_new(self, submission: Submission, spec: TaskSpec, answer: SubmitAnswer
                 ) -> NameInUseError:
        """Record the outDS as used and say what happened and what to do, in one line."""
        old = f"jediTaskID={answer.task_id}" if answer.task_id else "another task"
        tail = ""
        if answer.code == 3:
            self.state.record_unused_name(submission, spec, "reactivated", answer.message,
                                          answer.task_id)
            return NameInUseError(
                f"PanDA did not make a new task for {spec.out_ds}: it reactivated the old task "
                f"{old}, which re-runs with its OLD config and sandbox (\"{answer.message}\"); "
                f"it is not recorded as a submission of tag '{submission.tag}'. Kill it if "
                f"unwanted (`pbook` kill({answer.task_id})) and run `upp-grid submit` again: "
                f"the next attempt uses a new outDS{tail}")
        self.state.record_unused_name(submission, spec, "refused", answer.message,
                                      answer.task_id)
        if answer.code in (1, 2):
            return NameInUseError(
                f"PanDA refused {spec.out_ds} (code {answer.code}): the name is held by {old}, "
                f"which is still active or broken (\"{answer.message}\"); wait for it to end or "
                f"kill it, then run `upp-grid submit --force` again: the next attempt uses a "
                f"new outDS{tail}")
        return NameInUseError(f"PanDA refused {spec.out_ds} (code {answer.code}): "
                              f"{answer.message}{tail}")

    def refresh(self, submission: Submission) -> list[TaskRecord]:
        tasks = self.state.tasks(submission.tag)
        todo = [t for t in tasks if t.jedi_task_id is not None
                and t.backend_status not in _JEDI_FINAL]
        if not todo:
            return tasks
        client = self._connect()
        info = client.tasks_info([t.jedi_task_id for t in todo if t.jedi_task_id is not None],
                                 since=_since(todo))
        for task in todo:
            assert task.jedi_task_id is not None
            details = info.get(task.jedi_task_id)
            if details is None:
                log.warning("PanDA has no task %d (%s): state left as recorded",
                            task.jedi_task_id, task.container)
                continue
            jedi = str(details.get("status") or task.backend_status or "registered")
            counts = (_count(details, "nFiles"), _count(details, "nFilesFinished"),
                      _count(details, "nFilesFailed"))
            self.state.update_task(task.id, status=task_state(jedi), backend_status=jedi,
                                   counts=counts)
            dialog = details.get("errorDialog")
            self.state.set_error_dialog(task.id, one_line(dialog) if dialog else None)
        return self.state.tasks(submission.tag)

    def retry(self, submission: Submission, params: RetryParams | None = None) -> ActionReport:
        new = params.jedi() if params else {}

        def call(client: PandaClient, task: TaskRecord) -> tuple[int, str]:
            send = dict(new)
            if not send and task.backend_status in _PLAIN_RETRY_REFUSED:
                # the server refuses a plain retry here; the same through its
                # retry-with-parameters path, re-sending a parameter the task already has
                send = {"excludedSite": self._own_param(task, "excludedSite", [])}
            return client.retry(task.jedi_task_id or 0, send or None)

        return self._act(submission, "retry", call, lambda t: t.backend_status != "done",
                         accepted=(0, 3))

    def kill(self, submission: Submission) -> ActionReport:
        return self._act(submission, "kill", lambda c, t: c.kill(t.jedi_task_id or 0),
                         lambda t: t.backend_status in _KILLABLE_JEDI, accepted=(0,))

    def _own_param(self, task: TaskRecord, key: str, default: Any) -> Any:
        row = self.state._rows("SELECT task_params FROM tasks WHERE id = ?", (task.id,))
        try:
            return json.loads(row[0]["task_params"]).get(key, default) or default
        except (IndexError, TypeError, ValueError, AttributeError):
            return default

    def _act(self, submission: Submission, action: str,
             call: Callable[[PandaClient, TaskRecord], tuple[int, str]],
             pick: Callable[[TaskRecord], bool], accepted: tuple[int, ...]) -> ActionReport:
        """``call`` each task ``pick`` selects after a refresh, on its own, and report each
        answer; then refresh again."""
        tasks = self.refresh(submission)
        report = ActionReport(tasks)
        for task in tasks:
            if task.jedi_task_id is None:
                continue
            name = f"jediTaskID={task.jedi_task_id}"
            if not pick(task):
                report.actions.append(TaskAction(task.container, name, False,
                                                 f"not sent: the task is {task.backend_status}",
                                                 sent=False))
                continue
            try:
                code, message = call(self._connect(), task)
            except UppGridError as err:
                code, message = -1, str(err)
            ok = code in accepted
            report.actions.append(TaskAction(task.container, name, ok,
                                             f"code {code}: {message}" if code >= 0 else message))
            self.state.add_event(task.tag, task.container, action if ok else f"{action} refused",
                                 f"{name}: code {code}: {message}")
            log.info("%s %s (%s): %s", action, task.container, name,
                     "accepted" if ok else f"refused ({message})")
        if any(a.accepted for a in report.actions):
            report.tasks = self.refresh(submission)
        return report

    def failed_jobs(self, submission: Submission) -> list[FailedJob]:
        client = self._connect()
        out = []
        for task in self.state.tasks(submission.tag):
            if task.jedi_task_id is None:
                continue
            for job in client.failed_jobs(task.jedi_task_id):
                out.append(_failed_job(task.container, job))
        return out


def _failed_job(container: str, job: dict[str, Any]) -> FailedJob:
    """A job description (``JobSpec.to_dict_advanced``) as ``status --failed`` shows it."""
    inputs = []
    log_file = ""
    for f in job.get("Files") or job.get("files") or []:
        if not isinstance(f, dict):
            continue
        if f.get("type") == "input":
            inputs.append(str(f.get("lfn")))
        elif f.get("type") == "log":
            log_file = f"{f.get('scope', '')}:{f.get('lfn', '')} in {f.get('dataset', '')}"
    codes = [f"{k}={job[k]}" for k in ("transExitCode", "pilotErrorCode", "exeErrorCode",
                                        "ddmErrorCode", "taskBufferErrorCode")
             if job.get(k) not in (None, 0, "0", "")]
    diags = [one_line(job[k]) for k in ("pilotErrorDiag", "exeErrorDiag", "ddmErrorDiag",
                                        "taskBufferErrorDiag", "supErrorDiag")
             if job.get(k) not in (None, "", "NULL")]
    return FailedJob(container, str(job.get("PandaID", "?")), tuple(inputs),
                     ", ".join(codes) or "none", "; ".join(diags) or "none",
                     log_file or "none")
