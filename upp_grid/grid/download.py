"""``upp-grid download``: fetch a tag's grid outputs, verify them, and prepare the training files.

Flow
----
1. **Find the outputs.** The tag's tasks come from the state DB: per input container its outDS,
   the per-component output containers ``<outDS>_output_<split>_<component>.h5``, the task id,
   status and file counts, and (local backend) the per-job rows. Without a state DB the names
   are derived from the config, the tag and the user (``--rucio-user`` / ``RUCIO_ACCOUNT``).
2. **List** every output container (``DIDClient.list_files``: sizes and adler32). Missing
   containers are an error that lists them all with the reason the state DB gives.
3. **Fetch** the files not yet verified into a hidden staging directory, **verify** the size and
   adler32 of every file, and move it into place. Transient failures are retried; a corrupt file
   is deleted and fetched once more; a file still bad fails the command, naming the dataset and
   the file. Every verified file is recorded, so a rerun fetches nothing twice.
4. **Completeness.** Inputs without outputs (a failed job, a task that is not done) are listed;
   the command refuses to prepare them unless ``--allow-partial``. Loss is never silent.
5. **Prepare.** The catalogue (``organised-components.yaml``) is built by the same function as
   after a local split; then, unless ``--prepare-only``, weights, merge (train, val, test) and
   norm run locally.

Layout
------
One directory per grid job, inside the split-components directory::

    <components_dir>/<sample>/<outDS>/_<serial>/output_<split>_<region>_<sample>_<flavour>.h5

``<serial>`` is the job's serial number from the grid file name
``user.<nick>.<taskid>._<serial>.output_<component>.h5``; the file is renamed back to the fixed
name the job wrote, so the catalogue scan is the one of the local split (hidden paths ignored).
Files are fetched into ``<components_dir>/.download/<tag>/`` and renamed into place once verified,
so a file in the layout is always complete and checked.

State
-----
Table ``download_files`` in the state DB (``<base_dir>/upp-grid.sqlite``), one row per grid
file of a tag: its DID, the container it was listed from, outDS, sample, output and serial, the
catalogue's size and adler32, its destination, the state (``listed`` → ``verified`` or
``failed``), the number of fetches, the destination's mtime at verification and the last error.
A rerun trusts a ``verified`` row while the file at its destination keeps that size and mtime;
otherwise the file is hashed again (and kept if it still matches), and fetched only if not.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from upp_grid.config import SPLITS, Config
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
from upp_grid.grid.jobs import OutputSpec, plan_tasks
from upp_grid.grid.rucio import (
    FetchOutcome,
    RemoteFile,
    RucioSource,
    TransientRucioError,
    scope_of,
    verify_file,
)
from upp_grid.grid.state import DEFAULT_NAME as STATE_NAME
from upp_grid.grid.state import JobRecord, StateDB, Submission, TaskRecord
from upp_grid.grid.store import LocalStore
from upp_grid.stages.catalogue import Catalogue, catalogue_path, write_catalogue

if TYPE_CHECKING:
    from upp_grid.stages.run import RunSummary

log = logging.getLogger(__name__)

STAGING_DIR = ".download"
LEDGER_SCHEMA_VERSION = 1
#: ``user.<nick>.<taskid>._<serial>.output_<component>.h5`` (an attempt suffix ``.N`` allowed)
_LFN_RE = re.compile(r"\.(?P<task>\d+)\._(?P<serial>\d+)\.(?P<output>output_[^/]+?\.h5)(\.\d+)?$")

Advance = Callable[[int], None]
#: ``progress(total, what[, unit])`` as :func:`upp_grid.progress.progress_bar`
ProgressFactory = Callable[..., AbstractContextManager[Advance]]


class DownloadError(UppGridError):
    """A file could not be fetched or verified, or the outputs cannot be found."""


class MissingOutputsError(DownloadError):
    """Output containers that do not exist (each named, with the reason)."""


class PartialOutputsError(DownloadError):
    """Inputs without outputs: preparing would silently lose their jets."""


# --------------------------------------------------------------------------- sources
class Source(Protocol):
    """Where the outputs are: rucio (:class:`~upp_grid.grid.rucio.RucioSource`) or a store."""

    description: str

    def list_files(self, scope: str, name: str) -> list[RemoteFile] | None: ...

    def fetch(self, files: Sequence[RemoteFile], staging: Path, threads: int = 2
              ) -> list[FetchOutcome]: ...


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Wanted:
    """One grid file of the tag and where it goes."""

    remote: RemoteFile
    container: str  #: the output container it was listed from
    out_ds: str
    sample: str
    output: str  #: ``<split>_<region>_<sample>_<flavour>``
    serial: str  #: ``_000001``
    dest: Path

    @property
    def did(self) -> str:
        return self.remote.did


def parse_lfn(name: str) -> tuple[int, str, str] | None:
    """``(task id, serial "_NNNNNN", "output_<...>.h5")`` of a grid output file name."""
    match = _LFN_RE.search(name)
    if match is None:
        return None
    return int(match["task"]), "_" + match["serial"], match["output"]


def job_dir(components_dir: Path, sample: str, out_ds: str, serial: str) -> Path:
    """The directory of one grid job's outputs (see the module docstring)."""
    return components_dir / sample / out_ds.rstrip("/") / serial


