"""Submission state in one SQLite file (default ``<base_dir>/upp-grid.sqlite``).

WAL mode, a busy timeout (several ``status`` processes may refresh at once), the schema version
in ``PRAGMA user_version``, short write transactions (``BEGIN IMMEDIATE``) and parameterised
queries only. Tables:

* ``submissions``: one row per tag: backend, config path and hash, user, sandbox, and for the
  local backend its work dir and store.
* ``tasks``: one row per tag and input container: inDS, outDS, declared outputs and their
  containers, status (see :mod:`upp_grid.grid.backend`), the backend's own status, jediTaskID,
  file counts, how many times it was submitted.
* ``jobs``: local backend, one row per input file: state, attempt, exit code, log, pid.
* ``events``: every status change and command, oldest first.
* ``download_files``: one row per grid file of a tag that ``upp-grid download`` listed: its DID,
  container, outDS, sample, output and job serial, the catalogue's size and adler32, its
  destination, its state (``listed`` -> ``verified`` or ``failed``), the number of fetches, the
  destination's mtime at verification and the last error (see
  :mod:`upp_grid.grid.download_records`).

Schema versions (``PRAGMA user_version``), each reached from the one before by
:data:`MIGRATIONS`:

1. submissions, tasks, jobs, events.
2. download_files, which ``download`` used to create on its own (with a ``download_meta`` table
   holding the version of that table alone, dropped: the file has one version).
3. ``task_attempts``: every outDS a tag's container was submitted under (attempt number,
   jediTaskID, config hash, runtime, outcome: ``submitted``, ``refused``, ``reactivated``), so
   a resubmission always takes a name never used before; ``tasks.runtime`` (platform or image
   and job size, JSON) and ``tasks.error_dialog`` (PanDA's reason for a pending, broken or
   exhausted task). Existing tasks become attempt rows of their own; nothing is lost.
4. ``platform`` and ``container_image`` columns in ``tasks`` and ``task_attempts`` (what every
   task and attempt ran on), filled from the runtime JSON of existing rows;
   ``submissions.sandbox_sha256``, the tarball a tag was submitted with; ``rules`` (the
   replication rules of ``upp-grid replicate``) and ``input_files`` (each input container's
   files as rucio listed them at download).

The statements of each version are in :mod:`upp_grid.grid.state_schema`.

A file from a newer upp-grid is refused with a one-line error asking to upgrade.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upp_grid.errors import UppGridError
from upp_grid.grid.state_records import (
    Attempt,
    DownloadFile,
    Event,
    JobRecord,
    Submission,
    TaskRecord,
    download_file_of,
    job_of,
    task_of,
    task_runtime,
)
from upp_grid.grid.state_schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Attempt", "DownloadFile", "Event", "JobRecord",
           "StateDB", "StateError", "Submission", "TaskRecord", "default_state_path", "now",
           "task_runtime"]
from upp_grid.grid.tasks import TaskSpec

if TYPE_CHECKING:
    from upp_grid.config import Config

log = logging.getLogger(__name__)

DEFAULT_NAME = "upp-grid.sqlite"
BUSY_TIMEOUT_S = 60.0



class StateError(UppGridError):
    """The state DB is missing, unreadable or from a newer upp-grid."""


def now() -> str:
    """UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_state_path(config: Config) -> Path:
    """The state file of a config: ``<base_dir>/upp-grid.sqlite``."""
    return config.global_.base_dir / DEFAULT_NAME


