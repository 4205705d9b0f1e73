"""Reweighting plots, drawn from the histograms already computed (no data is re-read).

Per reweight, in ``<plots_dir>/<group>/<reweight name>/``:

* ``weights.png``: the distribution of weights per class, over the histogrammed entries (jets or
  valid tracks) in populated bins;
* ``map_<var1>_<var2>.png`` for each pair of variables: the weight map per class (for more than
  two variables, the entry-weighted mean weight over the other axes);
* ``<var>.png`` for each variable: its distribution per class before and after weighting
  (normalised to unit area; after weighting every class equals the target).

Overflow bins (±inf edges) are drawn one neighbouring-bin width wide. matplotlib (the ``plot``
extra) is imported here only, and only its object-oriented API with the Agg canvas is used, so
no global backend state is touched. Figures are independent, so they are drawn by a few forked
processes; tick labels avoid mathtext, which would cost more than the rest of a plot.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from upp_grid.stages.weights import ReweightHists

log = logging.getLogger(__name__)

DPI = 80
MAX_WORKERS = 4


class PlottingUnavailable(Exception):  # noqa: N818 — reads better at the call site
    """matplotlib is not installed."""


@dataclass(frozen=True)
class PlotData:
    """What the plots of one reweight need (plain, picklable data)."""

    name: str
    group: str
    variables: tuple[str, ...]
    class_var: str
    edges: tuple[np.ndarray, ...]
    classes: tuple[int, ...]
    labels: Mapping[int, str]
    hists: Mapping[int, np.ndarray]
    weights: Mapping[int, np.ndarray]

    @classmethod
    def of(cls, h: ReweightHists, names: Mapping[int, str]) -> PlotData:
        rw = h.reweight
        return cls(rw.name, rw.group, rw.reweight_vars, rw.class_var, h.edges, h.classes,
                   {c: names.get(c, str(c)) for c in h.classes}, dict(h.hists),
                   dict(h.weights))

    @property
    def populated(self) -> np.ndarray:
        return np.logical_and.reduce([self.hists[c] > 0 for c in self.classes])


@dataclass(frozen=True)
class PlotJob:
    """One figure: ``kind`` is ``weights``, ``map`` (axes = a pair) or ``variable``."""

    data: PlotData
    kind: str
    axes: tuple[int, ...]
    path: Path


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable("matplotlib is not installed "
                                  "(pip install 'upp-grid[plot]')") from None
    return Figure


def plot_reweights(hists: Sequence[ReweightHists], plots_dir: Path,
                   class_names: Mapping[str, Mapping[int, str]],
                   workers: int | None = None) -> list[Path]:
    """Draw every plot of every reweight; returns the files written.

    Raises
    ------
    PlottingUnavailable
        If matplotlib is not installed (nothing is drawn).
    """
    _figure_class()  # imported before forking, so workers inherit it
    jobs = [job for h in hists
            for job in plan_jobs(PlotData.of(h, class_names.get(h.reweight.name, {})),
                                 plots_dir)]
    for job in jobs:
        job.path.parent.mkdir(parents=True, exist_ok=True)
    n = min(workers or os.cpu_count() or 1, MAX_WORKERS, len(jobs))
    if n <= 1:
        paths = [draw(job) for job in jobs]
    else:
        with ProcessPoolExecutor(n, mp_context=mp.get_context("fork")) as pool:
            paths = list(pool.map(draw, jobs))
    log.info("wrote %d plots to %s", len(paths), plots_dir)
    return paths


def plan_jobs(data: PlotData, plots_dir: Path) -> list[PlotJob]:
    """The figures of one reweight (maps, the slowest, first)."""
    rw_dir = plots_dir / data.group / data.name
    n = len(data.variables)
    jobs = [PlotJob(data, "map", pair, rw_dir / "map_{}_{}.png".format(
        *(data.variables[i] for i in pair))) for pair in combinations(range(n), 2)]
    jobs.append(PlotJob(data, "weights", (), rw_dir / "weights.png"))
    jobs += [PlotJob(data, "variable", (i,), rw_dir / f"{data.variables[i]}.png")
             for i in range(n)]
    return jobs


def draw(job: PlotJob) -> Path:
    """Draw and save one figure."""
    fig = _figure_class()(figsize=_SIZES[job.kind](job.data))
    _DRAW[job.kind](fig, job.data, job.axes)
    fig.savefig(job.path, dpi=DPI)
    return job.path


def drawable_edges(edges: np.ndarray) -> np.ndarray:
    """``edges`` with ±inf replaced by one neighbouring-bin width beyond the last finite edge."""
    e = np.array(edges, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(e))
    lo, hi = finite[0], finite[-1]
    width_lo = e[lo + 1] - e[lo] if hi > lo else 1.0
    width_hi = e[hi] - e[hi - 1] if hi > lo else 1.0
    e[:lo] = e[lo] - width_lo * np.arange(lo, 0, -1)
    e[hi + 1:] = e[hi] + width_hi * np.arange(1, len(e) - hi)
    return e


def _plain_log(axis: Any) -> None:
    """Log scale with plain tick labels and no minor ticks (mathtext is slow)."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _x_axis(ax: Any, edges: np.ndarray, label: str) -> None:
    ax.set_xlabel(label)
    if edges[0] > 0 and edges[-1] / edges[0] > 100:
        ax.set_xscale("log")
        _plain_log(ax.xaxis)


