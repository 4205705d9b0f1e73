"""``upp-grid merge``: shuffle a split's components into final files with weights attached.

Reads every catalogue file of a split (all flavours), attaches one float32 field per reweight
(UPP's names) computed from the full-precision values, reduces precision, and writes
``<out_dir>/<split>/pp_output_<split>-full_<i>.h5`` (UPP's names) of exactly
``num_jets_per_output_file`` jets (the last file holds the remainder) plus
``<out_dir>/pp_output_<split>_vds.h5``, a virtual file with absolute source paths that is
verified (:mod:`upp_grid.stages.verify`) as soon as it is written.

The work is in four modules, one per responsibility:

* :mod:`upp_grid.stages.merge_plan`: the plan, a uniformly random permutation of the split's
  jets fixed by the seed before anything is read (the shuffle is described there);
* :mod:`upp_grid.stages.merge_shuffle`: pass 1, every input block read once, weighted, cast
  and dealt out to scratch files, in ``workers`` processes;
* :mod:`upp_grid.stages.merge_write`: pass 2, each bucket gathered, shuffled and compressed by
  ``workers`` threads while the files are written in order;
* :mod:`upp_grid.stages.merge_publish`: resume of an interrupted merge, and publication only
  when jets out equal jets in, per split and flavour.

``workers`` defaults to every core this process may use, whatever the number of output files
(``reweighting.merge_num_proc``, UPP's process count, is not used: see the README). The files
are the same bytes for any number of workers.

Output format
-------------
Train and val keep the configured variables (UPP's choice) plus ``flavour_label`` (jets) or
``valid`` (other groups); test keeps every field of the split outputs. Float fields are float16
with ``precision: half`` except ``full_precision_vars`` (float32); weights are float32. gzip
(the default) is written without byte-shuffle, its chunks compressed by ISA-L
(:mod:`upp_grid.h5chunks`); any HDF5 reader inflates them. The train files also cache their
unweighted norm statistics (``norm_stats``, see :mod:`upp_grid.stages.normalise`).
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from upp_grid import __version__
from upp_grid.config import SPLITS, Config
from upp_grid.cores import usable_cores
from upp_grid.errors import InputError, UppGridError
from upp_grid.fsutil import remove_stale_temps
from upp_grid.ownership import record_out_dir
from upp_grid.stages.catalogue import Catalogue, read_catalogue
from upp_grid.stages.histograms import ReweightHists, content_hash, read_histograms
from upp_grid.stages.merge_plan import MergePlan, SplitPaths, make_plan
from upp_grid.stages.merge_publish import (
    OutputFile,
    already_merged,
    check_bookkeeping,
    merged_files,
    prepare_staging,
    publish,
)
from upp_grid.stages.merge_scratch import ScratchSpace
from upp_grid.stages.merge_shuffle import RoutePool, RouteTask, route_tasks
from upp_grid.stages.merge_write import FileResult, WriteTask, write_files, write_tasks
from upp_grid.stages.weights import histograms_path

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


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
    scratch: Path  # pass 1 writes here, pass 2 reads (merge_scratch)
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
                progress: Progress | None = None, workers: int | None = None) -> MergeSummary:
    """Merge ``splits`` with ``workers`` processes and threads (default: :func:`usable_cores`);
    see the module docstring.

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
        space = ScratchSpace()
        try:
            out = _merge(config, splits, advance, workers or usable_cores(), space)
        finally:  # scratch is raw rows, rebuilt by a rerun: never left behind
            space.release_all()
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


def _merge(config: Config, splits: Sequence[str], advance: Progress, workers: int,
           space: ScratchSpace) -> list[SplitResult]:
    cat = read_catalogue(config)
    hists = load_reweights(config, cat)
    digest = content_hash(hists)
    jobs, done = [], []
    for split in splits:
        job = _prepare(config, cat, split, hists, digest, space)
        if job is None:
            done.append(_skipped(config, cat, split))
            advance(cat.total(split))
        else:
            jobs.append(job)
            reused = job.plan.num_jets - sum(job.plan.file_sizes[k] for k in job.todo)
            if reused:
                advance(reused)
    results, overflow = _shuffle_and_write(jobs, hists, workers, advance, space)
    _warn_overflow(config, overflow)
    return done + _finish(config, cat, jobs, results)


def _shuffle_and_write(jobs: Sequence[_SplitJob], hists: Mapping[str, ReweightHists],
                       workers: int, advance: Progress, space: ScratchSpace
                       ) -> tuple[list[FileResult], set[str]]:
    """Pass 1 of each split in the worker processes, and pass 2 of each split here as soon
    as its pass 1 is done, while the workers go on with the next split's pass 1."""
    lock = threading.Lock()

    def report(n: float) -> None:  # from this thread and from the pool's result thread
        with lock:
            advance(n)

    results: list[FileResult] = []
    overflow: set[str] = set()
    with RoutePool(hists, workers) as pool:
        waits = [pool.submit(jobs[0].route, lambda r: report(r.num_jets / 2))] if jobs else []
        for i, job in enumerate(jobs):
            overflow.update(*(r.overflow for r in waits[i]()))
            if i + 1 < len(jobs):
                waits.append(pool.submit(jobs[i + 1].route, lambda r: report(r.num_jets / 2)))
            results += write_files(job.write, workers, lambda n: report(n / 2))
            space.release(job.scratch)  # memory, perhaps: freed as soon as it has served
    return results, overflow


def _warn_overflow(config: Config, fields: set[str]) -> None:
    for name in sorted(fields):
        log.warning("%s has values beyond the float16 range: stored as inf (precision: half; "
                    "add it to global.full_precision_vars to keep it)", name)


def _prepare(config: Config, cat: Catalogue, split: str, hists: Mapping[str, ReweightHists],
             digest: str, space: ScratchSpace) -> _SplitJob | None:
    plan = make_plan(config, split, cat, hists, digest)
    paths = SplitPaths(config.global_.out_dir, split)
    if already_merged(paths, plan):
        log.info("merge %s: already complete (%s)", split, paths.record)
        return None
    todo = prepare_staging(paths, plan)
    attrs = {**file_attrs(config, cat, split, bool(hists)), "histograms_hash": digest}
    keep = np.isin(plan.bucket_file, todo)
    row_bytes = sum(g.row_bytes for g in plan.groups)
    scratch = space.place(paths, int((plan.counts * keep).sum()) * row_bytes)
    route = route_tasks(plan, keep, scratch)
    write = write_tasks(plan, todo, route, paths, attrs, config)
    job = _SplitJob(plan, paths, attrs, tuple(todo), scratch, tuple(route), tuple(write))
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


def parse_splits(value: str) -> tuple[str, ...]:
    """``train``, ``val``, ``test`` or ``all``."""
    if value == "all":
        return SPLITS
    if value not in SPLITS:
        raise UppGridError(f"unknown split '{value}' (one of {', '.join(SPLITS)}, all)")
    return (value,)
