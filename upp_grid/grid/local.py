"""The local backend: the grid jobs, run here, from the same sandbox, in a pool of processes.

The sandbox is unpacked once into ``<work_dir>/sandbox``. The task's input files are grouped
into jobs as JEDI would size them (:func:`~upp_grid.grid.tasks.group_inputs`: ``--gb-per-job``
or ``--files-per-job``). Each job runs the task's exact worker command, ``%IN`` set to its
comma-separated inputs, in its own directory ``<work_dir>/jobs/<task>/<job>``, which holds
links to the sandbox members and the staged (linked) inputs, just as a grid job's work
directory holds the unpacked sandbox and the staged inputs. Its one output ``split.tar`` goes
into the :class:`~upp_grid.grid.store.LocalStore` as ``<scope>/<output container>/<file>``,
named like PanDA names it (``user.<nick>.<task>._<job>.split.tar``).

Job states: queued, running, done, failed, with the attempt number, exit code and log
(``<work_dir>/logs/<task>/<job>.<attempt>.log``). A running job records its pid and the
process start time; a refresh marks a running job whose process is gone as failed (lost), so
a killed run never stays "running".
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from upp_grid.errors import UppGridError
from upp_grid.fsutil import remove_stale_temps
from upp_grid.grid import backend as states
from upp_grid.grid import sandbox as sandboxes
from upp_grid.grid.backend import ActionReport, FailedJob, RetryParams, TaskAction
from upp_grid.grid.state import JobRecord, StateDB, Submission, TaskRecord
from upp_grid.grid.store import LocalStore
from upp_grid.grid.tasks import TaskSpec, group_inputs
from upp_grid.progress import progress_bar

log = logging.getLogger(__name__)

SANDBOX_MEMBERS = ("env", "grid", "config.yaml", "manifest.json", "runtime.sh")
_UNPACKED_MARK = ".unpacked-from"
_START_GRACE_S = 60  # a claimed job gets this long to record its pid before it counts as lost
_JOB_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME")


# ------------------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first); [] if unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2:].split()


def proc_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot), to tell it from a reused pid."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else None


def is_alive(pid: int, started: str | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (zombies do not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if not fields:
        return True  # no /proc: trust kill(0)
    if fields[0] in ("Z", "X"):
        return False
    return started is None or len(fields) < 20 or fields[19] == started


def _age_s(stamp: str | None) -> float:
    if not stamp:
        return float("inf")
    return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()


# --------------------------------------------------------------------------------- backend
class LocalBackend:
    """Runs jobs with at most ``workers`` at a time (default: the number of cores)."""

    name = "local"

    def __init__(self, state: StateDB, workers: int | None = None) -> None:
        self.state = state
        self.workers = max(1, workers or os.cpu_count() or 1)

    def submit(self, submission: Submission, specs: Sequence[TaskSpec],
               sandbox: Callable[[], Path]) -> list[TaskRecord]:
        if any(s.options.container_image for s in specs):
            raise UppGridError("--container-image runs jobs in a container on the grid: the "
                               "local backend runs the env/ sandbox (drop --container-image)")
        tarball = sandbox()
        submission = replace(submission, sandbox_sha256=sandboxes.tarball_sha256(tarball))
        self._unpack(submission, tarball)
        ids = []
        for spec in specs:
            jobs = group_inputs(spec.files, spec.options)
            task = self.state.record_task(
                submission, spec, status=states.SUBMITTED,
                detail=f"{len(jobs)} jobs for {len(spec.files)} files ({spec.options.job_size})")
            self.state.reset_jobs(task.id, [",".join(str(f.absolute()) for f in job)
                                            for job in jobs])
            ids.append(task.id)
        self._run(submission, ids)
        return self.refresh(submission)

    def refresh(self, submission: Submission) -> list[TaskRecord]:
        for task in self.state.tasks(submission.tag):
            self._reap_lost(task)
            self._summarise(task)
        return self.state.tasks(submission.tag)

    def retry(self, submission: Submission, params: RetryParams | None = None) -> ActionReport:
        if params:
            log.warning("retry: %s only change grid jobs; the local backend reruns its failed "
                        "jobs as they are", ", ".join(sorted(params.jedi())))
        ids = []
        actions = []
        for task in self.refresh(submission):
            n = self.state.requeue_failed(task.id)
            if n:
                self.state.update_task(task.id, status=states.RUNNING,
                                       backend_status=task.backend_status,
                                       detail=f"retry {n} failed job(s)")
            # queued jobs too: their runner may be gone (a killed submit); claiming is atomic,
            # so a runner that is still alive and this one never run the same job twice
            queued = sum(j.state == "queued" for j in self.state.jobs(task.id))
            if n or queued:
                ids.append(task.id)
                actions.append(TaskAction(task.container, f"local task {task.id}", True,
                                          f"{queued} job(s) to run again"))
            else:
                actions.append(TaskAction(task.container, f"local task {task.id}", False,
                                          "nothing failed", sent=False))
        if ids:
            self._unpack(submission, Path(submission.sandbox))
            self._run(submission, ids)
        return ActionReport(self.refresh(submission), actions)

    def failed_jobs(self, submission: Submission) -> list[FailedJob]:
        out = []
        for task in self.state.tasks(submission.tag):
            for job in self.state.jobs(task.id):
                if job.state == "failed":
                    out.append(FailedJob(
                        task.container, str(job.index),
                        tuple(Path(p).name for p in job.input.split(",")),
                        "no exit code (lost)" if job.exit_code is None
                        else f"exit {job.exit_code}",
                        job.error or "-", job.log_path or "no log (never started)"))
        return out

    def kill(self, submission: Submission) -> ActionReport:
        actions = []
        for task in self.refresh(submission):
            stopped = self.state.fail_queued(task.id, "killed before it ran")
            for job in self.state.jobs(task.id):
                if job.state != "running":
                    continue
                if job.pid is not None and is_alive(job.pid, job.proc_start):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(job.pid, signal.SIGTERM)
                stopped += self.state.finish_job(job, "failed", None, "killed")
            if stopped:
                self.state.update_task(task.id, status=states.ABORTED,
                                       backend_status=task.backend_status,
                                       detail=f"kill: {stopped} job(s) stopped")
            actions.append(TaskAction(task.container, f"local task {task.id}", bool(stopped),
                                      f"{stopped} job(s) stopped" if stopped
                                      else "nothing running", sent=bool(stopped)))
        return ActionReport(self.refresh(submission), actions)

    # ---------------------------------------------------------------------------- internals
    def _unpack(self, submission: Submission, sandbox: Path) -> Path:
        """Unpack the sandbox into ``<work_dir>/sandbox``, once per content.

        The tarball must be the one the tag was submitted with (its sha256 in the state DB):
        a replaced tarball is refused, never unpacked or run. An unpacked sandbox is reused
        only if it was unpacked from exactly that content; unpacking refuses unsafe members
        and checks every file against the manifest."""
        work = Path(submission.work_dir or sandbox.parent / "local")
        target = work / "sandbox"
        try:
            sha = sandboxes.file_sha256(sandbox)
        except OSError as err:
            raise UppGridError(f"{sandbox}: the tag's sandbox is unreadable ({err.strerror}): "
                               "submit again with a new --tag") from None
        if submission.sandbox_sha256 is not None and sha != submission.sandbox_sha256:
            raise UppGridError(
                f"{sandbox}: not the sandbox tag '{submission.tag}' was submitted with (sha256 "
                f"{sha[:12]}…, recorded {submission.sandbox_sha256[:12]}…): it was replaced "
                "after submit; nothing was run")
        mark = target / _UNPACKED_MARK
        if mark.is_file() and mark.read_text() == sha:
            return target
        remove_stale_temps(work)  # a killed run's half-unpacked sandbox
        staging = work / f".sandbox-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        log.info("unpacking %s into %s", sandbox, target)
        try:
            sandboxes.unpack(sandbox, staging)
            (staging / _UNPACKED_MARK).write_text(sha)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _run(self, submission: Submission, task_ids: Sequence[int]) -> None:
        todo = [(self.state.task(tid), job) for tid in task_ids
                for job in self.state.jobs(tid) if job.state == "queued"]
        if not todo:
            return
        log.info("running %d job(s) with %d worker(s)", len(todo), self.workers)
        workers = min(self.workers, len(todo))
        with progress_bar(len(todo), "jobs", unit="jobs") as advance, \
                ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._run_job, submission, task, job.index)
                       for task, job in todo]
            failed = 0
            advance.set_note(f"{workers} running")
            for future in as_completed(futures):
                failed += future.result() is False
                running = min(workers, len(todo) - advance.done - 1)
                advance.set_note(f"{running} running, {failed} failed")
                advance(1)

    def _run_job(self, submission: Submission, task: TaskRecord, index: int) -> bool | None:
        """Run one job; False if it failed (None: claimed by another run)."""
        work = Path(submission.work_dir or "")
        with StateDB(self.state.path) as state:  # one connection per thread
            log_base = work / "logs" / str(task.id) / f"{index:06d}"
            job = state.claim_job(task.id, index, str(log_base))
            if job is None:
                return
            job_dir = work / "jobs" / str(task.id) / f"{index:06d}"
            try:
                command = _stage(job_dir, work / "sandbox",
                                 [Path(p) for p in job.input.split(",")], task.command)
                code = _execute(state, job, command, job_dir)
            except OSError as err:
                state.finish_job(job, "failed", None, f"cannot start the job: {err}")
                return False
            missing = [o.file for o in task.outputs if not (job_dir / o.file).is_file()]
            if code != 0 or missing:
                error = (f"exit code {code}: {_last_line(job.log_path)}" if code != 0
                         else f"declared output {missing[0]} missing")
                state.finish_job(job, "failed", code, error)
                log.warning("job %d of %s failed: %s", index, task.container, error)
                return False
            store = LocalStore(Path(submission.store_dir or work / "store"))
            for output in task.outputs:
                name = f"{task.scope}.{task.id}._{index:06d}.{output.file}"
                store.publish(job_dir / output.file, task.scope, output.container, name)
            state.finish_job(job, "done", 0, None)
            shutil.rmtree(job_dir, ignore_errors=True)
            return True

    def _reap_lost(self, task: TaskRecord) -> None:
        for job in self.state.jobs(task.id):
            if job.state != "running":
                continue
            if job.pid is None:
                lost = _age_s(job.started_at) > _START_GRACE_S
            else:
                lost = not is_alive(job.pid, job.proc_start)
            why = (f"process {job.pid} is gone (killed?)" if job.pid is not None
                   else f"its process never started ({_START_GRACE_S:.0f} s)")
            if lost and self.state.finish_job(job, "failed", None, f"lost: {why}"):
                log.warning("job %d of %s was lost (%s): marked failed", job.index,
                            task.container, why)

    def _summarise(self, task: TaskRecord) -> None:
        jobs = self.state.jobs(task.id)
        count = {s: sum(j.state == s for j in jobs) for s in ("queued", "running", "done",
                                                               "failed")}
        active = count["queued"] + count["running"]
        if task.status == states.ABORTED and not count["running"]:
            status = states.ABORTED
        elif active:
            started = count["running"] + count["done"] + count["failed"]
            status = states.RUNNING if started else states.SUBMITTED
        elif count["done"] == len(jobs):
            status = states.DONE
        else:
            status = states.PARTIAL if count["done"] else states.FAILED
        detail = ", ".join(f"{n} {s}" for s, n in count.items() if n)
        self.state.update_task(task.id, status=status, backend_status=detail or "no jobs",
                               counts=(len(jobs), count["done"], count["failed"]))


def _stage(job_dir: Path, sandbox_dir: Path, inputs: Sequence[Path], command: str) -> str:
    """Lay out a job's directory like a grid job's; returns the command with ``%IN`` set to
    the comma-separated staged inputs, as runGen sets it."""
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    for name in SANDBOX_MEMBERS:
        if (sandbox_dir / name).exists():
            (job_dir / name).symlink_to(sandbox_dir.absolute() / name)
    for path in inputs:
        (job_dir / path.name).symlink_to(path.absolute())
    return command.replace("%IN", shlex.quote(",".join(p.name for p in inputs)))


def _execute(state: StateDB, job: JobRecord, command: str, job_dir: Path) -> int:
    assert job.log_path is not None
    log_path = Path(job.log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: os.environ[k] for k in _JOB_ENV if k in os.environ}
    env.update(HOME=str(job_dir), TMPDIR=str(job_dir))
    with log_path.open("wb") as out:
        proc = subprocess.Popen(["bash", "-c", command], cwd=job_dir, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        state.job_started(job, proc.pid, proc_start(proc.pid))
        return proc.wait()


def _last_line(log_path: str | None) -> str:
    if not log_path:
        return ""
    try:
        lines = [ln for ln in Path(log_path).read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""
