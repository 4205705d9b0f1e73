"""The rows of the state DB as typed records (:mod:`upp_grid.grid.state` reads and writes
them), and the conversions from SQLite rows."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from upp_grid.grid.names import scope_of
from upp_grid.grid.tasks import OutputSpec, TaskSpec


@dataclass(frozen=True)
class Submission:
    """One tag."""

    tag: str
    backend: str
    config_path: str
    config_hash: str
    user: str
    sandbox: str
    work_dir: str | None = None
    store_dir: str | None = None
    created_at: str = ""
    updated_at: str = ""
    sandbox_sha256: str | None = None  #: of the tarball submitted (schema 4)


@dataclass(frozen=True)
class TaskRecord:
    """One container's task."""

    id: int
    tag: str
    container: str
    samples: tuple[str, ...]
    out_ds: str
    outputs: tuple[OutputSpec, ...]
    command: str
    status: str
    backend_status: str | None
    jedi_task_id: int | None
    n_files: int | None
    n_files_finished: int | None
    n_files_failed: int | None
    attempt: int
    submitted_at: str
    updated_at: str
    runtime: dict | None = None  #: ``{"runtime": "@el9", "image": ..., "job_size": ...}``
    error_dialog: str | None = None
    platform: str | None = None  #: the task's ``architecture``, e.g. ``@el9``
    container_image: str | None = None  #: prun ``--containerImage``

    @property
    def in_ds(self) -> str:
        return self.container

    @property
    def scope(self) -> str:
        """rucio scope of the outputs (``user.<nick>``)."""
        return scope_of(self.out_ds)


@dataclass(frozen=True)
class JobRecord:
    """One local job (one input file)."""

    task_id: int
    index: int
    input: str
    state: str
    attempt: int
    exit_code: int | None
    error: str | None
    log_path: str | None
    pid: int | None
    proc_start: str | None
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class Attempt:
    """One name a tag's container was submitted under (a ``task_attempts`` row)."""

    tag: str
    container: str
    attempt: int
    out_ds: str
    jedi_task_id: int | None
    config_hash: str | None
    outcome: str  #: ``submitted``, ``refused`` or ``reactivated``
    detail: str | None
    at: str
    platform: str | None = None  #: e.g. ``@el9`` (None in container mode)
    container_image: str | None = None


@dataclass(frozen=True)
class Event:
    tag: str
    container: str | None
    at: str
    event: str
    detail: str | None


@dataclass(frozen=True)
class DownloadFile:
    """One grid file of a tag that ``download`` listed (a ``download_files`` row)."""

    tag: str
    did: str  #: ``scope:name``
    container: str  #: the output container it was listed from
    out_ds: str
    sample: str
    output: str  #: ``<split>_<region>_<sample>_<flavour>``
    serial: str  #: the grid job's serial, ``_000001``
    size: int  #: bytes, as the catalogue lists it
    adler32: str  #: as the catalogue lists it
    dest: Path
    state: str = "listed"  #: ``listed``, ``verified`` or ``failed``
    fetches: int = 0
    mtime_ns: int | None = None  #: the destination's mtime when it was verified
    error: str | None = None

    @property
    def scope(self) -> str:
        return self.did.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.did.split(":", 1)[1]


def download_file_of(row: sqlite3.Row) -> DownloadFile:
    return DownloadFile(
        tag=row["tag"], did=row["did"], container=row["container"], out_ds=row["out_ds"],
        sample=row["sample"], output=row["output"], serial=row["serial"], size=row["bytes"],
        adler32=row["adler32"], dest=Path(row["dest"]), state=row["state"],
        fetches=row["fetches"], mtime_ns=row["mtime_ns"], error=row["error"])


def task_runtime(spec: TaskSpec) -> dict:
    """What a task runs on and how its jobs are sized, as recorded in the state DB."""
    o = spec.options
    return {"runtime": o.runtime, "platform": None if o.container_image else o.platform,
            "image": o.container_image, "job_size": o.job_size, "dest_se": o.dest_se}


def task_of(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        id=row["id"], tag=row["tag"], container=row["container"],
        samples=tuple(json.loads(row["samples"])), out_ds=row["out_ds"],
        outputs=tuple(OutputSpec(f, c) for f, c in json.loads(row["outputs"])),
        command=row["command"], status=row["status"], backend_status=row["backend_status"],
        jedi_task_id=row["jedi_task_id"], n_files=row["n_files"],
        n_files_finished=row["n_files_finished"], n_files_failed=row["n_files_failed"],
        attempt=row["attempt"], submitted_at=row["submitted_at"], updated_at=row["updated_at"],
        runtime=json.loads(row["runtime"]) if row["runtime"] else None,
        error_dialog=row["error_dialog"], platform=row["platform"],
        container_image=row["container_image"])


def job_of(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        task_id=row["task_id"], index=row["job_index"], input=row["input"], state=row["state"],
        attempt=row["attempt"], exit_code=row["exit_code"], error=row["error"],
        log_path=row["log_path"], pid=row["pid"], proc_start=row["proc_start"],
        started_at=row["started_at"], finished_at=row["finished_at"])
