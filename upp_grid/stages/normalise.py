"""``upp-grid norm``: input normalisation and class weights from the merged train files.

One streaming pass over every train file the merge published (its ``merge-record.json``, never a
glob), in processes, batch by batch. Each batch's mean and sum of squared deviations are computed
in float64 and combined with Chan et al.'s parallel update, so no batch size or file count can
cost precision. Track-like groups count their valid entries only; NaN values are skipped (as
UPP's ``nanmean``).

``norm_dict.yaml`` is ``{group: {var: {mean, std}}}`` over each group's ``inputs`` (UPP's
choice; ``std`` is the population standard deviation). ``class_dict.yaml`` is UPP's
``{group: {class_var: [weights]}}``: for ``flavour_label`` and every integer label variable of a
group (identifiers such as ``eventNumber`` excluded, as UPP), the weight of each value found,
in increasing value order, is ``total / count``, divided by the smallest and rounded to two
decimals.

Merge computes the unweighted statistics of every train file from the rows it writes (bucket by
bucket, same arithmetic) and caches them in the file's ``norm_stats`` attribute with the
variable lists they cover; the stage then only combines them. Without a matching cache (or with
``use_cache=False``) the file is read.

With ``weighted``, every entry counts with its jet's reweighting weight (a jets reweight, by
default the first configured; tracks take their jet's weight): means, deviations and class
counts are weighted sums. Both files say which weight was used, and how many jets, in a header.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from upp_grid import __version__
from upp_grid.config import Config
from upp_grid.errors import UppGridError
from upp_grid.fsutil import remove_stale_temps, write_text_atomic
from upp_grid.h5io import JETS_CHUNK, batch_ranges, dataset, open_input, read_rows
from upp_grid.inputs import FLAVOUR_LABEL
from upp_grid.stages.merge_publish import merge_record, merged_files

log = logging.getLogger(__name__)

STATS_ATTR = "norm_stats"  # merged train files cache their unweighted stats here
BATCH_BYTES = 48 * 2**20  # rows read per batch
DENSE_SPAN = 4096  # label values spanning more than this are counted via np.unique
CLASS_IGNORE = ("VertexIndex", "ftagTruthParentBarcode", "barcode", "eventNumber", "jetFoldHash")
Progress = Callable[[int], None]


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Moments:
    """Weight sum, mean and sum of weighted squared deviations of a set of values."""

    weight: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    entries: int = 0
    nonfinite: int = 0  # NaN/inf entries left out of the statistics

    @staticmethod
    def of(x: np.ndarray, w: np.ndarray | None = None) -> Moments:
        """Moments of ``x`` (float64 arithmetic, no BLAS), NaN and ±inf entries left out (and
        counted). The sum is taken anyway: only a non-finite sum costs a second pass."""
        x = np.asarray(x, dtype=np.float64)
        total_x = x.sum()
        bad = 0
        if not np.isfinite(total_x):
            keep = np.isfinite(x)
            bad = len(x) - int(np.count_nonzero(keep))
            x, w = x[keep], (None if w is None else w[keep])
            total_x = x.sum()
        if not len(x):
            return Moments(nonfinite=bad)
        if w is None:
            total, mean = float(len(x)), float(total_x) / len(x)
            d = x - mean
            return Moments(total, mean, float(np.square(d, out=d).sum()), len(x), bad)
        w = np.asarray(w, dtype=np.float64)
        total = float(w.sum())
        if total <= 0:
            return Moments(0.0, 0.0, 0.0, len(x), bad)
        mean = float((w * x).sum()) / total
        d = x - mean
        np.square(d, out=d)
        return Moments(total, mean, float((d * w).sum()), len(x), bad)

    def combine(self, other: Moments) -> Moments:
        """Chan et al.'s pairwise update: the moments of both sets together."""
        bad = self.nonfinite + other.nonfinite
        if other.weight == 0:
            return Moments(self.weight, self.mean, self.m2, self.entries + other.entries, bad)
        if self.weight == 0:
            return Moments(other.weight, other.mean, other.m2, self.entries + other.entries,
                           bad)
        total = self.weight + other.weight
        delta = other.mean - self.mean
        return Moments(total, self.mean + delta * other.weight / total,
                       self.m2 + other.m2 + delta * delta * self.weight * other.weight / total,
                       self.entries + other.entries, bad)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.weight) if self.weight > 0 else float("nan")


