"""A tag's output containers: where they come from, what is in them, and what is missing.

* :func:`find_outputs`: the tag's tasks from the state DB (per input container its outDS, the
  per-component output containers ``<outDS>_output_<split>_<component>.h5``, the task id, status
  and file counts, and for the local backend the per-job rows); without state for the tag the
  names are derived from the config, the tag and the user (``--rucio-user`` / ``RUCIO_ACCOUNT``).
* :func:`list_outputs`: every output container listed from the source, each file mapped to its
  place in the layout (:mod:`upp_grid.grid.download_records`); missing containers are one error that
  names them all with the reason the state DB gives.
* :func:`find_incomplete`: inputs without (all their) outputs, one line each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from upp_grid.config import Config
from upp_grid.errors import UppGridError
from upp_grid.grid import names
from upp_grid.grid.backend import (
    ABORTED,
    BROKEN,
    DONE,
    FAILED,
    RUNNING,
    SETTLED,
    SUBMITTED,
    open_backend,
)
from upp_grid.grid.download_records import DownloadError, Wanted, job_dir, more_listed, parse_lfn
from upp_grid.grid.tasks import OutputSpec, plan_tasks
from upp_grid.grid.rucio import RemoteFile
from upp_grid.grid.sources import Source
from upp_grid.grid.state import JobRecord, StateDB, Submission, TaskRecord
from upp_grid.grid.transfer import RetryPolicy, list_with_retries

log = logging.getLogger(__name__)


class MissingOutputsError(DownloadError):
    """Output containers that do not exist (each named, with the reason)."""


@dataclass(frozen=True)
class TaskOutputs:
    """One input container's task: its output containers and what the state DB knows."""

    in_ds: str
    samples: tuple[str, ...]
    out_ds: str
    outputs: tuple[OutputSpec, ...]
    record: TaskRecord | None = None
    jobs: tuple[JobRecord, ...] = ()
    num_inputs: int | None = None  #: input files found locally (names derived, no state)

    @property
    def scope(self) -> str:
        return names.scope_of(self.out_ds)

    @property
    def sample(self) -> str:
        """The layout directory of the task's outputs (its first sample, as the local split)."""
        return self.samples[0]

    def describe(self) -> str:
        """``task 1001 (running, 3/10 files done)``, from the state DB."""
        r = self.record
        if r is None:
            return f"{self.in_ds}: no task recorded"
        name = f"task {r.jedi_task_id}" if r.jedi_task_id is not None else f"local task {r.id}"
        counts = ""
        if r.n_files is not None:
            counts = f", {r.n_files_finished or 0}/{r.n_files} files done"
            if r.n_files_failed:
                counts += f", {r.n_files_failed} failed"
        return f"{name} of {self.in_ds} ({r.status}{counts})"


@dataclass(frozen=True)
class TagOutputs:
    """Every task of a tag, from the state DB or derived from the config."""

    tag: str
    user: str
    tasks: tuple[TaskOutputs, ...]
    submission: Submission | None
    state_path: Path

    @property
    def from_state(self) -> bool:
        return self.submission is not None

    @property
    def containers(self) -> int:
        """How many output containers."""
        return sum(len(t.outputs) for t in self.tasks)


# --------------------------------------------------------------------------- finding them
def find_outputs(config: Config, tag: str, state: StateDB, user: str | None = None,
                 refresh: bool = True) -> TagOutputs:
    """The tag's tasks and output containers: from the state DB, else derived from the config.

    ``refresh``: ask the backend for the state of tasks that are not settled yet (a failure to
    reach it is a warning; the recorded state is used).

    Raises
    ------
    DatasetNameError
        No state for the tag and no user to derive the names from (or a bad name).
    """
    names.check_tag(tag)
    sub = state.submission(tag)
    if sub is not None:
        return _from_state(state, sub, user, refresh)
    known = ", ".join(s.tag for s in state.submissions()) or "none"
    log.warning("tag %s is not in %s (tags there: %s); deriving the dataset names "
                "from the config", tag, state.path, known)
    who = names.resolve_user(user, os.environ)
    specs = plan_tasks(config, tag, who)
    tasks = tuple(TaskOutputs(s.container, s.samples, s.out_ds, s.outputs,
                              num_inputs=len(s.files) or None) for s in specs)
    return TagOutputs(tag, who, tasks, None, state.path)


def _from_state(state: StateDB, sub: Submission, user: str | None, refresh: bool
                ) -> TagOutputs:
    if refresh:
        _refresh(state, sub)
    if user and user != sub.user:
        log.warning("tag %s was submitted as user %s; --rucio-user %s ignored",
                    sub.tag, sub.user, user)
    tasks = tuple(TaskOutputs(t.container, t.samples, t.out_ds, t.outputs, t,
                              tuple(state.jobs(t.id))) for t in state.tasks(sub.tag))
    if not tasks:
        raise DownloadError(f"{state.path}: tag '{sub.tag}' has no submitted tasks "
                            "(a dry run?); run `upp-grid submit` first")
    return TagOutputs(sub.tag, sub.user, tasks, sub, state.path)


def _refresh(state: StateDB, sub: Submission) -> None:
    if all(t.status in SETTLED for t in state.tasks(sub.tag)):
        return
    try:
        open_backend(sub.backend, state).refresh(sub)
    except UppGridError as err:
        log.warning("could not refresh the task states from %s (%s); using the recorded ones",
                    sub.backend, err)


