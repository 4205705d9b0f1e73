"""``upp-grid run``: split → weights → merge (train, val, test) → norm, locally.

Every stage resumes on its own (split skips complete inputs, merge keeps complete output files
and skips published splits), so rerunning after a crash finishes the job. The summary holds the
jets per split and flavour going in (catalogue) and out (merged files), the files written and
the wall time of each stage.

The weights plots are drawn in the background while merge and norm run; the chain waits for
them at the end (``plots (wait)`` in the timings: what they added to the wall time). An error
in merge or norm ends the plotting process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from upp_grid.config import SPLITS, Config
from upp_grid.progress import Advance
from upp_grid.stages.catalogue import Catalogue
from upp_grid.stages.merge import MergeSummary, merge_stage, merge_work
from upp_grid.stages.normalise import NormResult, norm_stage
from upp_grid.stages.split_local import SplitSummary, split_stage
from upp_grid.stages.weights import PendingPlots, planned_jets, weights_stage
from upp_grid.stages.weights_report import WeightsReport

log = logging.getLogger(__name__)

T = TypeVar("T")
#: ``bar(total, what[, unit=...])`` as :func:`upp_grid.progress.progress_bar`
ProgressBar = Callable[..., AbstractContextManager[Advance]]


@contextmanager
def no_progress(total: int | None, _what: str, unit: str = "jets") -> Iterator[Advance]:
    """A progress bar that shows nothing."""
    yield Advance(total, lambda a: None)


@dataclass(frozen=True)
class StageTime:
    stage: str
    seconds: float


@dataclass(frozen=True)
class RunSummary:
    """What ``run`` did: counts in and out per split and flavour, files, and timings."""

    jets_in: Mapping[str, Mapping[str, int]]
    jets_out: Mapping[str, Mapping[str, int]]
    files: Mapping[str, tuple[Path, ...]]
    vds: Mapping[str, Path]
    norm: NormResult | None  # None when train was not merged (run --split val)
    histograms: Path
    timings: tuple[StageTime, ...]
    split_skipped: int  # inputs already split by an earlier run
    merge_reused: Mapping[str, int]  # output files kept from an earlier run
    plots: tuple[Path, ...] = ()  # the weights plots written
    weights: WeightsReport | None = None  # the weights stage's report

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.timings)


def run_chain(config: Config, plots: bool = True, bar: ProgressBar = no_progress,
              weighted_norm: bool = False, splits: Sequence[str] = SPLITS,
              workers: int | None = None, overwrite: bool = False) -> RunSummary:
    """Run every local stage in order; each raises (and the chain stops) on any failure.

    ``splits`` are merged (norm runs when train is among them); ``workers`` are the split's
    and the merge's, ``overwrite`` the split's."""
    timings: list[StageTime] = []
    split_summary, cat = _timed(timings, "split",
                                lambda: _split(config, bar, workers, overwrite))
    return after_split(config, cat, plots, bar, weighted_norm, timings, split_summary.skipped,
                       splits, workers)


def after_split(config: Config, cat: Catalogue, plots: bool = True,
                bar: ProgressBar = no_progress, weighted_norm: bool = False,
                timings: Sequence[StageTime] = (), split_skipped: int = 0,
                splits: Sequence[str] = SPLITS, workers: int | None = None) -> RunSummary:
    """weights → merge (train, val, test) → norm on the catalogue's split outputs (also what
    ``download`` runs after preparing a grid download); ``timings`` of earlier stages are
    kept in the summary; ``workers``: the merge's (default: every core)."""
    done = list(timings)
    pending = _timed(done, "weights", lambda: _weights(config, plots, bar))
    with pending:  # the plots are drawn meanwhile; an error below cancels them
        merged = _timed(done, "merge", lambda: _merge(config, bar, splits, workers))
        norm = None
        if "train" in splits:
            norm = _timed(done, "norm", lambda: _norm(config, weighted_norm, bar,
                                                      cat.total("train")))
        if pending.planned:
            _timed(done, "plots (wait)", lambda: _wait_plots(pending, bar))
    report = pending.report
    return _summary(cat, merged, norm, report, tuple(done), split_skipped)


def _timed(timings: list[StageTime], name: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    timings.append(StageTime(name, time.perf_counter() - start))
    log.info("run: %s done in %.1f s", name, timings[-1].seconds)
    return result


def _split(config: Config, bar: ProgressBar, workers: int | None = None,
           overwrite: bool = False) -> tuple[SplitSummary, Catalogue]:
    with bar(None, "split") as advance:
        return split_stage(config, workers=workers, overwrite=overwrite, progress=advance,
                           total=advance.set_total)


def _weights(config: Config, plots: bool, bar: ProgressBar) -> PendingPlots:
    with bar(planned_jets(config), "weights") as advance:
        return weights_stage(config, plots=plots, progress=advance)[1]


def _wait_plots(pending: PendingPlots, bar: ProgressBar) -> list[Path]:
    with bar(pending.planned, "plots", unit="plots") as advance:
        return pending.wait(progress=advance)


def _merge(config: Config, bar: ProgressBar, splits: Sequence[str] = SPLITS,
           workers: int | None = None) -> MergeSummary:
    with bar(merge_work(config, splits), "merge") as advance:
        return merge_stage(config, splits, progress=advance, workers=workers)


def _norm(config: Config, weighted: bool, bar: ProgressBar, train_jets: int) -> NormResult:
    with bar(train_jets, "norm") as advance:
        return norm_stage(config, weighted=weighted, progress=advance)


def _summary(cat: Catalogue, merged: MergeSummary, norm: NormResult | None,
             weights: WeightsReport, timings: tuple[StageTime, ...], skipped: int
             ) -> RunSummary:
    by_split = {r.split: r for r in merged.results}
    splits = tuple(s for s in SPLITS if s in by_split)
    return RunSummary(
        jets_in={s: dict(cat.num_jets[s]) for s in splits},
        jets_out={s: dict(by_split[s].jets_out) for s in splits},
        files={s: tuple(f.path for f in by_split[s].files) for s in splits},
        vds={s: by_split[s].vds for s in splits},
        norm=norm, histograms=weights.histograms, timings=timings, split_skipped=skipped,
        merge_reused={s: by_split[s].reused for s in splits}, plots=weights.plots,
        weights=weights)
