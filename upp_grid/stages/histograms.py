"""A reweight's histograms, the weight lookup, and the ``histograms.h5`` file.

:class:`ReweightHists` holds one reweight's bin edges, per-class histograms, target and per-bin
weights; :func:`compute_weights` looks up the weight of every jet (or valid track) in it, for
the merge. :func:`write_histograms` / :func:`load_histograms` store it in UPP's layout. The bin
convention is described in :mod:`upp_grid.stages.weights`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np

from upp_grid.config import Reweight
from upp_grid.errors import InputError
from upp_grid.h5io import open_input

VLEN_STR = h5py.special_dtype(vlen=str)


# --------------------------------------------------------------------------- the interface
@dataclass(frozen=True)
class ReweightHists:
    """Histograms, target and per-bin weights of one reweight (see the module docstring)."""

    reweight: Reweight
    edges: tuple[np.ndarray, ...]
    classes: tuple[int, ...]
    hists: Mapping[int, np.ndarray]
    target: np.ndarray
    weights: Mapping[int, np.ndarray]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(e) - 1 for e in self.edges)

    @property
    def populated(self) -> np.ndarray:
        """Bins where every class has entries (the bins with non-zero weights)."""
        return np.logical_and.reduce([self.hists[c] > 0 for c in self.classes])

    @cached_property
    def table(self) -> np.ndarray:
        """float32 lookup ``[class_index, flat_bin]``; an extra row and column of zeros serve
        unknown classes and entries with no bin."""
        n_bins = int(np.prod(self.shape))
        out = np.zeros((len(self.classes) + 1, n_bins + 1), dtype=np.float32)
        for i, c in enumerate(self.classes):
            out[i, :n_bins] = self.weights[c].ravel()
        return out


def flat_bins(edges: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> np.ndarray:
    """Flat (C-order) bin of each entry over ``edges``; -1 where it has no bin."""
    shape = tuple(len(e) - 1 for e in edges)
    ok = np.ones(len(values[0]), dtype=bool)
    index = []
    for e, x, n in zip(edges, values, shape, strict=True):
        i = np.searchsorted(e, x, side="right") - 1
        ok &= (i >= 0) & (i < n)
        index.append(i)
    flat = np.ravel_multi_index(index, shape, mode="clip")
    flat[~ok] = -1
    return flat


LOOKUP_SPAN = 1 << 16  # integer class values spanning at most this are indexed by a table


def _class_index(classes: Sequence[int], values: np.ndarray) -> np.ndarray:
    """Index of each value in ``classes`` (sorted); ``len(classes)`` for unknown values."""
    known = np.asarray(classes, dtype=np.int64)
    if values.dtype.kind in "iu" and len(known) and len(values):
        lo, hi = int(values.min()), int(values.max())
        if hi - lo < LOOKUP_SPAN:  # a table over the values' range: one gather
            table = np.full(hi - lo + 1, len(known), dtype=np.int64)
            inside = known[(known >= lo) & (known <= hi)]
            table[inside - lo] = np.searchsorted(known, inside)
            return table[values.astype(np.int64) - lo]
    values = values.astype(np.int64)
    idx = np.searchsorted(known, values)
    hit = idx < len(known)
    hit[hit] = known[idx[hit]] == values[hit]
    return np.where(hit, idx, len(known))


class WeightMemo:
    """What the reweights of one batch of rows share, computed once: the entries (valid track
    entries, or every jet), their flat bins per set of variables and edges, and their class
    index per class variable and classes. UPP's reweighting list has six jets reweights over the
    same ``pt``/``eta`` bins: with a memo they bin the jets once instead of six times."""

    def __init__(self) -> None:
        self._values: dict[tuple[Any, ...], np.ndarray] = {}

    def get(self, key: tuple[Any, ...], make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self._values:
            self._values[key] = make()
        return self._values[key]


def compute_weights(h: ReweightHists, rows: np.ndarray, memo: WeightMemo | None = None
                    ) -> np.ndarray:
    """float32 weights of ``rows`` (1-D jets or 2-D ``(n, n_tracks)`` with ``valid``).

    0 for invalid track entries, for classes not in ``h.classes`` and for values with no bin.
    ``memo``: shared by every call on the same ``rows`` (see :class:`WeightMemo`).
    """
    memo = memo or WeightMemo()
    rw = h.reweight
    out = np.zeros(rows.shape, dtype=np.float32)
    mask = rows["valid"] if "valid" in (rows.dtype.names or ()) else None
    if mask is not None and not mask.any():
        return out

    def entries(name: str) -> np.ndarray:  # one field of the entries (valid tracks, or jets)
        return memo.get(("field", name), lambda: rows[name][mask] if mask is not None
                        else rows[name].reshape(-1))

    edges_key = tuple(e.tobytes() for e in h.edges)
    flat = memo.get(("bins", tuple(rw.reweight_vars), edges_key),
                    lambda: flat_bins(h.edges, [entries(v) for v in rw.reweight_vars]))
    n_bins = h.table.shape[1] - 1
    cls = memo.get(("class", rw.class_var, tuple(h.classes)),
                   lambda: _class_index(h.classes, entries(rw.class_var)))
    cell = memo.get(("cell", tuple(rw.reweight_vars), edges_key, n_bins, tuple(h.classes)),
                    lambda: cls * (n_bins + 1) + np.where(flat < 0, n_bins, flat))
    w = h.table.reshape(-1)[cell]  # h.table[cls, bin], as one gather
    if mask is not None:
        out[mask] = w
    else:
        out[...] = w.reshape(rows.shape)
    return out


# --------------------------------------------------------------------------- histograms.h5
def write_histograms(path: Path, hists: Sequence[ReweightHists],
                     attrs: Mapping[str, Any]) -> None:
    """Write ``histograms.h5`` in UPP's layout, atomically (temporary file + rename).

    ``/<group>/<name>/{bins/bin_i, rw_vars, class_var, weights/<class>}`` exactly as UPP's
    ``Reweight.save_weights_hdf5`` (float64 edges and weights, vlen-str names), plus
    ``hists/<class>`` (int64 counts), ``target`` (float64) and the reweight as a JSON attr.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            for h in hists:
                _write_reweight(f.require_group(h.reweight.group), h)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_reweight(parent: h5py.Group, h: ReweightHists) -> None:
    rw = h.reweight
    g = parent.create_group(rw.name)
    g.attrs["reweight"] = json.dumps(_reweight_dict(rw))
    bins = g.create_group("bins")
    for i, e in enumerate(h.edges):
        bins.create_dataset(f"bin_{i}", data=np.asarray(e, dtype=np.float64))
    g.create_dataset("rw_vars", data=np.array(rw.reweight_vars, dtype=VLEN_STR))
    g.create_dataset("class_var", data=np.array([rw.class_var], dtype=VLEN_STR))
    for name, per_class in (("weights", h.weights), ("hists", h.hists)):
        sub = g.create_group(name)
        for c in h.classes:
            sub.create_dataset(str(c), data=per_class[c])
    g.create_dataset("target", data=h.target)


