"""``upp-grid split``: split every input file of the config locally, resumably, in processes.

Each input file is split as one *unit* with its own directory (:func:`unit_dir`)
``<components_dir>/<sample>/<container>/<file name without .h5>/``, the shape a grid download
has too. When there are fewer than 4 files per worker and they do not share out evenly, the
remainder files are cut into row ranges (:func:`parts_per_file`) so that no core idles through
a last round: 3 files on 2 cores make 2 whole-file units and 2 half-file units, 1.5 files per
core. A part's directory is the file's with ``.rows-<start>-<stop>``
appended; it holds the same fixed output names, and the catalogue reads it like any other.
A unit is written into a hidden staging directory and renamed into place once complete, with its
completion record (``split-record.json``, holding the counts and the row range) inside.

A rerun skips the units whose record still matches the input, the config and the files on disk,
and redoes everything else (``--overwrite`` redoes all); complete outputs of an earlier run cut
differently (another ``--workers``) are kept when they cover the file exactly, and any other
directory of the same input is removed, so no jet is ever catalogued twice. Stale staging
directories from a killed run are removed first. Units run in a pool of forked processes
(default: min(units, cores)), largest first; one unit's failure is reported as one line and
leaves the others complete. Per input, the parts must tile the file and their jets read must
add up to its jets: checked before the catalogue is written.
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
from upp_grid.cores import usable_cores
from upp_grid.errors import BookkeepingError, InputError, UppGridError
from upp_grid.h5io import short_error
from upp_grid.input_types import file_types
from upp_grid.inputs import Container, container_files, find_containers
from upp_grid.stages.catalogue import Catalogue, write_catalogue
from upp_grid.stages.split import (
    BufferPool,
    SplitRecord,
    declared_outputs,
    input_rows,
    read_record,
    reweight_fields,
    row_parts,
    split_file,
    split_hash,
)

log = logging.getLogger(__name__)


MIN_PART_JETS = 100_000  # a file is cut into parts only when each part has at least this
FILES_PER_WORKER = 4  # from this many files per worker on, whole files balance well enough


@dataclass(frozen=True)
class Unit:
    """One input file, or rows ``[start, stop)`` of it, and where its outputs go."""

    path: Path
    samples: tuple[str, ...]
    out_dir: Path
    num_jets: int  # jets of this unit
    rows: tuple[int, int] | None = None  # None: the whole file


@dataclass(frozen=True)
class SplitSummary:
    """Outcome of a split run: one record per unit (skipped ones included) and failures."""

    records: tuple[SplitRecord, ...]
    skipped: int
    failures: tuple[str, ...]

    def by_input(self) -> list[SplitRecord]:
        """One record per input file, its parts summed (sorted by input)."""
        out: dict[str, SplitRecord] = {}
        for rec in sorted(self.records, key=lambda r: (r.input, r.rows or (0, 0))):
            total = out.setdefault(rec.input, SplitRecord(rec.input, 0))
            total.jets_read += rec.jets_read
            total.no_component += rec.no_component
            total.nonfinite_dropped += rec.nonfinite_dropped
            for key, n in rec.nonfinite.items():
                total.nonfinite[key] = total.nonfinite.get(key, 0) + n
            for name, n in rec.outputs.items():
                total.outputs[name] = total.outputs.get(name, 0) + n
        return list(out.values())


def parts_per_file(jets: Sequence[int], workers: int, min_part_jets: int = MIN_PART_JETS
                   ) -> list[int]:
    """Row ranges per input file (``jets`` per file) so that ``workers`` finish together.

    With at least :data:`FILES_PER_WORKER` files per worker, or a multiple of ``workers``
    files, every file stays whole. Otherwise the ``files % workers`` smallest files are cut
    into ``workers`` parts each (when each part keeps at least ``min_part_jets``), so the
    largest-first schedule gives every worker the same share: 3 files on 2 workers → 2 whole
    files and 2 halves, 1.5 files per worker; 1 file → 2 halves.
    """
    n = len(jets)
    parts = [1] * n
    if workers <= 1 or n >= FILES_PER_WORKER * workers or n % workers == 0:
        return parts
    for i in sorted(range(n), key=lambda i: jets[i])[:n % workers]:
        if jets[i] >= workers * min_part_jets:
            parts[i] = workers
    return parts


def plan_units(config: Config, container: str | None = None,
               files: Sequence[Path] | None = None, workers: int | None = None,
               min_part_jets: int = MIN_PART_JETS) -> list[Unit]:
    """The units to split: all inputs, one container's, or given files, some files cut into
    row ranges (:func:`parts_per_file`) so that ``workers`` (default: the usable cores)
    finish together.

    ``container`` is a pattern from the config (as written there) or a sample name. ``files``
    are file names as they appear in the containers (``user.mock.601589._000001.output.h5``),
    or paths; each must be an input of ``container`` (if given) or of the config, and keeps
    its samples.

    Raises
    ------
    UppGridError
        Unknown ``container``, a pattern that matches no file (named), or a given file that
        is missing or is not an input of the config.
    """
    if container is not None:
        containers = _selected_containers(config, container, need_files=True)
    else:
        containers = find_containers(config)
    if files is not None:
        by_file = _assign_files(config, containers, files, container)
    else:
        by_file = {}
        for c in containers:
            for path in c.files:
                _add(by_file, path, c.sample)
    ordered = sorted(by_file.items())
    sizes = [input_rows(config, path) for path, _ in ordered]
    parts = parts_per_file([num for num, _ in sizes], workers or default_workers(len(ordered)),
                           min_part_jets)
    units = []
    for (path, samples), (num, align), p in zip(ordered, sizes, parts, strict=True):
        whole = unit_dir(config, samples[0], path)
        ranges = row_parts(num, align, p)
        if len(ranges) <= 1:
            units.append(Unit(path, tuple(samples), whole, num))
        else:
            units += [Unit(path, tuple(samples), part_dir(whole, r), r[1] - r[0], r)
                      for r in ranges]
    return units


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


def part_dir(whole: Path, rows: tuple[int, int]) -> Path:
    """The directory of rows ``[start, stop)`` of the input whose whole-file directory is
    ``whole``: ``<whole>.rows-<start>-<stop>``."""
    return whole.with_name(f"{whole.name}.rows-{rows[0]}-{rows[1]}")


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


def _assign_files(config: Config, containers: list[Container], files: Sequence[str | Path],
                  container: str | None) -> dict[Path, list[str]]:
    """Each given file (a name in a container, or a path) with the samples it belongs to."""
    owners: dict[Path, list[str]] = {}
    by_name: dict[str, list[Path]] = {}
    for c in containers:
        for path in c.files:
            resolved = Path(path).resolve()
            owners.setdefault(resolved, []).append(c.sample)
            by_name.setdefault(Path(path).name, []).append(resolved)
    where = (f"container {container}" if container is not None
             else f"any container of {config.path}")
    by_file: dict[Path, list[str]] = {}
    for f in files:
        candidates = [Path(f).resolve()] if Path(f).is_file() else by_name.get(str(f), [])
        found = [c for c in dict.fromkeys(candidates) if c in owners]
        if not found and Path(f).is_file():
            raise InputError(f"{f}: not a file of {where}: its jets would go to the wrong "
                             "sample")
        if not found:
            raise InputError(f"{f}: no file of that name in {where} (--files takes the names "
                             "of the files in the container's directory, or paths)")
        if len(found) > 1:
            raise InputError(f"{f}: names {len(found)} files in {where} "
                             f"({', '.join(map(str, found))}): give the path")
        for sample in owners[found[0]]:
            _add(by_file, found[0], sample)
    return by_file


def _complete_record(out_dir: Path, path: Path, samples: Sequence[str], config: Config,
                     rows: tuple[int, int] | None) -> SplitRecord | None:
    """The record in ``out_dir`` if it is for ``rows`` of ``path`` and its outputs are complete
    and still match the input and the config; else None."""
    rec = read_record(out_dir)
    if rec is None or rec.rows != rows:
        return None
    stat = path.stat()
    if (rec.split_hash != split_hash(config, samples)
            or not set(reweight_fields(config)) <= set(rec.reweight_fields)
            or rec.input_size != stat.st_size
            or rec.input_mtime_ns != stat.st_mtime_ns):
        return None
    expected = {o.name: o.filename for o in declared_outputs(config, samples)}
    if set(rec.outputs) != set(expected):
        return None
    for name, filename in expected.items():
        try:
            with h5py.File(out_dir / filename, "r") as f:
                if f[config.jets_name].shape[0] != rec.outputs[name]:
                    return None
        except (OSError, KeyError):
            return None
    return rec


_worker_queue: mp.queues.Queue | None = None  # set in each pool worker by _init_worker
_worker_buffers: BufferPool | None = None  # likewise: reused by the units a worker splits


def _init_worker(q: mp.queues.Queue) -> None:
    global _worker_queue, _worker_buffers  # one per worker process, set once at its start
    _worker_queue = q
    _worker_buffers = BufferPool()


def _report_to_parent(n: int) -> None:
    if _worker_queue is not None:
        _worker_queue.put(n)


def _run_unit_in_worker(config: Config, unit: Unit) -> SplitRecord:
    return _run_unit(config, unit, _report_to_parent, _worker_buffers)


def _run_unit(config: Config, unit: Unit, progress: Callable[[int], None] | None,
              buffers: BufferPool | None = None) -> SplitRecord:
    staging = unit.out_dir.with_name(f".{unit.out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record = split_file(config, unit.path, staging, unit.samples, progress, unit.rows,
                            buffers)
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


@dataclass(frozen=True)
class SplitPlan:
    """What a split run does: units to split, records of complete units it keeps, and
    directories of the same inputs it removes (cut differently, incomplete or outdated)."""

    todo: tuple[Unit, ...]
    done: tuple[SplitRecord, ...]
    stale: tuple[Path, ...]


def pending_units(config: Config, container: str | None = None,
                  files: Sequence[Path] | None = None, overwrite: bool = False,
                  workers: int | None = None, min_part_jets: int = MIN_PART_JETS) -> SplitPlan:
    """What a run would split, keep and remove (nothing is changed here)."""
    todo: list[Unit] = []
    done: list[SplitRecord] = []
    stale: list[Path] = []
    by_file: dict[Path, list[Unit]] = {}
    for unit in plan_units(config, container, files, workers, min_part_jets):
        by_file.setdefault(unit.path, []).append(unit)
    for units in by_file.values():
        existing = _input_dirs(units[0])
        kept, redo = ([], units) if overwrite else _reusable(config, units, existing)
        keep = {d for d, _ in kept} | {u.out_dir for u in redo}
        done += [rec for _, rec in kept]
        todo += redo
        stale += [d for d, _ in existing if d not in keep]
    return SplitPlan(tuple(todo), tuple(done), tuple(stale))


def _input_dirs(unit: Unit) -> list[tuple[Path, tuple[int, int] | None]]:
    """Every existing output directory of ``unit``'s input with its row range (None: the
    whole file)."""
    whole = unit.out_dir if unit.rows is None else unit.out_dir.with_name(
        unit.out_dir.name.removesuffix(f".rows-{unit.rows[0]}-{unit.rows[1]}"))
    if not whole.parent.is_dir():
        return []
    found: list[tuple[Path, tuple[int, int] | None]] = []
    prefix = f"{whole.name}.rows-"
    for d in sorted(whole.parent.iterdir()):
        if d.name == whole.name and d.is_dir():
            found.append((d, None))
        elif d.name.startswith(prefix) and d.is_dir():
            start, _, stop = d.name[len(prefix):].partition("-")
            if start.isdigit() and stop.isdigit():
                found.append((d, (int(start), int(stop))))
    return found


def _reusable(config: Config, units: list[Unit],
              existing: list[tuple[Path, tuple[int, int] | None]]
              ) -> tuple[list[tuple[Path, SplitRecord]], list[Unit]]:
    """``([(dir, record)] kept, units to split)`` for one input's planned ``units``, given its
    ``existing`` output directories (:func:`_input_dirs`).

    Complete planned units are kept and the others redone; but when the planned units are not
    all complete and complete outputs of an earlier run cut differently (another number of
    workers) cover the whole file exactly, those are kept and nothing is redone.
    """
    first, num = units[0], sum(u.num_jets for u in units)
    complete = {d: rec for d, rows in existing
                if (rec := _complete_record(d, first.path, first.samples, config, rows))}
    planned = [(u, complete.get(u.out_dir)) for u in units]
    if all(rec is not None for _, rec in planned):
        return [(u.out_dir, rec) for u, rec in planned], []
    spans = sorted(((rec.rows or (0, num), d, rec) for d, rec in complete.items()),
                   key=lambda s: (s[0][0], -s[0][1]))  # by start, the longest first
    tiling: list[tuple[Path, SplitRecord]] = []
    pos = 0
    for (start, stop), d, rec in spans:
        if start == pos and stop > pos:
            tiling.append((d, rec))
            pos = stop
    if num > 0 and pos == num:
        return tiling, []
    return ([(u.out_dir, rec) for u, rec in planned if rec is not None],
            [u for u, rec in planned if rec is None])


def default_workers(num_units: int) -> int:
    """min(units, usable cores), at least 1."""
    return max(1, min(num_units, usable_cores()))


def run_split(config: Config, container: str | None = None,
              files: Sequence[Path] | None = None, workers: int | None = None,
              overwrite: bool = False, progress: Callable[[int], None] | None = None,
              total: Callable[[int], None] | None = None,
              min_part_jets: int = MIN_PART_JETS) -> SplitSummary:
    """Split all (or some) inputs; failures of one input do not affect the others.

    Complete units (record matching input and config, every output present with its count)
    are skipped unless ``overwrite``. ``total`` is called once with the number of jets to
    process (for a progress bar); ``progress`` with the jets done as they are done.
    """
    _clean_stale(config.global_.components_dir)
    plan = pending_units(config, container, files, overwrite, workers, min_part_jets)
    inputs = {r.input for r in plan.done} | {str(u.path) for u in plan.todo}
    file_types(sorted(inputs), dict.fromkeys(config.variables))  # one kind per field, or stop
    for d in plan.stale:
        log.info("removing %s: replaced by this run's split of the same input", d)
        shutil.rmtree(d)
    if plan.done:
        units = len(plan.done) + len(plan.todo)
        what = "inputs" if units == len(inputs) else f"parts of {len(inputs)} inputs"
        log.info("%d of %d %s already split (use --overwrite to redo)", len(plan.done), units,
                 what)
    if total:
        total(sum(u.num_jets for u in plan.todo))
    todo = sorted(plan.todo, key=lambda u: -u.num_jets)  # largest first: balanced workers
    n_workers = min(workers, len(todo)) if workers else default_workers(len(todo))
    records, failures = _execute(config, todo, max(n_workers, 1), progress)
    return SplitSummary(plan.done + tuple(records), len(plan.done), tuple(failures))


def _execute(config: Config, todo: list[Unit], n_workers: int,
             progress: Callable[[int], None] | None) -> tuple[list[SplitRecord], list[str]]:
    records: list[SplitRecord] = []
    failures: list[str] = []
    if n_workers <= 1 or len(todo) <= 1:
        buffers = BufferPool()
        for unit in todo:
            try:
                records.append(_run_unit(config, unit, progress, buffers))
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


def check_inputs_whole(records: Sequence[SplitRecord]) -> None:
    """Per input file, the units' row ranges tile the file and their jets read add up to it.

    Raises
    ------
    BookkeepingError
        Naming the input, if a range is missing, overlaps, or read another number of jets.
    """
    by_input: dict[str, list[SplitRecord]] = {}
    for rec in records:
        by_input.setdefault(rec.input, []).append(rec)
    for name, recs in by_input.items():
        if len(recs) == 1 and recs[0].rows is None:
            continue
        ranges = sorted(r.rows or (-1, -1) for r in recs)
        pos = 0
        for start, stop in ranges:
            if start != pos:
                raise BookkeepingError(f"{name}: split parts {ranges} do not tile the file "
                                       f"(gap or overlap at row {pos})")
            pos = stop
        read = sum(r.jets_read for r in recs)
        if read != pos:
            raise BookkeepingError(f"{name}: split parts cover {pos} rows but read {read} jets")


def expected_counts(records: Sequence[SplitRecord]) -> dict[str, dict[str, int]]:
    """``{split: {component: jets}}`` summed over split records."""
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        for name, n in rec.outputs.items():
            split, comp = name.split("_", 1)
            out.setdefault(split, {}).setdefault(comp, 0)
            out[split][comp] += n
    return out


def warn_nonfinite(records: Sequence[SplitRecord]) -> None:
    """One warning line per jets field with NaN/inf in the split outputs, and one for the jets
    a NaN/inf in a cut or reweight variable sent to no component."""
    fields: dict[str, int] = {}
    for rec in records:
        for key, n in rec.nonfinite.items():
            fields[key] = fields.get(key, 0) + n
    for key, n in sorted(fields.items()):
        log.warning("%s: %d NaN/inf values in the split outputs, passed through (they reach "
                    "training if it is a training variable; global.nan_policy: error refuses "
                    "them)", key, n)
    dropped = sum(rec.nonfinite_dropped for rec in records)
    if dropped:
        log.warning("%d jets with NaN/inf in a cut or jets reweight variable went to no "
                    "component (counted as such)", dropped)


def split_stage(config: Config, container: str | None = None,
                files: Sequence[Path] | None = None, workers: int | None = None,
                overwrite: bool = False, progress: Callable[[int], None] | None = None,
                total: Callable[[int], None] | None = None,
                min_part_jets: int = MIN_PART_JETS) -> tuple[SplitSummary, Catalogue]:
    """Split, then write the catalogue checked against the split records.

    Raises
    ------
    UppGridError
        If any input failed (several failures: each is logged as one line first); the
        catalogue is not rewritten then.
    """
    capped = sorted({c.name for c in config.components
                     if any(c.cap(s) >= 0 for s in ("train", "val", "test"))
                     and not config.auto_counts})
    if capped:
        log.warning("num_jets caps are not applied when reweighting (as in UPP): all jets of "
                    "%s are kept", ", ".join(capped))
    summary = run_split(config, container, files, workers, overwrite, progress, total,
                        min_part_jets)
    if summary.failures:
        n = len(summary.failures)
        if n == 1:
            raise UppGridError(summary.failures[0])
        for failure in summary.failures:
            log.error("upp-grid: error: %s", failure)
        raise UppGridError(f"{n} of {n + len(summary.records)} inputs failed (listed above); "
                           "the others are complete and will be skipped on a rerun")
    check_inputs_whole(summary.records)
    warn_nonfinite(summary.records)
    full_run = container is None and files is None
    cat = write_catalogue(config, expected_counts(summary.records) if full_run else None)
    return summary, cat
