"""``upp-grid split``: split every input file of the config locally, resumably, in processes.

Each input file is a *unit* with its own directory
``<components_dir>/<sample>/<path of the file under ntuple_dir, without .h5>/``. A unit is
written into a hidden staging directory and renamed into place once complete, with its
completion record (``split-record.json``) inside. A rerun skips complete units whose record
still matches the input and the config, and redoes everything else; stale staging directories
from a killed run are removed first.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py

from upp_grid.config import Config
from upp_grid.errors import InputError, UppGridError
from upp_grid.inputs import Container, find_containers
from upp_grid.stages.catalogue import Catalogue, write_catalogue
from upp_grid.stages.split import (
    SplitRecord,
    declared_outputs,
    read_record,
    split_file,
    split_hash,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    """One input file and where its outputs go."""

    path: Path
    samples: tuple[str, ...]
    out_dir: Path
    num_jets: int


@dataclass(frozen=True)
class SplitSummary:
    """Outcome of a split run: one record per input (skipped ones included) and failures."""

    records: tuple[SplitRecord, ...]
    skipped: int
    failures: tuple[str, ...]


def plan_units(config: Config, container: str | None = None,
               files: Sequence[Path] | None = None) -> list[Unit]:
    """The units to split: all inputs, one container's, or given files of one container.

    ``container`` is a pattern from the config (as written there) or a sample name.
    """
    containers = find_containers(config)
    if container is not None:
        known = {c.pattern for c in containers} | {c.sample for c in containers}
        if container not in known:
            raise UppGridError(f"unknown --container '{container}'; the config has: "
                               + ", ".join(sorted({c.pattern for c in containers})))
        containers = [c for c in containers if container in (c.pattern, c.sample)]
    by_file: dict[Path, list[str]] = {}
    for c in containers:
        for path in _files_for(c, files):
            by_file.setdefault(path, [])
            if c.sample not in by_file[path]:
                by_file[path].append(c.sample)
    root = config.global_.components_dir
    ntuples = config.global_.ntuple_dir.absolute()
    units = []
    for path, samples in sorted(by_file.items()):
        try:
            rel = path.absolute().relative_to(ntuples)
        except ValueError:
            rel = Path(path.name)
        out_dir = root / samples[0] / rel.with_suffix("")
        units.append(Unit(path, tuple(samples), out_dir, _num_jets(path, config.jets_name)))
    return units


def _files_for(container: Container, files: Sequence[Path] | None) -> list[Path]:
    if files is None:
        return list(container.files)
    for f in files:
        if not Path(f).is_file():
            raise InputError(f"{f}: input file not found (--files)")
    return [Path(f) for f in files]


def _num_jets(path: Path, jets_name: str) -> int:
    try:
        with h5py.File(path, "r") as f:
            return int(f[jets_name].shape[0]) if jets_name in f else 0
    except OSError:
        return 0  # reported properly by the worker


def is_complete(unit: Unit, config: Config) -> SplitRecord | None:
    """The unit's record if its outputs are complete and still match input and config."""
    rec = read_record(unit.out_dir)
    if rec is None:
        return None
    stat = unit.path.stat()
    if (rec.split_hash != split_hash(config) or rec.input_size != stat.st_size
            or rec.input_mtime_ns != stat.st_mtime_ns):
        return None
    expected = {o.name: o.filename for o in declared_outputs(config, unit.samples)}
    if set(rec.outputs) != set(expected):
        return None
    for name, filename in expected.items():
        try:
            with h5py.File(unit.out_dir / filename, "r") as f:
                if f[config.jets_name].shape[0] != rec.outputs[name]:
                    return None
        except (OSError, KeyError):
            return None
    return rec


class _QueueProgress:
    """Picklable progress callback that forwards counts from a worker to the parent."""

    def __init__(self, q: queue.Queue) -> None:
        self.q = q

    def __call__(self, n: int) -> None:
        self.q.put(n)


