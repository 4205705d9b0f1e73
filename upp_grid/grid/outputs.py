"""A tag's output containers: where they come from, what is in them, and what is missing.

* :func:`find_outputs`: the tag's tasks from the state DB (per input container its outDS, the
  per-component output containers ``<outDS>_output_<split>_<component>.h5``, the task id, status
  and file counts, and for the local backend the per-job rows); without state for the tag the
  names are derived from the config, the tag and the user (``--rucio-user`` / ``RUCIO_ACCOUNT``).
* :func:`list_outputs`: every output container listed from the source, each file mapped to its
  place in the layout (:mod:`upp_grid.grid.download_records`); missing containers are one error that
  names them all with the reason the state DB gives.
* :func:`input_files`: the files of each input container, from rucio (``list_files`` on the
  inDS), so completeness is checked without the state DB.
* :func:`find_incomplete`: from the provenance of the unpacked job outputs, inputs covered by
  two jobs (an error naming every one) and inputs without outputs, one line each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from upp_grid.config import Config
from upp_grid.errors import BookkeepingError, UppGridError
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
from upp_grid.grid.job_archive import coverage, unpacked
from upp_grid.grid.rucio import RemoteFile, RucioSource
from upp_grid.grid.sources import Source
from upp_grid.grid.state import JobRecord, StateDB, Submission, TaskRecord
from upp_grid.grid.tasks import OutputSpec, plan_tasks
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
                            f"'user.<nick>.<taskid>._<serial>.{spec.file}' (an output of an "
                            "older upp-grid, one file per component? resubmit the tag)")
    serial = parsed[1]
    dest = job_dir(components_dir, task.sample, task.out_ds, serial)
    return Wanted(f, spec.container, task.out_ds, task.sample, spec.file, serial, dest)


def _check_unique_dest(wanted: Sequence[Wanted]) -> None:
    seen: dict[Path, Wanted] = {}
    for w in wanted:
        other = seen.setdefault(w.dest, w)
        if other is not w:
            raise DownloadError(f"{w.container}: {other.remote.name} and {w.remote.name} are "
                                f"outputs of the same job serial {w.serial} (two tasks wrote "
                                "into one outDS?); clean the container or use a new --tag")


# --------------------------------------------------------------------------- what is missing
def input_files(tag: TagOutputs, source: Source | None, state: StateDB) -> dict[str, set[str]]:
    """The file names of every input container: listed from rucio (``DIDClient.list_files``
    on the inDS, recorded in the state DB), else a list recorded before, else the local
    backend's jobs. An input container with none of these is missing from the result."""
    out: dict[str, set[str]] = {}
    for task in tag.tasks:
        found = (source.list_names(names.scope_of(task.in_ds), task.in_ds)
                 if isinstance(source, RucioSource) else None)
        if found is not None:
            listed = {Path(f.name).name for f in found[1]}
            state.record_input_files(tag.tag, task.in_ds, listed)
            out[task.in_ds] = listed
            continue
        recorded = state.input_files(tag.tag, task.in_ds)
        if recorded is None and task.jobs:
            recorded = {Path(p).name for j in task.jobs for p in j.input.split(",")}
        if recorded is not None:
            out[task.in_ds] = recorded
    return out


def find_incomplete(tag: TagOutputs, wanted: Sequence[Wanted],
                    inputs: dict[str, set[str]]) -> list[str]:
    """Inputs not covered by exactly one job output, one line each, by name; empty when every
    input file of every input container is covered once.

    Coverage comes from the provenance of the unpacked job outputs, the inputs from
    :func:`input_files`. An input container whose files are unknown is one line too: nothing
    is taken as complete without a list to check against.

    Raises
    ------
    BookkeepingError
        Inputs covered by two job outputs (PanDA ran a job twice), every one named.
    """
    problems: list[str] = []
    twice: list[str] = []
    for task in tag.tasks:
        jobs = []
        for w in wanted:
            if w.out_ds != task.out_ds:
                continue
            found = unpacked(w.dest)
            if found is None:
                raise DownloadError(f"{w.dest}: not unpacked from {w.did}; rerun the download")
            jobs.append((f"{task.out_ds} job {w.serial}", found[1]))
        expected = inputs.get(task.in_ds)
        cov = coverage(expected or (), jobs)
        twice += [f"{task.in_ds}: input {name} is covered by {len(where)} job outputs "
                  f"({', '.join(where)})" for name, where in cov.twice]
        if expected is None:
            problems.append(f"{task.in_ds}: its file list is unknown (not in rucio, and no "
                            f"local jobs): cannot check that its {len(jobs)} job outputs cover "
                            "every input")
            continue
        problems += [f"{task.in_ds}: input {name} has no output{_job_reason(task, name)}"
                     for name in cov.missing]
        problems += [f"{task.in_ds}: job outputs hold {name}, which is not a file of the input "
                     "container" for name in cov.unknown]
    if twice:
        for line in twice:
            log.error("%s", line)
        raise BookkeepingError(f"{twice[0]}{more_listed(len(twice))}: PanDA ran a job twice; "
                               "remove all but one of those outputs from the container, then "
                               "download again, so no jet is counted twice")
    return problems


def _job_reason(task: TaskOutputs, name: str) -> str:
    for j in task.jobs:
        if name in {Path(p).name for p in j.input.split(",")}:
            return f" (job {j.index} {j.state}{': ' + j.error if j.error else ''})"
    r = task.record
    if r is not None and r.status != DONE:
        return f" ({task.describe()})"
    return ""


LEFT_OUT_NAME = "left-out-{tag}.yaml"


def record_left_out(state: StateDB, components_dir: Path, tag: str,
                    incomplete: Sequence[str]) -> Path | None:
    """With ``--allow-partial``: what was left out, in ``<components_dir>/left-out-<tag>.yaml``
    (written atomically; removed when nothing is) and as an event in the state DB."""
    path = components_dir / LEFT_OUT_NAME.format(tag=tag)
    if not incomplete:
        path.unlink(missing_ok=True)
        return None
    import yaml

    from upp_grid.fsutil import write_text_atomic

    write_text_atomic(path, yaml.safe_dump({"tag": tag, "left_out": list(incomplete)},
                                           sort_keys=False))
    state.add_event(tag, None, "partial", f"{len(incomplete)} left out: {incomplete[0]}")
    return path
