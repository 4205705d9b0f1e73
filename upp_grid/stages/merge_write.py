"""Pass 2 of the merge: gather each bucket from scratch, shuffle it, compress it, write it.

Buckets (:mod:`upp_grid.stages.merge_plan`) are prepared by a pool of threads, several at a
time and across output files, while this thread writes the finished ones in file order:

* a worker thread reads the bucket's slices from the scratch files (``preadv``), puts its rows
  in their random order (``np.take``), counts its flavours, takes its norm statistics (train)
  or its NaN/inf counts, and compresses its chunks (:func:`upp_grid.h5chunks.encode_chunks`);
  each of these releases the GIL for the bulk of its work, so the threads keep the cores busy;
* this thread hands the compressed chunks to HDF5 (``write_direct_chunk``, a copy), adds the
  statistics in bucket order (so their sums are reproducible), and, after a file's last
  bucket, checks its counts per flavour against the plan, writes its attributes and commits it.

At most ``threads + 1`` buckets are in flight, and a prepared bucket holds only its compressed
chunks, so memory stays bounded (about ``2 x BUCKET_BYTES`` per thread) whatever the split's
size. The bytes written depend on the plan alone, never on the number of threads.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from upp_grid.config import Config
from upp_grid.errors import BookkeepingError
from upp_grid.h5chunks import ChunkFile, Chunks, as_bytes, encode_chunks
from upp_grid.h5io import JETS_CHUNK, TRACKS_CHUNK
from upp_grid.inputs import FLAVOUR_LABEL
from upp_grid.stages.merge_plan import (
    BUCKET_BYTES,
    GroupSpec,
    MergePlan,
    SplitPaths,
    split_index,
)
from upp_grid.stages.merge_shuffle import RouteTask, scratch_file
from upp_grid.stages.normalise import (
    STATS_ATTR,
    NormSpec,
    Stats,
    count_nonfinite,
    group_stats,
    norm_spec,
    stats_attr,
)

WRITE_MEMORY = 192 * 2**20  # bound on the rows pass 2 holds at once: 2 x BUCKET_BYTES a thread
MAX_OPEN = 256  # scratch files a thread keeps open


@dataclass(frozen=True)
class BucketSlices:
    """Where one bucket's jets are in the scratch files, in gathering order."""

    bucket: int
    size: int
    files: np.ndarray  # scratch prefix index of each slice
    offsets: np.ndarray  # first row of each slice in its scratch file
    counts: np.ndarray  # rows of each slice


@dataclass(frozen=True)
class WriteTask:
    """Pass 2 for one output file."""

    split: str
    index: int
    path: Path
    size: int
    groups: tuple[GroupSpec, ...]
    buckets: tuple[BucketSlices, ...]
    scratch: tuple[Path, ...]
    compression: str
    jets_name: str
    flavour_names: tuple[str, ...]
    expected: Mapping[str, int]
    attrs: Mapping[str, Any]
    seed: tuple[int, ...]
    norm: NormSpec  # the training variables; train: cache the norm stats of the rows written

    @property
    def chunk_rows(self) -> dict[str, int]:
        """Chunk length of each group's dataset (every bucket but the last is whole chunks)."""
        return {g.name: max(1, min(TRACKS_CHUNK if g.shape else JETS_CHUNK, self.size))
                for g in self.groups}


@dataclass(frozen=True)
class FileResult:
    split: str
    index: int
    path: Path
    num_jets: int
    jet_counts: Mapping[str, int]
    nonfinite: Mapping[str, int]  # NaN/inf per training variable (valid entries)


