"""``upp-grid merge``: shuffle a split's components into final files with weights attached.

Reads every catalogue file of a split (all flavours), attaches one float32 field per reweight
(UPP's names) computed from the full-precision values, reduces precision, and writes
``<out_dir>/<split>/pp_output_<split>-full_<i>.h5`` (UPP's names) of exactly
``num_jets_per_output_file`` jets (the last file holds the remainder) plus
``<out_dir>/pp_output_<split>_vds.h5``, a virtual file with absolute source paths that is
verified (:mod:`upp_grid.stages.verify`) as soon as it is written.

Shuffle
-------
The output is a uniformly random permutation of the split's N jets, made in two passes with
memory bounded independently of N (no array of N elements is ever built):

* Output positions are cut into *buckets*: each output file into consecutive slices of at most
  ``bucket_rows`` jets (about :data:`BUCKET_BYTES` of output rows).
* The inputs are read once, in chunk-aligned *blocks* (catalogue order). Which jets of a block
  go to which bucket is a uniformly random partition of the bucket capacities, drawn block by
  block: the number of the block's jets per bucket is multivariate hypergeometric given the
  capacities still free (drawn in the parent, ``default_rng([seed, split, 0])``), and the
  block's jets are dealt to those counts by a random permutation of the block
  (``default_rng([seed, split, 1, block])``).
* Pass 1 (processes over input blocks) computes the weights, casts to the final dtypes and
  appends each block's rows, grouped by bucket, to a raw scratch file.
* Pass 2 (processes over output files) gathers each bucket's slices from the scratch files and
  places them at a random permutation of the bucket's positions
  (``default_rng([seed, split, 2, bucket])``), then writes the bucket to the output file.

A uniform partition into buckets followed by a uniform order within each bucket is a uniform
permutation of all N jets. Everything is a function of the seed and the plan, so a rerun (or a
resumed run) writes identical files.

Atomicity, bookkeeping and resume
---------------------------------
Files are written under ``<out_dir>/<split>/.staging/`` (each through :class:`AtomicH5Writer`).
A file's completion record is its root attributes (``merge_plan_hash``, ``merge_file_index``,
``jet_counts``) plus the staging directory's ``plan.json``: a rerun with the same plan keeps
every file whose record and counts check out, and redoes the rest. Only when every file of every
requested split is complete, and the jets written per flavour (counted from the written
``flavour_label`` values) equal the catalogue's, are stale files of an earlier run removed, the
staged files renamed into place, the virtual dataset (built from this plan's file list, never
from a glob) and ``merge-record.json`` written.

Output format
-------------
Train and val keep the configured variables (UPP's choice) plus ``flavour_label`` (jets) or
``valid`` (other groups); test keeps every field of the split outputs. Float fields are float16
with ``precision: half`` except ``full_precision_vars`` (float32); weights are float32. gzip
is written at level 1 without byte-shuffle (see :func:`output_codec`). The train files also
cache their unweighted norm statistics (``norm_stats``, see :mod:`upp_grid.stages.normalise`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from upp_grid import __version__
from upp_grid.config import SPLITS, Config
from upp_grid.errors import BookkeepingError, InputError, UppGridError
from upp_grid.fsutil import remove_stale_temps
from upp_grid.h5io import (
    JETS_CHUNK,
    AtomicH5Writer,
    dataset,
    final_codec,
    final_dtype,
    open_input,
    read_rows,
    write_virtual_file,
)
from upp_grid.input_types import FieldTypes
from upp_grid.inputs import FLAVOUR_LABEL
from upp_grid.ownership import record_out_dir
from upp_grid.stages.catalogue import Catalogue, read_catalogue
from upp_grid.stages.histograms import (
    ReweightHists,
    compute_weights,
    content_hash,
    read_histograms,
)
from upp_grid.stages.normalise import (
    STATS_ATTR,
    NormSpec,
    Stats,
    count_nonfinite,
    group_stats,
    norm_spec,
    stats_attr,
)
from upp_grid.stages.verify import verify_vds
from upp_grid.stages.weights import histograms_path

log = logging.getLogger(__name__)

SCHEME = "upp-grid-merge-2"  # changes whenever the output for a given plan would change
BLOCK_BYTES = 24 * 2**20  # full-precision input rows per pass-1 read
BUCKET_BYTES = 40 * 2**20  # final-precision output rows gathered in memory by pass 2
TASK_BLOCKS = 6  # blocks per pass-1 task
ALIGN = JETS_CHUNK  # bucket sizes are multiples of the chunk lengths of the final files
STAGING = ".staging"
RECORD_NAME = "merge-record.json"
GZIP_LEVEL = 1  # see output_codec
Progress = Callable[[int], None]
T = TypeVar("T", "RouteTask", "WriteTask")
R = TypeVar("R")


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Source:
    """One catalogue file of the split."""

    path: str
    flavour: str
    num_jets: int
    chunk: int  # chunk length (rows) of the source's largest-row dataset: blocks align to it


@dataclass(frozen=True)
class GroupSpec:
    """How one HDF5 group is written: copied fields, final dtype and weight fields."""

    name: str
    shape: tuple[int, ...]
    fields: tuple[str, ...]
    dtype: np.dtype
    weights: tuple[str, ...]
    in_bytes: int  # bytes per jet in the split files

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class MergePlan:
    """Everything that determines a split's output files (see the module docstring)."""

    split: str
    sources: tuple[Source, ...]
    groups: tuple[GroupSpec, ...]
    block_source: np.ndarray  # (n_blocks,) source index of each block
    block_start: np.ndarray  # (n_blocks,) first row of the block in its source
    counts: np.ndarray  # (n_blocks, n_buckets) jets of each block going to each bucket
    bucket_file: np.ndarray  # (n_buckets,) output file of each bucket
    file_sizes: tuple[int, ...]
    file_counts: tuple[Mapping[str, int], ...]  # jets per flavour of each output file
    plan_hash: str
    seed: int

    @property
    def num_jets(self) -> int:
        return sum(s.num_jets for s in self.sources)


