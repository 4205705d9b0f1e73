"""The plan of a merge: which jets go to which output file and where, fixed before any write.

Shuffle
-------
The output is a uniformly random permutation of the split's N jets, made in two passes with
memory bounded independently of N (no array of N elements is ever built):

* Output positions are cut into *buckets*: each output file into consecutive slices of at most
  ``bucket_rows`` jets (about :data:`BUCKET_BYTES` of output rows, a multiple of the chunk
  lengths of the final files, so every bucket is whole chunks but a file's last).
* The inputs are read once, in chunk-aligned *blocks* (catalogue order). Which jets of a block
  go to which bucket is a uniformly random partition of the bucket capacities, drawn block by
  block: the number of the block's jets per bucket is multivariate hypergeometric given the
  capacities still free (drawn here, ``default_rng([seed, split, 0])``), and the block's jets
  are dealt to those counts by a random permutation of the block
  (``default_rng([seed, split, 1, block])``, :mod:`upp_grid.stages.merge_shuffle`).
* Pass 1 (:mod:`upp_grid.stages.merge_shuffle`, processes over input blocks) computes the
  weights, casts to the final dtypes and appends each block's rows, grouped by bucket, to a raw
  scratch file.
* Pass 2 (:mod:`upp_grid.stages.merge_write`, threads over buckets) gathers each bucket's
  slices from the scratch files and places them at a random permutation of the bucket's
  positions (``default_rng([seed, split, 2, bucket])``), then compresses its chunks.

A uniform partition into buckets followed by a uniform order within each bucket is a uniform
permutation of all N jets. Everything is a function of the seed and the plan, never of the
number of workers or the order they finish in, so a rerun (or a resumed run) writes identical
files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from upp_grid.config import SPLITS, Config
from upp_grid.errors import InputError
from upp_grid.h5chunks import GZIP_LEVEL
from upp_grid.h5io import JETS_CHUNK, dataset, final_dtype, open_input
from upp_grid.input_types import FieldTypes
from upp_grid.inputs import FLAVOUR_LABEL
from upp_grid.stages.catalogue import Catalogue
from upp_grid.stages.histograms import ReweightHists

SCHEME = "upp-grid-merge-3"  # changes whenever the output for a given plan would change
BLOCK_BYTES = 24 * 2**20  # full-precision input rows per pass-1 read
BUCKET_BYTES = 24 * 2**20  # final-precision output rows of one pass-2 bucket (in memory)
ALIGN = JETS_CHUNK  # bucket sizes are multiples of the chunk lengths of the final files
STAGING = ".staging"
RECORD_NAME = "merge-record.json"


@dataclass(frozen=True)
class Source:
    """One catalogue file of the split."""

    path: str
    flavour: str
    num_jets: int
    chunk: int  # chunk length (rows) of the source's largest-row dataset: blocks align to it


@dataclass(frozen=True)
class GroupSpec:
    """How one HDF5 group is written: copied fields, final dtype and weight fields."""

    name: str
    shape: tuple[int, ...]
    fields: tuple[str, ...]
    dtype: np.dtype
    weights: tuple[str, ...]
    in_bytes: int  # bytes per jet in the split files

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class MergePlan:
    """Everything that determines a split's output files (see the module docstring)."""

    split: str
    sources: tuple[Source, ...]
    groups: tuple[GroupSpec, ...]
    block_source: np.ndarray  # (n_blocks,) source index of each block
    block_start: np.ndarray  # (n_blocks,) first row of the block in its source
    counts: np.ndarray  # (n_blocks, n_buckets) jets of each block going to each bucket
    bucket_file: np.ndarray  # (n_buckets,) output file of each bucket
    file_sizes: tuple[int, ...]
    file_counts: tuple[Mapping[str, int], ...]  # jets per flavour of each output file
    plan_hash: str
    seed: int

    @property
    def num_jets(self) -> int:
        return sum(s.num_jets for s in self.sources)


