"""Weights stage: per-class histograms over the reweight variables, targets and weights.

``upp-grid weights`` draws a uniform random sample of the catalogue's train jets, histograms
every class over each reweight's variables in ONE read pass per file (only the needed fields,
only the chunks holding sampled jets), builds each target and the per-class weights, checks that
the weighted classes are flat, and writes ``<out_dir>/histograms.h5`` in UPP's layout, then
``<out_dir>/weights-report.yaml`` (and plots in ``<out_dir>/plots/``, see below).

Bin convention
--------------
A value ``x`` is in bin ``i`` of ``edges`` when ``edges[i] <= x < edges[i+1]``
(``np.searchsorted(edges, x, side="right") - 1``), on every axis. That is UPP's convention for
every interior edge (UPP bins with scipy's ``binned_statistic_dd``, i.e. ``np.digitize``).
UPP differs on the outermost edge only: scipy also puts ``x == edges[-1]`` in the last bin; here
it has no bin. With ``add_overflow`` (the default) the outer edges are ±inf, so every finite
value has a bin (-inf too: it is in the underflow bin). Without it, a value below ``edges[0]`` or
at/above ``edges[-1]`` has no bin, and neither has NaN or +inf: such an entry gets weight 0 and
is counted in the report as ``out_of_range`` (UPP gives it the edge bin's weight or crashes).

Sample
------
Up to ``reweighting.num_jets_estimate`` jets per flavour (the flavour's train files in the
catalogue) are drawn uniformly without replacement over ALL of that flavour's files, with
``np.random.default_rng([global.seed, flavour_label])``; a flavour with no more jets than that
is used whole. Every reweight uses this one sample: jet groups histogram the sampled jets, track
groups the valid entries (``valid``) of the sampled jets. A reweight's classes are the values of
its ``class_var`` field found in the sample (``flavour_label`` for jets, ``leptonID`` for tracks).

Targets and weights (UPP's definitions, bin-wise over the class histograms)
-------------------------------------------------------------------------
``mean``: sum of the class histograms / number of classes; ``min`` / ``max``: bin-wise minimum
/ maximum; a label: that class's histogram; a list of labels: their mean; ``uniform``: 1 in every
bin, as UPP (``np.ones_like``), so a class's weight is ``1 / hist_class`` and every populated
bin holds a weighted count of 1 per class. A class's weight is ``target / hist_class`` in each
bin; a bin where any class is empty gets weight 0 for every class. After weighting, every class
equals the target in every populated bin: checked at run time (flatness 1 within 1e-6 with the
float32 weights written to the merged files) before anything is written.

Plots and the report
--------------------
The plots (:mod:`upp_grid.stages.plots`) are drawn off the stage's critical path by a separate
process (:mod:`upp_grid.stages.plot_process`), started before anything is read so that
matplotlib's import overlaps the sampling and histogramming. It gets the figures once
``histograms.h5`` and the report are written, and the stage returns without waiting: merge can
start. :meth:`PendingPlots.wait` waits for them (``upp-grid weights`` at its end, ``run`` after
merge and norm) and rewrites the report atomically, listing the plot files. A plot that cannot
be drawn (or the plotting process dying) costs one warning line naming the file and the error;
``histograms.h5`` and the report stay as they are and list the plots that were written.

The report's ``timings`` (wall seconds): ``sample_s``, ``histogram_s`` (the read and
histogramming pass), ``weights_s`` (targets, weights, flatness check), ``write_s``
(``histograms.h5``), ``total_s`` (the stage up to its report, plots excluded); ``plots_s``: the
plotting process's drawing time, from receiving the figures to writing the last one
(matplotlib's import excluded, it overlaps the stage); ``plots_wait_s``: how long the caller
waited for the plots after its own work, i.e. what plotting added to the wall time (about 0
when the plots were done by then, as when ``run`` waits after merge and norm).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np
import yaml

from upp_grid import __version__
from upp_grid.config import Config, Reweight
from upp_grid.errors import BookkeepingError, InputError, UppGridError
from upp_grid.fsutil import remove_stale_temps
from upp_grid.h5io import batch_ranges, dataset, open_input
from upp_grid.ownership import record_out_dir
from upp_grid.stages.catalogue import Catalogue, catalogue_path, read_catalogue
from upp_grid.stages.histograms import ReweightHists, flat_bins, write_histograms
from upp_grid.stages.plot_process import PlotProcess
from upp_grid.stages.plots import PlotData, PlotJob, plan_jobs
from upp_grid.stages.weights_report import (
    ReweightReport,
    SampledFile,
    Timings,
    WeightsReport,
    ZeroWeightError,
    class_names,
    summarise,
    write_report,
    zero_weight_problem,
)

log = logging.getLogger(__name__)

HISTOGRAMS_NAME = "histograms.h5"
REPORT_NAME = "weights-report.yaml"
PLOTS_DIR = "plots"
FLATNESS_TOLERANCE = 1e-6
READ_ENTRIES = 2_000_000  # entries (jets x tracks) per read, to bound memory
SPARSE_FRACTION = 0.1  # read samples below this fraction of a file's rows by point selection
DENSE_COUNTS = 1 << 24  # class span x bins above this: classes found via np.unique
MAX_WORKERS = 4  # processes for the read pass (it is bound by decompression)
Progress = Callable[[int], None]


class FlatnessError(UppGridError):
    """The weighted classes do not reproduce the target: the weights are wrong."""


def histograms_path(config: Config) -> Path:
    """``<out_dir>/histograms.h5``."""
    return config.global_.out_dir / HISTOGRAMS_NAME


def report_path(config: Config) -> Path:
    """``<out_dir>/weights-report.yaml``."""
    return config.global_.out_dir / REPORT_NAME


# --------------------------------------------------------------------------- the sample
@dataclass(frozen=True)
class FileSample:
    """The rows of one train file in the histogrammed sample (sorted, unique)."""

    path: Path
    flavour: str
    rows: np.ndarray
    num_jets: int


def num_jets_estimate(config: Config) -> int:
    """Jets per flavour to histogram (``reweighting.num_jets_estimate``)."""
    if config.reweighting is None:
        return config.global_.num_jets_estimate
    return config.reweighting.num_jets_estimate


def sample_jets(config: Config, catalogue: Catalogue) -> dict[str, tuple[FileSample, ...]]:
    """Per flavour: up to ``num_jets_estimate`` train jets, uniform over all its files."""
    estimate = num_jets_estimate(config)
    out = {}
    for label, flavour in enumerate(config.flavour_names):
        paths = [Path(p) for p in catalogue.files.get("train", {}).get(flavour, [])]
        sizes = [_num_jets(p, config.jets_name) for p in paths]
        rng = np.random.default_rng([config.global_.seed, label])
        picks = _draw(sum(sizes), estimate, rng)
        bounds = np.cumsum([0, *sizes])
        cuts = np.searchsorted(picks, bounds)
        out[flavour] = tuple(
            FileSample(p, flavour, picks[cuts[i]:cuts[i + 1]] - bounds[i], sizes[i])
            for i, p in enumerate(paths))
        if not sizes or not sum(sizes):
            log.warning("flavour %s has no train jets: it is not in any reweight", flavour)
    return out


def _draw(total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if n >= total:
        return np.arange(total, dtype=np.int64)
    return np.sort(rng.choice(total, size=n, replace=False)).astype(np.int64)


def _num_jets(path: Path, jets_name: str) -> int:
    with open_input(path) as f:
        return int(dataset(f, jets_name).shape[0])


def planned_jets(config: Config) -> int:
    """Jets the stage will read (sampled jets x groups), for a progress bar; 0 if unknown."""
    try:
        data = yaml.safe_load(catalogue_path(config).read_text())
        available = data["num_jets"]["train"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return 0
    groups = {rw.group for rw in (config.reweighting.reweights if config.reweighting else ())}
    per_flavour = sum(min(int(n), num_jets_estimate(config)) for n in available.values())
    return per_flavour * len(groups)


# --------------------------------------------------------------------------- histogramming
@dataclass(frozen=True)
class HistSpec:
    """What a histogram depends on: reweights differing only in target share one."""

    group: str
    variables: tuple[str, ...]
    edges: tuple[tuple[float, ...], ...]
    class_var: str

    @classmethod
    def of(cls, rw: Reweight) -> HistSpec:
        edges = tuple(tuple(rw.edges(v).tolist()) for v in rw.reweight_vars)
        return cls(rw.group, rw.reweight_vars, edges, rw.class_var)

    @cached_property
    def edge_arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(np.asarray(e, dtype=np.float64) for e in self.edges)

    @property
    def n_bins(self) -> int:
        return int(np.prod([len(e) - 1 for e in self.edges]))


@dataclass
class Counts:
    """Per-class flat bin counts of one :class:`HistSpec`, plus entries with no bin."""

    spec: HistSpec
    bins: dict[int, np.ndarray] = field(default_factory=dict)
    out_of_range: dict[int, int] = field(default_factory=dict)  # finite or ±inf, no bin
    nan: dict[int, int] = field(default_factory=dict)  # NaN in a reweight variable: no bin

    def add(self, entries: np.ndarray) -> None:
        if not len(entries):
            return
        values = [entries[v] for v in self.spec.variables]
        flat = flat_bins(self.spec.edge_arrays, values)
        nb = self.spec.n_bins
        outside = np.flatnonzero(flat < 0)  # few: NaN is told apart among these only
        flat[outside] = nb
        for x in values:
            if x.dtype.kind == "f" and len(outside):
                flat[outside[np.isnan(x[outside])]] = nb + 1
        classes, code = _class_codes(_integer_classes(entries, self.spec), nb + 2)
        counts = np.bincount(code * (nb + 2) + flat, minlength=len(classes) * (nb + 2))
        for c, row in zip(classes.tolist(), counts.reshape(len(classes), nb + 2), strict=True):
            if not row.any():
                continue
            if c not in self.bins:
                self.bins[c] = np.zeros(nb, dtype=np.int64)
                self.out_of_range[c] = self.nan[c] = 0
            self.bins[c] += row[:nb]
            self.out_of_range[c] += int(row[nb])
            self.nan[c] += int(row[nb + 1])

    def merge(self, other: Counts) -> None:
        for c, bins in other.bins.items():
            if c in self.bins:
                self.bins[c] += bins
                self.out_of_range[c] += other.out_of_range[c]
                self.nan[c] += other.nan[c]
            else:
                self.bins[c] = bins.copy()
                self.out_of_range[c] = other.out_of_range[c]
                self.nan[c] = other.nan[c]


def _integer_classes(entries: np.ndarray, spec: HistSpec) -> np.ndarray:
    values = entries[spec.class_var]
    if values.dtype.kind not in "iub":
        raise InputError(f"{spec.group}.{spec.class_var}: a class variable must be an integer "
                         f"field, got {values.dtype}")
    return values.astype(np.int64, copy=False)


def _class_codes(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidate classes, index of each value among them); candidates may be unused."""
    lo, hi = int(values.min()), int(values.max())
    if (hi - lo + 1) * n_bins <= DENSE_COUNTS:
        return np.arange(lo, hi + 1, dtype=np.int64), values - lo
    classes, inverse = np.unique(values, return_inverse=True)
    return classes, inverse.reshape(-1)


