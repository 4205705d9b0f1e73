"""Split stage: one exact pass per input file into split × region × sample × flavour files.

:func:`split_file` is the grid payload: it splits one input file into a directory with the
fixed names ``output_<split>_<region>_<sample>_<flavour>.h5`` and always writes every declared
output, even one with zero jets. A jet goes to a component when it passes the split cuts, the
region cuts (for every split, test included) and the flavour cuts. A jet that would land in two
outputs of the same split, or in two splits, is an error: nothing is published.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ftag import Cuts
from ftag.cuts import Cut

from upp_grid.config import SPLITS, Component, Config
from upp_grid.errors import BookkeepingError, InputError
from upp_grid.h5io import (
    AtomicH5Writer,
    batch_ranges,
    dataset,
    intermediate_codec,
    open_input,
    read_rows,
    sub_dtype,
)
from upp_grid.inputs import FLAVOUR_LABEL

log = logging.getLogger(__name__)

RECORD_NAME = "split-record.json"
FLAVOUR_DTYPE = np.dtype("i4")
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
    split_hash: str = ""

    def check(self) -> None:
        """Jets read must equal jets written plus jets in no component, exactly."""
        written = sum(self.outputs.values())
        if written + self.no_component != self.jets_read:
            raise BookkeepingError(
                f"{self.input}: read {self.jets_read} jets but wrote {written} and left "
                f"{self.no_component} in no component"
            )

    def per_split(self) -> dict[str, int]:
        out = dict.fromkeys(SPLITS, 0)
        for name, count in self.outputs.items():
            out[name.split("_", 1)[0]] += count
        return out


def declared_outputs(config: Config, samples: Sequence[str]) -> list[Output]:
    """Every output a file of ``samples`` produces: each split × component of those samples."""
    labels = {name: i for i, name in enumerate(config.flavour_names)}
    comps = [c for c in config.components if c.sample.name in samples]
    return [Output(s, c, labels[c.flavour.name]) for s in SPLITS for c in comps]


def kept_fields(config: Config, group: str, split: str, names: Sequence[str]) -> list[str]:
    """Fields of ``group`` an output of ``split`` keeps (test: all of them).

    train/val keep the configured variables plus what later stages need: reweight and class
    variables, ``valid`` for track-like groups, and ``eventNumber`` for jet-level bookkeeping.
    ``flavour_label`` is (re)written by the split and never copied from the input.
    """
    if split == "test":
        return [n for n in names if n != FLAVOUR_LABEL]
    want = list(config.variables[group].variables)
    if config.reweighting:
        for rw in config.reweighting.reweights:
            if rw.group == group:
                want += [*rw.reweight_vars, rw.class_var]
    if group == config.jets_name:
        want.append("eventNumber")
    else:
        want.append("valid")
    missing = [w for w in want if w not in names and w != FLAVOUR_LABEL
               and w not in ("eventNumber",)]
    if missing:
        raise InputError(f"dataset '{group}' has no field '{missing[0]}'")
    keep = set(want) - {FLAVOUR_LABEL}
    return [n for n in names if n in keep]


def split_hash(config: Config) -> str:
    """Hash of the parts of the config that change split outputs."""
    import hashlib

    keys = ("variables", "global_cuts", "components", "reweighting")
    text = json.dumps({k: config.raw.get(k) for k in keys}, sort_keys=True, default=str)
    text += config.jets_name
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _Router:
    """Evaluates each distinct cut once per batch and combines them into output masks."""

    def __init__(self, config: Config, outputs: list[Output]) -> None:
        self.outputs = outputs
        self.split_cuts = {s: config.split_cuts(s) for s in SPLITS}

    def masks(self, jets: np.ndarray) -> list[np.ndarray]:
        cache: dict[Cut, np.ndarray] = {}

        def mask(cuts: Cuts) -> np.ndarray:
            m = np.ones(len(jets), dtype=bool)
            for cut in cuts:
                if cut not in cache:
                    cache[cut] = np.asarray(cut(jets), dtype=bool)
                m &= cache[cut]
            return m

        out = []
        for o in self.outputs:
            c = o.component
            out.append(mask(self.split_cuts[o.split]) & mask(c.region.cuts)
                       & mask(c.flavour.cuts))
        return out


def _check_disjoint(path: Path, outputs: list[Output], masks: list[np.ndarray], start: int
                    ) -> np.ndarray:
    """Fail if a jet lands in two outputs of one split or in two splits; return 'in any'."""
    split_of = np.full(len(masks[0]) if masks else 0, -1, dtype=np.int8)
    taken = np.zeros_like(split_of, dtype=np.int8)
    for o, m in zip(outputs, masks, strict=True):
        taken += m
    if masks and (taken > 1).any():
        bad = np.flatnonzero(taken > 1)
        hit = [o for o, m in zip(outputs, masks, strict=True) if m[bad[0]]]
        same_split = len({o.split for o in hit}) == 1
        what = "two outputs of split " + hit[0].split if same_split else "two splits"
        names = " and ".join(o.name for o in hit)
        raise BookkeepingError(
            f"{path}: {len(bad)} jets (first at row {start + bad[0]}) would go to {what}: "
            f"{names}. Regions, flavours or split cuts overlap; fix the config."
        )
    return taken.astype(bool)


def split_file(config: Config, path: Path, out_dir: Path, samples: Sequence[str],
               progress: Progress | None = None) -> SplitRecord:
    """Split one input file into ``out_dir``, writing every declared output, atomically.

    Returns the bookkeeping record (also written to ``out_dir/split-record.json`` last, so its
    presence means the directory is complete).

    Raises
    ------
    InputError
        Unreadable file, or missing dataset/field (named, with the file).
    BookkeepingError
        Overlapping outputs, or counts that do not add up.
    """
    path = Path(path)
    outputs = declared_outputs(config, samples)
    if not outputs:
        raise InputError(f"{path}: no component uses sample(s) {', '.join(samples)}")
    groups = list(config.variables)
    jets_name = config.jets_name
    batch_size = config.global_.batch_size
    router = _Router(config, outputs)
    writers: list[AtomicH5Writer] = []
    stat = path.stat()
    record = SplitRecord(str(path), 0, input_size=stat.st_size,
                         input_mtime_ns=stat.st_mtime_ns, split_hash=split_hash(config))
    with open_input(path) as f:
        dsets = {g: dataset(f, g) for g in groups}
        num = dsets[jets_name].shape[0]
        for g, ds in dsets.items():
            if ds.dtype.names is None:
                raise InputError(f"{path}: dataset '{g}' is not a structured dataset")
            if ds.shape[0] != num:
                raise InputError(f"{path}: dataset '{g}' has {ds.shape[0]} rows but "
                                 f"'{jets_name}' has {num}")
        _check_cut_fields(path, dsets[jets_name].dtype.names, outputs, router)
        dtypes = _output_dtypes(config, path, dsets)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            for o in outputs:
                spec = {g: (dtypes[o.split][g], dsets[g].shape[1:]) for g in groups}
                attrs = {"split": o.split, "component": o.component.name,
                         "flavour": o.component.flavour.name, "flavour_label": o.flavour_label,
                         "input": path.name}
                writers.append(AtomicH5Writer(out_dir / o.filename, spec, intermediate_codec(),
                                              attrs))
            counts = [0] * len(outputs)
            chunk = (dsets[jets_name].chunks or (None,))[0]
            for start, stop in batch_ranges(num, batch_size, chunk):
                jets = read_rows(dsets[jets_name], start, stop)
                masks = router.masks(jets)
                in_any = _check_disjoint(path, outputs, masks, start)
                record.no_component += int((~in_any).sum())
                batch = {g: (jets if g == jets_name else read_rows(dsets[g], start, stop))
                         for g in groups}
                for i, (o, m) in enumerate(zip(outputs, masks, strict=True)):
                    idx = np.flatnonzero(m)
                    if not len(idx):
                        continue
                    for g in groups:
                        rows = _select(batch[g], idx, dtypes[o.split][g])
                        if g == jets_name:
                            rows[FLAVOUR_LABEL] = o.flavour_label
                        writers[i].append(g, rows)
                    counts[i] += len(idx)
                record.jets_read += stop - start
                if progress:
                    progress(stop - start)
            for o, w, n in zip(outputs, writers, counts, strict=True):
                record.outputs[o.name] = w.commit(expected=n)
        except BaseException:
            for w in writers:
                w.abort()
            raise
    record.check()
    _write_record(out_dir / RECORD_NAME, record)
    return record


def _check_cut_fields(path: Path, names: Sequence[str], outputs: list[Output],
                      router: _Router) -> None:
    have = set(names)
    for o in outputs:
        cuts = router.split_cuts[o.split] + o.component.region.cuts + o.component.flavour.cuts
        for var in cuts.variables:
            if var not in have:
                raise InputError(f"{path}: dataset 'jets' has no field '{var}' "
                                 f"(needed by the cuts of {o.name})")


def _output_dtypes(config: Config, path: Path, dsets: dict) -> dict[str, dict[str, np.dtype]]:
    out: dict[str, dict[str, np.dtype]] = {}
    for split in SPLITS:
        out[split] = {}
        for g, ds in dsets.items():
            try:
                fields = kept_fields(config, g, split, ds.dtype.names)
            except InputError as err:
                raise InputError(f"{path}: {err}") from None
            dtype = sub_dtype(ds.dtype, fields)
            if g == config.jets_name:
                dtype = np.dtype(dtype.descr + [(FLAVOUR_LABEL, FLAVOUR_DTYPE.str)])
            out[split][g] = dtype
    return out


def _select(rows: np.ndarray, idx: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows ``idx`` of ``rows`` with the fields of ``dtype`` (``flavour_label`` left unset)."""
    out = np.empty((len(idx), *rows.shape[1:]), dtype=dtype)
    for name in dtype.names:
        if name != FLAVOUR_LABEL:
            out[name] = rows[name][idx]
    return out


def _write_record(path: Path, record: SplitRecord) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record), indent=1))
    os.replace(tmp, path)


def read_record(unit_dir: Path) -> SplitRecord | None:
    """The completion record of a unit directory, or None if absent/unreadable."""
    try:
        data = json.loads((unit_dir / RECORD_NAME).read_text())
        return SplitRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
