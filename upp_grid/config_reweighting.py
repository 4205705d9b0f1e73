"""The ``reweighting`` section: reweights, their bins and targets, with bounded sizes.

Bins are UPP's ``[[start, stop, n], ...]`` sub-ranges that join up. A reweight's total bin count
(overflow bins included) is bounded by :data:`MAX_BINS`: its histograms, targets and weights are
dense arrays, so a typo such as ``1e7`` bins instead of ``100`` would otherwise exhaust memory
long after ``check`` passed. Edges must be finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from upp_grid.config_reader import (
    Problems,
    Reader,
    as_int,
    closest,
    describe,
    find_flavour,
    is_number,
    plain_number,
    positive,
    show,
    suggest,
)
from upp_grid.lazy_ftag import libyaml_safe_load
from upp_grid.yamlload import SourcedList, to_plain

with libyaml_safe_load():  # ftag.flavours parses its YAML at import time
    from ftag.flavours import Flavours

if TYPE_CHECKING:
    from upp_grid.config import VariableGroup

TARGETS = ("mean", "min", "max", "uniform")
MAX_BINS = 10_000_000  # per reweight, overflow bins included
BIN_BYTES_PER_CLASS = 16  # int64 counts and float64 weights of each class, per bin
BIN_BYTES = 12  # float64 target and float32 lookup table, per bin


def _too_many_bins(
    bins: Mapping[str, tuple[tuple[float, float, int], ...]],
    rw_vars: tuple[str, ...],
    overflow: bool,
    num_classes: int,
) -> str | None:
    """The problem with a reweight of more than :data:`MAX_BINS` bins, with its memory."""
    shape = [sum(n for _, _, n in bins[v]) + 2 * overflow for v in rw_vars]
    total = math.prod(shape)
    if total <= MAX_BINS:
        return None
    classes = max(num_classes, 1)
    need = total * (BIN_BYTES_PER_CLASS * classes + BIN_BYTES)
    return (
        f"{' x '.join(f'{n:,}' for n in shape)} = {total:,} bins (overflow included) is more "
        f"than the {MAX_BINS:,} a reweight may have: its histograms would need about "
        f"{need / 2**30:,.1f} GiB for {classes} classes"
    )


@dataclass(frozen=True)
class Reweight:
    """One reweighting: per-class histograms of ``group`` over ``reweight_vars``."""

    group: str
    reweight_vars: tuple[str, ...]
    bins: Mapping[str, tuple[tuple[float, float, int], ...]]
    class_var: str
    class_target: str | int | tuple[int, ...]
    add_overflow: bool = True

    @property
    def name(self) -> str:
        """UPP's weight field name, e.g. ``weight_jets_pt_eta_target_mean_flavour_label``."""
        if isinstance(self.class_target, tuple):
            target = "_".join(map(str, self.class_target))
        else:
            target = f"{self.class_target}_{self.class_var}"
        return f"weight_{self.group}_{'_'.join(self.reweight_vars)}_target_{target}"

    def edges(self, var: str) -> np.ndarray:
        """Bin edges of ``var`` (float64), with ±inf overflow edges if ``add_overflow``."""
        parts = [np.linspace(a, b, n + 1) for a, b, n in self.bins[var]]
        edges = np.concatenate([parts[0], *(p[1:] for p in parts[1:])])
        if self.add_overflow:
            edges = np.concatenate([[-np.inf], edges, [np.inf]])
        return edges


@dataclass(frozen=True)
class Reweighting:
    """The ``reweighting`` section."""

    reweights: tuple[Reweight, ...]
    num_jets_estimate: int
    merge_num_proc: int = 1
    # the weights stage fails when a class has more of its train jets at weight 0
    max_zero_weight_fraction: float = 0.01


