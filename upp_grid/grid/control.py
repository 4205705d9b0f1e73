"""``upp-grid status / retry / kill / replicate``: the tags in a state DB, through their own
backend.

``status`` refreshes every task from its backend first. If a backend cannot be asked (no
credentials, server unreachable), the last recorded state is shown with a warning instead.
For a PanDA tag with finished tasks it also asks rucio where the outputs are, and warns when
they are only on scratch disks with no rule keeping them, with their expiry
(:mod:`upp_grid.grid.output_lifetime`). ``replicate`` puts a replication rule on every output
container of a tag and records it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from upp_grid.errors import UppGridError
from upp_grid.grid.backend import (
    DONE,
    PARTIAL,
    FailedJob,
    RetryParams,
    TaskAction,
    open_backend,
)
from upp_grid.grid.output_lifetime import RuleResult
from upp_grid.grid.state import (
    JobRecord,
    StateDB,
    Submission,
    TaskRecord,
    default_state_path,
)

log = logging.getLogger(__name__)


@dataclass
class TagReport:
    """One tag: its submission, tasks and (local backend) jobs."""

    submission: Submission
    tasks: list[TaskRecord]
    jobs: dict[int, list[JobRecord]] = field(default_factory=dict)
    refreshed: bool = True


@dataclass
class StatusReport:
    """What ``status``, ``retry`` and ``kill`` show."""

    state_path: Path
    tags: list[TagReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    acted_on: list[str] = field(default_factory=list)
    actions: list[TaskAction] = field(default_factory=list)
    failed_jobs: list[FailedJob] | None = None  #: ``status --failed``

    @property
    def refused(self) -> list[TaskAction]:
        """Requests the backend refused (retry/kill), each one named."""
        return [a for a in self.actions if a.sent and not a.accepted]

    @property
    def problem(self) -> str | None:
        """One line if the backend refused a task's retry/kill, or jobs still fail after a
        retry (local backend), else None."""
        if self.refused:
            first = self.refused[0]
            more = f" (+{len(self.refused) - 1} more, listed above)" * (len(self.refused) > 1)
            return (f"{first.container} ({first.task}): refused: {first.message}{more}; the "
                    "other tasks were acted on")
        failed = [(r.submission.tag, sum(len([j for j in jobs if j.state == "failed"])
                                         for jobs in r.jobs.values())) for r in self.tags]
        failed = [(tag, n) for tag, n in failed if n]
        if not failed:
            return None
        tag, n = failed[0]
        return f"{n} job(s) of tag '{tag}' still fail (see `upp-grid status --tag {tag}`)"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``status --json``)."""
        out: dict[str, Any] = {"state": str(self.state_path), "warnings": self.warnings,
                               "tags": [_tag_dict(r) for r in self.tags]}
        if self.actions:
            out["actions"] = [asdict(a) for a in self.actions]
        if self.failed_jobs is not None:
            out["failed_jobs"] = [asdict(j) for j in self.failed_jobs]
        return out


def _tag_dict(report: TagReport) -> dict[str, Any]:
    tasks = []
    for task in report.tasks:
        item = asdict(task)
        item["in_ds"] = task.in_ds
        item["scope"] = task.scope
        item["outputs"] = [{"file": o.file, "container": o.container} for o in task.outputs]
        item["jobs"] = [asdict(j) for j in report.jobs.get(task.id, [])]
        tasks.append(item)
    return {**asdict(report.submission), "refreshed": report.refreshed, "tasks": tasks}


def state_path(config_path: Path | None, state: Path | None) -> Path:
    """``--state DB``, else ``<base_dir>/upp-grid.sqlite`` of ``-c CFG``."""
    if state is not None:
        return state
    if config_path is None:
        raise UppGridError("give -c CFG (its base_dir holds the state) or --state DB")
    from upp_grid.config import load_config

    return default_state_path(load_config(config_path))


def _submissions(state: StateDB, tag: str | None) -> list[Submission]:
    if tag is None:
        return state.submissions()
    found = state.submission(tag)
    if found is None:
        known = ", ".join(s.tag for s in state.submissions()) or "none"
        raise UppGridError(f"{state.path}: no tag '{tag}' (known tags: {known})")
    return [found]


def _report(state: StateDB, sub: Submission, tasks: list[TaskRecord],
            refreshed: bool = True) -> TagReport:
    jobs = {t.id: state.jobs(t.id) for t in tasks}
    return TagReport(sub, tasks, {k: v for k, v in jobs.items() if v}, refreshed)


