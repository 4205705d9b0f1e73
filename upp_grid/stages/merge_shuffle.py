"""Pass 1 of the merge: read each input block once, weight it, cast it and deal its jets out.

For every block of the plan (:mod:`upp_grid.stages.merge_plan`) this computes the weights from
the full-precision values, casts the rows to the final dtypes, and appends the block's jets,
grouped by the bucket they go to, to raw scratch files (one per task and group) that pass 2
(:mod:`upp_grid.stages.merge_write`) gathers from. Tasks run in worker processes (forked: they
inherit the histograms, nothing is pickled); the bytes they write depend on the plan only.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from upp_grid.h5chunks import as_bytes
from upp_grid.h5io import FieldPacker, cast_field, dataset, open_input, read_rows
from upp_grid.stages.histograms import ReweightHists, WeightMemo, compute_weights
from upp_grid.stages.merge_plan import GroupSpec, MergePlan, split_index

TASK_BLOCKS = 2  # blocks per pass-1 task (small tasks: the workers finish together)


@dataclass(frozen=True)
class RouteTask:
    """Blocks of one source: read, weight, cast, and append grouped by bucket to scratch."""

    source: str
    task_id: int
    groups: tuple[GroupSpec, ...]
    block_ids: tuple[int, ...]
    starts: tuple[int, ...]
    counts: np.ndarray  # (blocks of this task, n_buckets)
    keep: np.ndarray  # (n_buckets,) buckets still to be written
    scratch: Path  # prefix: <scratch>.<group>.bin
    seed: tuple[int, ...]

    @property
    def num_jets(self) -> int:
        """Jets this task writes to scratch."""
        return int((self.counts * self.keep).sum())


def scratch_file(prefix: Path, group: str) -> Path:
    return prefix.with_name(f"{prefix.name}.{group}.bin")


def block_selection(counts: np.ndarray, keep: np.ndarray, rng: np.random.Generator
                    ) -> np.ndarray:
    """Rows of a block to write, grouped by bucket in bucket order (kept buckets only)."""
    perm = rng.permutation(int(counts.sum()))
    if keep.all():
        return perm
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts = [perm[bounds[j]:bounds[j + 1]] for j in np.flatnonzero(keep & (counts > 0))]
    return np.concatenate(parts) if parts else perm[:0]


@dataclass(frozen=True)
class RouteResult:
    num_jets: int  # written to scratch
    overflow: frozenset[str]  # "group.field" with finite values beyond float16


def route(task: RouteTask, hists: Mapping[str, ReweightHists]) -> RouteResult:
    """Pass 1 for one task: each block's kept jets, grouped by bucket, appended to scratch.

    ``hists`` are the histograms the merge loaded and checked once at its start (worker
    processes inherit them): ``histograms.h5`` is never read again, so a weights stage run
    meanwhile cannot mix its weights in."""
    overflow: set[str] = set()
    with ExitStack() as stack:
        f = stack.enter_context(open_input(Path(task.source)))
        dsets = {g.name: dataset(f, g.name) for g in task.groups}
        scratch = {g.name: stack.enter_context(open(scratch_file(task.scratch, g.name), "wb"))
                   for g in task.groups}
        for block, start, counts in zip(task.block_ids, task.starts, task.counts, strict=True):
            sel = block_selection(counts, task.keep,
                                  np.random.default_rng([*task.seed, 1, block]))
            stop = start + int(counts.sum())
            for g in task.groups:
                out = final_rows(g, read_rows(dsets[g.name], start, stop), sel, hists, overflow)
                try:
                    scratch[g.name].write(as_bytes(out).reshape(-1).data)
                except OSError as err:  # name the file: a full disk says where
                    raise OSError(err.errno, err.strerror,
                                  str(scratch_file(task.scratch, g.name))) from None
    return RouteResult(task.num_jets, frozenset(overflow))


def final_rows(g: GroupSpec, rows: np.ndarray, sel: np.ndarray, hists: Mapping[str, ReweightHists],
               overflow: set[str] | None = None) -> np.ndarray:
    """Rows ``sel`` of full-precision ``rows`` in the final dtype, with their weights.

    Weights are computed from the full-precision values, before any precision reduction.
    Casting first and moving whole rows after is several times faster than the reverse.
    Fields whose cast overflows (finite values beyond float16) are added to ``overflow``.
    """
    out = np.empty(rows.shape, dtype=g.dtype)
    packer, cast = _copy_plan(rows.dtype, g.dtype, g.fields)
    if packer is not None:
        packer.pack(rows, out.view(packer.dst))
    flags = OverflowLog(g.name)
    with np.errstate(over="log", call=flags):
        for name in cast:
            flags.field = name
            cast_field(out, rows, name)
    if overflow is not None:
        overflow |= flags.fields
    memo = WeightMemo()
    for name in g.weights:
        out[name] = compute_weights(hists[name], rows, memo)
    picked = np.take(as_bytes(out), sel, axis=0)
    return picked.view(g.dtype).reshape((len(sel), *g.shape))


@functools.lru_cache(maxsize=64)
def _copy_plan(src: np.dtype, dst: np.dtype, fields: tuple[str, ...]
               ) -> tuple[FieldPacker | None, tuple[str, ...]]:
    """How ``fields`` go from ``src`` rows to ``dst`` rows: those of the same type in both
    are copied together (adjacent ones as one run: the test split's dozen integer track
    fields cost one copy, not twelve), the others are cast one by one."""
    same = [n for n in fields if src.fields[n][0] == dst.fields[n][0]]
    cast = tuple(n for n in fields if n not in same)
    if not same:
        return None, cast
    view = np.dtype({"names": same, "formats": [dst.fields[n][0] for n in same],
                     "offsets": [dst.fields[n][1] for n in same], "itemsize": dst.itemsize})
    return FieldPacker(src, view), cast


class OverflowLog:
    """Collects the fields whose cast to float16 overflowed (numpy's FP overflow flag, so it
    costs nothing: no extra pass over the data). Use as ``np.errstate(call=log)``."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.field = ""
        self.fields: set[str] = set()

    def write(self, _msg: str) -> None:
        self.fields.add(f"{self.group}.{self.field}")


