"""Fetch and verify a tag's files from a source (rucio or the local store), with retries.

Files not verified yet are fetched in batches into a hidden staging directory; the size and
adler32 of every file are checked and the job archive is unpacked into its job directory
(checked against its provenance, :mod:`upp_grid.grid.job_archive`), then
removed. Transient failures are
retried with a doubling back-off; a corrupt file is deleted and fetched once more; a file still
bad is reported by name. Every fetch and outcome is recorded in the state DB
(:mod:`upp_grid.grid.download_records`), so a rerun fetches nothing twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from upp_grid.fsutil import human_bytes, remove_empty_dirs
from upp_grid.grid.download_records import (
    Advance,
    ProgressFactory,
    Wanted,
    record_listed,
    still_verified,
)
from upp_grid.grid.job_archive import ArchiveError, unpack
from upp_grid.grid.rucio import FetchOutcome, RemoteFile, TransientRucioError, verify_file
from upp_grid.grid.sources import Source
from upp_grid.grid.state import StateDB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` fetches of an unreadable file, ``corrupt_fetches`` of a
    file that arrives with the wrong size or adler32, ``backoff`` seconds doubling per round.
    ``batch_files`` files go to the source at a time: a rucio batch costs one REST call
    (``list_scopes``) per client (5 threads each), so 400 files keep the calls at 1 per 200
    files even with two clients."""

    attempts: int = 3
    corrupt_fetches: int = 2
    backoff: float = 1.0
    batch_files: int = 400


@dataclass
class TransferResult:
    """What the transfer did."""

    already: int = 0  #: files verified by an earlier run
    adopted: int = 0  #: files found in place and re-verified by hashing
    fetched: int = 0  #: files fetched and verified now
    bytes_fetched: int = 0
    failures: dict[str, str] = field(default_factory=dict)  #: DID -> what went wrong


def transfer(tag: str, wanted: Sequence[Wanted], source: Source, state: StateDB,
             staging: Path, threads: int = 4, policy: RetryPolicy | None = None,
             progress: ProgressFactory | None = None, jets_name: str = "jets"
             ) -> TransferResult:
    """Fetch and verify every file of ``wanted`` not verified yet; record each outcome.

    Files that still fail after the retries are returned in ``failures`` (and recorded as
    ``failed``); the others are in place and verified.
    """
    policy = policy or RetryPolicy()
    result = TransferResult()
    rows = record_listed(state, tag, wanted)
    todo: list[Wanted] = []
    for w in wanted:
        if still_verified(rows.get(w.did)):
            result.already += 1
        elif _adopt(tag, w, state):
            result.adopted += 1
        else:
            todo.append(w)
    if result.already or result.adopted:
        log.info("%d of %d files already downloaded and verified", result.already + result.adopted,
                 len(wanted))
    if not todo:
        return result
    total = sum(w.remote.size for w in todo)
    log.info("fetching %d files (%s) from %s", len(todo), human_bytes(total), source.description)
    bar = progress(total, "download", "bytes") if progress else nullcontext(lambda n: None)
    with bar as advance:
        _fetch_all(tag, todo, source, state, staging, threads, policy, advance, result,
                   jets_name)
    remove_empty_dirs(staging)
    return result


def list_with_retries(source: Source, scope: str, name: str, policy: RetryPolicy | None = None
                      ) -> list[RemoteFile] | None:
    """``source.list_files``, retried on transient failures as ``policy`` says."""
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


def _adopt(tag: str, w: Wanted, state: StateDB) -> bool:
    """A job directory already in place (state lost or stale) unpacked from this very grid
    file (DID, size and adler32 in its mark): keep it."""
    if w.in_place():
        state.download_verified(tag, w.did, w.dest.stat().st_mtime_ns)
        return True
    if w.dest.exists():
        log.info("%s: not unpacked from %s (size %d, adler32 %s): fetching it again", w.dest,
                 w.did, w.remote.size, w.remote.adler32)
        state.download_unverified(tag, w.did)
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