@dataclass
class Stats:
    """Running statistics of one file or of everything: moments and class counts."""

    moments: dict[str, dict[str, Moments]] = field(default_factory=dict)
    classes: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    jets: int = 0
    entries: dict[str, int] = field(default_factory=dict)
    cached_files: int = 0  # files whose statistics came from merge's cache

    def add(self, other: Stats) -> None:
        for g, per_var in other.moments.items():
            mine = self.moments.setdefault(g, {})
            for v, m in per_var.items():
                mine[v] = mine.get(v, Moments()).combine(m)
        for g, per_var in other.classes.items():
            mine_c = self.classes.setdefault(g, {})
            for v, counts in per_var.items():
                target = mine_c.setdefault(v, {})
                for label, n in counts.items():
                    target[label] = target.get(label, 0.0) + n
        self.jets += other.jets
        self.cached_files += other.cached_files
        for g, n in other.entries.items():
            self.entries[g] = self.entries.get(g, 0) + n


    def nonfinite(self) -> dict[str, int]:
        """``group.variable`` -> NaN/inf entries left out, for the variables that had any."""
        return {f"{g}.{v}": m.nonfinite for g, per in self.moments.items()
                for v, m in per.items() if m.nonfinite}

    def to_json(self) -> str:
        """Exact JSON form (floats round-trip), for the cache in merged file attributes."""
        return json.dumps({
            "jets": self.jets, "entries": self.entries,
            "moments": {g: {v: [m.weight, m.mean, m.m2, m.entries, m.nonfinite]
                            for v, m in per.items()}
                        for g, per in self.moments.items()},
            "classes": {g: {v: {str(k): n for k, n in c.items()} for v, c in per.items()}
                        for g, per in self.classes.items()}})

    @staticmethod
    def from_json(text: str) -> Stats:
        data = json.loads(text)
        return Stats(
            {g: {v: Moments(*m) for v, m in per.items()} for g, per in data["moments"].items()},
            {g: {v: {int(k): n for k, n in c.items()} for v, c in per.items()}
             for g, per in data["classes"].items()},
            int(data["jets"]), {g: int(n) for g, n in data["entries"].items()})


# --------------------------------------------------------------------------- one file
@dataclass(frozen=True)
class NormSpec:
    """What norm accumulates: per group, the variables to normalise and the class variables,
    and the jets weight field (None: unweighted)."""

    jets_name: str
    inputs: Mapping[str, tuple[str, ...]]
    labels: Mapping[str, tuple[str, ...]]
    weight: str | None

    @property
    def key(self) -> str:
        return json.dumps([self.jets_name, dict(self.inputs), dict(self.labels), self.weight],
                          sort_keys=True)


def norm_spec(config: Config, dtypes: Mapping[str, np.dtype], weight: str | None) -> NormSpec:
    """The spec for ``config``'s variables, given the merged files' dtypes per group."""
    inputs = {g: tuple(v for v in config.variables[g].inputs if v != "valid")
              for g in config.variables}
    labels = {g: class_variables(config, g, dtypes[g]) for g in config.variables}
    return NormSpec(config.jets_name, inputs, labels, weight)


@dataclass(frozen=True)
class NormTask:
    """What to accumulate from one train file."""

    path: Path
    spec: NormSpec
    use_cache: bool = True


