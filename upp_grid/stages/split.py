"""Split stage: one exact pass per input file into split, region, sample and flavour files.

:func:`split_file` is the grid payload: it splits one input file into a directory with the
fixed names ``output_<split>_<region>_<sample>_<flavour>.h5`` and always writes every declared
output, even one with zero jets. A jet goes to an output when it passes the split cuts, the
region cuts and the flavour cuts. The test split takes no region cuts, as in UPP, so a sample's
test jets cover its whole kinematic range: one test output per sample and flavour, of the
region ``inclusive`` (written once, however many regions use the sample);
``global.test_region_cuts: true`` applies the region cuts to test as well. A jet that would
land in two outputs of the same split, or in two splits, is an error: the whole file is still
scanned to count such jets exactly, and nothing is published.

A group's ``selection`` (UPP's track selection) makes the entries failing it invalid in every
split (atlas-ftag-tools' ``TrackSelector``: ``valid`` false, floats NaN, integers -1).

Per batch of rows (chunk-aligned, capped in bytes so memory stays flat), the jets are routed to
at most one output each; then every group is read once, the selected rows are gathered as opaque
records ordered by output, the fields each split keeps are packed in a few byte-run copies, and
each output receives one contiguous slice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import combinations, pairwise
from pathlib import Path

import h5py
import numpy as np
from ftag.cuts import Cut
from ftag.track_selector import TrackSelector

from upp_grid.config import SPLITS, Component, Config
from upp_grid.errors import BookkeepingError, InputError, is_disk_full
from upp_grid.h5io import (
    AtomicH5Writer,
    FieldPacker,
    aligned_batch_size,
    dataset,
    intermediate_codec,
    open_input,
    read_rows,
    short_error,
    sub_dtype,
)
from upp_grid.inputs import FLAVOUR_LABEL

log = logging.getLogger(__name__)

RECORD_NAME = "split-record.json"
SPLIT_FORMAT = 3  # bump when the content of split outputs changes: old units are redone
FLAVOUR_DTYPE = np.dtype("i4")
BATCH_BYTES = 48 * 2**20  # per group and batch: bounds memory whatever the batch_size
CHUNK_BYTES = 256 * 2**10  # uncompressed bytes per output chunk (small: less buffering)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Output:
    """One declared output of the split: a split and a component."""

    split: str
    component: Component
    flavour_label: int

    @property
    def name(self) -> str:
        return f"{self.split}_{self.component.name}"

    @property
    def filename(self) -> str:
        return f"output_{self.name}.h5"


@dataclass
class SplitRecord:
    """Bookkeeping of one input file: jets read, per output, and in no output."""

    input: str
    jets_read: int
    outputs: dict[str, int] = field(default_factory=dict)
    no_component: int = 0
    input_size: int = 0
    input_mtime_ns: int = 0
    split_hash: str = ""  # split_hash(config, samples)
    rows: tuple[int, int] | None = None  # [start, stop) of the input; None: the whole file
    samples: tuple[str, ...] = ()  # the samples the input was split for
    # NaN/inf per jets field over the jets written (see nonfinite_jets); and the jets sent to
    # no component because a cut or jets reweight variable was NaN/inf (in no_component)
    nonfinite: dict[str, int] = field(default_factory=dict)
    nonfinite_dropped: int = 0
    reweight_fields: tuple[str, ...] = ()  # reweight_fields(config) of the split

    def check(self) -> None:
        """Jets read must equal jets written plus jets in no component, exactly."""
        written = sum(self.outputs.values())
        if written + self.no_component != self.jets_read:
            raise BookkeepingError(
                f"{self.input}: read {self.jets_read} jets but wrote {written} and left "
                f"{self.no_component} in no component"
            )

    def per_split(self) -> dict[str, int]:
        """Jets written per split."""
        out = dict.fromkeys(SPLITS, 0)
        for name, count in self.outputs.items():
            out[name.split("_", 1)[0]] += count
        return out


def declared_outputs(config: Config, samples: Sequence[str]) -> list[Output]:
    """Every output a file of ``samples`` produces: each split and component of those samples.

    Ordered by split (train, val, test), then by component in config order.
    """
    labels = {name: i for i, name in enumerate(config.flavour_names)}
    return [Output(s, c, labels[c.flavour.name]) for s in SPLITS
            for c in config.split_components(s) if c.sample.name in samples]


def kept_fields(config: Config, group: str, split: str, names: Sequence[str]) -> list[str]:
    """Fields of ``group`` an output of ``split`` keeps (test: all of them).

    train/val keep the configured variables plus what later stages need: reweight and class
    variables, ``valid`` for track-like groups, and ``eventNumber`` for jet-level bookkeeping.
    ``flavour_label`` is (re)written by the split and never copied from the input.

    Raises
    ------
    InputError
        If a needed field is missing (named, with the dataset).
    """
    if split == "test":
        return [n for n in names if n != FLAVOUR_LABEL]
    want = list(config.variables[group].variables)
    if config.reweighting:
        for rw in config.reweighting.reweights:
            if rw.group == group:
                want += [*rw.reweight_vars, rw.class_var]
    want.append("eventNumber" if group == config.jets_name else "valid")
    optional = {FLAVOUR_LABEL, "eventNumber"}
    missing = [w for w in dict.fromkeys(want) if w not in names and w not in optional]
    if missing:
        raise InputError(f"dataset '{group}' has no field '{missing[0]}'")
    keep = set(want) - {FLAVOUR_LABEL}
    return [n for n in names if n in keep]


def reweight_fields(config: Config) -> list[str]:
    """``group.field`` of every reweight and class variable: what the train and val outputs
    keep for the reweighting (an output keeping these serves any config needing a subset)."""
    reweights = config.reweighting.reweights if config.reweighting else ()
    return sorted({f"{rw.group}.{v}" for rw in reweights
                   for v in (*rw.reweight_vars, rw.class_var)})


def split_hash(config: Config, samples: Sequence[str] | None = None) -> str:
    """Hash of the parts of the config (and of the format) that change split outputs: of the
    inputs of ``samples`` (default: all).

    Of the components only those of ``samples`` count (not their jet caps, which the split
    does not apply), with the flavour order (it gives the labels), so a config narrowed to one
    sample reuses that sample's split. The reweighting is not in it: the fields it needs are
    recorded apart (:func:`reweight_fields`), and outputs keeping more of them serve a config
    that needs fewer, so new bins, targets or fewer reweights reuse the split. Every unit's
    record and the catalogue hold this hash, and every later stage checks it.
    """
    data: dict = {k: config.raw.get(k) for k in ("variables", "global_cuts")}
    comps = [c for c in config.components if samples is None or c.sample.name in samples]
    data["components"] = [[c.region.name, repr(c.region.cuts), c.sample.name,
                           list(c.sample.patterns), c.flavour.name] for c in comps]
    data["flavours"] = list(config.flavour_names)
    data["test_region_cuts"] = config.global_.test_region_cuts
    data["flavour_cuts"] = [repr(f.cuts) for f in config.flavours]
    text = json.dumps(data, sort_keys=True, default=str) + f"{config.jets_name}:{SPLIT_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Router:
    """Routes each jet to at most one output; evaluates each distinct cut once per batch.

    A jet with NaN or ±inf in a cut variable or a jets reweight variable goes to no output
    (a cut on NaN is not a decision, and such a jet would get weight 0): counted in
    :attr:`dropped`."""

    def __init__(self, config: Config, outputs: list[Output]) -> None:
        self.outputs = outputs
        self.cuts = [config.split_cuts(o.split) + o.component.region.cuts
                     + o.component.flavour.cuts for o in outputs]
        self.overlaps: dict[tuple[int, int], int] = {}
        reweighted = [v for rw in (config.reweighting.reweights if config.reweighting else ())
                      if rw.group == config.jets_name for v in rw.reweight_vars]
        self.guarded = tuple(dict.fromkeys(
            [v for cuts in self.cuts for v in cuts.variables] + reweighted))
        self.dropped = 0

    def route(self, jets: np.ndarray) -> np.ndarray:
        """Output index per jet (-1: none). Jets in several outputs are counted in
        :attr:`overlaps` (per pair of outputs) and routed to none."""
        cache: dict[Cut, np.ndarray] = {}
        n = len(jets)
        dest = np.full(n, -1, dtype=np.int32)
        taken = np.zeros(n, dtype=np.uint16)
        finite = np.ones(n, dtype=bool)
        for var in self.guarded:
            if var in (jets.dtype.names or ()) and jets.dtype.fields[var][0].kind == "f":
                finite &= np.isfinite(jets[var])
        self.dropped += n - int(np.count_nonzero(finite))
        masks = []
        for i, cuts in enumerate(self.cuts):
            m = finite.copy()
            for cut in cuts:
                if cut not in cache:
                    cache[cut] = np.asarray(cut(jets), dtype=bool)
                m &= cache[cut]
            dest[m] = i
            taken += m
            masks.append(m)
        multi = taken > 1
        if multi.any():
            for i, j in combinations(range(len(masks)), 2):
                both = int(np.count_nonzero(masks[i] & masks[j] & multi))
                if both:
                    self.overlaps[(i, j)] = self.overlaps.get((i, j), 0) + both
            dest[multi] = -1
        return dest

    def overlap_error(self, path: Path, shown: int = 3) -> BookkeepingError:
        """One line: the total, then the largest overlaps by pair of components."""
        pairs: dict[str, int] = {}
        for (i, j), n in self.overlaps.items():
            a, b = self.outputs[i], self.outputs[j]
            if a.split == b.split:
                key = f"{a.component.name} and {b.component.name}"
            else:
                key = f"{a.name} and {b.name}"
            pairs[key] = pairs.get(key, 0) + n
        ranked = sorted(pairs.items(), key=lambda kv: -kv[1])
        text = "; ".join(f"{n} in both {key}" for key, n in ranked[:shown])
        if len(ranked) > shown:
            text += f"; and {len(ranked) - shown} more pairs"
        return BookkeepingError(
            f"{path}: {sum(self.overlaps.values())} jets would be written twice ({text}): "
            "regions, flavours, samples or split cuts overlap; nothing was written")


class BufferPool:
    """Batch buffers reused by consecutive splits in one process.

    Memory a process touches for the first time costs page faults: 65 MB of fresh buffer took
    0.08-0.26 s to fill on the 2-core VM the benchmarks run on, as much as splitting 30k jets.
    A split worker that does several units (files or row ranges) therefore keeps its buffers
    (about 3 x ``BATCH_BYTES`` per group) instead of faulting them in again for every unit.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, key: str, nbytes: int) -> np.ndarray:
        """A uint8 buffer of ``nbytes`` (contents undefined), reused across calls per ``key``."""
        buf = self._buffers.get(key)
        if buf is None or buf.nbytes < nbytes:
            self._buffers.pop(key, None)  # free the old one first: peak memory stays flat
            buf = self._buffers[key] = np.empty(max(nbytes, 1), dtype=np.uint8)
        return buf[:nbytes]