@dataclass(frozen=True)
class SplitPaths:
    """Where a split's outputs go."""

    out_dir: Path
    split: str

    @property
    def split_dir(self) -> Path:
        return self.out_dir / self.split

    @property
    def staging(self) -> Path:
        return self.split_dir / STAGING

    @property
    def scratch(self) -> Path:
        return self.staging / "scratch"

    @property
    def vds(self) -> Path:
        return self.out_dir / f"pp_output_{self.split}_vds.h5"

    @property
    def record(self) -> Path:
        return self.split_dir / RECORD_NAME

    def name(self, index: int) -> str:
        return f"pp_output_{self.split}-full_{index}.h5"

    def final(self, index: int) -> Path:
        return self.split_dir / self.name(index)

    def staged(self, index: int) -> Path:
        return self.staging / self.name(index)


def split_index(split: str) -> int:
    return SPLITS.index(split)


def file_sizes(num_jets: int, per_file: int | None) -> tuple[int, ...]:
    """Jets per output file: all ``per_file`` but the last, which holds the remainder."""
    if not per_file or num_jets <= per_file:
        return (num_jets,)
    full, rest = divmod(num_jets, per_file)
    return (per_file,) * full + ((rest,) if rest else ())


def _bucket_rows(row_bytes: int, budget: int) -> int:
    return max(ALIGN, budget // max(row_bytes, 1) // ALIGN * ALIGN)


def _sources(config: Config, cat: Catalogue, split: str) -> tuple[Source, ...]:
    out = []
    for flavour in config.flavour_names:
        for path in cat.files.get(split, {}).get(flavour, []):
            with open_input(Path(path)) as f:
                n = int(dataset(f, config.jets_name).shape[0])
                out.append(Source(str(path), flavour, n, _chunk(f, config)))
    return tuple(out)


def _chunk(f: h5py.File, config: Config) -> int:
    """Chunk length of the dataset with the most bytes per jet (1 if not chunked)."""
    sets = [dataset(f, g) for g in config.variables]
    big = max(sets, key=lambda ds: ds.dtype.itemsize * int(np.prod(ds.shape[1:],
                                                                    dtype=np.int64)))
    return int(big.chunks[0]) if big.chunks else 1


def _wanted_fields(config: Config, split: str, group: str, names: Sequence[str]) -> list[str]:
    """Fields of ``group`` written for ``split``: the configured variables (UPP's choice),
    plus ``flavour_label`` (jets) or ``valid`` (other groups); every field for ``test``."""
    if split == "test":
        return list(names)
    want = set(config.variables[group].variables)
    want.add(FLAVOUR_LABEL if group == config.jets_name else "valid")
    missing = sorted(want - set(names))
    if missing:
        raise InputError(f"split outputs of {split}: '{group}' has no field '{missing[0]}'")
    return [n for n in names if n in want]


def _group_specs(config: Config, split: str, sources: Sequence[Source],
                 hists: Mapping[str, ReweightHists]) -> tuple[GroupSpec, ...]:
    """Per group: the fields written and their dtypes, from the union of the sources' types
    (never from one file: :mod:`upp_grid.input_types`), then the config's precision."""
    if not sources:
        raise InputError(f"no {split} files in the catalogue")
    types = FieldTypes()
    common: dict[str, list[str]] = {}
    itemsize: dict[str, int] = {}
    for src in sources:
        with open_input(Path(src.path)) as f:
            for g in config.variables:
                ds = dataset(f, g)
                types.add(Path(src.path), g, ds.dtype, ds.shape[1:])
                names = set(ds.dtype.names)
                common[g] = [n for n in common.get(g, ds.dtype.names) if n in names]
                itemsize[g] = max(itemsize.get(g, 0), ds.dtype.itemsize)
    g_cfg = config.global_
    specs = []
    for g in config.variables:
        fields = _wanted_fields(config, split, g, common[g])
        base = final_dtype(np.dtype([(n, types.dtype(g, n)) for n in fields]),
                           g_cfg.precision, g_cfg.full_precision_vars)
        weights = tuple(name for name, h in hists.items() if h.reweight.group == g)
        dtype = np.dtype(base.descr + [(w, "<f4") for w in weights])
        shape = types.shapes[g][0]
        per_jet = int(np.prod(shape, dtype=np.int64))
        specs.append(GroupSpec(g, tuple(shape), tuple(fields), dtype, weights,
                               itemsize[g] * per_jet))
    return tuple(specs)


def _blocks(sources: Sequence[Source], in_bytes: int) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Source, first row and size of every block: about :data:`BLOCK_BYTES` of input,
    a whole number of the source's chunks."""
    src, start, size = [], [], []
    for i, s in enumerate(sources):
        rows = max(s.chunk, BLOCK_BYTES // max(in_bytes, 1) // s.chunk * s.chunk)
        for a in range(0, s.num_jets, rows):
            src.append(i)
            start.append(a)
            size.append(min(rows, s.num_jets - a))
    as_int = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return as_int(src), as_int(start), as_int(size)


def _buckets(sizes: Sequence[int], bucket_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Capacity and output file of every bucket."""
    cap, owner = [], []
    for k, n in enumerate(sizes):
        for a in range(0, n, bucket_rows):
            cap.append(min(bucket_rows, n - a))
            owner.append(k)
    return np.asarray(cap, dtype=np.int64), np.asarray(owner, dtype=np.int64)


def assign(block_sizes: np.ndarray, capacities: np.ndarray, rng: np.random.Generator
           ) -> np.ndarray:
    """Jets of each block per bucket: a uniformly random partition of all jets into buckets
    of the given capacities, drawn block by block (multivariate hypergeometric)."""
    counts = np.zeros((len(block_sizes), len(capacities)), dtype=np.int64)
    free = capacities.astype(np.int64).copy()
    for i, b in enumerate(block_sizes):
        counts[i] = rng.multivariate_hypergeometric(free, int(b))
        free -= counts[i]
    return counts


def make_plan(config: Config, split: str, cat: Catalogue, hists: Mapping[str, ReweightHists],
              hist_digest: str) -> MergePlan:
    """The plan of ``split``: sources, dtypes, blocks, buckets, and the random partition."""
    sources = _sources(config, cat, split)
    groups = _group_specs(config, split, sources, hists)
    in_bytes = sum(g.in_bytes for g in groups)
    num = sum(s.num_jets for s in sources)
    block_source, block_start, block_size = _blocks(sources, in_bytes)
    sizes = file_sizes(num, config.global_.num_jets_per_output_file)
    out_bytes = sum(g.row_bytes for g in groups)
    capacities, bucket_file = _buckets(sizes, _bucket_rows(out_bytes, BUCKET_BYTES))
    seed = config.global_.seed
    rng = np.random.default_rng([seed, split_index(split), 0])
    counts = assign(block_size, capacities, rng)
    labels = np.asarray([config.flavour_names.index(s.flavour) for s in sources], dtype=np.int64)
    file_counts = _file_counts(config, counts, labels[block_source], bucket_file, len(sizes))
    digest = _plan_digest(config, split, sources, groups, hist_digest, cat.digest)
    return MergePlan(split, sources, groups, block_source, block_start, counts, bucket_file,
                     sizes, file_counts, digest, seed)


def _file_counts(config: Config, counts: np.ndarray, block_label: np.ndarray,
                 bucket_file: np.ndarray, n_files: int) -> tuple[Mapping[str, int], ...]:
    by_label = np.zeros((len(config.flavour_names), counts.shape[1]), dtype=np.int64)
    np.add.at(by_label, block_label, counts)
    per = np.stack([by_label[:, bucket_file == k].sum(axis=1) for k in range(n_files)])
    return tuple({f: int(n) for f, n in zip(config.flavour_names, row, strict=True)}
                 for row in per)


def _plan_digest(config: Config, split: str, sources: Sequence[Source],
                 groups: Sequence[GroupSpec], hist_digest: str, cat_digest: str) -> str:
    """Identifies the output: the same inputs, config and histograms give the same hash (no
    file times: two clean runs give byte-identical files)."""
    g = config.global_
    items = {
        "scheme": SCHEME, "split": split, "config": config.config_hash, "seed": g.seed,
        "per_file": g.num_jets_per_output_file, "precision": g.precision,
        "full_precision_vars": list(g.full_precision_vars), "compression": g.compression,
        "sources": [[s.path, s.flavour, s.num_jets] for s in sources], "catalogue": cat_digest,
        "groups": [[x.name, list(x.shape), x.dtype.descr, list(x.weights)] for x in groups],
        "histograms": hist_digest, "block_bytes": BLOCK_BYTES, "bucket_bytes": BUCKET_BYTES,
        "gzip_level": GZIP_LEVEL,
    }
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- pass 1: route
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
    flags = OverflowLog(g.name)
    with np.errstate(over="log", call=flags):
        for name in g.fields:
            flags.field = name
            out[name] = rows[name]
    if overflow is not None:
        overflow |= flags.fields
    for name in g.weights:
        out[name] = compute_weights(hists[name], rows)
    return as_bytes(out)[sel].view(g.dtype).reshape((len(sel), *g.shape))


def as_bytes(rows: np.ndarray) -> np.ndarray:
    """A C-contiguous structured array as ``(n_rows, row_bytes)`` uint8 (a view)."""
    row_bytes = rows.dtype.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64))
    return rows.view(np.uint8).reshape(len(rows), row_bytes)


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


# --------------------------------------------------------------------------- pass 2: write
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


def output_codec(name: str) -> dict[str, Any]:
    """``final_codec(name)`` without byte-shuffle, and gzip at level :data:`GZIP_LEVEL`.

    Measured on one 100k-jet merged train file (half precision; write / read / size):
    gzip 4 + shuffle (UPP's choice) 1.10 s / 0.55 s / 22.4 MB; gzip 4 unshuffled 0.88 s /
    0.39 s / 20.5 MB; gzip 1 unshuffled 0.56 s / 0.19 s / 21.1 MB. Rows mixing float16 and
    1-byte fields compress better unshuffled, and level 1 halves the cost of writing (and of
    every later read) for 3 % more bytes, still less than UPP's files. lzf: 22.8 MB / 0.29 s
    unshuffled vs 27.5 MB / 0.39 s shuffled.
    """
    codec = {**final_codec(name), "shuffle": False}
    if name == "gzip":
        codec["compression_opts"] = GZIP_LEVEL
    return codec


def write_file(task: WriteTask) -> FileResult:
    """Pass 2: gather, shuffle and write one output file; check its flavour counts."""
    spec = {g.name: (g.dtype, g.shape) for g in task.groups}
    fds: dict[tuple[int, str], int] = {}
    try:
        with AtomicH5Writer(task.path, spec, output_codec(task.compression)) as w:
            written, nonfinite = _write_buckets(task, w, fds)
            if written != dict(task.expected):
                raise BookkeepingError(f"{task.path}: wrote {written} jets per flavour, the "
                                       f"plan has {dict(task.expected)}")
            _set_attrs(w.file, task, written)
            w.file.attrs["nonfinite_counts"] = json.dumps(nonfinite, sort_keys=True)
            n = w.commit(expected=task.size)
    finally:
        for fd in fds.values():
            os.close(fd)
    return FileResult(task.split, task.index, task.path, n, written, nonfinite)


def _write_buckets(task: WriteTask, w: AtomicH5Writer, fds: dict[tuple[int, str], int]
                   ) -> tuple[dict[str, int], dict[str, int]]:
    """Append every bucket, shuffled; returns the jets written per flavour (counted from the
    rows) and the NaN/inf per training variable. For train, caches the norm statistics of the
    rows in the file's attributes (they count the NaN/inf they leave out)."""
    counts = np.zeros(len(task.flavour_names), dtype=np.int64)
    stats = Stats(jets=task.size)
    nonfinite: dict[str, int] = {}
    train = task.split == "train"
    for b in task.buckets:
        pos = np.random.default_rng([*task.seed, 2, b.bucket]).permutation(b.size)
        order = np.argsort(pos)  # output row pos[k] holds gathered row k
        for g in task.groups:
            rows = gather(b, g, order, task.scratch, fds)
            if g.name == task.jets_name:
                counts += np.bincount(rows[FLAVOUR_LABEL], minlength=len(counts))[:len(counts)]
            if train:
                stats.add(group_stats(task.norm, g.name, rows))
            else:
                for key, n in count_nonfinite(task.norm, g.name, rows).items():
                    nonfinite[key] = nonfinite.get(key, 0) + n
            w.append(g.name, rows)
    if train:
        w.file.attrs[STATS_ATTR] = stats_attr(task.norm, stats)
        nonfinite = stats.nonfinite()
    return dict(zip(task.flavour_names, (int(c) for c in counts), strict=True)), nonfinite


def gather(b: BucketSlices, g: GroupSpec, order: np.ndarray, prefixes: Sequence[Path],
           fds: dict[tuple[int, str], int]) -> np.ndarray:
    """The rows of bucket ``b`` for group ``g``: its scratch slices read back to back, then
    shuffled (row ``k`` of the output is row ``order[k]`` of the slices)."""
    seq = np.empty((b.size, *g.shape), dtype=g.dtype)
    raw = as_bytes(seq)
    done = 0
    for fid, off, n in zip(b.files.tolist(), b.offsets.tolist(), b.counts.tolist(),
                           strict=True):
        key = (fid, g.name)
        if key not in fds:
            fds[key] = os.open(scratch_file(prefixes[fid], g.name), os.O_RDONLY)
        want = n * g.row_bytes
        got = os.preadv(fds[key], [raw[done:done + n].reshape(-1)], off * g.row_bytes)
        if got != want:
            raise BookkeepingError(f"{scratch_file(prefixes[fid], g.name)}: scratch file "
                                   f"truncated ({got} of {want} bytes at row {off})")
        done += n
    return raw[order].view(g.dtype).reshape(seq.shape)


def _set_attrs(f: h5py.File, task: WriteTask, written: Mapping[str, int]) -> None:
    for key, value in task.attrs.items():
        f.attrs[key] = value
    f.attrs["unique_jets"] = int(sum(written.values()))
    f.attrs["jet_counts"] = json.dumps(dict(written))
    f[task.jets_name].attrs[FLAVOUR_LABEL] = list(task.flavour_names)


# --------------------------------------------------------------------------- resume
def file_is_complete(path: Path, plan: MergePlan, index: int) -> bool:
    """True if ``path`` is output file ``index`` of ``plan``, with the planned counts."""
    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            if (attrs.get("merge_plan_hash") != plan.plan_hash
                    or int(attrs.get("merge_file_index", -1)) != index):
                return False
            if json.loads(attrs["jet_counts"]) != dict(plan.file_counts[index]):
                return False
            return all(f[g.name].shape[0] == plan.file_sizes[index] for g in plan.groups)
    except (OSError, KeyError, ValueError, TypeError):
        return False


def prepare_staging(paths: SplitPaths, plan: MergePlan) -> list[int]:
    """Reset the staging area to ``plan`` and return the output files still to write."""
    marker = paths.staging / "plan.json"
    try:
        same = json.loads(marker.read_text()).get("plan_hash") == plan.plan_hash
    except (OSError, ValueError):
        same = False
    if not same and paths.staging.exists():
        log.info("%s: discarding staged files of a different plan", paths.staging)
        shutil.rmtree(paths.staging)
    shutil.rmtree(paths.scratch, ignore_errors=True)
    paths.scratch.mkdir(parents=True, exist_ok=True)
    for stale in paths.staging.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    _write_json(marker, {"plan_hash": plan.plan_hash, "split": plan.split,
                         "files": [paths.name(k) for k in range(len(plan.file_sizes))]})
    todo = []
    for k in range(len(plan.file_sizes)):
        if not any(file_is_complete(p, plan, k) for p in (paths.staged(k), paths.final(k))):
            paths.staged(k).unlink(missing_ok=True)
            todo.append(k)
    return todo


def already_merged(paths: SplitPaths, plan: MergePlan) -> bool:
    """True if ``plan`` was published completely by an earlier run."""
    try:
        record = json.loads(paths.record.read_text())
    except (OSError, ValueError):
        return False
    if record.get("plan_hash") != plan.plan_hash or not paths.vds.is_file():
        return False
    if not all(file_is_complete(paths.final(k), plan, k) for k in range(len(plan.file_sizes))):
        return False
    return not verify_vds(paths.vds).problems  # a virtual file pointing elsewhere is redone


# --------------------------------------------------------------------------- publish
@dataclass(frozen=True)
class OutputFile:
    path: Path
    num_jets: int
    jet_counts: Mapping[str, int]


@dataclass(frozen=True)
class SplitResult:
    """Outcome of merging one split."""

    split: str
    jets_in: Mapping[str, int]  # catalogue, per flavour
    jets_out: Mapping[str, int]  # written, per flavour
    files: tuple[OutputFile, ...]
    vds: Path
    reused: int  # files kept from an earlier (interrupted or complete) run

    @property
    def num_jets(self) -> int:
        return sum(self.jets_out.values())


@dataclass(frozen=True)
class MergeSummary:
    results: tuple[SplitResult, ...]
    seconds: float = 0.0


def check_bookkeeping(plan: MergePlan, cat: Catalogue, counts: Sequence[Mapping[str, int]]
                      ) -> dict[str, int]:
    """Jets written per flavour must equal the catalogue's; returns the written counts."""
    out = {f: sum(c.get(f, 0) for c in counts) for f in cat.num_jets[plan.split]}
    expected = {f: int(n) for f, n in cat.num_jets[plan.split].items()}
    if out != expected:
        diff = {f: out[f] - expected[f] for f in out if out[f] != expected[f]}
        raise BookkeepingError(f"merge {plan.split}: jets written per flavour {out} differ from "
                               f"the catalogue's {expected} (difference {diff}); nothing "
                               "published")
    return out


def publish(paths: SplitPaths, plan: MergePlan, attrs: Mapping[str, Any],
            jets_name: str, flavour_names: Sequence[str]) -> tuple[OutputFile, ...]:
    """Replace the split's published files by this plan's, then write the VDS and record."""
    paths.record.unlink(missing_ok=True)  # first: a crash from here on leaves no claim
    paths.vds.unlink(missing_ok=True)
    keep = {paths.name(k) for k in range(len(plan.file_sizes))}
    pattern = re.compile(rf"pp_output_{plan.split}(-full)?_\d+\.h5$")  # and pre-0.2 names
    for old in paths.split_dir.glob(f"pp_output_{plan.split}*.h5"):
        if pattern.fullmatch(old.name) and old.name not in keep:
            log.info("removing stale output %s", old)
            old.unlink()
    for k in range(len(plan.file_sizes)):
        if paths.staged(k).exists():
            paths.staged(k).replace(paths.final(k))
    files = tuple(OutputFile(paths.final(k), n, plan.file_counts[k])
                  for k, n in enumerate(plan.file_sizes))
    totals = {f: sum(o.jet_counts[f] for o in files) for f in flavour_names}
    vds_attrs = {**attrs, "unique_jets": sum(totals.values()), "jet_counts": json.dumps(totals),
                 "merge_plan_hash": plan.plan_hash, "num_files": len(files)}
    write_virtual_file(paths.vds, [(o.path, o.num_jets) for o in files],
                       {g.name: (g.dtype, g.shape) for g in plan.groups}, vds_attrs,
                       {jets_name: {FLAVOUR_LABEL: list(flavour_names)}})
    problems = verify_vds(paths.vds).problems
    if problems:
        raise BookkeepingError(problems[0])
    _write_json(paths.record, {
        "plan_hash": plan.plan_hash, "split": plan.split, "version": __version__,
        "config": attrs.get("config_path", ""), "config_hash": attrs.get("config_hash", ""),
        "histograms_hash": attrs.get("histograms_hash", ""),
        "catalogue_hash": attrs.get("catalogue_hash", ""),
        "vds": str(paths.vds), "jet_counts": totals,
        "files": [{"path": str(o.path), "num_jets": o.num_jets,
                   "jet_counts": dict(o.jet_counts)} for o in files]})
    shutil.rmtree(paths.staging, ignore_errors=True)
    return files


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def merge_record(config: Config, split: str) -> dict[str, Any]:
    """The ``merge-record.json`` of a completed merge of ``split`` by this config.

    Raises
    ------
    InputError
        No completed merge, or one made by another config (the line says what to rerun).
    """
    paths = SplitPaths(config.global_.out_dir, split)
    try:
        record = json.loads(paths.record.read_text())
    except FileNotFoundError:
        raise InputError(f"{paths.record}: no completed merge of {split} "
                         f"(run `upp-grid merge -c CFG --split {split}`)") from None
    except ValueError as err:
        raise InputError(f"{paths.record}: unreadable merge record: {err}") from None
    if record.get("config_hash") != config.config_hash:
        raise InputError(f"{paths.split_dir}: merged with another config "
                         f"({record.get('config') or 'unknown'}), not {config.path}: rerun "
                         f"`upp-grid merge -c CFG --split {split}`")
    return record


def merged_files(config: Config, split: str) -> tuple[OutputFile, ...]:
    """The files a completed merge of ``split`` by this config published."""
    record = merge_record(config, split)
    return tuple(OutputFile(Path(f["path"]), int(f["num_jets"]), f["jet_counts"])
                 for f in record["files"])


# --------------------------------------------------------------------------- the stage
def config_json(config: Config) -> str:
    """The resolved config (includes inlined) as JSON, for the ``config`` attribute."""
    return config.resolved_json()


def file_attrs(config: Config, cat: Catalogue, split: str, weighted: bool) -> dict[str, Any]:
    """Root attributes of every output file of ``split`` (counts are added per file)."""
    dsids = sorted({Path(p).parent.parent.name for paths in cat.files.get(split, {}).values()
                    for p in paths})
    return {"dsids": str(dsids), "config": config_json(config),
            "config_path": str(config.path), "config_hash": config.config_hash,
            "catalogue_hash": cat.digest,
            "resampling_method": "reweighting" if weighted else "none",
            "upp_grid_version": __version__, "split": split,
            # UPP's keys (upp.stages.rw_merge, ftag's H5Writer): the split's jets, our version
            f"{config.jets_name}_counts": cat.total(split),
            "upp_hash": f"upp-grid {__version__}", "writer_version": f"upp-grid {__version__}",
            "precision": config.global_.precision, "compression": config.global_.compression}


def load_reweights(config: Config, cat: Catalogue) -> dict[str, ReweightHists]:
    """The histograms of every configured reweight, checked against the config and made from
    the split outputs of ``cat`` (loaded once: the merge never reads the file again)."""
    if not config.reweighting or not config.reweighting.reweights:
        return {}
    path = histograms_path(config)
    if not path.is_file():
        raise InputError(f"{path}: no histograms (run `upp-grid weights -c CFG` first)")
    hists, made_from = read_histograms(path)
    if made_from != cat.digest:
        raise InputError(f"{path}: made from other split outputs than the catalogue's (split "
                         "or download ran since): rerun `upp-grid weights -c CFG`")
    out = {}
    for rw in config.reweighting.reweights:
        h = hists.get(rw.name)
        stale = h is None or len(h.edges) != len(rw.reweight_vars) or not all(
            np.array_equal(e, rw.edges(v)) for e, v in zip(h.edges, rw.reweight_vars,
                                                           strict=True))
        if stale:
            raise InputError(f"{path}: no up-to-date histograms for {rw.name} "
                             "(rerun `upp-grid weights -c CFG`)")
        out[rw.name] = h
    return out


@dataclass(frozen=True)
class _SplitJob:
    """The work left for one split."""

    plan: MergePlan
    paths: SplitPaths
    attrs: Mapping[str, Any]
    todo: tuple[int, ...]  # output files to write
    route: tuple[RouteTask, ...]
    write: tuple[WriteTask, ...]

    @property
    def reused(self) -> int:
        return len(self.plan.file_sizes) - len(self.todo)


def merge_work(config: Config, splits: Sequence[str]) -> int:
    """Units of progress :func:`merge_stage` reports: the jets of ``splits``, each counted once
    (half when it is read and shuffled, half when it is written)."""
    cat = read_catalogue(config)
    return sum(cat.total(s) for s in splits)


def merge_stage(config: Config, splits: Sequence[str] = SPLITS,
                progress: Progress | None = None) -> MergeSummary:
    """Merge ``splits``; see the module docstring.

    Raises
    ------
    BookkeepingError
        Jets written per flavour differ from the catalogue's: nothing is published.
    InputError
        Missing catalogue, histograms or split outputs.
    """
    t0 = time.perf_counter()
    advance = progress or (lambda n: None)
    with _exclusive(config.global_.out_dir):
        remove_stale_temps(config.global_.out_dir)
        try:
            out = _merge(config, splits, advance)
        except BaseException:  # scratch is raw rows, rebuilt by a rerun: never left behind
            for split in splits:
                shutil.rmtree(SplitPaths(config.global_.out_dir, split).scratch,
                              ignore_errors=True)
            raise
    order = {s: i for i, s in enumerate(splits)}
    return MergeSummary(tuple(sorted(out, key=lambda r: order[r.split])),
                        time.perf_counter() - t0)


@contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """Hold ``<out_dir>/.merge.lock``: two merges into one directory would corrupt it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".merge.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UppGridError(f"{out_dir}: another merge is writing here") from None
        yield


def _merge(config: Config, splits: Sequence[str], advance: Progress) -> list[SplitResult]:
    cat = read_catalogue(config)
    hists = load_reweights(config, cat)
    digest = content_hash(hists)
    jobs, done = [], []
    for split in splits:
        job = _prepare(config, cat, split, hists, digest)
        if job is None:
            done.append(_skipped(config, cat, split))
            advance(cat.total(split))
        else:
            jobs.append(job)
            reused = job.plan.num_jets - sum(job.plan.file_sizes[k] for k in job.todo)
            if reused:
                advance(reused)
    nproc = config.reweighting.merge_num_proc if config.reweighting else 1
    routed = _run(_route_with_hists, [t for j in jobs for t in j.route], nproc,
                  lambda r: advance(r.num_jets / 2), hists)
    _warn_overflow(config, set().union(*(r.overflow for r in routed)))
    results = _run(write_file, [t for j in jobs for t in j.write], nproc,
                   lambda r: advance(r.num_jets / 2))
    return done + _finish(config, cat, jobs, results)


def _warn_overflow(config: Config, fields: set[str]) -> None:
    for name in sorted(fields):
        log.warning("%s has values beyond the float16 range: stored as inf (precision: half; "
                    "add it to global.full_precision_vars to keep it)", name)


def _prepare(config: Config, cat: Catalogue, split: str, hists: Mapping[str, ReweightHists],
             digest: str) -> _SplitJob | None:
    plan = make_plan(config, split, cat, hists, digest)
    paths = SplitPaths(config.global_.out_dir, split)
    if already_merged(paths, plan):
        log.info("merge %s: already complete (%s)", split, paths.record)
        return None
    todo = prepare_staging(paths, plan)
    attrs = {**file_attrs(config, cat, split, bool(hists)), "histograms_hash": digest}
    keep = np.isin(plan.bucket_file, todo)
    route = route_tasks(plan, keep, paths.scratch)
    write = write_tasks(plan, todo, route, paths, attrs, config)
    job = _SplitJob(plan, paths, attrs, tuple(todo), tuple(route), tuple(write))
    log.info("merge %s: %d jets from %d files -> %d output files (%d to write)", split,
             plan.num_jets, len(plan.sources), len(plan.file_sizes), len(todo))
    return job


def _skipped(config: Config, cat: Catalogue, split: str) -> SplitResult:
    paths = SplitPaths(config.global_.out_dir, split)
    files = merged_files(config, split)
    out = {f: sum(o.jet_counts.get(f, 0) for o in files) for f in config.flavour_names}
    return SplitResult(split, dict(cat.num_jets[split]), out, files, paths.vds, len(files))


def _finish(config: Config, cat: Catalogue, jobs: Sequence[_SplitJob],
            results: Sequence[FileResult]) -> list[SplitResult]:
    written: dict[str, list[Mapping[str, int]]] = {}
    for job in jobs:
        counts = list(job.plan.file_counts)
        for r in results:
            if r.split == job.plan.split:
                counts[r.index] = r.jet_counts
        written[job.plan.split] = counts
    try:
        totals = {j.plan.split: check_bookkeeping(j.plan, cat, written[j.plan.split])
                  for j in jobs}
        _check_nonfinite(config, results)
    except UppGridError:
        for j in jobs:
            shutil.rmtree(j.paths.staging, ignore_errors=True)
        raise
    out = []
    for j in jobs:
        files = publish(j.paths, j.plan, j.attrs, config.jets_name, config.flavour_names)
        out.append(SplitResult(j.plan.split, dict(cat.num_jets[j.plan.split]),
                               totals[j.plan.split], files, j.paths.vds, j.reused))
        log.info("merge %s: wrote %d jets in %d files and %s", j.plan.split,
                 sum(totals[j.plan.split].values()), len(files), j.paths.vds)
    if jobs:
        record_out_dir(config)
    return out


# The merge's histograms in this process, for pass 1: set by _run before the workers fork
# (they inherit it, nothing is pickled) and reset after.
_HISTS: dict[str, Mapping[str, ReweightHists]] = {}


def _set_hists(hists: Mapping[str, ReweightHists]) -> None:
    _HISTS["merge"] = hists


def _route_with_hists(task: RouteTask) -> RouteResult:
    return route(task, _HISTS["merge"])


def _check_nonfinite(config: Config, results: Sequence[FileResult]) -> None:
    """One warning line per training variable with NaN/inf in the files written, or with
    ``global.nan_policy: error`` an error naming it and a file (nothing is published)."""
    totals: dict[str, int] = {}
    where: dict[str, Path] = {}
    for r in sorted(results, key=lambda r: (r.split, r.index)):
        for key, n in r.nonfinite.items():
            totals[key] = totals.get(key, 0) + n
            where.setdefault(key, r.path)
    for key, n in sorted(totals.items()):
        if config.global_.nan_policy == "error":
            raise InputError(f"{key}: {n} NaN/inf values in the merged files (e.g. "
                             f"{where[key].name}; global.nan_policy: error): nothing published")
        log.warning("%s: %d NaN/inf values in the merged files, passed through to training "
                    "(the norm leaves them out; global.nan_policy: error refuses them)", key, n)


def _run(fn: Callable[[T], R], tasks: Sequence[T], nproc: int,
         on_done: Callable[[R], None], hists: Mapping[str, ReweightHists] | None = None
         ) -> list[R]:
    """Run ``fn`` over ``tasks`` in ``nproc`` processes (inline for one); results unordered.
    ``hists``: the histograms ``fn`` reads (see :func:`_route_with_hists`)."""
    results: list[R] = []
    _set_hists(hists or {})
    try:
        if nproc <= 1 or len(tasks) <= 1:
            for t in tasks:
                results.append(fn(t))
                on_done(results[-1])
            return results
        return _run_pool(fn, tasks, nproc, on_done, results)
    finally:
        _HISTS.clear()


def _run_pool(fn: Callable[[T], R], tasks: Sequence[T], nproc: int,
              on_done: Callable[[R], None], results: list[R]) -> list[R]:
    ordered = sorted(tasks, key=_task_size, reverse=True)
    with mp.get_context("fork").Pool(min(nproc, len(tasks))) as pool:
        for r in pool.imap_unordered(fn, ordered):
            results.append(r)
            on_done(r)
    return results


def _task_size(task: RouteTask | WriteTask) -> int:
    """Bytes a task writes (to schedule the largest first)."""
    if isinstance(task, RouteTask):
        return task.num_jets * sum(g.in_bytes for g in task.groups)
    return task.size * sum(g.row_bytes for g in task.groups)


def parse_splits(value: str) -> tuple[str, ...]:
    """``train``, ``val``, ``test`` or ``all``."""
    if value == "all":
        return SPLITS
    if value not in SPLITS:
        raise UppGridError(f"unknown split '{value}' (one of {', '.join(SPLITS)}, all)")
    return (value,)