# --------------------------------------------------------------------------- reweighting
def _parse_bins(
    value: Any, keypath: str, p: Problems, parent: Any, key: Any
) -> tuple[tuple[float, float, int], ...] | None:
    """``[[start, stop, n], ...]`` sub-ranges that must join up; a single range may be flat."""
    example = "e.g. [[20e3, 250e3, 50], [250e3, 1e6, 50]]"
    if isinstance(value, list) and value and all(is_number(v) for v in value):
        if len(value) != 3:
            missing = " (the number of bins n is missing)" if len(value) == 2 else ""
            p.add(
                parent,
                key,
                keypath,
                f"bins are a list of [start, stop, n] ranges, {example};"
                f" got {show(value)}{missing}",
            )
            return None
        single = SourcedList([value])  # a single [start, stop, n] range, written flat
        single.file, single.line = getattr(value, "file", None), getattr(value, "line", 0)
        single.lines = [single.line]
        value = single
    if not isinstance(value, list) or not value:
        p.add(
            parent,
            key,
            keypath,
            f"bins are a list of [start, stop, n] ranges, {example}; got {describe(value)}",
        )
        return None
    ranges: list[tuple[float, float, int]] = []
    for i, rng in enumerate(value):
        here = f"{keypath}[{i}]"
        if not (isinstance(rng, list) and len(rng) == 3 and all(is_number(v) for v in rng)):
            missing = (
                " (the number of bins n is missing)"
                if isinstance(rng, list) and len(rng) == 2
                else ""
            )
            p.add(value, i, here, f"a bin range is [start, stop, n], got {show(rng)}{missing}")
            return None
        start, stop, n = rng
        if as_int(n) is None:
            p.add(value, i, here, f"the number of bins n must be a whole number, got {n!r}")
            return None
        if n <= 0:
            p.add(value, i, here, f"the number of bins n must be > 0, got {as_int(n)}")
            return None
        if not (math.isfinite(start) and math.isfinite(stop)):
            p.add(
                value,
                i,
                here,
                f"start and stop must be finite numbers, got {show(rng)} (overflow bins to "
                "±inf are added by add_overflow)",
            )
            return None
        if n > MAX_BINS:
            p.add(
                value,
                i,
                here,
                f"{as_int(n):,} bins is more than the {MAX_BINS:,} a reweight may have",
            )
            return None
        if start >= stop:
            p.add(
                value,
                i,
                here,
                f"start must be < stop, got start={plain_number(start)}, stop={plain_number(stop)}",
            )
            return None
        if ranges and start != ranges[-1][1]:
            prev = ranges[-1][1]
            what = (
                "overlaps the previous range"
                if start < prev
                else "leaves a gap after the previous range"
            )
            p.add(
                value,
                i,
                here,
                f"{what}: it starts at {plain_number(start)} but the previous range stops at "
                f"{plain_number(prev)} (each range must start where the previous one stops)",
            )
            return None
        ranges.append((float(start), float(stop), int(n)))
    return tuple(ranges)


def _check_target(value: Any) -> str | None:
    if isinstance(value, str):
        if value in TARGETS:
            return None
        suggestion = suggest(value, TARGETS) or (
            " (to target one class give its label number, e.g. 0)"
            if find_flavour(value, Flavours)
            else ""
        )
        return (
            f"must be one of {', '.join(TARGETS)}, a class label (integer) or a list of "
            f"class labels, got '{value}'{suggestion}"
        )
    if not isinstance(value, list):
        ok = as_int(value) is not None and value >= 0
        return None if ok else f"a class label is an integer >= 0, got {show(value)}"
    if not value or not all(as_int(v) is not None and v >= 0 for v in value):
        return (
            "a list target must be a non-empty list of class labels (integers >= 0), "
            f"got {to_plain(value)!r}"
        )
    return None


RW_KEYS = ("group", "reweight_vars", "bins", "class_var", "class_target", "add_overflow")


def _parse_rw_bins(
    rw: Reader, rw_vars: tuple[str, ...], p: Problems
) -> dict[str, tuple[tuple[float, float, int], ...]]:
    """Bins of each reweight variable; a misspelt variable is reported once, not twice."""
    bins_raw = rw.get("bins", dict, default=None, required=True)
    if bins_raw is None:
        return {}
    written = rw.data.get("reweight_vars")
    if not (isinstance(written, list) and len(written) == len(rw_vars)):
        rw_vars = tuple(bins_raw)  # reweight_vars is broken (reported): just check the bins
    extra = [k for k in bins_raw if k not in rw_vars]
    missing = [v for v in rw_vars if v not in bins_raw]
    bins = {}
    for var in extra:
        match = closest(var, missing)
        if match:
            missing.remove(match)
        p.add(
            bins_raw,
            var,
            rw.sub(f"bins.{var}"),
            f"bins for '{var}', which is not in "
            f"reweight_vars{suggest(var, [match] if match else rw_vars)}",
        )
    for var in missing:
        p.add(bins_raw, None, rw.sub(f"bins.{var}"), f"reweight variable '{var}' has no bins")
    for var in rw_vars:
        if var in bins_raw:
            parsed = _parse_bins(bins_raw[var], rw.sub(f"bins.{var}"), p, bins_raw, var)
            if parsed is not None:
                bins[var] = parsed
    return bins