class StateDB:
    """The state file. ``create=False`` refuses to create a missing file."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StateError(f"{self.path}: no upp-grid state here (nothing submitted yet?)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self._set_wal()
            # WAL + NORMAL: no corruption on a crash, at most the last commits lost on power loss
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise StateError(f"{self.path}: not a usable upp-grid state file ({err})") from None

    def _set_wal(self) -> None:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StateError(f"{self.path}: written by a newer upp-grid (schema {version}, this "
                             f"one reads up to {SCHEMA_VERSION}): upgrade upp-grid")
        return version

    def _migrate(self) -> None:
        """Bring the file to :data:`SCHEMA_VERSION`, one version at a time, in one transaction."""
        if self._version() == SCHEMA_VERSION:
            return
        with self.transaction() as db:
            version = self._version()  # again: another process may have migrated meanwhile
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
            # a PRAGMA takes no parameters; the value is this module's constant
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        if version:
            log.info("%s: state schema %d -> %d", self.path, version, SCHEMA_VERSION)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> StateDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken up front so concurrent writers wait instead of failing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._db.execute(sql, args).fetchall()

    # ---------------------------------------------------------------------------- submissions
    def submission(self, tag: str) -> Submission | None:
        rows = self._rows("SELECT * FROM submissions WHERE tag = ?", (tag,))
        return Submission(**dict(rows[0])) if rows else None

    def submissions(self) -> list[Submission]:
        return [Submission(**dict(r))
                for r in self._rows("SELECT * FROM submissions ORDER BY created_at, tag")]

    def _upsert_submission(self, db: sqlite3.Connection, sub: Submission, stamp: str) -> None:
        db.execute(
            """INSERT INTO submissions (tag, backend, config_path, config_hash, user, sandbox,
                   work_dir, store_dir, created_at, updated_at, sandbox_sha256)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (tag) DO UPDATE SET config_path = excluded.config_path,
                   config_hash = excluded.config_hash, sandbox = excluded.sandbox,
                   work_dir = excluded.work_dir, store_dir = excluded.store_dir,
                   updated_at = excluded.updated_at,
                   sandbox_sha256 = COALESCE(excluded.sandbox_sha256, sandbox_sha256)""",
            (sub.tag, sub.backend, sub.config_path, sub.config_hash, sub.user, sub.sandbox,
             sub.work_dir, sub.store_dir, stamp, stamp, sub.sandbox_sha256))

    # ---------------------------------------------------------------------------------- tasks
    def tasks(self, tag: str) -> list[TaskRecord]:
        return [task_of(r) for r in self._rows("SELECT * FROM tasks WHERE tag = ? ORDER BY id",
                                              (tag,))]

    def task(self, task_id: int) -> TaskRecord:
        return task_of(self._rows("SELECT * FROM tasks WHERE id = ?", (task_id,))[0])

    def record_task(self, sub: Submission, spec: TaskSpec, *, status: str,
                    jedi_task_id: int | None = None, params: dict | None = None,
                    detail: str | None = None) -> TaskRecord:
        """Record a (re)submitted task, with its submission row and its attempt, in one
        transaction. The task row then describes this attempt (its outDS, task id)."""
        stamp = now()
        outputs = json.dumps([[o.file, o.container] for o in spec.outputs])
        runtime = task_runtime(spec)
        with self.transaction() as db:
            self._upsert_submission(db, sub, stamp)
            db.execute(
                """INSERT INTO tasks (tag, container, samples, out_ds, outputs, command, status,
                       jedi_task_id, task_params, submitted_at, updated_at, attempt, runtime,
                       platform, container_image)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (tag, container) DO UPDATE SET samples = excluded.samples,
                       out_ds = excluded.out_ds, outputs = excluded.outputs,
                       command = excluded.command, status = excluded.status,
                       backend_status = NULL, jedi_task_id = excluded.jedi_task_id,
                       n_files = NULL, n_files_finished = NULL, n_files_failed = NULL,
                       error_dialog = NULL, attempt = excluded.attempt,
                       task_params = excluded.task_params, runtime = excluded.runtime,
                       platform = excluded.platform, container_image = excluded.container_image,
                       submitted_at = excluded.submitted_at, updated_at = excluded.updated_at""",
                (sub.tag, spec.container, json.dumps(spec.samples), spec.out_ds, outputs,
                 spec.command, status, jedi_task_id,
                 json.dumps(params) if params is not None else None, stamp, stamp,
                 spec.attempt, json.dumps(runtime), runtime["platform"], runtime["image"]))
            self._attempt(db, sub, spec, jedi_task_id, "submitted", detail, stamp)
            row = db.execute("SELECT * FROM tasks WHERE tag = ? AND container = ?",
                             (sub.tag, spec.container)).fetchone()
            self._event(db, sub.tag, spec.container, status, detail, stamp)
        return task_of(row)

    def record_unused_name(self, sub: Submission, spec: TaskSpec, outcome: str, detail: str,
                           jedi_task_id: int | None = None) -> None:
        """Record an outDS that PanDA did not turn into a new task of ours (``refused`` or
        ``reactivated``): it is never used again, so the next submit takes a new name."""
        stamp = now()
        with self.transaction() as db:
            self._upsert_submission(db, sub, stamp)
            self._attempt(db, sub, spec, jedi_task_id, outcome, detail, stamp)
            self._event(db, sub.tag, spec.container, outcome, detail, stamp)

    @staticmethod
    def _attempt(db: sqlite3.Connection, sub: Submission, spec: TaskSpec,
                 jedi_task_id: int | None, outcome: str, detail: str | None,
                 stamp: str) -> None:
        runtime = task_runtime(spec)
        db.execute(
            """INSERT INTO task_attempts (tag, container, attempt, out_ds, jedi_task_id,
                   config_hash, runtime, platform, container_image, outcome, detail, at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (tag, container, attempt) DO UPDATE SET out_ds = excluded.out_ds,
                   jedi_task_id = excluded.jedi_task_id, config_hash = excluded.config_hash,
                   runtime = excluded.runtime, platform = excluded.platform,
                   container_image = excluded.container_image, outcome = excluded.outcome,
                   detail = excluded.detail, at = excluded.at""",
            (sub.tag, spec.container, spec.attempt, spec.out_ds, jedi_task_id, sub.config_hash,
             json.dumps(runtime), runtime["platform"], runtime["image"], outcome, detail,
             stamp))

    # ---------------------------------------------------------------------------------- rules
    def record_rule(self, tag: str, container: str, rse: str, rule_id: str,
                    lifetime_days: float | None, created: bool) -> None:
        """A replication rule of one output container (``upp-grid replicate``)."""
        stamp = now()
        with self.transaction() as db:
            db.execute(
                """INSERT INTO rules (tag, container, rse, rule_id, lifetime_days, created, at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (tag, container, rse) DO UPDATE SET rule_id = excluded.rule_id,
                       lifetime_days = excluded.lifetime_days, at = excluded.at""",
                (tag, container, rse, rule_id, lifetime_days, int(created), stamp))
            self._event(db, tag, container, "rule", f"{rule_id} to {rse}", stamp)

    def rules(self, tag: str) -> list[dict[str, Any]]:
        """The tag's recorded replication rules, oldest first."""
        return [dict(r) for r in self._rows("SELECT * FROM rules WHERE tag = ? ORDER BY at, "
                                            "container", (tag,))]

    # ---------------------------------------------------------------------------- input files
    def record_input_files(self, tag: str, in_ds: str, names: Iterable[str]) -> None:
        """The files of an input container, as rucio lists them (replacing an older list)."""
        with self.transaction() as db:
            db.execute("DELETE FROM input_files WHERE tag = ? AND in_ds = ?", (tag, in_ds))
            db.executemany("INSERT INTO input_files (tag, in_ds, name) VALUES (?, ?, ?)",
                           [(tag, in_ds, n) for n in sorted(set(names))])

    def input_files(self, tag: str, in_ds: str) -> set[str] | None:
        """The recorded files of an input container; None if never listed."""
        rows = self._rows("SELECT name FROM input_files WHERE tag = ? AND in_ds = ?",
                          (tag, in_ds))
        return {r["name"] for r in rows} if rows else None

    def attempts(self, tag: str, container: str | None = None) -> list[Attempt]:
        """Every name the tag's containers (or one) were submitted under, oldest first."""
        sql = "SELECT * FROM task_attempts WHERE tag = ?"
        args: list[Any] = [tag]
        if container is not None:
            sql += " AND container = ?"
            args.append(container)
        return [Attempt(r["tag"], r["container"], r["attempt"], r["out_ds"], r["jedi_task_id"],
                        r["config_hash"], r["outcome"], r["detail"], r["at"], r["platform"],
                        r["container_image"])
                for r in self._rows(sql + " ORDER BY container, attempt", args)]

    def next_attempts(self, tag: str) -> dict[str, int]:
        """The attempt number the next submission of each known container of ``tag`` gets."""
        rows = self._rows("SELECT container, MAX(attempt) AS n FROM task_attempts WHERE tag = ? "
                          "GROUP BY container", (tag,))
        return {r["container"]: int(r["n"]) + 1 for r in rows}

    def set_error_dialog(self, task_id: int, dialog: str | None) -> None:
        """PanDA's ``errorDialog`` of a task (why it is pending, broken or exhausted)."""
        old = self._rows("SELECT error_dialog FROM tasks WHERE id = ?", (task_id,))
        if old and old[0]["error_dialog"] != dialog:
            self._write("UPDATE tasks SET error_dialog = ? WHERE id = ?", (dialog, task_id))

    def update_task(self, task_id: int, *, status: str, backend_status: str | None,
                    counts: tuple[int | None, int | None, int | None] | None = None,
                    detail: str | None = None) -> TaskRecord:
        """Set a task's status (and file counts); a change of status is logged as an event.

        Nothing is written when nothing changes, so a quiet ``status`` only reads.
        """
        old = self._rows("SELECT * FROM tasks WHERE id = ?", (task_id,))[0]
        new = (status, backend_status, *(counts or (old["n_files"], old["n_files_finished"],
                                                    old["n_files_failed"])))
        if not detail and new == (old["status"], old["backend_status"], old["n_files"],
                                  old["n_files_finished"], old["n_files_failed"]):
            return task_of(old)
        stamp = now()
        with self.transaction() as db:
            old = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
            n_files, n_finished, n_failed = new[2:]
            db.execute("""UPDATE tasks SET status = ?, backend_status = ?, n_files = ?,
                              n_files_finished = ?, n_files_failed = ?, updated_at = ?
                          WHERE id = ?""",
                       (status, backend_status, n_files, n_finished, n_failed, stamp, task_id))
            if old["status"] != status or detail:
                self._event(db, old["tag"], old["container"], status, detail, stamp)
            row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return task_of(row)

    def add_event(self, tag: str, container: str | None, event: str,
                  detail: str | None = None) -> None:
        with self.transaction() as db:
            self._event(db, tag, container, event, detail, now())

    @staticmethod
    def _event(db: sqlite3.Connection, tag: str, container: str | None, event: str,
               detail: str | None, stamp: str) -> None:
        db.execute("INSERT INTO events (tag, container, at, event, detail) VALUES (?, ?, ?, ?, ?)",
                   (tag, container, stamp, event, detail))

    def events(self, tag: str) -> list[Event]:
        return [Event(r["tag"], r["container"], r["at"], r["event"], r["detail"])
                for r in self._rows("SELECT * FROM events WHERE tag = ? ORDER BY id", (tag,))]

    # ----------------------------------------------------------------------------------- jobs
    def jobs(self, task_id: int) -> list[JobRecord]:
        return [job_of(r) for r in self._rows(
            "SELECT * FROM jobs WHERE task_id = ? ORDER BY job_index", (task_id,))]

    def reset_jobs(self, task_id: int, inputs: Sequence[str]) -> None:
        """Replace a task's jobs by fresh queued ones, one per input, numbered from 1."""
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE task_id = ?", (task_id,))
            db.executemany("INSERT INTO jobs (task_id, job_index, input, state) "
                           "VALUES (?, ?, ?, 'queued')",
                           [(task_id, i, path) for i, path in enumerate(inputs, start=1)])

    def claim_job(self, task_id: int, index: int, log_path: str) -> JobRecord | None:
        """queued -> running with the next attempt number; None if it is no longer queued."""
        with self.transaction() as db:
            cur = db.execute(
                """UPDATE jobs SET state = 'running', attempt = attempt + 1, exit_code = NULL,
                       error = NULL, log_path = ? || '.' || (attempt + 1) || '.log', pid = NULL,
                       proc_start = NULL, started_at = ?, finished_at = NULL
                   WHERE task_id = ? AND job_index = ? AND state = 'queued'""",
                (log_path, now(), task_id, index))
            if cur.rowcount == 0:
                return None
            row = db.execute("SELECT * FROM jobs WHERE task_id = ? AND job_index = ?",
                             (task_id, index)).fetchone()
        return job_of(row)

    def job_started(self, job: JobRecord, pid: int, proc_start: str | None) -> None:
        with self.transaction() as db:
            db.execute("""UPDATE jobs SET pid = ?, proc_start = ? WHERE task_id = ?
                          AND job_index = ? AND attempt = ? AND state = 'running'""",
                       (pid, proc_start, job.task_id, job.index, job.attempt))

    def finish_job(self, job: JobRecord, state: str, exit_code: int | None,
                   error: str | None) -> bool:
        """running -> done/failed for this attempt; False if someone else ended it first."""
        with self.transaction() as db:
            cur = db.execute(
                """UPDATE jobs SET state = ?, exit_code = ?, error = ?, finished_at = ?
                   WHERE task_id = ? AND job_index = ? AND attempt = ? AND state = 'running'""",
                (state, exit_code, error, now(), job.task_id, job.index, job.attempt))
            return cur.rowcount == 1

    def requeue_failed(self, task_id: int) -> int:
        """failed -> queued; returns how many."""
        with self.transaction() as db:
            return db.execute("UPDATE jobs SET state = 'queued' WHERE task_id = ? "
                              "AND state = 'failed'", (task_id,)).rowcount

    def fail_queued(self, task_id: int, error: str) -> int:
        with self.transaction() as db:
            return db.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ? "
                              "WHERE task_id = ? AND state = 'queued'",
                              (error, now(), task_id)).rowcount


    # -------------------------------------------------------------------------- downloads
    def record_listed(self, files: Iterable[DownloadFile]) -> None:
        """Add newly listed files as ``listed``; a known file keeps its state unless its
        catalogue entry (size, adler32) or its destination changed, then it starts over."""
        stamp = time.time()
        with self.transaction() as db:
            db.executemany(
                """INSERT INTO download_files (tag, did, container, out_ds, sample, output,
                       serial, bytes, adler32, dest, state, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'listed', ?)
                   ON CONFLICT (tag, did) DO UPDATE SET container = excluded.container,
                       out_ds = excluded.out_ds, sample = excluded.sample,
                       output = excluded.output, serial = excluded.serial, dest = excluded.dest,
                       state = CASE WHEN bytes = excluded.bytes AND adler32 = excluded.adler32
                           AND dest = excluded.dest THEN state ELSE 'listed' END,
                       bytes = excluded.bytes, adler32 = excluded.adler32,
                       updated = excluded.updated""",
                [(f.tag, f.did, f.container, f.out_ds, f.sample, f.output, f.serial, f.size,
                  f.adler32, str(f.dest), stamp) for f in files])

    def download_files(self, tag: str) -> list[DownloadFile]:
        """Every listed file of ``tag``, by destination."""
        return [download_file_of(r) for r in self._rows(
            "SELECT * FROM download_files WHERE tag = ? ORDER BY dest", (tag,))]

    def download_scope(self, tag: str) -> str | None:
        """The rucio scope of a tag's listed files (``user.<nick>``), None if none listed."""
        rows = self._rows("SELECT did FROM download_files WHERE tag = ? LIMIT 1", (tag,))
        return rows[0]["did"].split(":", 1)[0] if rows else None

    def download_fetched(self, tag: str, did: str) -> None:
        """One more fetch of a file."""
        self._write("UPDATE download_files SET fetches = fetches + 1, updated = ? "
                    "WHERE tag = ? AND did = ?", (time.time(), tag, did))

    def download_verified(self, tag: str, did: str, mtime_ns: int) -> None:
        """The file is in place and matches; ``mtime_ns`` of its destination."""
        self._write("UPDATE download_files SET state = 'verified', mtime_ns = ?, error = NULL, "
                    "updated = ? WHERE tag = ? AND did = ?", (mtime_ns, time.time(), tag, did))

    def download_failed(self, tag: str, did: str, error: str) -> None:
        self._write("UPDATE download_files SET state = 'failed', mtime_ns = NULL, error = ?, "
                    "updated = ? WHERE tag = ? AND did = ?", (error, time.time(), tag, did))

    def download_unverified(self, tag: str, did: str) -> None:
        """Back to ``listed`` (the file in place no longer matches)."""
        self._write("UPDATE download_files SET state = 'listed', mtime_ns = NULL, updated = ? "
                    "WHERE tag = ? AND did = ?", (time.time(), tag, did))

    def _write(self, sql: str, args: Sequence[Any]) -> None:
        with self.transaction() as db:
            db.execute(sql, args)