@dataclass(frozen=True)
class GroupRead:
    """What one pass over a group reads: fields and the histograms they feed."""

    group: str
    fields: tuple[str, ...]
    specs: tuple[HistSpec, ...]


def plan_reads(specs: Sequence[HistSpec]) -> list[GroupRead]:
    """One read per group, of the union of the fields its histograms need."""
    reads = []
    for group in dict.fromkeys(s.group for s in specs):
        mine = tuple(s for s in specs if s.group == group)
        fields = dict.fromkeys(f for s in mine for f in (*s.variables, s.class_var))
        reads.append(GroupRead(group, tuple(fields), mine))
    return reads


def histogram_sample(sample: Mapping[str, Sequence[FileSample]], reads: Sequence[GroupRead],
                     progress: Progress | None = None, workers: int | None = None
                     ) -> dict[HistSpec, Counts]:
    """Counts of every histogram of ``reads``: each file opened once, each group read once.

    Files are processed by ``workers`` forked processes (default: one per core, at most
    MAX_WORKERS), as the pass is bound by decompression; the counts are exact sums either way.
    """
    tasks = sorted((fs for files in sample.values() for fs in files if len(fs.rows)),
                   key=lambda fs: -len(fs.rows))
    totals = {spec: Counts(spec) for r in reads for spec in r.specs}
    for counts, jets in _map_files(tasks, reads, workers):
        for spec, c in counts.items():
            totals[spec].merge(c)
        if progress:
            progress(jets)
    return totals