def _run_unit(config: Config, unit: Unit, progress: Callable[[int], None] | None) -> SplitRecord:
    staging = unit.out_dir.with_name(f".{unit.out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record = split_file(config, unit.path, staging, unit.samples, progress)
        shutil.rmtree(unit.out_dir, ignore_errors=True)
        os.replace(staging, unit.out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def _clean_stale(root: Path) -> None:
    if not root.is_dir():
        return
    for stale in root.rglob(".*.partial-*"):
        if stale.is_dir():
            log.info("removing stale partial output %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def run_split(config: Config, container: str | None = None,
              files: Sequence[Path] | None = None, workers: int | None = None,
              overwrite: bool = False, progress: Callable[[int], None] | None = None,
              total: Callable[[int], None] | None = None) -> SplitSummary:
    """Split all (or some) inputs; failures of one input do not affect the others.

    ``total`` is called once with the number of jets to process (for a progress bar).
    """
    units = plan_units(config, container, files)
    _clean_stale(config.global_.components_dir)
    done: list[SplitRecord] = []
    todo: list[Unit] = []
    for unit in units:
        rec = None if overwrite else is_complete(unit, config)
        if rec is not None:
            done.append(rec)
        else:
            todo.append(unit)
    skipped = len(done)
    if skipped:
        log.info("%d of %d inputs already split (use --overwrite to redo)", skipped, len(units))
    if total:
        total(sum(u.num_jets for u in todo))
    n_workers = max(1, min(len(todo), workers or os.cpu_count() or 1))
    records, failures = _execute(config, todo, n_workers, progress)
    return SplitSummary(tuple(done + records), skipped, tuple(failures))


def _execute(config: Config, todo: list[Unit], n_workers: int,
             progress: Callable[[int], None] | None) -> tuple[list[SplitRecord], list[str]]:
    records: list[SplitRecord] = []
    failures: list[str] = []
    if n_workers <= 1 or len(todo) <= 1:
        for unit in todo:
            try:
                records.append(_run_unit(config, unit, progress))
            except UppGridError as err:
                failures.append(str(err))
        return records, failures
    ctx = mp.get_context("fork")
    with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=n_workers,
                                                       mp_context=ctx) as pool:
        progress_q = manager.Queue()
        report = _QueueProgress(progress_q)
        futures: dict[Future, Unit] = {pool.submit(_run_unit, config, u, report): u
                                       for u in todo}
        pending = set(futures)
        while pending:
            try:
                n = progress_q.get(timeout=0.2)
                if progress:
                    progress(n)
                continue
            except queue.Empty:
                pass
            for fut in [f for f in pending if f.done()]:
                pending.discard(fut)
                err = fut.exception()
                if err is None:
                    records.append(fut.result())
                elif isinstance(err, UppGridError):
                    failures.append(str(err))
                else:
                    failures.append(f"{futures[fut].path}: {type(err).__name__}: {err}")
        while progress and not progress_q.empty():
            progress(progress_q.get())
    return records, failures


def expected_counts(records: Sequence[SplitRecord]) -> dict[str, dict[str, int]]:
    """``{split: {component: jets}}`` summed over split records."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        for name, n in rec.outputs.items():
            split, comp = name.split("_", 1)
            out.setdefault(split, {}).setdefault(comp, 0)
            out[split][comp] += n
    return out


def split_stage(config: Config, container: str | None = None,
                files: Sequence[Path] | None = None, workers: int | None = None,
                overwrite: bool = False, progress: Callable[[int], None] | None = None,
                total: Callable[[int], None] | None = None) -> tuple[SplitSummary, Catalogue]:
    """Split, then write the catalogue checked against the split records.

    Raises
    ------
    UppGridError
        If any input failed (every failure is logged as one line first); the catalogue is not
        rewritten then.
    """
    capped = sorted({c.name for c in config.components
                     if any(c.cap(s) >= 0 for s in ("train", "val", "test"))})
    if capped:
        log.warning("num_jets caps are not applied when reweighting (as in UPP): all jets of "
                    "%s are kept", ", ".join(capped))
    summary = run_split(config, container, files, workers, overwrite, progress, total)
    if summary.failures:
        for failure in summary.failures:
            log.error("%s", failure)
        n = len(summary.failures)
        if n == 1:
            raise UppGridError(summary.failures[0])
        raise UppGridError(f"{n} of {n + len(summary.records)} inputs failed (listed above); "
                           "the others are complete and will be skipped on a rerun")
    full_run = container is None and files is None
    cat = write_catalogue(config, expected_counts(summary.records) if full_run else None)
    return summary, cat