def route_tasks(plan: MergePlan, keep: np.ndarray, scratch: Path) -> list[RouteTask]:
    """Pass-1 tasks: up to :data:`TASK_BLOCKS` consecutive blocks of one source each."""
    written = plan.counts * keep
    tasks: list[RouteTask] = []
    seed = (plan.seed, split_index(plan.split))
    for ids in _task_blocks(plan):
        if not written[ids].any():
            continue
        tid = len(tasks)
        tasks.append(RouteTask(plan.sources[plan.block_source[ids[0]]].path, tid, plan.groups,
                               tuple(int(i) for i in ids),
                               tuple(int(s) for s in plan.block_start[ids]), plan.counts[ids],
                               keep, scratch / f"t{ids[0]}", seed))
    return tasks


def _task_blocks(plan: MergePlan) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    n = len(plan.block_source)
    i = 0
    while i < n:
        j = i + 1
        while j < n and j - i < TASK_BLOCKS and plan.block_source[j] == plan.block_source[i]:
            j += 1
        out.append(np.arange(i, j))
        i = j
    return out



# The merge's histograms in this process, for pass 1: set by RoutePool before the workers
# fork (they inherit them, nothing is pickled) and reset after.
_HISTS: dict[str, Mapping[str, ReweightHists]] = {}


def _route_with_hists(task: RouteTask) -> RouteResult:
    return route(task, _HISTS["merge"])


class RoutePool:
    """Pass 1 in ``workers`` forked processes (made once, before any thread of pass 2 runs),
    fed one split at a time: :meth:`submit` returns at once, so this process can write one
    split (pass 2, threads) while the workers route the next. With one worker, the tasks run
    in this process when waited for."""

    def __init__(self, hists: Mapping[str, ReweightHists], workers: int) -> None:
        self.hists = hists
        self.workers = workers
        self._pool: Any = None

    def __enter__(self) -> RoutePool:
        _HISTS["merge"] = self.hists  # inherited by the forked workers
        if self.workers > 1:
            self._pool = mp.get_context("fork").Pool(self.workers)
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if self._pool is not None:
                if exc_type is None:
                    self._pool.close()
                else:
                    self._pool.terminate()
                self._pool.join()
        finally:
            _HISTS.clear()

    def submit(self, tasks: Sequence[RouteTask], on_done: Callable[[RouteResult], None]
               ) -> Callable[[], list[RouteResult]]:
        """Start ``tasks`` (the largest first); returns the call that waits for their results.
        ``on_done`` is called as each finishes (from the pool's result thread)."""
        if self._pool is None:
            def inline() -> list[RouteResult]:
                out = []
                for t in tasks:
                    out.append(route(t, self.hists))
                    on_done(out[-1])
                return out
            return inline
        ordered = sorted(tasks, key=lambda t: t.num_jets * sum(g.in_bytes for g in t.groups),
                         reverse=True)
        pending = [self._pool.apply_async(_route_with_hists, (t,), callback=on_done)
                   for t in ordered]
        return lambda: [p.get() for p in pending]
