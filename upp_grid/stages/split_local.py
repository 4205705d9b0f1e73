"""``upp-grid split``: split every input file of the config locally, resumably, in processes.

Each input file is a *unit* with its own directory (:func:`unit_dir`)
``<components_dir>/<sample>/<container>/<file name without .h5>/``, the shape a grid download
has too. A unit is written into a hidden staging directory and renamed into place once
complete, with its completion record (``split-record.json``, holding the counts) inside. A
rerun skips complete units whose record still matches the input, the config and the files on
disk, and redoes everything else (``--overwrite`` redoes all); stale staging directories from a
killed run are removed first. Units run in a pool of forked processes (default: min(units,
cores)); one unit's failure is reported as one line and leaves the others complete.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.queues
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
from upp_grid.h5io import short_error
from upp_grid.inputs import Container, container_files, find_containers
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
    """The units to split: all inputs, one container's, or given files.

    ``container`` is a pattern from the config (as written there) or a sample name. Files given
    with ``container`` are that container's (wherever they are, as on a grid worker node);
    files given without it must be inputs of the config, and keep their samples.

    Raises
    ------
    UppGridError
        Unknown ``container``, a pattern that matches no file (named), or a given file that
        is missing or is not an input of the config.
    """
    if files is not None:
        for f in files:
            if not Path(f).is_file():
                raise InputError(f"{f}: input file not found (--files)")
    if container is not None:
        containers = _selected_containers(config, container, need_files=files is None)
    else:
        containers = find_containers(config)
    if files is not None:
        by_file = _assign_files(config, containers, files, container is not None)
    else:
        by_file = {}
        for c in containers:
            for path in c.files:
                _add(by_file, path, c.sample)
    return [Unit(path, tuple(samples), unit_dir(config, samples[0], path),
                 _num_jets(path, config.jets_name))
            for path, samples in sorted(by_file.items())]


def unit_dir(config: Config, sample: str, path: Path) -> Path:
    """Where the outputs of input ``path`` go: ``<components_dir>/<sample>/<container>/<file>``.

    ``<container>/<file>`` is the file's path under ``ntuple_dir`` without ``.h5`` (just the
    file name for a file outside it). A grid download uses the same shape
    (``<sample>/<outDS>/<job>``), so the catalogue scans both alike.
    """
    try:
        rel = Path(path).absolute().relative_to(config.global_.ntuple_dir.absolute())
    except ValueError:
        rel = Path(Path(path).name)
    return config.global_.components_dir / sample / rel.with_suffix("")


def _add(by_file: dict[Path, list[str]], path: Path, sample: str) -> None:
    samples = by_file.setdefault(Path(path), [])
    if sample not in samples:
        samples.append(sample)


def _selected_containers(config: Config, container: str, need_files: bool) -> list[Container]:
    known = [(s.name, p) for s in config.samples for p in s.patterns]
    chosen = [(name, p) for name, p in known if container in (name, p)]
    if not chosen:
        raise UppGridError(f"unknown --container '{container}'; the config has: "
                           + ", ".join(sorted({p for _, p in known})))
    out = []
    for name, pattern in chosen:
        found = container_files(config.global_.ntuple_dir, pattern) if need_files else ()
        if need_files and not found:
            raise InputError(f"{config.path}: sample '{name}': pattern '{pattern}' matches no "
                             f"file under {config.global_.ntuple_dir}")
        out.append(Container(name, pattern, found))
    return out


def _assign_files(config: Config, containers: list[Container], files: Sequence[Path],
                  given_container: bool) -> dict[Path, list[str]]:
    by_file: dict[Path, list[str]] = {}
    if given_container:
        for f in files:
            for c in containers:
                _add(by_file, Path(f), c.sample)
        return by_file
    owners: dict[Path, list[str]] = {}
    for c in containers:
        for path in c.files:
            owners.setdefault(Path(path).resolve(), []).append(c.sample)
    for f in files:
        samples = owners.get(Path(f).resolve())
        if not samples:
            raise InputError(f"{f}: not an input of any sample in {config.path} "
                             "(use --container to split a file from elsewhere)")
        for sample in samples:
            _add(by_file, Path(f), sample)
    return by_file


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


_worker_queue: mp.queues.Queue | None = None  # set in each pool worker by _init_worker


def _init_worker(q: mp.queues.Queue) -> None:
    global _worker_queue  # one per worker process, set once at its start
    _worker_queue = q


def _report_to_parent(n: int) -> None:
    if _worker_queue is not None:
        _worker_queue.put(n)


def _run_unit_in_worker(config: Config, unit: Unit) -> SplitRecord:
    return _run_unit(config, unit, _report_to_parent)


def _run_unit(config: Config, unit: Unit, progress: Callable[[int], None] | None) -> SplitRecord:
    staging = unit.out_dir.with_name(f".{unit.out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record = split_file(config, unit.path, staging, unit.samples, progress)
        shutil.rmtree(unit.out_dir, ignore_errors=True)
        staging.replace(unit.out_dir)
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


def pending_units(config: Config, container: str | None = None,
                  files: Sequence[Path] | None = None, overwrite: bool = False
                  ) -> tuple[list[Unit], list[SplitRecord]]:
    """``(units to split, records of complete units)``: what a run would do and skip."""
    done: list[SplitRecord] = []
    todo: list[Unit] = []
    for unit in plan_units(config, container, files):
        rec = None if overwrite else is_complete(unit, config)
        if rec is not None:
            done.append(rec)
        else:
            todo.append(unit)
    return todo, done


def default_workers(num_units: int) -> int:
    """min(units, usable cores), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(num_units, cores))