def write_tasks(plan: MergePlan, todo: Sequence[int], tasks: Sequence[RouteTask],
                paths: SplitPaths, attrs: Mapping[str, Any], config: Config) -> list[WriteTask]:
    """Pass-2 tasks for output files ``todo``, with each bucket's scratch slices."""
    keep = np.isin(plan.bucket_file, todo)
    written = plan.counts * keep
    offsets = np.zeros_like(written)
    task_of = np.full(len(written), -1, dtype=np.int64)
    for t in tasks:
        ids = np.asarray(t.block_ids)
        task_of[ids] = t.task_id
        base = np.concatenate([[0], np.cumsum(written[ids].sum(axis=1))[:-1]])
        offsets[ids] = base[:, None] + np.cumsum(written[ids], axis=1) - written[ids]
    prefixes = tuple(t.scratch for t in tasks)
    norm = norm_spec(config, {g.name: g.dtype for g in plan.groups}, None)
    out = []
    for k in todo:
        buckets = []
        for j in np.flatnonzero(plan.bucket_file == k):
            rows = np.flatnonzero(written[:, j])
            buckets.append(BucketSlices(int(j), int(written[:, j].sum()), task_of[rows],
                                        offsets[rows, j], written[rows, j]))
        out.append(WriteTask(plan.split, k, paths.staged(k), plan.file_sizes[k], plan.groups,
                             tuple(buckets), prefixes, config.global_.compression,
                             config.jets_name, config.flavour_names, plan.file_counts[k],
                             {**attrs, "merge_plan_hash": plan.plan_hash,
                              "merge_file_index": k},
                             (plan.seed, split_index(plan.split)), norm))
    return out


# --------------------------------------------------------------------------- one bucket
@dataclass
class Prepared:
    """One bucket, shuffled and compressed, with what it holds."""

    chunks: list[Chunks]
    labels: np.ndarray  # jets per flavour index
    stats: Stats | None  # train: its norm statistics
    nonfinite: dict[str, int] = field(default_factory=dict)  # other splits