# --------------------------------------------------------------------------- ledger
@dataclass(frozen=True)
class LedgerRow:
    """A ``download_files`` row."""

    did: str
    container: str
    out_ds: str
    sample: str
    output: str
    serial: str
    size: int
    adler32: str
    dest: Path
    state: str
    fetches: int
    mtime_ns: int | None
    error: str | None


_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS download_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS download_files (
    tag TEXT NOT NULL,
    did TEXT NOT NULL,
    container TEXT NOT NULL,
    out_ds TEXT NOT NULL,
    sample TEXT NOT NULL,
    output TEXT NOT NULL,
    serial TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    adler32 TEXT NOT NULL,
    dest TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('listed', 'verified', 'failed')),
    fetches INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER,
    error TEXT,
    updated REAL NOT NULL,
    PRIMARY KEY (tag, did)
);
CREATE INDEX IF NOT EXISTS download_files_dest ON download_files (tag, dest);
"""


class DownloadLedger:
    """Per-file download state of each tag, in the state DB (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._db:
            self._db.executescript(_LEDGER_DDL)
            row = self._db.execute(
                "SELECT value FROM download_meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO download_meta VALUES ('schema_version', ?)",
                                 (str(LEDGER_SCHEMA_VERSION),))
            elif int(row[0]) != LEDGER_SCHEMA_VERSION:
                raise DownloadError(f"{path}: download state has schema version {row[0]}, this "
                                    f"upp-grid reads version {LEDGER_SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DownloadLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record_listed(self, tag: str, wanted: Iterable[Wanted]) -> None:
        """Add new files as ``listed``; a file whose catalogue entry changed starts over."""
        now = time.time()
        with self._db:
            for w in wanted:
                r = w.remote
                self._db.execute(
                    "INSERT INTO download_files (tag, did, container, out_ds, sample, output, "
                    "serial, bytes, adler32, dest, state, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'listed', ?) "
                    "ON CONFLICT (tag, did) DO UPDATE SET container = excluded.container, "
                    "out_ds = excluded.out_ds, sample = excluded.sample, "
                    "output = excluded.output, serial = excluded.serial, dest = excluded.dest, "
                    "state = CASE WHEN bytes = excluded.bytes AND adler32 = excluded.adler32 "
                    "AND dest = excluded.dest THEN state ELSE 'listed' END, "
                    "bytes = excluded.bytes, adler32 = excluded.adler32, "
                    "updated = excluded.updated",
                    (tag, r.did, w.container, w.out_ds, w.sample, w.output, w.serial, r.size,
                     r.adler32, str(w.dest), now))

    def rows(self, tag: str) -> dict[str, LedgerRow]:
        """Every file of ``tag`` by DID."""
        cur = self._db.execute(
            "SELECT did, container, out_ds, sample, output, serial, bytes, adler32, dest, state, "
            "fetches, mtime_ns, error FROM download_files WHERE tag = ? ORDER BY dest", (tag,))
        return {r[0]: LedgerRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], Path(r[8]), r[9],
                                r[10], r[11], r[12]) for r in cur}

    def user(self, tag: str) -> str | None:
        """The grid nickname of a tag's files (their scope ``user.<nick>``), if any."""
        row = self._db.execute("SELECT did FROM download_files WHERE tag = ? LIMIT 1",
                               (tag,)).fetchone()
        scope = row[0].split(":", 1)[0] if row else ""
        return scope.split(".", 1)[1] if scope.startswith("user.") else None

    def fetched(self, tag: str, did: str) -> None:
        with self._db:
            self._db.execute("UPDATE download_files SET fetches = fetches + 1, updated = ? "
                             "WHERE tag = ? AND did = ?", (time.time(), tag, did))

    def verified(self, tag: str, did: str, mtime_ns: int) -> None:
        with self._db:
            self._db.execute("UPDATE download_files SET state = 'verified', mtime_ns = ?, "
                             "error = NULL, updated = ? WHERE tag = ? AND did = ?",
                             (mtime_ns, time.time(), tag, did))

    def failed(self, tag: str, did: str, error: str) -> None:
        with self._db:
            self._db.execute("UPDATE download_files SET state = 'failed', mtime_ns = NULL, "
                             "error = ?, updated = ? WHERE tag = ? AND did = ?",
                             (error, time.time(), tag, did))

    def unverified(self, tag: str, did: str) -> None:
        with self._db:
            self._db.execute("UPDATE download_files SET state = 'listed', mtime_ns = NULL, "
                             "updated = ? WHERE tag = ? AND did = ?", (time.time(), tag, did))