@dataclass(frozen=True)
class SplitPaths:
    """Where a split's outputs go."""

    out_dir: Path
    split: str

    @property
    def split_dir(self) -> Path:
        return self.out_dir / self.split

    @property
    def staging(self) -> Path:
        return self.split_dir / STAGING

    @property
    def scratch(self) -> Path:
        return self.staging / "scratch"

    @property
    def vds(self) -> Path:
        return self.out_dir / f"pp_output_{self.split}_vds.h5"

    @property
    def record(self) -> Path:
        return self.split_dir / RECORD_NAME

    def name(self, index: int) -> str:
        return f"pp_output_{self.split}-full_{index}.h5"

    def final(self, index: int) -> Path:
        return self.split_dir / self.name(index)

    def staged(self, index: int) -> Path:
        return self.staging / self.name(index)


def split_index(split: str) -> int:
    return SPLITS.index(split)


def file_sizes(num_jets: int, per_file: int | None) -> tuple[int, ...]:
    """Jets per output file: all ``per_file`` but the last, which holds the remainder."""
    if not per_file or num_jets <= per_file:
        return (num_jets,)
    full, rest = divmod(num_jets, per_file)
    return (per_file,) * full + ((rest,) if rest else ())


def _bucket_rows(row_bytes: int, budget: int) -> int:
    return max(ALIGN, budget // max(row_bytes, 1) // ALIGN * ALIGN)


def _sources(config: Config, cat: Catalogue, split: str) -> tuple[Source, ...]:
    out = []
    for flavour in config.flavour_names:
        for path in cat.files.get(split, {}).get(flavour, []):
            with open_input(Path(path)) as f:
                n = int(dataset(f, config.jets_name).shape[0])
                out.append(Source(str(path), flavour, n, _chunk(f, config)))
    return tuple(out)


def _chunk(f: h5py.File, config: Config) -> int:
    """Chunk length of the dataset with the most bytes per jet (1 if not chunked)."""
    sets = [dataset(f, g) for g in config.variables]
    big = max(sets, key=lambda ds: ds.dtype.itemsize * int(np.prod(ds.shape[1:],
                                                                    dtype=np.int64)))
    return int(big.chunks[0]) if big.chunks else 1


def _wanted_fields(config: Config, split: str, group: str, names: Sequence[str]) -> list[str]:
    """Fields of ``group`` written for ``split``: the configured variables (UPP's choice),
    plus ``flavour_label`` (jets) or ``valid`` (other groups); every field for ``test``."""
    if split == "test":
        return list(names)
    want = set(config.variables[group].variables)
    want.add(FLAVOUR_LABEL if group == config.jets_name else "valid")
    missing = sorted(want - set(names))
    if missing:
        raise InputError(f"split outputs of {split}: '{group}' has no field '{missing[0]}'")
    return [n for n in names if n in want]


def _group_specs(config: Config, split: str, sources: Sequence[Source],
                 hists: Mapping[str, ReweightHists]) -> tuple[GroupSpec, ...]:
    """Per group: the fields written and their dtypes, from the union of the sources' types
    (never from one file: :mod:`upp_grid.input_types`), then the config's precision."""
    if not sources:
        raise InputError(f"no {split} files in the catalogue")
    types = FieldTypes()
    common: dict[str, list[str]] = {}
    itemsize: dict[str, int] = {}
    for src in sources:
        with open_input(Path(src.path)) as f:
            for g in config.variables:
                ds = dataset(f, g)
                types.add(Path(src.path), g, ds.dtype, ds.shape[1:])
                names = set(ds.dtype.names)
                common[g] = [n for n in common.get(g, ds.dtype.names) if n in names]
                itemsize[g] = max(itemsize.get(g, 0), ds.dtype.itemsize)
    g_cfg = config.global_
    specs = []
    for g in config.variables:
        fields = _wanted_fields(config, split, g, common[g])
        base = final_dtype(np.dtype([(n, types.dtype(g, n)) for n in fields]),
                           g_cfg.precision, g_cfg.full_precision_vars)
        weights = tuple(name for name, h in hists.items() if h.reweight.group == g)
        dtype = np.dtype(base.descr + [(w, "<f4") for w in weights])
        shape = types.shapes[g][0]
        per_jet = int(np.prod(shape, dtype=np.int64))
        specs.append(GroupSpec(g, tuple(shape), tuple(fields), dtype, weights,
                               itemsize[g] * per_jet))
    return tuple(specs)


def _blocks(sources: Sequence[Source], in_bytes: int) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Source, first row and size of every block: about :data:`BLOCK_BYTES` of input,
    a whole number of the source's chunks."""
    src, start, size = [], [], []
    for i, s in enumerate(sources):
        rows = max(s.chunk, BLOCK_BYTES // max(in_bytes, 1) // s.chunk * s.chunk)
        for a in range(0, s.num_jets, rows):
            src.append(i)
            start.append(a)
            size.append(min(rows, s.num_jets - a))
    as_int = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return as_int(src), as_int(start), as_int(size)


def _buckets(sizes: Sequence[int], bucket_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Capacity and output file of every bucket."""
    cap, owner = [], []
    for k, n in enumerate(sizes):
        for a in range(0, n, bucket_rows):
            cap.append(min(bucket_rows, n - a))
            owner.append(k)
    return np.asarray(cap, dtype=np.int64), np.asarray(owner, dtype=np.int64)


def assign(block_sizes: np.ndarray, capacities: np.ndarray, rng: np.random.Generator
           ) -> np.ndarray:
    """Jets of each block per bucket: a uniformly random partition of all jets into buckets
    of the given capacities, drawn block by block (multivariate hypergeometric)."""
    counts = np.zeros((len(block_sizes), len(capacities)), dtype=np.int64)
    free = capacities.astype(np.int64).copy()
    for i, b in enumerate(block_sizes):
        counts[i] = rng.multivariate_hypergeometric(free, int(b))
        free -= counts[i]
    return counts


def make_plan(config: Config, split: str, cat: Catalogue, hists: Mapping[str, ReweightHists],
              hist_digest: str) -> MergePlan:
    """The plan of ``split``: sources, dtypes, blocks, buckets, and the random partition."""
    sources = _sources(config, cat, split)
    groups = _group_specs(config, split, sources, hists)
    in_bytes = sum(g.in_bytes for g in groups)
    num = sum(s.num_jets for s in sources)
    block_source, block_start, block_size = _blocks(sources, in_bytes)
    sizes = file_sizes(num, config.global_.num_jets_per_output_file)
    out_bytes = sum(g.row_bytes for g in groups)
    capacities, bucket_file = _buckets(sizes, _bucket_rows(out_bytes, BUCKET_BYTES))
    seed = config.global_.seed
    rng = np.random.default_rng([seed, split_index(split), 0])
    counts = assign(block_size, capacities, rng)
    labels = np.asarray([config.flavour_names.index(s.flavour) for s in sources], dtype=np.int64)
    file_counts = _file_counts(config, counts, labels[block_source], bucket_file, len(sizes))
    digest = _plan_digest(config, split, sources, groups, hist_digest, cat.digest)
    return MergePlan(split, sources, groups, block_source, block_start, counts, bucket_file,
                     sizes, file_counts, digest, seed)


def _file_counts(config: Config, counts: np.ndarray, block_label: np.ndarray,
                 bucket_file: np.ndarray, n_files: int) -> tuple[Mapping[str, int], ...]:
    by_label = np.zeros((len(config.flavour_names), counts.shape[1]), dtype=np.int64)
    np.add.at(by_label, block_label, counts)
    per = np.stack([by_label[:, bucket_file == k].sum(axis=1) for k in range(n_files)])
    return tuple({f: int(n) for f, n in zip(config.flavour_names, row, strict=True)}
                 for row in per)


def _plan_digest(config: Config, split: str, sources: Sequence[Source],
                 groups: Sequence[GroupSpec], hist_digest: str, cat_digest: str) -> str:
    """Identifies the output: the same inputs, config and histograms give the same hash (no
    file times: two clean runs give byte-identical files)."""
    g = config.global_
    items = {
        "scheme": SCHEME, "split": split, "config": config.config_hash, "seed": g.seed,
        "per_file": g.num_jets_per_output_file, "precision": g.precision,
        "full_precision_vars": list(g.full_precision_vars), "compression": g.compression,
        "sources": [[s.path, s.flavour, s.num_jets] for s in sources], "catalogue": cat_digest,
        "groups": [[x.name, list(x.shape), x.dtype.descr, list(x.weights)] for x in groups],
        "histograms": hist_digest, "block_bytes": BLOCK_BYTES, "bucket_bytes": BUCKET_BYTES,
        "gzip_level": GZIP_LEVEL,
    }
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()