def _parse_reweight(
    item: Any,
    kp: str,
    p: Problems,
    items: Any,
    i: int,
    groups: Mapping[str, VariableGroup],
    num_classes: int,
) -> Reweight | None:
    rw = Reader(item, kp, p, items, i)
    if not rw.ok:
        return None
    rw.check_keys(RW_KEYS)
    group = rw.get("group", str, required=True)
    if group is not None and groups and group not in groups:
        p.add(
            rw.data,
            "group",
            rw.sub("group"),
            f"group '{group}' is not in variables{suggest(group, groups)}",
        )
    rw_vars = rw.str_list("reweight_vars", required=True)
    if isinstance(rw.data.get("reweight_vars"), list) and not rw.data["reweight_vars"]:
        p.add(rw.data, "reweight_vars", rw.sub("reweight_vars"), "needs at least one variable")
    bins = _parse_rw_bins(rw, rw_vars, p)
    class_var = rw.get("class_var", str, required=True)
    target = rw.get("class_target", (str, int, float, list), required=True, check=_check_target)
    if isinstance(target, list | int | float) and class_var == "flavour_label" and num_classes:
        bad = [t for t in (target if isinstance(target, list) else [target]) if t >= num_classes]
        if bad:
            p.add(
                rw.data,
                "class_target",
                rw.sub("class_target"),
                f"class label {bad[0]} does not exist: flavour_label runs from 0 to "
                f"{num_classes - 1} (the flavours in order of the components)",
            )
            target = None
    overflow = rw.get("add_overflow", bool, default=True)
    if None in (group, class_var, target) or not rw_vars or set(bins) != set(rw_vars):
        return None
    if too_many := _too_many_bins(bins, rw_vars, overflow, num_classes):
        p.add(rw.data, "bins", rw.sub("bins"), too_many)
        return None
    if isinstance(target, list):
        target = tuple(int(t) for t in target)
    elif not isinstance(target, str):
        target = int(target)
    return Reweight(group, rw_vars, MappingProxyType(bins), class_var, target, overflow)


def parse_reweighting(
    r: Reader,
    p: Problems,
    groups: Mapping[str, VariableGroup],
    default_estimate: int,
    num_classes: int,
) -> Reweighting | None:
    r.check_keys(("reweights", "num_jets_estimate", "merge_num_proc", "max_zero_weight_fraction"))
    estimate = r.get("num_jets_estimate", int, default=default_estimate, check=positive)
    nproc = r.get("merge_num_proc", int, default=1, check=positive)
    max_zero = r.get(
        "max_zero_weight_fraction", (int, float), default=0.01, check=_fraction
    )
    items = r.get("reweights", list, default=None, required=r.ok)
    if items is not None and not items:
        p.add(
            r.data,
            "reweights",
            r.sub("reweights"),
            "needs at least one reweight (or remove the reweighting section)",
        )
    out: list[Reweight] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items or []):
        kp = r.sub(f"reweights[{i}]")
        parsed = _parse_reweight(item, kp, p, items, i, groups, num_classes)
        if parsed is None:
            continue
        if parsed.name in first:
            p.add(
                items,
                i,
                kp,
                f"duplicate reweight: reweights[{first[parsed.name]}] already "
                f"produces '{parsed.name}'",
            )
            continue
        first[parsed.name] = i
        out.append(parsed)
    return Reweighting(tuple(out), estimate, nproc, float(max_zero))


def _fraction(value: float) -> str | None:
    if 0 <= value <= 1:
        return None
    return f"must be a fraction from 0 to 1 (0.01 is 1 %), got {show(value)}"