def _map_files(tasks: list[FileSample], reads: Sequence[GroupRead], workers: int | None
               ) -> Iterator[tuple[dict[HistSpec, Counts], int]]:
    n = min(workers or os.cpu_count() or 1, MAX_WORKERS, len(tasks))
    if n <= 1:
        yield from (histogram_file(fs, reads) for fs in tasks)
        return
    with ProcessPoolExecutor(n, mp_context=mp.get_context("fork")) as pool:
        yield from pool.map(histogram_file, tasks, [reads] * len(tasks))


def histogram_file(fs: FileSample, reads: Sequence[GroupRead]
                   ) -> tuple[dict[HistSpec, Counts], int]:
    """Counts of one file's sampled rows for every read; also the jets read (x groups)."""
    out: dict[HistSpec, Counts] = {}
    jets = 0
    with open_input(fs.path) as f:
        for read in reads:
            counts = [Counts(spec) for spec in read.specs]
            jets += _histogram_group(f, fs, read, counts)
            out.update((c.spec, c) for c in counts)
    return out, jets


def _histogram_group(f: h5py.File, fs: FileSample, read: GroupRead,
                     counts: Sequence[Counts]) -> int:
    ds = dataset(f, read.group)
    if ds.shape[0] != fs.num_jets:
        raise InputError(f"{fs.path}: dataset '{read.group}' has {ds.shape[0]} rows but "
                         f"the jets dataset has {fs.num_jets}")
    fields = list(read.fields)
    if ds.ndim == 2 and "valid" not in fields:
        fields.append("valid")
    missing = [n for n in fields if n not in (ds.dtype.names or ())]
    if missing:
        raise InputError(f"{fs.path}: dataset '{read.group}' has no field '{missing[0]}' "
                         "(needed by the reweighting)")
    seen = 0
    for block in _sampled_blocks(ds, fields, fs):
        entries = block[block["valid"]] if ds.ndim == 2 else block
        for c in counts:
            c.add(entries)
        seen += len(block)
    if seen != len(fs.rows):
        raise BookkeepingError(f"{fs.path}: sampled {len(fs.rows)} jets of '{read.group}' but "
                               f"read {seen}")
    return seen