def status(path: Path, tag: str | None = None, failed: bool = False) -> StatusReport:
    """Refresh and report every tag (or one); ``failed``: also list the failed jobs."""
    report = StatusReport(path)
    if failed:
        report.failed_jobs = []
    with StateDB(path, create=False) as state:
        for sub in _submissions(state, tag):
            backend = open_backend(sub.backend, state)
            try:
                tasks = backend.refresh(sub)
                report.tags.append(_report(state, sub, tasks))
            except UppGridError as err:
                report.warnings.append(f"tag '{sub.tag}': showing the last known state: {err}")
                report.tags.append(_report(state, sub, state.tasks(sub.tag), refreshed=False))
                continue
            report.warnings += _lifetime_warnings(state, sub, tasks)
            if failed:
                try:
                    report.failed_jobs += backend.failed_jobs(sub)
                except UppGridError as err:
                    report.warnings.append(f"tag '{sub.tag}': cannot list the failed jobs: "
                                           f"{err}")
    return report


def _lifetime_warnings(state: StateDB, sub: Submission, tasks: list[TaskRecord]) -> list[str]:
    """Scratch-only outputs of a PanDA tag's finished tasks (nothing to say for the local
    backend, or before any task finished)."""
    if sub.backend != "panda" or not any(t.status in (DONE, PARTIAL) for t in tasks):
        return []
    from upp_grid.grid.output_lifetime import tag_lifetime_warnings
    from upp_grid.grid.outputs import TagOutputs, TaskOutputs
    from upp_grid.grid.rucio import RucioSource

    finished = tuple(TaskOutputs(t.container, t.samples, t.out_ds, t.outputs, t)
                     for t in tasks if t.status in (DONE, PARTIAL))
    try:
        source = RucioSource()
        return [f"tag '{sub.tag}': {line}" for line in tag_lifetime_warnings(
            TagOutputs(sub.tag, sub.user, finished, sub, state.path), source, state)]
    except UppGridError as err:
        return [f"tag '{sub.tag}': where the outputs are and how long they live was not "
                f"checked ({err})"]


@dataclass(frozen=True)
class ReplicateReport:
    """What ``replicate`` did: one rule per output container."""

    tag: str
    rse: str
    rules: list[RuleResult]


def replicate(path: Path | None, config_path: Path | None, tag: str, rse: str,
              lifetime_days: float | None, user: str | None = None) -> ReplicateReport:
    """A replication rule to ``rse`` for every output container of ``tag`` (from the state
    DB; without it, the names derived from the config, the tag and the user), recorded in the
    state DB.

    Raises
    ------
    UppGridError
        No state and no config, a container that does not exist, or rucio refusing the rule.
    """
    from upp_grid.grid.output_lifetime import replicate as make_rules
    from upp_grid.grid.rucio import RucioSource

    state_file = state_path(config_path, path)
    with StateDB(state_file, create=config_path is not None) as state:
        targets = _output_containers(state, config_path, tag, user)
        source = RucioSource()
        rules = make_rules(source, targets, rse, lifetime_days, f"upp-grid replicate {tag}")
        for rule in rules:
            state.record_rule(tag, rule.container, rse, rule.rule_id, lifetime_days,
                              rule.created)
    return ReplicateReport(tag, rse, rules)


def _output_containers(state: StateDB, config_path: Path | None, tag: str,
                       user: str | None) -> list[tuple[str, str]]:
    """``(scope, container)`` of every output container of the tag."""
    if state.submission(tag) is None and config_path is None:
        _submissions(state, tag)  # the error naming the known tags
    if state.submission(tag) is not None:
        tasks = state.tasks(tag)
        return [(t.scope, o.container) for t in tasks for o in t.outputs]
    from upp_grid.config import load_config
    from upp_grid.grid.outputs import find_outputs

    assert config_path is not None
    outputs = find_outputs(load_config(config_path), tag, state, user, refresh=False)
    return [(t.scope, o.container) for t in outputs.tasks for o in t.outputs]


def retry(path: Path, tag: str, workers: int | None = None,
          params: RetryParams | None = None) -> StatusReport:
    """Retry the failed work of a tag (failed, partial or aborted tasks; failed local jobs),
    with new task parameters if given."""
    return _act(path, tag, "retry", workers, params)


def kill(path: Path, tag: str) -> StatusReport:
    """Kill every active task of a tag."""
    return _act(path, tag, "kill", None)


def _act(path: Path, tag: str, action: str, workers: int | None,
         params: RetryParams | None = None) -> StatusReport:
    report = StatusReport(path)
    with StateDB(path, create=False) as state:
        sub = _submissions(state, tag)[0]
        backend = open_backend(sub.backend, state, workers=workers)
        done = backend.retry(sub, params) if action == "retry" else backend.kill(sub)
        report.actions = done.actions
        report.acted_on = sorted({a.container for a in done.actions if a.accepted})
        report.tags.append(_report(state, sub, done.tasks))
    return report