@dataclass
class _GroupPlan:
    """How one input group is read and written: dataset, per-split dtypes, reused buffers."""

    name: str
    ds: h5py.Dataset
    row_shape: tuple[int, ...]
    record: np.dtype  # one input row (n_tracks entries for 2-D groups) as an opaque record
    dtypes: dict[str, np.dtype]
    packers: dict[str, FieldPacker]
    buffer: np.ndarray  # rows read from the input
    gathered: np.ndarray  # raw bytes: selected rows of one split
    packed: np.ndarray  # raw bytes: the fields that split keeps
    selector: TrackSelector | None = None  # the group's selection (UPP's track selection)

    def gather(self, records: np.ndarray, idx: np.ndarray) -> np.ndarray:
        out = np.ndarray((len(idx),), self.record, self.gathered)
        np.take(records, idx, out=out, mode="clip")  # "raise" would buffer a copy
        return out.view(self.ds.dtype).reshape(len(idx), *self.row_shape)

    def pack(self, split: str, rows: np.ndarray) -> np.ndarray:
        packer = self.packers[split]
        if packer.identity:
            return rows
        out = np.ndarray(rows.shape, self.dtypes[split], self.packed)
        return packer.pack(rows, out)


def split_file(config: Config, path: Path, out_dir: Path, samples: Sequence[str],
               progress: Progress | None = None, rows: tuple[int, int] | None = None,
               buffers: BufferPool | None = None) -> SplitRecord:
    """Split one input file (or its rows ``[start, stop)``) into ``out_dir``, writing every
    declared output, atomically. ``buffers`` lets consecutive calls reuse their memory.

    Returns the bookkeeping record (also written to ``out_dir/split-record.json`` last, so its
    presence means the directory is complete).

    Raises
    ------
    InputError
        Unreadable file, or missing dataset/field (named, with the file).
    BookkeepingError
        Overlapping outputs (with the count and the output names), or counts that do not
        add up.
    """
    path = Path(path)
    outputs = declared_outputs(config, samples)
    if not outputs:
        raise InputError(f"{path}: no component uses sample(s) {', '.join(samples)}")
    stat = path.stat()
    record = SplitRecord(str(path), 0, input_size=stat.st_size,
                         input_mtime_ns=stat.st_mtime_ns, split_hash=split_hash(config, samples),
                         rows=None if rows is None else (int(rows[0]), int(rows[1])),
                         samples=tuple(samples), reweight_fields=tuple(reweight_fields(config)))
    with open_input(path, chunk_cache=False) as f:
        try:
            _split_open_file(config, f, path, out_dir, outputs, record, progress,
                             buffers or BufferPool())
        except (OSError, RuntimeError, KeyError) as err:  # HDF5 errors not caught closer
            if is_disk_full(err):
                raise
            raise InputError(f"{path}: HDF5 error while splitting (corrupt input or "
                             f"unwritable {out_dir}?): {short_error(err)}") from None
    record.check()
    _write_record(out_dir / RECORD_NAME, record)
    return record


