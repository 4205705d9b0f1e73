"""Reweighting plots, drawn from the histograms already computed (no data is re-read).

Per reweight, in ``<plots_dir>/<group>/<reweight name>/``:

* ``weights.png``: the distribution of weights per class, over the histogrammed entries (jets or
  valid tracks) in populated bins;
* ``map_<var1>_<var2>.png`` for each pair of variables: the weight map per class (for more than
  two variables, the entry-weighted mean weight over the other axes);
* ``<var>.png`` for each variable: its distribution per class before and after weighting,
  normalised to unit area and divided by the bin width (a density: variable bin widths draw
  no false steps); after weighting every class equals the target, so each class has its own
  line style and both panels a legend.

Momenta, energies and masses (MeV in the ntuples, :func:`upp_grid.h5io.is_mev_scale`) are drawn
in GeV, with the unit on the axis; tick labels are plain numbers (``20``, ``100``, ``1,000``).

Overflow bins (±inf edges) are drawn one neighbouring-bin width wide. matplotlib (the ``plot``
extra) is imported here only, and only its object-oriented API with the Agg canvas is used, so
no global backend state is touched. The weights stage draws these figures in a separate process
(:mod:`upp_grid.stages.plot_process`); this module only draws one figure at a time.

Where a figure's time goes (cProfile and per-phase timers on the 26 figures of UPP's 7-reweight
list, matplotlib 3.11): almost all of it is matplotlib's per-artist work: creating each Axes
(~7 ms) and its ticks, then laying out and rasterising their labels; the pixels themselves
(pcolormesh, lines) and the PNG encoding are a few ms. A figure's fixed cost is small (an empty
800x320 figure saved: ~5 ms), so combining figures into fewer files would save little. What is
cut here:

* a :class:`Drawer` builds each layout once (axes, ticks, labels, legend, colour bar) and only
  replaces the data for the next figure of that layout (the other targets of a reweight list);
* panels that share an axis get no ticks on it (one tick set per row, not per panel), and a
  linear axis has at most six labelled ticks (text is the largest part of a redraw);
* no mathtext (a log colour bar's labels would use it, ~20 ms a process), and titles have a
  fixed position (matplotlib would measure the tick labels to place them);
* the PNG is written by Pillow as RGB at compression level 1 (half of matplotlib's default
  encoding time, files about as large).

Together: 49 % fewer CPU instructions for those 26 figures with realistic histograms (1M jets
per class), 36 % fewer for the 4 figures of the demo config (callgrind, drawing only). Every
file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from upp_grid.h5io import is_mev_scale

if TYPE_CHECKING:
    from upp_grid.stages.histograms import ReweightHists

DPI = 100
PNG_COMPRESS_LEVEL = 1  # zlib level: 1 encodes in half the time of 6, files ~10 % larger
MAX_LAYOUTS = 8  # figures a Drawer keeps for reuse (a few MB each)
_MODULES = ("matplotlib.backends.backend_agg", "matplotlib.colors", "matplotlib.ticker",
            "PIL.PngImagePlugin")


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
        raise PlottingUnavailable("matplotlib is not installed (it is a dependency of "
                                  "upp-grid: rerun `bash scripts/setup_env.sh`)") from None
    return Figure


def import_matplotlib() -> None:
    """Import everything :func:`draw` uses (most of a plotting process's start-up time).

    Raises
    ------
    PlottingUnavailable
        If matplotlib is not installed.
    """
    _figure_class()
    for module in _MODULES:
        importlib.import_module(module)


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


class Drawer:
    """Draws figures one at a time, reusing a figure for the next one with the same layout.

    A layout (kind, classes, variable, binning, scales) is built once: axes, ticks, labels,
    legend, colour bar, and empty lines or meshes. Each figure then only sets its data and
    redraws; its pixels are the same as a freshly built figure's. The last
    :data:`MAX_LAYOUTS` layouts are kept.
    """

    def __init__(self) -> None:
        self._figures: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # layout -> (figure, state)

    def draw(self, job: PlotJob) -> Path:
        """Draw one figure and write it to ``job.path`` atomically; returns the path."""
        job.path.parent.mkdir(parents=True, exist_ok=True)
        write_png(self.figure(job), job.path)
        return job.path

    def figure(self, job: PlotJob) -> Any:
        """The matplotlib figure of ``job``, drawn but not written (tests read its data)."""
        kind = _KINDS[job.kind]
        key = (job.kind, *kind.layout(job.data, job.axes))
        entry = self._figures.pop(key, None)  # re-inserted: the most recent is last
        if entry is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            fig = _figure_class()(figsize=kind.size(job.data), dpi=DPI)
            FigureCanvasAgg(fig)
            entry = (fig, kind.build(fig, job.data, job.axes))
        kind.update(entry[1], job.data, job.axes)  # if it fails, the figure is dropped
        self._figures[key] = entry
        while len(self._figures) > MAX_LAYOUTS:
            del self._figures[next(iter(self._figures))]
        return entry[0]


def draw(job: PlotJob) -> Path:
    """Draw one figure (see :class:`Drawer`) and write it to ``job.path``; returns the path."""
    return Drawer().draw(job)


def write_png(fig: Any, path: Path) -> None:
    """Render ``fig`` with Agg and write it as an RGB PNG: temporary name, then rename."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    image = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="png", compress_level=PNG_COMPRESS_LEVEL)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def drawable_edges(edges: np.ndarray) -> np.ndarray:
    """``edges`` with ±inf replaced by one neighbouring-bin width beyond the last finite edge
    (below positive edges, by one neighbouring-bin ratio, so the axis stays positive)."""
    e = np.array(edges, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(e))
    lo, hi = finite[0], finite[-1]
    width_lo = e[lo + 1] - e[lo] if hi > lo else 1.0
    width_hi = e[hi] - e[hi - 1] if hi > lo else 1.0
    e[:lo] = e[lo] - width_lo * np.arange(lo, 0, -1)
    if lo and e[lo] > 0 and e[0] <= 0:  # positive edges (a pt): extend by ratio, not width
        e[:lo] = e[lo] * (e[lo] / e[lo + 1]) ** np.arange(lo, 0, -1)
    e[hi + 1:] = e[hi] + width_hi * np.arange(1, len(e) - hi)
    return e


def _plain(v: float) -> str:
    """A tick label: ``0.01``, ``20``, ``1,000``, ``10,000``, never ``1e+06``."""
    if v == 0:
        return "0"
    if abs(v) >= 1:
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
    return np.format_float_positional(float(f"{v:.3g}"), trim="-")


def _plain_log(axis: Any) -> None:
    """Log scale with plain tick labels and no minor ticks (mathtext is slow)."""
    from matplotlib.ticker import FuncFormatter, NullLocator

    axis.set_major_formatter(FuncFormatter(lambda v, _: _plain(v)))
    axis.set_minor_locator(NullLocator())


def unit_of(variable: str) -> tuple[float, str]:
    """(scale, unit) a variable is drawn in: MeV-scale fields in GeV, others as stored."""
    return (1e-3, "GeV") if is_mev_scale(variable) else (1.0, "")


def axis_label(variable: str) -> str:
    """``pt_btagJes [GeV]``; ``eta_btagJes`` (no unit)."""
    unit = unit_of(variable)[1]
    return f"{variable} [{unit}]" if unit else variable


def shown_edges(d: PlotData, i: int) -> np.ndarray:
    """The drawable edges of axis ``i`` in the unit it is drawn in."""
    return drawable_edges(d.edges[i]) * unit_of(d.variables[i])[0]


def _is_log(edges: np.ndarray) -> bool:
    """Whether an axis over ``edges`` is drawn in log scale (positive, over two decades)."""
    return bool(edges[0] > 0 and edges[-1] / edges[0] > 100)


def _few_ticks(axis: Any) -> None:
    """At most six labelled ticks on a linear axis (every label costs its layout and glyphs)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))


def _x_axis(ax: Any, edges: np.ndarray, label: str) -> None:
    ax.set_xlabel(label, fontsize=11)
    if _is_log(edges):
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
    else:
        _few_ticks(ax.xaxis)


def _share_y(axs: Any) -> None:
    """One y range for every panel (from their current limits); ticks on the first only.

    Cheaper than ``sharey``: the other panels get no tick objects at all on that axis.
    """
    from matplotlib.ticker import NullLocator

    lo = min(ax.get_ylim()[0] for ax in axs)
    hi = max(ax.get_ylim()[1] for ax in axs)
    for i, ax in enumerate(axs):
        ax.set_ylim(lo, hi)
        if i:
            ax.yaxis.set_major_locator(NullLocator())


LINE_STYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))


def _steps(ax: Any, label: str, i: int) -> Any:
    """An empty step line of class number ``i`` (colour and line style of its own)."""
    return ax.plot([], [], drawstyle="steps-post", label=label, color=f"C{i}",
                   linestyle=LINE_STYLES[i % len(LINE_STYLES)], linewidth=1.6)[0]


def _set_steps(line: Any, edges: np.ndarray, values: np.ndarray) -> None:
    line.set_data(edges, np.append(values, values[-1:]))


def _autoscale(ax: Any) -> None:
    """Limits from the current data, as a new Axes would have them."""
    ax.set_autoscalex_on(True)
    ax.set_autoscaley_on(True)
    ax.relim()
    ax.autoscale_view()


def _labels(d: PlotData) -> tuple[Any, ...]:
    return (d.class_var, tuple(d.labels[c] for c in d.classes))


# --------------------------------------------------------------------------- weights.png
def _positive_weights(d: PlotData) -> np.ndarray:
    """Weights of the populated bins of every class, if all positive (else none)."""
    populated = d.populated
    weights = np.concatenate([d.weights[c][populated] for c in d.classes])
    return weights if weights.size and weights.min() > 0 else weights[:0]


def _weights_layout(d: PlotData, _: tuple[int, ...]) -> tuple[Any, ...]:
    return (*_labels(d), bool(_positive_weights(d).size))


def _build_weights(fig: Any, d: PlotData, _: tuple[int, ...]) -> Any:
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    ax = fig.add_subplot()
    lines = [_steps(ax, d.labels[c], i) for i, c in enumerate(d.classes)]
    if _positive_weights(d).size:
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.set_yscale("log")
        _plain_log(ax.yaxis)
        ax.legend(title=d.class_var)
    ax.set_xlabel("weight", fontsize=11)
    ax.set_ylabel("entries", fontsize=11)
    return ax, lines


def _update_weights(state: Any, d: PlotData, _: tuple[int, ...]) -> None:
    ax, lines = state
    ax.set_title(f"{d.name}\nweights per class, over the histogrammed entries", fontsize=10,
                 y=1.0)
    weights = _positive_weights(d)
    if not weights.size:
        return
    lo, hi = weights.min(), weights.max()
    if hi <= lo:  # a single weight value: a spike in a readable range
        lo, hi = lo / 2, hi * 2
    bins = np.geomspace(lo, hi * 1.0001, 61)
    populated = d.populated
    for line, c in zip(lines, d.classes, strict=True):
        counts, _ = np.histogram(d.weights[c][populated], bins=bins,
                                 weights=d.hists[c][populated])
        _set_steps(line, bins, counts)
    _autoscale(ax)


# --------------------------------------------------------------------------- map_<x>_<y>.png
def _projected_weight(d: PlotData, c: int, axes: tuple[int, ...]) -> np.ndarray:
    """Entry-weighted mean weight of class ``c`` over every axis but ``axes`` (ascending)."""
    other = tuple(i for i in range(len(d.edges)) if i not in axes)
    if not other:
        return d.weights[c]
    n = d.hists[c].astype(np.float64)
    num, den = (d.weights[c] * n).sum(axis=other), n.sum(axis=other)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _maps(d: PlotData, axes: tuple[int, ...]) -> dict[int, np.ndarray]:
    return {c: _projected_weight(d, c, axes) for c in d.classes}


def _any_positive(d: PlotData) -> bool:
    """Whether a map has a positive weight (a log colour scale) anywhere."""
    return any(bool(((d.weights[c] > 0) & (d.hists[c] > 0)).any()) for c in d.classes)


def _map_layout(d: PlotData, axes: tuple[int, ...]) -> tuple[Any, ...]:
    return (*_labels(d), *(d.variables[i] for i in axes),
            *(tuple(d.edges[i].tolist()) for i in axes), _any_positive(d))


def _build_map(fig: Any, d: PlotData, axes: tuple[int, ...]) -> Any:
    from matplotlib.colors import LogNorm

    x_edges, y_edges = (shown_edges(d, i) for i in axes)
    norm = LogNorm(1, 10) if _any_positive(d) else None  # limits: set per figure
    fig.subplots_adjust(left=0.06, right=0.9, bottom=0.17, top=0.88, wspace=0.1)
    axs = fig.subplots(1, len(d.classes), squeeze=False)[0]
    empty = np.ma.masked_all((len(y_edges) - 1, len(x_edges) - 1))
    meshes = []
    for ax, c in zip(axs, d.classes, strict=True):
        meshes.append(ax.pcolormesh(x_edges, y_edges, empty, norm=norm, rasterized=True))
        ax.set_title(f"{d.class_var} {d.labels[c]}", fontsize=10, y=1.0)
        _x_axis(ax, x_edges, axis_label(d.variables[axes[0]]))
    if _is_log(y_edges):
        axs[0].set_yscale("log")
        _plain_log(axs[0].yaxis)
    else:
        _few_ticks(axs[0].yaxis)
    _share_y(axs)
    axs[0].set_ylabel(axis_label(d.variables[axes[1]]), fontsize=11)
    bar = fig.colorbar(meshes[-1], cax=fig.add_axes((0.92, 0.17, 0.012, 0.71)), label="weight")
    return meshes, norm, bar


def _update_map(state: Any, d: PlotData, axes: tuple[int, ...]) -> None:
    meshes, norm, bar = state
    maps = _maps(d, axes)
    for mesh, c in zip(meshes, d.classes, strict=True):
        mesh.set_array(np.ma.masked_less_equal(maps[c], 0).T)
    positive = np.concatenate([m[m > 0] for m in maps.values()])
    if norm is not None and positive.size:
        norm.vmin, norm.vmax = positive.min(), positive.max()
        from matplotlib.ticker import LogLocator

        bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        _plain_log(bar.ax.yaxis)  # after the limits: the colour bar resets its formatter


# --------------------------------------------------------------------------- <var>.png
def _variable_layout(d: PlotData, axes: tuple[int, ...]) -> tuple[Any, ...]:
    return (*_labels(d), d.variables[axes[0]], _is_log(shown_edges(d, axes[0])))


def density_label(variable: str) -> str:
    """The y label of a variable's distribution: a fraction per unit of the x axis."""
    unit = unit_of(variable)[1]
    return f"fraction of entries / {unit}" if unit else "fraction of entries / unit"


def _build_variable(fig: Any, d: PlotData, axes: tuple[int, ...]) -> Any:
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.14, top=0.9, wspace=0.08)
    panels = fig.subplots(1, 2)
    edges = shown_edges(d, axes[0])
    variable = d.variables[axes[0]]
    lines = []
    for ax, title in zip(panels, ("before weighting", "after weighting (classes overlap: "
                                                      "the target)"), strict=True):
        lines.append([_steps(ax, d.labels[c], i) for i, c in enumerate(d.classes)])
        ax.set_title(title, fontsize=11, y=1.0)
        _x_axis(ax, edges, axis_label(variable))
        if _is_log(edges):
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
        ax.legend(title=d.class_var, fontsize=9)
    if not _is_log(edges):
        _few_ticks(panels[0].yaxis)
    panels[0].set_ylabel(density_label(variable), fontsize=11)
    return panels, lines


