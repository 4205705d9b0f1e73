"""The weights stage's report: bins and entries per reweight and class, and the zero-weight
check.

A class's entries (train jets, or valid tracks for a track group) get weight 0 in three ways:
*zeroed* (their bin is empty for another class), *out of range* (no bin: below the first or at
or above the last edge without ``add_overflow``, or +inf) and *NaN* (a reweight variable is
NaN). :func:`zero_weight_problem` compares the largest fraction over the classes with
``reweighting.max_zero_weight_fraction``: above it the stage fails with one line naming the
reweight, the class, the fraction and the likely cause; from a tenth of it a warning is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from upp_grid.config import Config, Reweight
from upp_grid.errors import UppGridError
from upp_grid.fsutil import write_text_atomic
from upp_grid.stages.histograms import ReweightHists

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class ClassReport:
    """One class of one reweight. Entries are jets (jet groups) or valid tracks."""

    label: int
    name: str
    entries: int  # histogrammed entries, with or without a bin
    populated: int  # entries in populated bins (non-zero weight)
    zeroed: int  # entries in bins zeroed because another class is empty there
    out_of_range: int  # entries with no bin: weight 0 (see the bin convention)
    weight_min: float  # over the entries in populated bins
    weight_median: float
    weight_max: float
    nan: int = 0  # entries with NaN in a reweight variable: no bin, weight 0

    @property
    def zero_weight(self) -> int:
        """Entries that get weight 0: zeroed, out of range or NaN."""
        return self.zeroed + self.out_of_range + self.nan

    @property
    def zero_fraction(self) -> float:
        return self.zero_weight / self.entries if self.entries else 0.0


@dataclass(frozen=True)
class ReweightReport:
    name: str
    group: str
    class_var: str
    target: str
    bins: int
    populated_bins: int  # every class has entries
    zeroed_bins: int  # some class has entries, another has none: weight 0 for all
    empty_bins: int  # no entries at all
    flatness_max_deviation: float
    classes: tuple[ClassReport, ...]

    @property
    def worst(self) -> ClassReport:
        """The class with the largest fraction of entries at weight 0."""
        return max(self.classes, key=lambda c: c.zero_fraction)


@dataclass(frozen=True)
class Timings:
    """Wall seconds of the stage's parts; ``histogram_s`` is the read + histogramming pass.

    ``total_s`` is the stage up to its report (plots excluded: they are drawn in the
    background). ``plots_s``: the plotting process's drawing time; ``plots_wait_s``: how long
    the caller waited for the plots after its own work (see the module docstring).
    """

    sample_s: float = 0.0
    histogram_s: float = 0.0
    weights_s: float = 0.0
    write_s: float = 0.0
    plots_s: float = 0.0
    total_s: float = 0.0
    plots_wait_s: float = 0.0


@dataclass(frozen=True)
class SampledFile:
    file: str
    jets: int  # jets of the file in the histogrammed sample
    of: int  # jets in the file


@dataclass(frozen=True)
class WeightsReport:
    histograms: Path
    report: Path
    sample: Mapping[str, tuple[SampledFile, ...]]  # flavour -> its train files
    available: Mapping[str, int]  # flavour -> train jets in the catalogue
    reweights: tuple[ReweightReport, ...]
    plots: tuple[Path, ...]
    timings: Timings

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for rw, rw_out in zip(self.reweights, out["reweights"], strict=True):
            for c, c_out in zip(rw.classes, rw_out["classes"], strict=True):
                c_out["zero_weight"] = c.zero_weight
                c_out["zero_fraction"] = round(c.zero_fraction, 6)
        out["histograms"], out["report"] = str(self.histograms), str(self.report)
        out["plots"] = [str(p) for p in self.plots]
        out["sample"] = {fl: [asdict(f) for f in files] for fl, files in self.sample.items()}
        out["available"] = dict(self.available)
        return out


def summarise(h: ReweightHists, out_of_range: Mapping[int, int], worst: float,
              class_names: Mapping[int, str], nan: Mapping[int, int] | None = None
              ) -> ReweightReport:
    """Bin and entry bookkeeping of one reweight (see :class:`ReweightReport`)."""
    populated = h.populated
    any_entries = np.logical_or.reduce([h.hists[c] > 0 for c in h.classes])
    classes = tuple(_class_report(h, c, populated, out_of_range.get(c, 0), class_names,
                                  (nan or {}).get(c, 0))
                    for c in h.classes)
    rw = h.reweight
    target = rw.class_target
    return ReweightReport(
        rw.name, rw.group, rw.class_var,
        ",".join(map(str, target)) if isinstance(target, tuple) else str(target),
        int(populated.size), int(populated.sum()), int((any_entries & ~populated).sum()),
        int((~any_entries).sum()), worst, classes)


def _class_report(h: ReweightHists, c: int, populated: np.ndarray, out_of_range: int,
                  class_names: Mapping[int, str], nan: int = 0) -> ClassReport:
    hist = h.hists[c]
    n, w = hist[populated], h.weights[c][populated]
    lo, med, hi = _weighted_stats(w, n)
    return ClassReport(c, class_names.get(c, str(c)), int(hist.sum()) + out_of_range + nan,
                       int(n.sum()), int(hist[~populated].sum()), out_of_range, lo, med, hi,
                       nan)


def _weighted_stats(values: np.ndarray, counts: np.ndarray) -> tuple[float, float, float]:
    """min, median and max of ``values`` repeated ``counts`` times (NaN if no entries)."""
    keep = counts > 0
    values, counts = values[keep], counts[keep]
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    order = np.argsort(values)
    cum = np.cumsum(counts[order])
    median = values[order][np.searchsorted(cum, (cum[-1] + 1) // 2)]
    return float(values.min()), float(median), float(values.max())


def class_names(config: Config, rw: Reweight) -> dict[int, str]:
    """Flavour names for ``flavour_label`` classes; other class variables have none."""
    if rw.class_var != "flavour_label":
        return {}
    return dict(enumerate(config.flavour_names))


def write_report(path: Path, report: WeightsReport) -> None:
    """Write ``weights-report.yaml`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    write_text_atomic(path, yaml.dump(report.as_dict(), Dumper=dumper, sort_keys=False))



class ZeroWeightError(UppGridError):
    """Too many train jets of a class would get weight 0: the training data would be wrong."""


def zero_weight_problem(config: Config, summaries: Sequence[ReweightReport],
                        sampled: Mapping[str, int], available: Mapping[str, int]) -> str | None:
    """The one-line problem if a reweight zeroes too many entries of a class, else None.

    ``sampled`` / ``available``: train jets per flavour histogrammed / in the catalogue. Logs
    one warning per reweight whose worst class is from a tenth of the limit up to the limit.
    """
    limit = config.reweighting.max_zero_weight_fraction if config.reweighting else 0.01
    problems = []
    for rw in summaries:
        worst = rw.worst
        if worst.zero_fraction <= limit / 10 or not worst.entries:
            continue
        line = _zero_weight_line(config, rw, worst, limit, sampled, available)
        if worst.zero_fraction > limit:
            problems.append(line)
        else:
            log.warning("%s", line)
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more reweights)" if len(problems) > 1 else ""
    return problems[0] + more


def _zero_weight_line(config: Config, rw: ReweightReport, worst: ClassReport, limit: float,
                      sampled: Mapping[str, int], available: Mapping[str, int]) -> str:
    what = "train jets" if rw.group == config.jets_name else f"valid {rw.group} entries"
    head = (f"reweight {rw.name}: {_percent(worst.zero_fraction)} of the {worst.name} {what} "
            f"get weight 0 (limit {_percent(limit)}, reweighting.max_zero_weight_fraction)")
    causes = {"zeroed": worst.zeroed, "out_of_range": worst.out_of_range, "nan": worst.nan}
    cause = max(causes, key=lambda k: causes[k])
    if cause == "nan":
        return (f"{head}: {worst.nan:,} have NaN in a reweight variable "
                f"({', '.join(_rw_vars(config, rw.name))})")
    if cause == "out_of_range":
        return (f"{head}: {worst.out_of_range:,} fall outside the bins: widen them or set "
                "add_overflow: true")
    empty = f"{rw.zeroed_bins + rw.empty_bins:,} of {rw.bins:,} bins lack entries of some class"
    estimate = config.reweighting.num_jets_estimate if config.reweighting else 0
    capped = [fl for fl, n in sampled.items() if n < available.get(fl, 0)]
    if capped:
        suggest = min(max(available.values()), max(10 * estimate, 100_000))
        return (f"{head}: {empty}; too few jets per class for the number of bins "
                f"({estimate:,} sampled per class): raise reweighting.num_jets_estimate "
                f"(e.g. to {suggest:,}) or use fewer bins")
    smallest = min((n for n in sampled.values() if n), default=0)
    return (f"{head}: {empty}; every train jet is already histogrammed (the smallest class "
            f"has {smallest:,}): use fewer or wider bins, or more input")


def _rw_vars(config: Config, name: str) -> tuple[str, ...]:
    for rw in config.reweighting.reweights if config.reweighting else ():
        if rw.name == name:
            return rw.reweight_vars
    return ()


def _percent(fraction: float) -> str:
    return f"{100 * fraction:.3g} %"
