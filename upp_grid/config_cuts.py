"""Cuts in a config: UPP's cut lists parsed with one-line problems, and split cuts that overlap.

:func:`parse_cuts` reads ``[[var, op, value], ...]`` (or ``"var op value"`` strings) into
atlas-ftag-tools :class:`~ftag.cuts.Cuts`, with a did-you-mean for a mistyped operator.

:func:`split_overlaps` finds split cuts that select the same jet, without reading any input:
it evaluates every split's cuts on a probe of values around each threshold and over every
residue of each modulus (``eventNumber %10== 8``), so overlapping ``global_cuts`` are refused
when the config is loaded (``check --config-only`` included), naming the splits and a jet that
passes both.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from ftag.cuts import OPERATORS, Cuts

from upp_grid.config_reader import Problems, describe, is_number, numeric_str, suggest
from upp_grid.yamlload import to_plain

MAX_PROBE = 1_000_000  # probe points over all split-cut variables: beyond, no static check
MAX_MODULUS_SPAN = 10_000  # residues probed per variable (lcm of its moduli)


_OPERATOR_FIXES = {
    "=": "==",
    "=<": "<=",
    "=>": ">=",
    "=!": "!=",
    "<>": "!=",
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
    "!in": "notin",
    "not_in": "notin",
}


def _suggest_operator(op: Any) -> str:
    """A did-you-mean for a cut operator: ``=>`` → ``>=``, ``%10=<`` → ``%10<=``, ``=`` → ``==``."""
    text = str(op).replace(" ", "").lower()
    match = re.fullmatch(r"(%\d+)?(.*)", text)
    mod, rest = (match[1] or "", match[2]) if match else ("", text)
    for cand in (text, mod + _OPERATOR_FIXES.get(rest, rest), mod + rest[::-1]):
        if cand in OPERATORS:
            return f" (did you mean '{cand}'?)"
    return suggest(op, [o for o in OPERATORS if not o.startswith("%") or o[1:3] == "10"])


def parse_cuts(value: Any, keypath: str, p: Problems, parent: Any, key: Any) -> Cuts | None:
    """UPP's cut list ``[[var, op, value], ...]`` (or ``"var op value"`` strings) → Cuts."""
    if value is None:
        return Cuts.empty()
    if not isinstance(value, list):
        p.add(
            parent,
            key,
            keypath,
            f"expected a list of cuts [variable, operator, value], got {describe(value)}",
        )
        return None
    triples = []
    for i, cut in enumerate(value):
        here = f"{keypath}[{i}]"
        if isinstance(cut, str):
            cut = cut.split()
        if not isinstance(cut, list) or len(cut) != 3 or not isinstance(cut[0], str):
            p.add(value, i, here, f"a cut is [variable, operator, value], got {to_plain(cut)!r}")
            continue
        var, op, val = cut
        if op not in OPERATORS:
            swapped = any(isinstance(x, str) and x in OPERATORS for x in (var, val))
            hint = " (a cut is [variable, operator, value])" if swapped else _suggest_operator(op)
            p.add(value, i, here, f"unknown cut operator '{op}'{hint}")
            continue
        if op in ("in", "notin"):
            if not isinstance(val, list) or not all(is_number(v) for v in val):
                p.add(
                    value,
                    i,
                    here,
                    f"operator '{op}' needs a list of numbers, got {to_plain(val)!r}",
                )
                continue
            val = tuple(val)
        elif not is_number(val) and not (isinstance(val, str) and numeric_str(val)):
            p.add(value, i, here, f"cut value must be a number, got {to_plain(val)!r}")
            continue
        triples.append((var, op, val))
    return Cuts.from_list(triples) if len(triples) == len(value) else None


def _candidates(cuts: list[Any]) -> list[float]:
    """Values of one variable at which the outcome of its cuts can change."""
    values: set[float] = set()
    moduli = []
    for cut in cuts:
        op, val = cut.operator, cut.value
        if op.startswith("%"):
            moduli.append(int(re.match(r"%(\d+)", op)[1]))
            continue
        for v in (val if isinstance(val, (list, tuple)) else [val]):
            v = float(v)
            values.update((v - 1, v - 0.5, v, v + 0.5, v + 1))
    if moduli:
        span = math.lcm(*moduli)
        if span > MAX_MODULUS_SPAN:
            return []
        base = sorted(values) or [0.0]
        values.update(float(b + r) for b in (0.0, *base) if b == int(b) for r in range(span))
    return sorted(values)


def split_overlaps(split_cuts: Mapping[str, Cuts]) -> list[tuple[str, str, str]]:
    """Pairs of splits whose cuts both select some jet: ``(a, b, "var=value, ...")``.

    Exact for the cut forms configs use (comparisons, ``in``/``notin``, ``%N`` moduli): the
    probe holds a value on each side of every threshold and every residue of each modulus.
    Returns nothing when the probe would exceed :data:`MAX_PROBE` points."""
    by_var: dict[str, list[Any]] = {}
    for cuts in split_cuts.values():
        for cut in cuts:
            by_var.setdefault(cut.variable, []).append(cut)
    if not by_var:
        return [(a, b, "every jet") for a, b in itertools.combinations(split_cuts, 2)]
    axes = {var: _candidates(cs) for var, cs in by_var.items()}
    if any(not ax for ax in axes.values()) or math.prod(map(len, axes.values())) > MAX_PROBE:
        return []
    grids = np.meshgrid(*[np.asarray(ax) for ax in axes.values()], indexing="ij")
    probe = np.zeros(grids[0].size, dtype=[(v, "f8") for v in axes])
    for var, grid in zip(axes, grids, strict=True):
        probe[var] = grid.ravel()
    masks = {split: _mask(cuts, probe) for split, cuts in split_cuts.items()}
    out = []
    for a, b in itertools.combinations(split_cuts, 2):
        both = np.flatnonzero(masks[a] & masks[b])
        if both.size:
            jet = probe[both[0]]
            example = ", ".join(f"{v}={_fmt(jet[v])}" for v in axes)
            out.append((a, b, example))
    return out


def _mask(cuts: Cuts, probe: np.ndarray) -> np.ndarray:
    mask = np.ones(len(probe), dtype=bool)
    for cut in cuts:
        mask &= np.asarray(cut(probe), dtype=bool)
    return mask


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