def still_verified(row: LedgerRow | None) -> bool:
    """A ``verified`` row whose file is still there with the same size and mtime."""
    if row is None or row.state != "verified" or row.mtime_ns is None:
        return False
    try:
        st = row.dest.stat()
    except OSError:
        return False
    return st.st_size == row.size and st.st_mtime_ns == row.mtime_ns


# --------------------------------------------------------------------------- transfer
@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` fetches of an unreadable file, ``corrupt_fetches`` of a
    file that arrives with the wrong size or adler32, ``backoff`` seconds doubling per round."""

    attempts: int = 3
    corrupt_fetches: int = 2
    backoff: float = 1.0
    batch_files: int = 32


@dataclass
class TransferResult:
    """What the transfer did."""

    already: int = 0  #: files verified by an earlier run
    adopted: int = 0  #: files found in place and re-verified by hashing
    fetched: int = 0  #: files fetched and verified now
    bytes_fetched: int = 0
    failures: dict[str, str] = field(default_factory=dict)  #: DID -> what went wrong


def transfer(tag: str, wanted: Sequence[Wanted], source: Source, ledger: DownloadLedger,
             staging: Path, threads: int = 4, policy: RetryPolicy | None = None,
             progress: ProgressFactory | None = None) -> TransferResult:
    """Fetch and verify every file of ``wanted`` not verified yet; record each outcome.

    Files that still fail after the retries are returned in ``failures`` (and recorded as
    ``failed``); the others are in place and verified.
    """
    policy = policy or RetryPolicy()
    result = TransferResult()
    ledger.record_listed(tag, wanted)
    rows = ledger.rows(tag)
    todo: list[Wanted] = []
    for w in wanted:
        if still_verified(rows.get(w.did)):
            result.already += 1
        elif _adopt(tag, w, ledger):
            result.adopted += 1
        else:
            todo.append(w)
    if result.already or result.adopted:
        log.info("%d of %d files already downloaded and verified", result.already + result.adopted,
                 len(wanted))
    if not todo:
        return result
    total = sum(w.remote.size for w in todo)
    log.info("fetching %d files (%s) from %s", len(todo), _human(total), source.description)
    bar = progress(total, "download", "bytes") if progress else nullcontext(lambda n: None)
    with bar as advance:
        _fetch_all(tag, todo, source, ledger, staging, threads, policy, advance, result)
    _remove_empty(staging)
    return result


def _adopt(tag: str, w: Wanted, ledger: DownloadLedger) -> bool:
    """A file already at its destination (state lost or stale) that still matches: keep it."""
    if not w.dest.is_file():
        return False
    if verify_file(w.dest, w.remote).ok:
        ledger.verified(tag, w.did, w.dest.stat().st_mtime_ns)
        return True
    log.info("%s: does not match rucio's size/adler32, fetching it again", w.dest)
    w.dest.unlink()
    ledger.unverified(tag, w.did)
    return False


@dataclass
class _Tries:
    """Fetches per file so far: unreadable (nothing arrived) and corrupt (wrong size/adler32)."""

    policy: RetryPolicy
    unreadable: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)

    def again(self, did: str, arrived: bool) -> bool:
        """Count a failed fetch; whether the file gets another one."""
        counter, limit = ((self.corrupt, self.policy.corrupt_fetches) if arrived
                          else (self.unreadable, self.policy.attempts))
        counter[did] = counter.get(did, 0) + 1
        return counter[did] < limit

    def total(self, did: str) -> int:
        return self.unreadable.get(did, 0) + self.corrupt.get(did, 0)


def _fetch_all(tag: str, todo: list[Wanted], source: Source, ledger: DownloadLedger,
               staging: Path, threads: int, policy: RetryPolicy, advance: Advance,
               result: TransferResult) -> None:
    """Fetch in batches, round after round, until every file is verified or out of tries."""
    tries = _Tries(policy)
    pending = todo
    round_ = 0
    while pending:
        retry: list[Wanted] = []
        for batch in _chunks(pending, policy.batch_files):
            for w, outcome in _fetch_batch(batch, source, staging, threads):
                ledger.fetched(tag, w.did)
                problem = _place(w, outcome)
                if problem is None:
                    ledger.verified(tag, w.did, w.dest.stat().st_mtime_ns)
                    result.fetched += 1
                    result.bytes_fetched += w.remote.size
                    advance(w.remote.size)
                elif tries.again(w.did, arrived=outcome.path is not None):
                    log.warning("%s: %s; fetching it again", w.did, problem)
                    retry.append(w)
                else:
                    message = _failure_message(w, problem, tries.total(w.did))
                    result.failures[w.did] = message
                    ledger.failed(tag, w.did, message)
                    log.error("%s", message)
        pending = retry
        if pending:
            delay = policy.backoff * 2**round_
            round_ += 1
            log.info("retrying %d files in %.0f s", len(pending), delay)
            time.sleep(delay)


def _fetch_batch(batch: list[Wanted], source: Source, staging: Path, threads: int
                 ) -> Iterator[tuple[Wanted, FetchOutcome]]:
    by_did = {w.did: w for w in batch}
    try:
        outcomes = source.fetch([w.remote for w in batch], staging, threads)
    except TransientRucioError as err:
        log.warning("%s", err)
        outcomes = [FetchOutcome(w.remote, f"ERROR ({err})", None) for w in batch]
    seen = set()
    for outcome in outcomes:
        w = by_did.get(outcome.file.did)
        if w is not None:
            seen.add(w.did)
            yield w, outcome
    for w in batch:
        if w.did not in seen:
            yield w, FetchOutcome(w.remote, "NOT_RETURNED", None)


def _place(w: Wanted, outcome: FetchOutcome) -> str | None:
    """Verify a fetched file and move it to its destination; the problem, or None if done."""
    if outcome.path is None:
        return f"not downloaded ({source_state(outcome.state)})"
    check = verify_file(outcome.path, w.remote)
    if not check.ok:
        outcome.path.unlink(missing_ok=True)
        return check.problem()
    w.dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(outcome.path, w.dest)
    return None


def source_state(state: str) -> str:
    """A fetch state in words."""
    words = {"FAILED": "no replica could be read", "FILE_NOT_FOUND": "no replica available",
             "NOT_RETURNED": "the transfer tool did not report it"}
    return f"{state}: {words[state]}" if state in words else state


def _failure_message(w: Wanted, problem: str, fetches: int) -> str:
    tries = f"after {fetches} fetch{'es' * (fetches != 1)}"
    return f"{w.container}: {w.remote.name}: {problem} {tries}"


def _chunks(items: Sequence[Wanted], n: int) -> Iterator[list[Wanted]]:
    for i in range(0, len(items), max(1, n)):
        yield list(items[i:i + n])


def _remove_empty(path: Path) -> None:
    for p in sorted(path.rglob("*"), reverse=True) if path.is_dir() else ():
        if p.is_dir():
            _rmdir_quiet(p)
    _rmdir_quiet(path)
    _rmdir_quiet(path.parent)


def _rmdir_quiet(path: Path) -> None:
    with suppress(OSError):
        path.rmdir()


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"




# --------------------------------------------------------------------------- what to fetch
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
        return scope_of(self.out_ds)

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


def state_path_for(config: Config) -> Path:
    """The state DB of a config: ``<base_dir>/upp-grid.sqlite``."""
    return config.global_.base_dir / STATE_NAME


def find_outputs(config: Config, tag: str, user: str | None = None,
                 state_path: Path | None = None, refresh: bool = True) -> TagOutputs:
    """The tag's tasks and output containers: from the state DB, else derived from the config.

    ``refresh``: ask the backend for the state of tasks that are not settled yet (a failure to
    reach it is a warning; the recorded state is used).

    Raises
    ------
    DatasetNameError
        No state for the tag and no user to derive the names from (or a bad name).
    """
    names.check_tag(tag)
    state_path = state_path or state_path_for(config)
    if state_path.is_file():
        with StateDB(state_path, create=False) as state:
            sub = state.submission(tag)
            if sub is not None:
                if refresh:
                    _refresh(state, sub)
                if user and user != sub.user:
                    log.warning("tag %s was submitted as user %s; --rucio-user %s ignored",
                                tag, sub.user, user)
                tasks = tuple(TaskOutputs(t.container, t.samples, t.out_ds, t.outputs, t,
                                          tuple(state.jobs(t.id))) for t in state.tasks(tag))
                if not tasks:
                    raise DownloadError(f"{state_path}: tag '{tag}' has no submitted tasks "
                                        "(a dry run?); run `upp-grid submit` first")
                return TagOutputs(tag, sub.user, tasks, sub, state_path)
            known = ", ".join(s.tag for s in state.submissions()) or "none"
            log.warning("tag %s is not in %s (tags there: %s); deriving the dataset names "
                        "from the config", tag, state_path, known)
    who = names.resolve_user(user, os.environ)
    specs = plan_tasks(config, tag, who)
    tasks = tuple(TaskOutputs(s.container, s.samples, s.out_ds, s.outputs,
                              num_inputs=len(s.files) or None) for s in specs)
    return TagOutputs(tag, who, tasks, None, state_path)


def _refresh(state: StateDB, sub: Submission) -> None:
    if all(t.status in SETTLED for t in state.tasks(sub.tag)):
        return
    try:
        open_backend(sub.backend, state).refresh(sub)
    except UppGridError as err:
        log.warning("could not refresh the task states from %s (%s); using the recorded ones",
                    sub.backend, err)


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
            files = _list_with_retries(source, task.scope, spec.container, policy)
            if files is None:
                missing.append((spec.container, _missing_reason(task, tag)))
                continue
            for f in files:
                wanted.append(_wanted(task, spec, f, components_dir))
    if missing:
        for container, why in missing:
            log.error("missing: %s (%s)", container, why)
        first, why = missing[0]
        more = f" (+{len(missing) - 1} more, listed above)" if len(missing) > 1 else ""
        raise MissingOutputsError(f"{len(missing)} output container"
                                  f"{'s' * (len(missing) > 1)} not found in {source.description}:"
                                  f" {first}{more}: {why}")
    _check_unique_dest(wanted)
    return wanted


def _list_with_retries(source: Source, scope: str, name: str, policy: RetryPolicy | None
                       ) -> list[RemoteFile] | None:
    policy = policy or RetryPolicy()
    for attempt in range(policy.attempts):
        try:
            return source.list_files(scope, name)
        except TransientRucioError as err:
            if attempt + 1 == policy.attempts:
                raise
            delay = policy.backoff * 2**attempt
            log.warning("%s; retrying in %.0f s", err, delay)
            time.sleep(delay)
    return None


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


def find_incomplete(tag: TagOutputs, wanted: Sequence[Wanted]) -> list[str]:
    """Inputs without (all their) outputs, one line each; empty when nothing is missing."""
    problems: list[str] = []
    for task in tag.tasks:
        mine = [w for w in wanted if w.out_ds == task.out_ds]
        by_container = {spec.container: set() for spec in task.outputs}
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


# --------------------------------------------------------------------------- the local store
class StoreSource:
    """The local backend's store (:class:`~upp_grid.grid.store.LocalStore`), read like rucio."""

    def __init__(self, root: Path) -> None:
        self.store = LocalStore(root)
        self.description = f"the local store {root}"
        self._where: dict[str, Path] = {}  #: DID -> path, filled by list_files

    def list_files(self, scope: str, name: str) -> list[RemoteFile] | None:
        name = name.rstrip("/")
        if not self.store.dataset_dir(scope, name).is_dir():
            return None
        listed = self.store.list_files(scope, name)
        for s in listed:
            self._where[f"{s.scope}:{s.name}"] = self.store.path(s)
        return [RemoteFile(s.scope, s.name, s.bytes, s.adler32) for s in listed]

    def fetch(self, files: Sequence[RemoteFile], staging: Path, threads: int = 2
              ) -> list[FetchOutcome]:
        staging.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(lambda f: self._copy(f, self._where.get(f.did), staging),
                                 files))

    @staticmethod
    def _copy(f: RemoteFile, src: Path | None, staging: Path) -> FetchOutcome:
        if src is None or not src.is_file():
            return FetchOutcome(f, "FILE_NOT_FOUND", None)
        dest = staging / f.name
        tmp = staging / f"{f.name}.part"
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            log.debug("%s: copy failed: %s", src, err)
            return FetchOutcome(f, "FAILED", None)
        return FetchOutcome(f, "DONE", dest)


def open_source(backend: str, tag: TagOutputs) -> Source:
    """The source of ``--backend``: ``rucio`` or ``local`` (the local backend's store)."""
    if backend == "rucio":
        return RucioSource()
    if backend == "local":
        sub = tag.submission
        if sub is None or not sub.store_dir:
            raise DownloadError(f"--backend local: tag '{tag.tag}' has no local submission in "
                                f"{tag.state_path}, so there is no store to read from")
        return StoreSource(Path(sub.store_dir))
    raise DownloadError(f"unknown --backend '{backend}' (rucio or local)")


def default_backend(tag: TagOutputs) -> str:
    """``local`` for a tag submitted with the local backend, else ``rucio``."""
    sub = tag.submission
    return "local" if sub is not None and sub.backend == "local" else "rucio"


# --------------------------------------------------------------------------- prepare
def check_layout(components_dir: Path, tag: str, dests: Iterable[Path]) -> None:
    """Refuse split outputs in ``components_dir`` that are not this tag's verified files.

    The catalogue takes every ``output_*.h5`` there: a local split or another tag's download
    in the same directory would be counted twice.
    """
    known = {Path(p) for p in dests}
    foreign = [p for p in sorted(components_dir.rglob("output_*.h5"))
               if not any(part.startswith(".") for part in p.relative_to(components_dir).parts)
               and p not in known]
    if foreign:
        raise DownloadError(f"{components_dir}: {len(foreign)} split output"
                            f"{'s are' if len(foreign) > 1 else ' is'} not from the download of "
                            f"tag '{tag}' (first: {foreign[0]}); the catalogue would count them "
                            "too: remove them or use another components_dir")


@dataclass(frozen=True)
class Prepared:
    """What the prepare step wrote: the catalogue, and the chain's summary unless
    ``--prepare-only``."""

    catalogue: Catalogue
    summary: RunSummary | None = None


def prepare(config: Config, prepare_only: bool = False, plots: bool = True,
            progress: ProgressFactory | None = None) -> Prepared:
    """The catalogue, then (unless ``prepare_only``) weights, merge of every split and norm.

    The same stage functions as ``upp-grid run`` after its split.
    """
    from upp_grid.stages.merge import merge_stage, merge_work
    from upp_grid.stages.normalise import norm_stage
    from upp_grid.stages.run import RunSummary, StageTime
    from upp_grid.stages.weights import planned_jets, weights_stage

    bar = progress or _no_progress
    timings: list[StageTime] = []
    start = time.perf_counter()
    cat = write_catalogue(config)
    timings.append(StageTime("catalogue", time.perf_counter() - start))
    log.info("catalogue %s: %s", catalogue_path(config),
             ", ".join(f"{s} {cat.total(s)} jets" for s in SPLITS))
    if prepare_only:
        return Prepared(cat)
    start = time.perf_counter()
    with bar(planned_jets(config), "weights") as advance:
        weights = weights_stage(config, plots=plots, progress=advance)
    timings.append(StageTime("weights", time.perf_counter() - start))
    start = time.perf_counter()
    with bar(merge_work(config, SPLITS), "merge (read + write)") as advance:
        merged = merge_stage(config, SPLITS, progress=advance)
    timings.append(StageTime("merge", time.perf_counter() - start))
    start = time.perf_counter()
    with bar(cat.total("train"), "norm") as advance:
        norm = norm_stage(config, progress=advance)
    timings.append(StageTime("norm", time.perf_counter() - start))
    by_split = {r.split: r for r in merged.results}
    summary = RunSummary(
        jets_in={s: dict(cat.num_jets[s]) for s in SPLITS},
        jets_out={s: dict(by_split[s].jets_out) for s in SPLITS},
        files={s: tuple(f.path for f in by_split[s].files) for s in SPLITS},
        vds={s: by_split[s].vds for s in SPLITS},
        norm=norm, histograms=weights.histograms, timings=tuple(timings), split_skipped=0,
        merge_reused={s: by_split[s].reused for s in SPLITS})
    return Prepared(cat, summary)


def _no_progress(total: int, what: str, unit: str = "jets") -> AbstractContextManager[Advance]:
    return nullcontext(lambda n: None)


# --------------------------------------------------------------------------- the command
@dataclass(frozen=True)
class DownloadOptions:
    """The options of ``upp-grid download``."""

    tag: str
    backend: str | None = None  #: ``rucio`` / ``local``; None: the tag's backend (rucio)
    threads: int = 4
    download: bool = True  #: False: ``--no-download``
    prepare_only: bool = False
    allow_partial: bool = False
    user: str | None = None  #: ``--rucio-user``
    plots: bool = True
    policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class DownloadReport:
    """What ``download`` did, for the CLI's summary."""

    tag: str
    source: str
    containers: int
    files: int
    bytes: int
    transfer: TransferResult | None
    incomplete: tuple[str, ...]
    prepared: Prepared


def download_and_prepare(config: Config, options: DownloadOptions,
                         progress: ProgressFactory | None = None) -> DownloadReport:
    """``upp-grid download``: find, list, fetch and verify the tag's outputs, then prepare.

    ``progress(total, what, unit)`` gives a context manager yielding ``advance(n)``
    (:func:`upp_grid.progress.progress_bar`).

    Raises
    ------
    MissingOutputsError, DownloadError, PartialOutputsError, RucioConfigError
        One line each, naming the container (dataset) and the file.
    """
    state_path = state_path_for(config)
    components_dir = config.global_.components_dir
    with DownloadLedger(state_path) as ledger:
        # a tag downloaded before names its user: its files' scope
        user = options.user or ledger.user(options.tag)
        outputs = find_outputs(config, options.tag, user, state_path)
        if options.download:
            wanted, result, description = _fetch(outputs, options, ledger, components_dir,
                                                  progress)
        else:
            wanted = downloaded(options.tag, ledger)
            result, description = None, "files downloaded before (--no-download)"
    incomplete = tuple(find_incomplete(outputs, wanted))
    _check_complete(incomplete, options.allow_partial)
    check_layout(components_dir, options.tag, (w.dest for w in wanted))
    prepared = prepare(config, options.prepare_only, options.plots, progress)
    return DownloadReport(options.tag, description, sum(len(t.outputs) for t in outputs.tasks),
                          len(wanted), sum(w.remote.size for w in wanted), result, incomplete,
                          prepared)


def _fetch(outputs: TagOutputs, options: DownloadOptions, ledger: DownloadLedger,
           components_dir: Path, progress: ProgressFactory | None
           ) -> tuple[list[Wanted], TransferResult, str]:
    """List the tag's containers and fetch what is not verified yet; raise on failures."""
    backend = options.backend or default_backend(outputs)
    if outputs.submission is not None and backend != default_backend(outputs):
        log.warning("tag %s ran on the %s backend; reading %s as asked", options.tag,
                    outputs.submission.backend, backend)
    source = open_source(backend, outputs)
    wanted = list_outputs(outputs, source, components_dir, options.policy)
    log.info("%s: %d output containers, %d files (%s) in %s", options.tag,
             sum(len(t.outputs) for t in outputs.tasks), len(wanted),
             _human(sum(w.remote.size for w in wanted)), source.description)
    staging = components_dir / STAGING_DIR / options.tag
    result = transfer(options.tag, wanted, source, ledger, staging, options.threads,
                      options.policy, progress)
    _raise_failures(result)
    return wanted, result, source.description


def downloaded(tag: str, ledger: DownloadLedger) -> list[Wanted]:
    """The tag's files from the ledger, every one verified and in place (``--no-download``).

    Raises
    ------
    DownloadError
        Nothing downloaded yet, or a file not (or no longer) verified.
    """
    rows = ledger.rows(tag)
    if not rows:
        raise DownloadError(f"{ledger.path}: nothing downloaded for tag '{tag}' yet (run "
                            "`upp-grid download` without --no-download)")
    wanted = []
    for row in rows.values():
        scope, name = row.did.split(":", 1)
        w = Wanted(RemoteFile(scope, name, row.size, row.adler32), row.container, row.out_ds,
                   row.sample, row.output, row.serial, row.dest)
        if not still_verified(row) and not (w.dest.is_file()
                                            and verify_file(w.dest, w.remote).ok):
            state = "changed since it was verified" if row.state == "verified" else row.state
            raise DownloadError(f"{row.container}: {name}: not downloaded and verified ({state}"
                                f"{': ' + row.error if row.error else ''}); run `upp-grid "
                                "download` without --no-download")
        wanted.append(w)
    return wanted