def _split_open_file(config: Config, f: h5py.File, path: Path, out_dir: Path,
                     outputs: list[Output], record: SplitRecord,
                     progress: Progress | None, buffers: BufferPool) -> None:
    jets_name = config.jets_name
    dsets = {g: dataset(f, g) for g in config.variables}
    num = dsets[jets_name].shape[0]
    for g, ds in dsets.items():
        if ds.dtype.names is None:
            raise InputError(f"{path}: dataset '{g}' is not a structured dataset")
        if ds.shape[0] != num:
            raise InputError(f"{path}: dataset '{g}' has {ds.shape[0]} rows but "
                             f"'{jets_name}' has {num}")
    first, last = record.rows if record.rows is not None else (0, num)
    if not 0 <= first <= last <= num:
        raise InputError(f"{path}: rows {first}-{last} requested but '{jets_name}' has {num}")
    router = _Router(config, outputs)
    _check_cut_fields(path, jets_name, dsets[jets_name].dtype.names, router)
    batch, _ = _batch_layout(config, list(dsets.values()))
    plans = {g: _plan_group(config, path, g, ds, min(batch, max(last - first, 1)), buffers)
             for g, ds in dsets.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    writers: list[AtomicH5Writer] = []
    try:
        for o in outputs:
            spec = {g: (p.dtypes[o.split], p.row_shape) for g, p in plans.items()}
            attrs = {"split": o.split, "component": o.component.name,
                     "flavour": o.component.flavour.name, "flavour_label": o.flavour_label,
                     "input": path.name, "input_rows": [first, last]}
            writers.append(AtomicH5Writer(out_dir / o.filename, spec, intermediate_codec(),
                                          attrs, chunk_bytes=CHUNK_BYTES))
        counts = np.zeros(len(outputs), dtype=np.int64)
        labels = np.array([o.flavour_label for o in outputs], dtype=FLAVOUR_DTYPE)
        split_of = np.array([SPLITS.index(o.split) for o in outputs])
        for start in range(first, last, batch):
            stop = min(start + batch, last)
            jets = read_rows(plans[jets_name].ds, start, stop, plans[jets_name].buffer)
            dest = router.route(jets)
            if router.overlaps:  # keep scanning (jets only) to count every duplicate
                record.jets_read += stop - start
                continue
            _count_nonfinite(config, path, plans, jets, dest, (start, stop), record,
                             router.guarded)
            per_output = np.bincount(dest + 1, minlength=len(outputs) + 1)
            record.no_component += int(per_output[0])
            counts += per_output[1:]
            _write_batch(plans, jets_name, jets, dest, per_output[1:], split_of, labels,
                         writers, start, stop)
            record.jets_read += stop - start
            if progress:
                progress(stop - start)
        if router.overlaps:
            raise router.overlap_error(path)
        record.nonfinite_dropped = router.dropped
        for o, w, n in zip(outputs, writers, counts, strict=True):
            record.outputs[o.name] = w.commit(expected=int(n))
    except BaseException:
        for w in writers:
            w.abort()
        raise


def _count_nonfinite(config: Config, path: Path, plans: dict[str, _GroupPlan],
                     jets: np.ndarray, dest: np.ndarray, rows: tuple[int, int],
                     record: SplitRecord, guarded: tuple[str, ...]) -> None:
    """Count NaN/inf of every float jets field over the jets written (into ``record``; the
    ``guarded`` fields are finite there, the router saw to it); with ``global.nan_policy:
    error`` refuse one in a training variable of any group."""
    start, stop = rows
    written = dest >= 0
    for name in jets.dtype.names or ():
        if jets.dtype.fields[name][0].kind == "f" and name not in guarded:
            bad = np.count_nonzero(~np.isfinite(jets[name]) & written)
            if bad:
                key = f"{config.jets_name}.{name}"
                record.nonfinite[key] = record.nonfinite.get(key, 0) + int(bad)
    if config.global_.nan_policy != "error":
        return
    for group, variables in config.variables.items():
        data = jets if group == config.jets_name else read_rows(plans[group].ds, start, stop,
                                                               plans[group].buffer)
        keep = written if data.ndim == 1 else written[:, None] & data["valid"]
        for name in variables.inputs:
            if name in (data.dtype.names or ()) and data.dtype.fields[name][0].kind == "f":
                bad = int(np.count_nonzero(~np.isfinite(data[name]) & keep))
                if bad:
                    raise InputError(f"{path}: {group}.{name}: {bad} NaN/inf values in rows "
                                     f"{start}-{stop} (global.nan_policy: error)")


def _batch_layout(config: Config, dsets: list[h5py.Dataset]) -> tuple[int, int]:
    """``(batch rows, alignment)`` of the split's reads of ``dsets``."""
    return aligned_batch_size(dsets, config.global_.batch_size, BATCH_BYTES)


def input_rows(config: Config, path: Path) -> tuple[int, int]:
    """``(jets, alignment)`` of an input: its jets and the row multiple that keeps every batch
    read on whole chunks; ``(0, 1)`` when the file cannot be read (its split reports why)."""
    try:
        with open_input(path) as f:
            dsets = {g: dataset(f, g) for g in config.variables}
            num = int(dsets[config.jets_name].shape[0])
            _, align = _batch_layout(config, list(dsets.values()))
    except (InputError, OSError, KeyError, RuntimeError, ValueError):
        return 0, 1
    return num, align


def row_parts(num: int, align: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` row ranges ``[start, stop)`` that tile ``range(num)`` exactly, as equal as
    cuts on multiples of ``align`` allow (fewer when there are fewer such blocks)."""
    blocks = -(-num // align)
    cuts = sorted({min(num, round(k * blocks / parts) * align) for k in range(parts + 1)})
    return [(a, b) for a, b in pairwise(cuts) if b > a] or [(0, num)]


def _plan_group(config: Config, path: Path, g: str, ds: h5py.Dataset, rows: int,
                buffers: BufferPool) -> _GroupPlan:
    row_shape = tuple(ds.shape[1:])
    per_row = int(np.prod(row_shape, dtype=np.int64))
    dtypes, packers = {}, {}
    for split in SPLITS:
        try:
            fields = kept_fields(config, g, split, ds.dtype.names)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
        dtype = sub_dtype(ds.dtype, fields)
        if g == config.jets_name:
            dtype = np.dtype([*dtype.descr, (FLAVOUR_LABEL, FLAVOUR_DTYPE.str)])
        dtypes[split] = dtype
        packers[split] = FieldPacker(ds.dtype, dtype)
    record = np.dtype((np.void, ds.dtype.itemsize * per_row))
    packed_bytes = max((dtypes[s].itemsize for s in SPLITS if not packers[s].identity),
                       default=0) * per_row * rows
    return _GroupPlan(g, ds, row_shape, record, dtypes, packers,
                      buffer=np.ndarray((rows, *row_shape), ds.dtype,
                                        buffers.get(f"{g}:input", record.itemsize * rows)),
                      gathered=buffers.get(f"{g}:gathered", record.itemsize * rows),
                      packed=buffers.get(f"{g}:packed", packed_bytes),
                      selector=_selector(config, path, g, ds))


def _selector(config: Config, path: Path, group: str, ds: h5py.Dataset
              ) -> TrackSelector | None:
    """The group's ``selection`` as atlas-ftag-tools' TrackSelector (None without one)."""
    selection = config.variables[group].selection
    if not selection:
        return None
    names = set(ds.dtype.names)
    for var in ("valid", *selection.variables):
        if var not in names and var != "NSHARED":
            raise InputError(f"{path}: dataset '{group}' has no field '{var}' (needed by "
                             f"variables.{group}.selection)")
    return TrackSelector(selection)


def _write_batch(plans: dict[str, _GroupPlan], jets_name: str, jets: np.ndarray,
                 dest: np.ndarray, per_output: np.ndarray, split_of: np.ndarray,
                 labels: np.ndarray, writers: list[AtomicH5Writer], start: int,
                 stop: int) -> None:
    """Gather, pack and append one batch: each output gets one contiguous slice per group."""
    selected = dest >= 0
    if not selected.any():
        return
    idx = np.flatnonzero(selected)
    order = idx[np.argsort(dest[idx], kind="stable")]  # by output, input order within one
    dest_sorted = dest[order]
    bounds = np.concatenate([[0], np.cumsum(per_output)])
    for g, plan in plans.items():
        rows = jets if g == jets_name else read_rows(plan.ds, start, stop, plan.buffer)
        records = rows.reshape(len(rows), -1).view(plan.record).reshape(len(rows))
        for s, split in enumerate(SPLITS):
            outs = np.flatnonzero(split_of == s)
            lo, hi = bounds[outs[0]], bounds[outs[-1] + 1]
            if hi == lo:
                continue
            gathered = plan.gather(records, order[lo:hi])
            if plan.selector is not None:
                plan.selector(gathered)  # in place, on this batch's own buffer
            packed = plan.pack(split, gathered)
            if g == jets_name:
                packed[FLAVOUR_LABEL] = labels[dest_sorted[lo:hi]]
            for i in outs:
                if per_output[i]:
                    writers[i].append(g, packed[bounds[i] - lo:bounds[i + 1] - lo])


def _check_cut_fields(path: Path, jets_name: str, names: Sequence[str],
                      router: _Router) -> None:
    have = set(names)
    for o, cuts in zip(router.outputs, router.cuts, strict=True):
        for var in cuts.variables:
            if var not in have:
                raise InputError(f"{path}: dataset '{jets_name}' has no field '{var}' "
                                 f"(needed by the cuts of {o.name})")


def _write_record(path: Path, record: SplitRecord) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    tmp.replace(path)


def read_record(unit_dir: Path) -> SplitRecord | None:
    """The completion record of a unit directory, or None if absent/unreadable."""
    try:
        data = json.loads((unit_dir / RECORD_NAME).read_text())
        if data.get("rows") is not None:
            data["rows"] = (int(data["rows"][0]), int(data["rows"][1]))
        data["samples"] = tuple(data.get("samples", ()))
        data["reweight_fields"] = tuple(data.get("reweight_fields", ()))
        return SplitRecord(**data)
    except (OSError, ValueError, TypeError):
        return None