def _steps(ax: Any, edges: np.ndarray, values: np.ndarray, label: str) -> None:
    ax.plot(edges, np.append(values, values[-1:]), drawstyle="steps-post", label=label)


def _draw_weights(fig: Any, d: PlotData, _: tuple[int, ...]) -> None:
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.92)
    ax = fig.add_subplot()
    populated = d.populated
    weights = np.concatenate([d.weights[c][populated] for c in d.classes])
    if weights.size and weights.min() > 0 and weights.max() > weights.min():
        bins = np.geomspace(weights.min(), weights.max() * 1.0001, 61)
        for c in d.classes:
            counts, _ = np.histogram(d.weights[c][populated], bins=bins,
                                     weights=d.hists[c][populated])
            _steps(ax, bins, counts, d.labels[c])
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.legend(title=d.class_var)
    ax.set_xlabel("weight")
    ax.set_ylabel("entries")
    ax.set_title(d.name, fontsize=8)


def _projected_weight(d: PlotData, c: int, axes: tuple[int, ...]) -> np.ndarray:
    """Entry-weighted mean weight of class ``c`` over every axis but ``axes`` (ascending)."""
    other = tuple(i for i in range(len(d.edges)) if i not in axes)
    if not other:
        return d.weights[c]
    n = d.hists[c].astype(np.float64)
    num, den = (d.weights[c] * n).sum(axis=other), n.sum(axis=other)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _draw_map(fig: Any, d: PlotData, axes: tuple[int, ...]) -> None:
    from matplotlib.colors import LogNorm

    x_edges, y_edges = (drawable_edges(d.edges[i]) for i in axes)
    maps = {c: _projected_weight(d, c, axes) for c in d.classes}
    positive = np.concatenate([m[m > 0] for m in maps.values()])
    norm = LogNorm(positive.min(), positive.max()) if positive.size else None
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.17, top=0.88, wspace=0.1)
    axs = fig.subplots(1, len(d.classes), squeeze=False, sharey=True)[0]
    mesh = None
    for ax, c in zip(axs, d.classes, strict=True):
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_less_equal(maps[c], 0).T,
                             norm=norm, rasterized=True)
        ax.set_title(f"{d.class_var} {d.labels[c]}", fontsize=9)
        _x_axis(ax, x_edges, d.variables[axes[0]])
    axs[0].set_ylabel(d.variables[axes[1]])
    if mesh is not None:
        fig.colorbar(mesh, cax=fig.add_axes((0.92, 0.17, 0.012, 0.71)), label="weight")


def _draw_variable(fig: Any, d: PlotData, axes: tuple[int, ...]) -> None:
    axis = axes[0]
    other = tuple(i for i in range(len(d.edges)) if i != axis)
    edges = drawable_edges(d.edges[axis])
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.92, wspace=0.08)
    before, after = fig.subplots(1, 2, sharey=True)
    for c in d.classes:
        n = d.hists[c].astype(np.float64)
        for ax, counts in ((before, n), (after, n * d.weights[c])):
            marginal = counts.sum(axis=other) if other else counts
            total = marginal.sum()
            _steps(ax, edges, marginal / total if total > 0 else marginal, d.labels[c])
    for ax, title in ((before, "before weighting"), (after, "after weighting")):
        ax.set_title(title, fontsize=9)
        _x_axis(ax, edges, d.variables[axis])
    before.set_ylabel("fraction of entries")
    before.legend(title=d.class_var)


_DRAW = {"weights": _draw_weights, "map": _draw_map, "variable": _draw_variable}
_SIZES = {"weights": lambda d: (7, 4.5), "map": lambda d: (3.2 * len(d.classes) + 1.2, 3.4),
          "variable": lambda d: (10, 4)}