# --------------------------------------------------------------------------- listing them
def list_outputs(tag: TagOutputs, source: Source, components_dir: Path,
                 policy: RetryPolicy | None = None) -> list[Wanted]:
    """List every output container and map each file to its place in the layout.

    Transient failures (server unreachable, ...) are retried as ``policy`` says.

    Raises
    ------
    MissingOutputsError
        Listing every missing container (logged) with the reason from the state DB.
    DownloadError
        A file whose name is not a grid output name of its container, or two files that
        would go to the same place.
    """
    wanted: list[Wanted] = []
    missing: list[tuple[str, str]] = []
    for task in tag.tasks:
        for spec in task.outputs:
            files = list_with_retries(source, task.scope, spec.container, policy)
            if files is None:
                missing.append((spec.container, _missing_reason(task, tag)))
                continue
            for f in files:
                wanted.append(_wanted(task, spec, f, components_dir))
    if missing:
        for container, why in missing:
            log.error("missing: %s (%s)", container, why)
        first, why = missing[0]
        raise MissingOutputsError(f"{len(missing)} output container"
                                  f"{'s' * (len(missing) > 1)} not found in {source.description}:"
                                  f" {first}{more_listed(len(missing))}: {why}")
    _check_unique_dest(wanted)
    return wanted


def _missing_reason(task: TaskOutputs, tag: TagOutputs) -> str:
    r = task.record
    if r is None:
        return (f"no submission of tag '{tag.tag}' in {tag.state_path}, names derived for user "
                f"'{tag.user}': is --tag or the user (--rucio-user / RUCIO_ACCOUNT) wrong?")
    if r.status in (SUBMITTED, RUNNING):
        return f"{task.describe()}: not finished yet (see `upp-grid status`)"
    if r.status in (FAILED, BROKEN, ABORTED):
        return f"{task.describe()}: it produced no outputs (see `upp-grid status`, `retry`)"
    return (f"{task.describe()}, yet the container does not exist: deleted, or another rucio "
            "server or account?")


def _wanted(task: TaskOutputs, spec: OutputSpec, f: RemoteFile, components_dir: Path) -> Wanted:
    parsed = parse_lfn(f.name)
    if parsed is None or parsed[2] != spec.file:
        raise DownloadError(f"{spec.container}: {f.name}: not a grid output file name "
                            f"'user.<nick>.<taskid>._<serial>.{spec.file}'")
    serial = parsed[1]
    dest = job_dir(components_dir, task.sample, task.out_ds, serial) / spec.file
    output = spec.file.removeprefix("output_").removesuffix(".h5")
    return Wanted(f, spec.container, task.out_ds, task.sample, output, serial, dest)


def _check_unique_dest(wanted: Sequence[Wanted]) -> None:
    seen: dict[Path, Wanted] = {}
    for w in wanted:
        other = seen.setdefault(w.dest, w)
        if other is not w:
            raise DownloadError(f"{w.container}: {other.remote.name} and {w.remote.name} are "
                                f"outputs of the same job serial {w.serial} (two tasks wrote "
                                "into one outDS?); clean the container or use a new --tag")


# --------------------------------------------------------------------------- what is missing
def find_incomplete(tag: TagOutputs, wanted: Sequence[Wanted]) -> list[str]:
    """Inputs without (all their) outputs, one line each; empty when nothing is missing."""
    problems: list[str] = []
    for task in tag.tasks:
        mine = [w for w in wanted if w.out_ds == task.out_ds]
        by_container: dict[str, set[str]] = {spec.container: set() for spec in task.outputs}
        for w in mine:
            by_container[w.container].add(w.serial)
        serials = set().union(*by_container.values()) if by_container else set()
        complete = set.intersection(*by_container.values()) if by_container else set()
        for serial in sorted(serials - complete):
            lacking = [c for c, s in by_container.items() if serial not in s]
            problems.append(f"{task.out_ds}: job {serial} has no output in {len(lacking)} "
                            f"container{'s' * (len(lacking) > 1)} ({lacking[0]}"
                            f"{', ...' if len(lacking) > 1 else ''})")
        problems += _inputs_without_outputs(task, serials)
    return problems


def _inputs_without_outputs(task: TaskOutputs, serials: set[str]) -> list[str]:
    """What the state DB (or the local inputs) say about inputs whose job left no output.

    ``serials``: the jobs with at least one output. Local jobs are matched by serial (the
    local backend names a job's outputs with its index); PanDA tasks by their file counts.
    """
    jobs_with_outputs = len(serials)
    r = task.record
    if r is None:
        if task.num_inputs is None:
            log.warning("%s: no state and no local input files: cannot tell whether every "
                        "input produced outputs (%d jobs did)", task.in_ds, jobs_with_outputs)
            return []
        lost = task.num_inputs - jobs_with_outputs
        if lost > 0:
            return [f"{task.in_ds}: {lost} of {task.num_inputs} local input files have no "
                    "outputs"]
        return []
    if task.jobs:
        return [f"{task.in_ds}: input {Path(j.input).name} has no outputs (job {j.index} "
                f"{j.state}{': ' + j.error if j.error else ''})"
                for j in task.jobs if f"_{j.index:06d}" not in serials]
    if r.status in (SUBMITTED, RUNNING):
        return [f"{task.describe()}: not finished, {jobs_with_outputs} jobs have outputs so far"]
    if r.n_files is not None:
        lost = r.n_files - jobs_with_outputs
        if lost > 0:
            return [f"{task.describe()}: {lost} of {r.n_files} input files have no outputs"]
        return []
    if r.status != DONE:
        return [f"{task.describe()}: not every input produced outputs"]
    return []
