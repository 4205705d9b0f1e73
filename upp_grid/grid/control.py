"""``upp-grid status / retry / kill``: the tags in a state DB, through their own backend.

``status`` refreshes every task from its backend first. If a backend cannot be asked (no
credentials, server unreachable), the last recorded state is shown with a warning instead.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from upp_grid.errors import UppGridError
from upp_grid.grid.backend import open_backend
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

    @property
    def problem(self) -> str | None:
        """One line if jobs still fail after a retry (local backend), else None."""
        failed = [(r.submission.tag, sum(len([j for j in jobs if j.state == "failed"])
                                         for jobs in r.jobs.values())) for r in self.tags]
        failed = [(tag, n) for tag, n in failed if n]
        if not failed:
            return None
        tag, n = failed[0]
        return f"{n} job(s) of tag '{tag}' still fail (see `upp-grid status --tag {tag}`)"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``status --json``)."""
        return {"state": str(self.state_path), "warnings": self.warnings,
                "tags": [_tag_dict(r) for r in self.tags]}


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


def status(path: Path, tag: str | None = None) -> StatusReport:
    """Refresh and report every tag (or one)."""
    report = StatusReport(path)
    with StateDB(path, create=False) as state:
        for sub in _submissions(state, tag):
            try:
                tasks = open_backend(sub.backend, state).refresh(sub)
                report.tags.append(_report(state, sub, tasks))
            except UppGridError as err:
                report.warnings.append(f"tag '{sub.tag}': showing the last known state: {err}")
                report.tags.append(_report(state, sub, state.tasks(sub.tag), refreshed=False))
    return report


def retry(path: Path, tag: str, workers: int | None = None) -> StatusReport:
    """Retry the failed work of a tag (failed or partial tasks; failed local jobs)."""
    return _act(path, tag, "retry", workers)


def kill(path: Path, tag: str) -> StatusReport:
    """Kill every active task of a tag."""
    return _act(path, tag, "kill", None)


def _act(path: Path, tag: str, action: str, workers: int | None) -> StatusReport:
    report = StatusReport(path)
    with StateDB(path, create=False) as state:
        sub = _submissions(state, tag)[0]
        seen = len(state.events(tag))
        backend = open_backend(sub.backend, state, workers=workers)
        tasks = backend.retry(sub) if action == "retry" else backend.kill(sub)
        report.acted_on = sorted({e.container for e in state.events(tag)[seen:] if e.container
                                  and (e.event == action or (e.detail or "").startswith(action))})
        report.tags.append(_report(state, sub, tasks))
    return report