def run_split(config: Config, container: str | None = None,
              files: Sequence[Path] | None = None, workers: int | None = None,
              overwrite: bool = False, progress: Callable[[int], None] | None = None,
              total: Callable[[int], None] | None = None) -> SplitSummary:
    """Split all (or some) inputs; failures of one input do not affect the others.

    Complete units (record matching input and config, every output present with its count)
    are skipped unless ``overwrite``. ``total`` is called once with the number of jets to
    process (for a progress bar); ``progress`` with the jets done as they are done.
    """
    _clean_stale(config.global_.components_dir)
    todo, done = pending_units(config, container, files, overwrite)
    if done:
        log.info("%d of %d inputs already split (use --overwrite to redo)", len(done),
                 len(done) + len(todo))
    if total:
        total(sum(u.num_jets for u in todo))
    n_workers = min(workers, len(todo)) if workers else default_workers(len(todo))
    records, failures = _execute(config, todo, max(n_workers, 1), progress)
    return SplitSummary(tuple(done + records), len(done), tuple(failures))


def _execute(config: Config, todo: list[Unit], n_workers: int,
             progress: Callable[[int], None] | None) -> tuple[list[SplitRecord], list[str]]:
    records: list[SplitRecord] = []
    failures: list[str] = []
    if n_workers <= 1 or len(todo) <= 1:
        for unit in todo:
            try:
                records.append(_run_unit(config, unit, progress))
            except Exception as err:  # one input's failure spares the others
                failures.append(_failure(unit, err))
        return records, failures
    ctx = mp.get_context("fork")
    progress_q = ctx.Queue()
    with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(progress_q,)) as pool:
        futures: dict[Future, Unit] = {pool.submit(_run_unit_in_worker, config, u): u
                                       for u in todo}
        pending = set(futures)
        while pending:
            _drain(progress_q, progress, timeout=0.02)
            for fut in [f for f in pending if f.done()]:
                pending.discard(fut)
                err = fut.exception()
                if err is None:
                    records.append(fut.result())
                else:
                    failures.append(_failure(futures[fut], err))
    _drain(progress_q, progress, timeout=0)
    progress_q.close()
    return records, failures


def _drain(q: mp.queues.Queue, progress: Callable[[int], None] | None, timeout: float) -> None:
    """Forward every progress count waiting in ``q`` (waiting up to ``timeout`` for one)."""
    try:
        n = q.get(timeout=timeout) if timeout else q.get_nowait()
        while True:
            if progress:
                progress(n)
            n = q.get_nowait()
    except queue.Empty:
        return


def _failure(unit: Unit, err: BaseException) -> str:
    """One line for a failed unit: the error's own line, or its type and first line."""
    if isinstance(err, UppGridError):
        return str(err)
    return f"{unit.path}: {type(err).__name__}: {short_error(err)}"


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
        If any input failed (several failures: each is logged as one line first); the
        catalogue is not rewritten then.
    """
    capped = sorted({c.name for c in config.components
                     if any(c.cap(s) >= 0 for s in ("train", "val", "test"))})
    if capped:
        log.warning("num_jets caps are not applied when reweighting (as in UPP): all jets of "
                    "%s are kept", ", ".join(capped))
    summary = run_split(config, container, files, workers, overwrite, progress, total)
    if summary.failures:
        n = len(summary.failures)
        if n == 1:
            raise UppGridError(summary.failures[0])
        for failure in summary.failures:
            log.error("upp-grid: error: %s", failure)
        raise UppGridError(f"{n} of {n + len(summary.records)} inputs failed (listed above); "
                           "the others are complete and will be skipped on a rerun")
    full_run = container is None and files is None
    cat = write_catalogue(config, expected_counts(summary.records) if full_run else None)
    return summary, cat