def file_stats(task: NormTask) -> Stats:
    """Stats of one file: from its cache attribute (written by merge from the rows it wrote,
    for the same spec) or batch by batch from its data (Chan-combined)."""
    with open_input(task.path) as f:
        cached = cached_stats(f, task.spec) if task.use_cache else None
        if cached is not None:
            cached.cached_files = 1
            return cached
        stats = Stats()
        dsets = {g: dataset(f, g) for g in task.spec.inputs}
        num = dsets[task.spec.jets_name].shape[0]
        row_bytes = sum(ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
                        for ds in dsets.values())
        rows = max(JETS_CHUNK, BATCH_BYTES // max(row_bytes, 1) // JETS_CHUNK * JETS_CHUNK)
        for start, stop in batch_ranges(num, rows, JETS_CHUNK):
            batch = {g: read_rows(ds, start, stop) for g, ds in dsets.items()}
            stats.add(batch_stats(task.spec, batch))
    return stats


def cached_stats(f: h5py.File, spec: NormSpec) -> Stats | None:
    """The stats merge stored in ``f`` for ``spec``, if any."""
    try:
        data = json.loads(f.attrs[STATS_ATTR])
    except (KeyError, ValueError, TypeError):
        return None
    return Stats.from_json(data["stats"]) if data.get("spec") == spec.key else None


def stats_attr(spec: NormSpec, stats: Stats) -> str:
    """The value of the :data:`STATS_ATTR` attribute caching ``stats``."""
    return json.dumps({"spec": spec.key, "stats": stats.to_json()})


def batch_stats(spec: NormSpec, batch: Mapping[str, np.ndarray]) -> Stats:
    """Stats of one batch: valid entries of track-like groups, weighted if asked."""
    jets = batch[spec.jets_name]
    jet_w = None if spec.weight is None else jets[spec.weight].astype(np.float64)
    stats = Stats(jets=len(jets))
    for g, arr in batch.items():
        stats.add(group_stats(spec, g, arr, jet_w))
    return stats


def group_stats(spec: NormSpec, group: str, arr: np.ndarray,
                jet_w: np.ndarray | None = None) -> Stats:
    """Stats of one group's rows (``jets`` is not counted: see :func:`batch_stats`)."""
    w = jet_w
    if arr.ndim > 1:
        valid = np.flatnonzero(arr["valid"].ravel())
        if w is not None:
            w = np.repeat(w, arr.shape[1])[valid]
        arr = valid_entries(arr, valid)
    return Stats({group: {v: Moments.of(arr[v], w) for v in spec.inputs[group]}},
                 {group: {v: class_counts(arr[v], w) for v in spec.labels[group]}},
                 0, {group: len(arr)})


def count_nonfinite(spec: NormSpec, group: str, arr: np.ndarray) -> dict[str, int]:
    """NaN/inf values per training variable of ``group`` over its valid entries (``valid``
    of track-like groups): one sum per variable; only a non-finite sum costs a count."""
    out = {}
    for name in spec.inputs[group]:
        x = arr[name]
        if x.dtype.kind != "f" or np.isfinite(x.sum(dtype=np.float64)):
            continue
        bad = ~np.isfinite(x)
        if arr.ndim > 1:
            bad &= arr["valid"]
        if n := int(np.count_nonzero(bad)):
            out[f"{group}.{name}"] = n
    return out


def valid_entries(arr: np.ndarray, flat_index: np.ndarray) -> np.ndarray:
    """Entries ``flat_index`` of a C-contiguous 2-D structured array, as a 1-D array.

    Moves whole entries as raw bytes: about twice as fast as boolean indexing of the
    structured array.
    """
    raw = arr.reshape(-1).view(np.uint8).reshape(arr.size, arr.dtype.itemsize)
    return raw[flat_index].view(arr.dtype).reshape(-1)


def class_counts(values: np.ndarray, w: np.ndarray | None) -> dict[int, float]:
    """(Weighted) count of each value present."""
    v = np.asarray(values).astype(np.int64).ravel()
    if not len(v):
        return {}
    lo, hi = int(v.min()), int(v.max())
    if hi - lo > DENSE_SPAN:
        labels, inverse = np.unique(v, return_inverse=True)
        sums = np.bincount(inverse, weights=w, minlength=len(labels))
        return {int(lab): float(n) for lab, n in zip(labels, sums, strict=True)}
    present = np.flatnonzero(np.bincount(v - lo))
    sums = np.bincount(v - lo, weights=w) if w is not None else np.bincount(v - lo)
    return {int(i + lo): float(sums[i]) for i in present}


# --------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class NormResult:
    """What ``norm`` wrote and from how much data."""

    norm_path: Path
    class_path: Path
    norm: Mapping[str, Mapping[str, Mapping[str, float]]]
    classes: Mapping[str, Mapping[str, list[float]]]
    num_jets: int
    entries: Mapping[str, int]  # group -> entries used (valid tracks for track groups)
    files: tuple[Path, ...]
    weight: str | None
    nonfinite: Mapping[str, int] = field(default_factory=dict)  # NaN/inf left out, per var


def norm_paths(config: Config) -> tuple[Path, Path]:
    """Where the norm stage writes: ``norm_fname`` / ``class_fname`` (UPP's top-level keys,
    default ``norm_dict.yaml`` / ``class_dict.yaml``) under ``out_dir``."""
    out = config.global_.out_dir
    return out / config.norm_fname, out / config.class_fname


def jets_weight(config: Config, name: str | None = None) -> str:
    """The jets reweight used by ``--weighted``: ``name`` or the first jets reweight."""
    names = [rw.name for rw in (config.reweighting.reweights if config.reweighting else ())
             if rw.group == config.jets_name]
    if name is not None:
        if name not in names:
            raise UppGridError(f"unknown jets weight '{name}' (configured: "
                               f"{', '.join(names) or 'none'})")
        return name
    if not names:
        raise UppGridError(f"{config.path}: --weighted needs a reweight of group "
                           f"'{config.jets_name}'; none is configured")
    return names[0]


def class_variables(config: Config, group: str, dtype: np.dtype) -> tuple[str, ...]:
    """UPP's class variables: ``flavour_label`` (jets) and integer labels, identifiers out."""
    out = [FLAVOUR_LABEL] if group == config.jets_name and FLAVOUR_LABEL in dtype.names else []
    for var in config.variables[group].labels:
        if var not in dtype.names or var in out:
            continue
        if np.issubdtype(dtype[var], np.integer) and not any(s in var for s in CLASS_IGNORE):
            out.append(var)
    return tuple(out)


def make_tasks(config: Config, files: Sequence[Path], weight: str | None,
               use_cache: bool = True) -> list[NormTask]:
    with open_input(files[0]) as f:
        dtypes = {g: dataset(f, g).dtype for g in config.variables}
    spec = norm_spec(config, dtypes, weight)
    return [NormTask(Path(p), spec, use_cache) for p in files]


def norm_stage(config: Config, weighted: bool = False, weight: str | None = None,
               progress: Progress | None = None, use_cache: bool = True) -> NormResult:
    """Compute and write ``norm_dict.yaml`` and ``class_dict.yaml`` from the train files.

    Unweighted statistics cached by merge in each train file are used unless ``use_cache`` is
    False (then, and for ``weighted``, every file is read).

    Raises
    ------
    UppGridError
        No completed train merge, an unknown weight, or a variable whose mean or standard
        deviation is not finite or whose standard deviation is 0 (Salt would divide by it).
    """
    remove_stale_temps(config.global_.out_dir)
    outputs = merged_files(config, "train")
    merge_hash = str(merge_record(config, "train")["plan_hash"])
    files = tuple(o.path for o in outputs)
    wname = jets_weight(config, weight) if weighted else None
    tasks = make_tasks(config, files, wname, use_cache)
    total = Stats()
    for stats in _run(tasks, _nproc(config), progress):
        total.add(stats)
    norm = norm_dict(total, tasks[0].spec.inputs)
    classes = class_dict(total, config)
    norm_path, class_path = norm_paths(config)
    header = _header(total, files, wname, merge_hash)
    _write_yaml(norm_path, header, norm)
    _write_yaml(class_path, header, classes)
    log.info("norm: %d train jets from %d files (%s), %s, %d files' statistics cached by "
             "merge; %s", total.jets, len(files),
             ", ".join(f"{g}: {n} entries" for g, n in total.entries.items()),
             f"weighted by {wname}" if wname else "unweighted", total.cached_files, norm_path)
    for key, n in sorted(total.nonfinite().items()):
        log.warning("norm: %s: %d NaN/inf values left out of the mean and standard deviation",
                    key, n)
    return NormResult(norm_path, class_path, norm, classes, total.jets, dict(total.entries),
                      files, wname, total.nonfinite())


def _nproc(config: Config) -> int:
    wanted = config.reweighting.merge_num_proc if config.reweighting else 1
    return max(1, min(wanted, os.cpu_count() or 1))


def _run(tasks: Sequence[NormTask], nproc: int, progress: Progress | None) -> list[Stats]:
    """Stats per file, in file order (so the combination is reproducible)."""
    if nproc <= 1 or len(tasks) <= 1:
        out = []
        for t in tasks:
            out.append(file_stats(t))
            if progress:
                progress(out[-1].jets)
        return out
    with mp.get_context("fork").Pool(min(nproc, len(tasks))) as pool:
        out = []
        for stats in pool.imap(file_stats, tasks):
            out.append(stats)
            if progress:
                progress(stats.jets)
        return out


def norm_dict(total: Stats, inputs: Mapping[str, Sequence[str]]
              ) -> dict[str, dict[str, dict[str, float]]]:
    """``{group: {var: {mean, std}}}``; refuses non-finite values and zero spreads."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for g, variables in inputs.items():
        out[g] = {}
        for v in variables:
            m = total.moments.get(g, {}).get(v, Moments())
            mean, std = m.mean, m.std
            if not (math.isfinite(mean) and math.isfinite(std)) or std == 0:
                raise UppGridError(f"norm: {g}.{v} has mean {mean} and std {std} over "
                                   f"{m.entries} entries: cannot normalise it")
            out[g][v] = {"mean": mean, "std": std}
    return out


def class_dict(total: Stats, config: Config) -> dict[str, dict[str, list[float]]]:
    """UPP's class weights: ``total / count`` per value, divided by the smallest, 2 decimals."""
    out: dict[str, dict[str, list[float]]] = {}
    for g in config.variables:
        out[g] = {}
        for v, counts in total.classes.get(g, {}).items():
            n = np.array([counts[k] for k in sorted(counts)], dtype=np.float64)
            if not len(n) or (n <= 0).any():
                raise UppGridError(f"norm: class counts of {g}.{v} are not all positive: "
                                   f"{dict(sorted(counts.items()))}")
            weights = n.sum() / n
            out[g][v] = [float(x) for x in np.around(weights / weights.min(), 2)]
    return out


def _header(total: Stats, files: Sequence[Path], weight: str | None, merge_hash: str) -> str:
    entries = ", ".join(f"{g} {n}" for g, n in total.entries.items())
    how = f"weighted by the jets weight {weight}" if weight else "unweighted"
    where = Path(files[0]).parent if files else "?"
    return (f"# upp-grid {__version__} norm: {how}\n"
            f"# from {total.jets} train jets in {len(files)} files under {where}\n"
            f"# merge: {merge_hash} (merge_plan_hash of the train files)\n"
            f"# NaN/inf left out: {total.nonfinite() or 'none'}\n"
            f"# entries used (valid entries for track groups): {entries}\n")


def _write_yaml(path: Path, header: str, data: Mapping) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, header + yaml.safe_dump(data, sort_keys=False))