def _raise_failures(result: TransferResult) -> None:
    if not result.failures:
        return
    first = next(iter(result.failures.values()))
    n = len(result.failures)
    more = f" (+{n - 1} more files failed, listed above)" if n > 1 else ""
    raise DownloadError(f"{first}{more}; the other files are verified and kept")


def _check_complete(incomplete: Sequence[str], allow_partial: bool) -> None:
    for line in incomplete:
        log.warning("incomplete: %s", line)
    if incomplete and not allow_partial:
        n = len(incomplete)
        more = f" (+{n - 1} more, listed above)" if n > 1 else ""
        raise PartialOutputsError(f"inputs without outputs: {incomplete[0]}{more}; the "
                                  "downloaded files are kept; finish the tasks (`upp-grid "
                                  "retry`) or pass --allow-partial to prepare without them")


def summary_lines(report: DownloadReport) -> list[str]:
    """The command's summary for the user, a few plain lines."""
    lines = [f"download {report.tag}: {report.containers} output containers, {report.files} "
             f"files, {_human(report.bytes)} from {report.source}"]
    t = report.transfer
    if t is not None:
        lines.append(f"  fetched and verified now: {t.fetched} files ({_human(t.bytes_fetched)});"
                     f" verified before: {t.already + t.adopted}")
    for line in report.incomplete:
        lines.append(f"  WARNING inputs without outputs (--allow-partial): {line}")
    cat = report.prepared.catalogue
    lines.append("catalogue: " + ", ".join(f"{s} {cat.total(s):,} jets" for s in SPLITS))
    return lines