def _reweight_dict(rw: Reweight) -> dict[str, Any]:
    return {"group": rw.group, "reweight_vars": list(rw.reweight_vars),
            "bins": {v: [list(r) for r in rw.bins[v]] for v in rw.reweight_vars},
            "class_var": rw.class_var,
            "class_target": list(rw.class_target) if isinstance(rw.class_target, tuple)
            else rw.class_target,
            "add_overflow": rw.add_overflow}


def _reweight_from(data: Mapping[str, Any]) -> Reweight:
    target = data["class_target"]
    bins = {v: tuple((float(a), float(b), int(n)) for a, b, n in r)
            for v, r in data["bins"].items()}
    return Reweight(data["group"], tuple(data["reweight_vars"]), MappingProxyType(bins),
                    data["class_var"], tuple(target) if isinstance(target, list) else target,
                    bool(data["add_overflow"]))


def load_histograms(path: Path) -> dict[str, ReweightHists]:
    """Read a ``histograms.h5`` written by :func:`write_histograms`, keyed by reweight name."""
    return read_histograms(path)[0]


def read_histograms(path: Path) -> tuple[dict[str, ReweightHists], str]:
    """The reweights of a ``histograms.h5`` and the catalogue digest it was made from ('' if
    it has none), in one open."""
    out = {}
    with open_input(Path(path)) as f:
        value = f.attrs.get("catalogue_hash", "")
        for group in f:
            for name in f[group]:
                out[name] = _read_reweight(f[group][name], path)
    return out, value.decode() if isinstance(value, bytes) else str(value)


def _read_reweight(g: h5py.Group, path: Path) -> ReweightHists:
    if "reweight" not in g.attrs:
        raise InputError(f"{path}: {g.name} has no 'reweight' attribute (not written by "
                         "upp-grid weights)")
    rw = _reweight_from(json.loads(g.attrs["reweight"]))
    edges = tuple(g["bins"][f"bin_{i}"][:] for i in range(len(g["bins"])))
    classes = tuple(sorted(int(c) for c in g["weights"]))
    hists = {c: g["hists"][str(c)][:] for c in classes}
    weights = {c: g["weights"][str(c)][:] for c in classes}
    return ReweightHists(rw, edges, classes, MappingProxyType(hists), g["target"][:],
                         MappingProxyType(weights))


def content_hash(hists: Mapping[str, ReweightHists]) -> str:
    """Content hash of the reweights' edges and weights (not of the file's bytes)."""
    h = hashlib.sha256()
    for name in sorted(hists):
        rh = hists[name]
        h.update(name.encode())
        for e in rh.edges:
            h.update(np.ascontiguousarray(e, dtype=np.float64).tobytes())
        for c in rh.classes:
            h.update(str(c).encode())
            h.update(np.ascontiguousarray(rh.weights[c], dtype=np.float64).tobytes())
    return h.hexdigest()