def _fetch_all(tag: str, todo: list[Wanted], source: Source, state: StateDB,
               staging: Path, threads: int, policy: RetryPolicy, advance: Advance,
               result: TransferResult, jets_name: str) -> None:
    """Fetch in batches, round after round, until every file is verified or out of tries.

    The progress moves while a batch downloads (:class:`_StagingWatch`) and is set right once
    the batch is verified: it ends at exactly the bytes verified."""
    tries = _Tries(policy)
    pending = todo
    round_ = 0
    while pending:
        retry: list[Wanted] = []
        for batch in _chunks(pending, policy.batch_files):
            pairs, shown = _fetch_batch(batch, source, staging, threads, advance)
            verified = 0
            for w, outcome in pairs:
                state.download_fetched(tag, w.did)
                try:
                    problem = _place(w, outcome, jets_name)
                except ArchiveError as err:  # verified bytes, bad content: fetching won't help
                    message = f"{w.container}: {w.remote.name}: {err}"
                    result.failures[w.did] = message
                    state.download_failed(tag, w.did, message)
                    log.error("%s", message)
                    continue
                if problem is None:
                    state.download_verified(tag, w.did, w.dest.stat().st_mtime_ns)
                    result.fetched += 1
                    result.bytes_fetched += w.remote.size
                    verified += w.remote.size
                elif tries.again(w.did, arrived=outcome.path is not None):
                    log.warning("%s: %s; fetching it again", w.did, problem)
                    retry.append(w)
                else:
                    message = _failure_message(w, problem, tries.total(w.did))
                    result.failures[w.did] = message
                    state.download_failed(tag, w.did, message)
                    log.error("%s", message)
            advance(verified - shown)
        pending = retry
        if pending:
            delay = policy.backoff * 2**round_
            round_ += 1
            log.info("retrying %d files in %.0f s", len(pending), delay)
            time.sleep(delay)


class _StagingWatch:
    """While a batch downloads, report the bytes that reached the staging directory (the
    files and their ``.part`` files), polled every ``interval`` seconds in a thread."""

    def __init__(self, staging: Path, names: Sequence[str], advance: Advance,
                 interval: float = 0.5) -> None:
        self.staging, self.names, self.advance, self.interval = staging, names, advance, interval
        self.shown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-progress", daemon=True)

    def __enter__(self) -> _StagingWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            arrived = sum(_size(self.staging / n) or _size(self.staging / f"{n}.part")
                          for n in self.names)
            if arrived > self.shown:
                self.advance(arrived - self.shown)
                self.shown = arrived


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _fetch_batch(batch: list[Wanted], source: Source, staging: Path, threads: int,
                 advance: Advance) -> tuple[list[tuple[Wanted, FetchOutcome]], int]:
    """Each file of the batch with its outcome, and the bytes the progress showed meanwhile."""
    by_did = {w.did: w for w in batch}
    with _StagingWatch(staging, [w.remote.name for w in batch], advance) as watch:
        try:
            outcomes = source.fetch([w.remote for w in batch], staging, threads)
        except TransientRucioError as err:
            log.warning("%s", err)
            outcomes = [FetchOutcome(w.remote, f"ERROR ({err})", None) for w in batch]
    pairs = []
    seen = set()
    for outcome in outcomes:
        w = by_did.get(outcome.file.did)
        if w is not None:
            seen.add(w.did)
            pairs.append((w, outcome))
    pairs += [(w, FetchOutcome(w.remote, "NOT_RETURNED", None)) for w in batch
              if w.did not in seen]
    return pairs, watch.shown


def _place(w: Wanted, outcome: FetchOutcome, jets_name: str) -> str | None:
    """Verify a fetched archive and unpack it into its job directory (checked against its
    provenance); the problem, or None if done. The archive is removed either way."""
    if outcome.path is None:
        return f"not downloaded ({source_state(outcome.state)})"
    try:
        check = verify_file(outcome.path, w.remote)
        if not check.ok:
            return check.problem()
        w.dest.parent.mkdir(parents=True, exist_ok=True)
        unpack(outcome.path, w.dest, jets_name, w.origin())
    finally:
        outcome.path.unlink(missing_ok=True)
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