def _sampled_blocks(ds: h5py.Dataset, fields: list[str], fs: FileSample
                    ) -> Iterator[np.ndarray]:
    """The sampled rows of ``ds`` (only ``fields``), in blocks of at most ~READ_ENTRIES.

    A dense sample is read in contiguous chunk-aligned batches and selected in memory; a
    sparse one (under SPARSE_FRACTION of the rows) by point selection, so HDF5 decompresses
    only the chunks holding sampled rows and converts only those rows.
    """
    chunk = ds.chunks[0] if ds.chunks else 1
    per_row = int(np.prod(ds.shape[1:], dtype=np.int64))
    max_rows = max(chunk, (READ_ENTRIES // per_row) // chunk * chunk)
    reader = ds.fields(fields)
    if len(fs.rows) < SPARSE_FRACTION * fs.num_jets:
        for start in range(0, len(fs.rows), max_rows):
            yield reader[fs.rows[start:start + max_rows]]
        return
    for start, stop in batch_ranges(fs.num_jets, max_rows, chunk):
        lo, hi = np.searchsorted(fs.rows, (start, stop))
        if hi > lo:
            block = reader[start:stop]
            yield block if hi - lo == stop - start else block[fs.rows[lo:hi] - start]


# --------------------------------------------------------------------------- targets, weights
_TARGETS: Mapping[str, Callable[[list[np.ndarray]], np.ndarray]] = MappingProxyType({
    "mean": lambda hs: np.sum(hs, axis=0, dtype=np.float64) / len(hs),
    "min": lambda hs: np.min(hs, axis=0).astype(np.float64),
    "max": lambda hs: np.max(hs, axis=0).astype(np.float64),
    "uniform": lambda hs: np.ones(hs[0].shape, dtype=np.float64),
})


def make_target(rw: Reweight, hists: Mapping[int, np.ndarray]) -> np.ndarray:
    """The target histogram of ``rw`` (float64) from the class histograms."""
    target = rw.class_target
    if isinstance(target, str):
        return _TARGETS[target]([hists[c] for c in sorted(hists)])
    labels = target if isinstance(target, tuple) else (target,)
    unknown = [lab for lab in labels if lab not in hists]
    if unknown:
        found = ", ".join(map(str, sorted(hists))) or "none"
        raise UppGridError(f"reweight {rw.name}: class_target label {unknown[0]} is not a class "
                           f"of {rw.group}.{rw.class_var} in the train sample (found: {found})")
    return np.sum([hists[lab] for lab in labels], axis=0, dtype=np.float64) / len(labels)


def make_weights(hists: Mapping[int, np.ndarray], target: np.ndarray) -> dict[int, np.ndarray]:
    """``target / hist`` per class (float64); 0 in every bin where any class is empty."""
    empty = np.logical_or.reduce([h == 0 for h in hists.values()])
    out = {}
    for c, h in hists.items():
        w = np.zeros(h.shape, dtype=np.float64)
        np.divide(target, h, out=w, where=~empty)
        out[c] = w
    return out


def build_hists(rw: Reweight, counts: Counts) -> ReweightHists:
    """Histograms, target and weights of ``rw`` from its filled counts."""
    if not counts.bins:
        raise UppGridError(f"reweight {rw.name}: no {rw.group} entries in the train sample")
    edges = counts.spec.edge_arrays
    shape = tuple(len(e) - 1 for e in edges)
    classes = tuple(sorted(counts.bins))
    hists = {c: counts.bins[c].reshape(shape) for c in classes}
    target = make_target(rw, hists)
    if np.any(target < 0) or np.any(np.isnan(target)):
        raise UppGridError(f"reweight {rw.name}: target histogram has negative or NaN bins")
    weights = make_weights(hists, target)
    return ReweightHists(rw, edges, classes, MappingProxyType(hists), target,
                         MappingProxyType(weights))


def flatness(h: ReweightHists) -> dict[int, np.ndarray]:
    """Per class: weighted count / target in each populated bin, with the float32 weights.

    Every entry of a class in a bin gets the same weight (``compute_weights`` looks it up), so
    the weighted count of the histogrammed sample in a bin is ``hist * weight``.
    """
    keep = h.populated & (h.target > 0)
    return {c: h.hists[c][keep] * h.weights[c][keep].astype(np.float32).astype(np.float64)
            / h.target[keep] for c in h.classes}


def check_flatness(h: ReweightHists) -> float:
    """Largest ``|flatness - 1|``; raises :class:`FlatnessError` above the tolerance."""
    worst = max((float(np.abs(r - 1).max()) for r in flatness(h).values() if len(r)),
                default=0.0)
    if not worst <= FLATNESS_TOLERANCE:
        raise FlatnessError(f"reweight {h.reweight.name}: weighted classes differ from the "
                            f"target by {worst:.3g} (> {FLATNESS_TOLERANCE}) in a populated bin")
    return worst


# --------------------------------------------------------------------------- the stage
def compute_histograms(config: Config, sample: Mapping[str, Sequence[FileSample]],
                       progress: Progress | None = None, workers: int | None = None
                       ) -> tuple[list[ReweightHists], dict[str, Counts]]:
    """Histogram ``sample`` for every reweight of ``config`` (one pass per file and group)."""
    reweights = config.reweighting.reweights if config.reweighting else ()
    specs = list(dict.fromkeys(HistSpec.of(rw) for rw in reweights))
    by_spec = histogram_sample(sample, plan_reads(specs), progress, workers)
    counts = {rw.name: by_spec[HistSpec.of(rw)] for rw in reweights}
    return [build_hists(rw, counts[rw.name]) for rw in reweights], counts


def weights_stage(config: Config, plots: bool = True, progress: Progress | None = None,
                  workers: int | None = None) -> tuple[WeightsReport, PendingPlots]:
    """Run the weights stage: ``histograms.h5`` and ``weights-report.yaml``; plots pending.

    With ``plots``, the plotting process starts first (before any HDF5 file is opened) and
    gets the figures once ``histograms.h5`` and the report are written; this returns without
    waiting for them. Wait with the returned :class:`PendingPlots` (which then rewrites the
    report), or use it as a context manager so that an error cancels them.

    Raises
    ------
    UppGridError
        No reweighting configured, no catalogue, an unknown target label, missing fields,
        or weights that do not flatten the classes (:class:`FlatnessError`); nothing is
        written then (and the plotting process is ended).
    """
    if not config.reweighting or not config.reweighting.reweights:
        raise UppGridError(f"{config.path}: no reweighting section: nothing to weight")
    remove_stale_temps(config.global_.out_dir)
    t0 = time.perf_counter()
    plotter = _start_plotter() if plots else None
    try:
        report, hists = _weights_and_report(config, progress, workers, t0)
        if plotter is None:
            _remove_stale_plots(config, set())  # no new plots: the old ones would mislead
            return report, PendingPlots(report)
        _remove_stale_plots(config, {h.reweight.name for h in hists})  # these are redrawn
        jobs = plan_plots(config, hists)
        plotter.submit(jobs)
        return report, PendingPlots(report, plotter, len(jobs))
    except BaseException:
        if plotter is not None:
            plotter.cancel()
        raise


def _weights_and_report(config: Config, progress: Progress | None, workers: int | None,
                        t0: float) -> tuple[WeightsReport, list[ReweightHists]]:
    catalogue = read_catalogue(config)
    sample = sample_jets(config, catalogue)
    t1 = time.perf_counter()
    hists, counts = compute_histograms(config, sample, progress, workers)
    t2 = time.perf_counter()
    summaries = [_check_and_summarise(config, h, counts[h.reweight.name]) for h in hists]
    t3 = time.perf_counter()
    path = histograms_path(config)
    sampled = {fl: sum(len(fs.rows) for fs in files) for fl, files in sample.items()}
    available = {fl: sum(fs.num_jets for fs in files) for fl, files in sample.items()}
    problem = zero_weight_problem(config, summaries, sampled, available)
    if problem is None:
        write_histograms(path, hists, _file_attrs(config, sample, catalogue))
        record_out_dir(config)
    t4 = time.perf_counter()
    report = WeightsReport(
        path, report_path(config),
        {fl: tuple(SampledFile(str(fs.path), len(fs.rows), fs.num_jets) for fs in files)
         for fl, files in sample.items()},
        available, tuple(summaries), (),
        Timings(t1 - t0, t2 - t1, t3 - t2, t4 - t3, 0.0, time.perf_counter() - t0))
    write_report(report.report, report)
    if problem is not None:  # the report stays, for a look at the bins; no histograms
        raise ZeroWeightError(f"{problem}; see {report.report}")
    log.info("wrote %s (%d reweights)", path, len(hists))
    return report, hists


def _remove_stale_plots(config: Config, keep: set[str]) -> None:
    """Plots of earlier histograms no longer describe ``histograms.h5``: remove those of
    reweights not in ``keep`` (the ones about to be redrawn)."""
    root = plots_dir(config)
    if not root.is_dir():
        return
    for group_dir in (d for d in root.iterdir() if d.is_dir()):
        for rw_dir in (d for d in group_dir.iterdir() if d.is_dir()):
            if rw_dir.name not in keep:
                log.info("removing plots of earlier histograms: %s", rw_dir)
                shutil.rmtree(rw_dir, ignore_errors=True)


def _check_and_summarise(config: Config, h: ReweightHists, counts: Counts) -> ReweightReport:
    worst = check_flatness(h)
    if not h.populated.any():
        log.warning("reweight %s: no bin has entries of every class: all weights are 0",
                    h.reweight.name)
    return summarise(h, counts.out_of_range, worst, class_names(config, h.reweight), counts.nan)


def _file_attrs(config: Config, sample: Mapping[str, Sequence[FileSample]],
                catalogue: Catalogue) -> dict[str, Any]:
    return {
        "upp_grid_version": __version__,
        "config_hash": config.config_hash,
        "catalogue_hash": catalogue.digest,  # the split outputs these histograms came from
        "flavour_label": list(config.flavour_names),
        "num_jets_estimate": num_jets_estimate(config),
        "seed": config.global_.seed,
        "num_jets_sampled": json.dumps({fl: int(sum(len(fs.rows) for fs in files))
                                        for fl, files in sample.items()}),
        "bin_convention": "edges[i] <= x < edges[i+1]",
    }


def plots_dir(config: Config) -> Path:
    """``<out_dir>/plots``."""
    return config.global_.out_dir / PLOTS_DIR


def plan_plots(config: Config, hists: Sequence[ReweightHists]) -> list[PlotJob]:
    """Every figure of every reweight (see :mod:`upp_grid.stages.plots`)."""
    return [job for h in hists
            for job in plan_jobs(PlotData.of(h, class_names(config, h.reweight)),
                                 plots_dir(config))]


def _start_plotter() -> PlotProcess | None:
    try:
        return PlotProcess.start()
    except OSError as err:
        log.warning("plots skipped: cannot start the plotting process: %s", err)
        return None


class PendingPlots:
    """The plots of a weights report, being drawn in the background.

    :meth:`wait` waits for them (the plotting process then uses every core), logs one warning
    line if any could not be drawn, rewrites ``weights-report.yaml`` atomically with the plot
    files and the ``plots_s`` / ``plots_wait_s`` timings, and returns the files written. As a
    context manager, leaving the block waits, unless it is left by an exception: then the plots
    are cancelled (the process is ended; the histograms and the report are untouched).
    Dropping it without waiting cancels the plots too. Without plots, everything returns at
    once and :attr:`report` is the report as written.
    """

    def __init__(self, report: WeightsReport, process: PlotProcess | None = None,
                 planned: int = 0) -> None:
        self._report = report
        self._process = process
        self.planned = planned  # figures to draw

    @property
    def report(self) -> WeightsReport:
        """The report: the one first written, or after :meth:`wait` the one with the plots."""
        return self._report

    @property
    def pid(self) -> int | None:
        """The plotting process, while it is being waited for or running; else None."""
        return self._process.pid if self._process is not None else None

    def wait(self, progress: Progress | None = None) -> list[Path]:
        """Wait for the plots (``progress(n)``: n more drawn); the files written."""
        if self._process is None:
            return list(self._report.plots)
        start = time.perf_counter()
        process = self._process
        drawn = process.poll()
        if drawn < self.planned:
            log.info("waiting for the plots (%d of %d drawn)", drawn, self.planned)
        try:
            result = process.result(progress)
        finally:
            process.cancel()  # a no-op once it has ended; on Ctrl-C it ends it
            self._process = None
        waited = time.perf_counter() - start
        if result.warning:
            log.warning("%s", result.warning)
        timings = replace(self._report.timings, plots_s=result.draw_s, plots_wait_s=waited)
        self._report = replace(self._report, plots=result.written, timings=timings)
        write_report(self._report.report, self._report)
        if result.written:
            log.info("wrote %d plots to %s", len(result.written),
                     os.path.commonpath([p.parent for p in result.written]))
        return list(result.written)

    def cancel(self) -> None:
        """End the plotting process now; the report keeps no plots."""
        if self._process is not None:
            self._process.cancel()
            self._process = None

    def __enter__(self) -> PendingPlots:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.wait()
        else:
            self.cancel()