def _update_variable(state: Any, d: PlotData, axes: tuple[int, ...]) -> None:
    panels, lines = state
    other = tuple(i for i in range(len(d.edges)) if i != axes[0])
    edges = shown_edges(d, axes[0])
    widths = np.diff(edges)
    for i, c in enumerate(d.classes):
        n = d.hists[c].astype(np.float64)
        for panel_lines, counts in zip(lines, (n, n * d.weights[c]), strict=True):
            marginal = counts.sum(axis=other) if other else counts
            total = marginal.sum()
            fraction = marginal / total if total > 0 else marginal
            _set_steps(panel_lines[i], edges, fraction / widths)
    for ax in panels:
        _autoscale(ax)
    _share_y(panels)


@dataclass(frozen=True)
class _Kind:
    """How one kind of figure is sized, keyed, built once per layout, and filled."""

    size: Callable[[PlotData], tuple[float, float]]
    layout: Callable[[PlotData, tuple[int, ...]], tuple[Any, ...]]
    build: Callable[[Any, PlotData, tuple[int, ...]], Any]
    update: Callable[[Any, PlotData, tuple[int, ...]], None]


_KINDS = MappingProxyType({
    "weights": _Kind(lambda d: (7, 4.5), _weights_layout, _build_weights, _update_weights),
    "map": _Kind(lambda d: (3.2 * len(d.classes) + 1.2, 3.4), _map_layout, _build_map,
                 _update_map),
    "variable": _Kind(lambda d: (11, 4.5), _variable_layout, _build_variable,
                      _update_variable),
})