class ScratchReader:
    """Reads slices of the scratch files with ``preadv``, from any thread: each thread keeps up
    to :data:`MAX_OPEN` files open (least recently used closed first)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: set[int] = set()

    def read(self, path: Path, buf: np.ndarray, offset: int) -> None:
        """Fill ``buf`` (uint8) from byte ``offset`` of scratch file ``path``."""
        got = os.preadv(self._fd(path), [buf.reshape(-1)], offset)
        if got != buf.size:
            raise BookkeepingError(f"{path}: scratch file truncated ({got} of {buf.size} bytes "
                                   f"at byte {offset})")

    def _fd(self, path: Path) -> int:
        fds: OrderedDict[Path, int] = self._local.__dict__.setdefault("fds", OrderedDict())
        key = path
        if key in fds:
            fds.move_to_end(key)
            return fds[key]
        if len(fds) >= MAX_OPEN:
            _, old = fds.popitem(last=False)
            with self._lock:
                self._open.discard(old)
            os.close(old)
        fd = os.open(path, os.O_RDONLY)
        with self._lock:
            self._open.add(fd)
        fds[key] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._open:
                os.close(fd)
            self._open.clear()


def prepare(task: WriteTask, b: BucketSlices, start: int, reader: ScratchReader) -> Prepared:
    """Bucket ``b`` of ``task`` (output rows from ``start``): gathered, shuffled, counted and
    compressed (runs in a worker thread)."""
    pos = np.random.default_rng([*task.seed, 2, b.bucket]).permutation(b.size)
    order = np.empty_like(pos)
    order[pos] = np.arange(b.size)  # output row pos[k] holds gathered row k
    out = Prepared([], np.zeros(len(task.flavour_names), dtype=np.int64),
                   Stats(jets=b.size) if task.split == "train" else None)
    for g in task.groups:
        rows = gather(b, g, order, task.scratch, reader)
        if g.name == task.jets_name:
            n = len(out.labels)
            out.labels += np.bincount(rows[FLAVOUR_LABEL], minlength=n)[:n]
        if out.stats is not None:
            out.stats.add(group_stats(task.norm, g.name, rows))
        else:
            for key, n in count_nonfinite(task.norm, g.name, rows).items():
                out.nonfinite[key] = out.nonfinite.get(key, 0) + n
        out.chunks.append(encode_chunks(g.name, rows, start, task.chunk_rows[g.name],
                                        task.compression))
    return out


def gather(b: BucketSlices, g: GroupSpec, order: np.ndarray, prefixes: Sequence[Path],
           reader: ScratchReader) -> np.ndarray:
    """The rows of bucket ``b`` for group ``g``: its scratch slices read back to back, then
    shuffled (row ``k`` of the output is row ``order[k]`` of the slices)."""
    seq = np.empty((b.size, g.row_bytes), dtype=np.uint8)
    done = 0
    for fid, off, n in zip(b.files.tolist(), b.offsets.tolist(), b.counts.tolist(),
                           strict=True):
        reader.read(scratch_file(prefixes[fid], g.name), seq[done:done + n], off * g.row_bytes)
        done += n
    out = np.empty((b.size, *g.shape), dtype=g.dtype)
    np.take(seq, order, axis=0, out=as_bytes(out))
    return out


# --------------------------------------------------------------------------- the files
def write_threads(workers: int) -> int:
    """Threads for pass 2: ``workers``, fewer if their buckets would pass
    :data:`WRITE_MEMORY`."""
    return max(1, min(workers, WRITE_MEMORY // (2 * BUCKET_BYTES)))


def write_files(tasks: Sequence[WriteTask], workers: int,
                on_bucket: Callable[[int], None]) -> list[FileResult]:
    """Pass 2 for ``tasks`` (see the module docstring); ``on_bucket(jets)`` after each bucket
    is written. A file is committed only complete and with the planned counts per flavour."""
    jobs = [(t, b, start) for t in tasks for b, start in zip(t.buckets, _starts(t), strict=True)]
    if not jobs:
        return []
    threads = write_threads(workers)
    reader = ScratchReader()
    results: list[FileResult] = []
    with ExitStack() as stack:
        stack.callback(reader.close)
        pool = stack.enter_context(ThreadPoolExecutor(threads, "merge-write"))
        stack.callback(pool.shutdown, cancel_futures=True)
        pending: deque[Future[Prepared]] = deque()  # in file order, bucket order
        todo = iter(jobs)

        def submit() -> None:
            job = next(todo, None)
            if job is not None:
                pending.append(pool.submit(prepare, *job, reader))

        def next_bucket() -> Prepared:
            prepared = pending.popleft().result()
            submit()
            return prepared

        for _ in range(threads + 1):
            submit()
        for task in tasks:  # each file takes its own buckets off the front of the queue
            results.append(_write_file(task, (next_bucket() for _ in task.buckets), on_bucket))
    return results


def _starts(task: WriteTask) -> list[int]:
    return np.concatenate([[0], np.cumsum([b.size for b in task.buckets])[:-1]]).tolist()


def _write_file(task: WriteTask, buckets: Iterator[Prepared], on_bucket: Callable[[int], None]
                ) -> FileResult:
    spec = {g.name: (g.dtype, g.shape) for g in task.groups}
    labels = np.zeros(len(task.flavour_names), dtype=np.int64)
    stats = Stats(jets=0) if task.split == "train" else None
    nonfinite: dict[str, int] = {}
    with ChunkFile(task.path, spec, task.size, task.compression, task.chunk_rows) as w:
        for b, prepared in zip(task.buckets, buckets, strict=True):
            for chunks in prepared.chunks:
                w.write(chunks)
            labels += prepared.labels
            if stats is not None and prepared.stats is not None:
                stats.add(prepared.stats)
            for key, n in prepared.nonfinite.items():
                nonfinite[key] = nonfinite.get(key, 0) + n
            on_bucket(b.size)
        written = dict(zip(task.flavour_names, (int(c) for c in labels), strict=True))
        if written != dict(task.expected):
            raise BookkeepingError(f"{task.path}: wrote {written} jets per flavour, the plan "
                                   f"has {dict(task.expected)}")
        if stats is not None:
            w.file.attrs[STATS_ATTR] = stats_attr(task.norm, stats)
            nonfinite = stats.nonfinite()
        for key, value in task.attrs.items():
            w.file.attrs[key] = value
        w.file.attrs["unique_jets"] = int(sum(written.values()))
        w.file.attrs["jet_counts"] = json.dumps(written)
        w.file.attrs["nonfinite_counts"] = json.dumps(nonfinite, sort_keys=True)
        w.file[task.jets_name].attrs[FLAVOUR_LABEL] = list(task.flavour_names)
        n = w.commit()
    return FileResult(task.split, task.index, task.path, n, written, nonfinite)
