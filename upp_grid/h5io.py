"""HDF5 building blocks: chunk-aligned batch reads, an atomic writer with exact counts.

Intermediate files (split components) use Blosc/LZ4 with byte-shuffle from ``hdf5plugin``
(already a dependency of atlas-ftag-tools): it is lossless, (de)compresses at GB/s, and squeezes
the zero-padded track rows well. gzip would cost several times the split's whole read time.
Final outputs use gzip by default because that is what Salt users and their tools expect.
Reading any file written here needs ``import hdf5plugin`` first, which this module does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np

from upp_grid.errors import BookkeepingError, InputError

log = logging.getLogger(__name__)

JETS_CHUNK = 10_000  # jets per chunk in files we write
TRACKS_CHUNK = 1_000  # jets per chunk for 2-D groups (x n_tracks)


def intermediate_codec() -> Mapping[str, Any]:
    """``create_dataset`` kwargs for lossless, fast intermediate files (Blosc LZ4 + shuffle)."""
    return dict(hdf5plugin.Blosc(cname="lz4", clevel=4, shuffle=hdf5plugin.Blosc.SHUFFLE))


def final_codec(name: str) -> Mapping[str, Any]:
    """``create_dataset`` kwargs for final outputs: ``gzip`` (default), ``lzf`` or ``none``."""
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    return {}


def open_input(path: Path) -> h5py.File:
    """Open an input file read-only; an unreadable/truncated file raises one-line InputError."""
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable HDF5 file (truncated or corrupt?): "
                         f"{_short(err)}") from None


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """``f[name]`` or a one-line InputError naming the file and the dataset."""
    if name not in f:
        raise InputError(f"{f.filename}: dataset '{name}' not found "
                         f"(has: {', '.join(sorted(f.keys())) or 'nothing'})")
    return f[name]


def batch_ranges(num: int, batch_size: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``range(num)`` exactly, aligned to ``chunk`` rows."""
    step = batch_size
    if chunk:
        step = max(chunk, (batch_size // chunk) * chunk)
    for start in range(0, num, step):
        yield start, min(start + step, num)


def read_rows(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Read rows ``[start, stop)`` into a fresh array (direct read, no intermediate copies)."""
    out = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
    if stop > start:
        try:
            ds.read_direct(out, np.s_[start:stop])
        except (OSError, ValueError) as err:
            raise InputError(f"{ds.file.filename}: cannot read '{ds.name}' rows {start}-{stop} "
                             f"(truncated or corrupt?): {_short(err)}") from None
    return out


class AtomicH5Writer:
    """Write structured datasets to ``path`` atomically, with exact counts.

    Datasets are declared up front (name → dtype and per-row shape). Rows are appended in
    batches. :meth:`commit` checks every dataset holds the same number of rows (and, if given,
    the expected number), flushes, and renames the temporary file into place. On any error the
    temporary file is removed, so ``path`` is either absent, the previous version, or complete.
    """

    def __init__(self, path: Path, groups: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                 codec: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None
                 ) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w", libver="latest")
        self.counts = dict.fromkeys(groups, 0)
        self._committed = False
        codec = dict(codec or {})
        for name, (dtype, shape) in groups.items():
            chunk_rows = TRACKS_CHUNK if shape else JETS_CHUNK
            self.file.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(chunk_rows, *shape), track_times=False, **codec,
            )
        for key, value in (attrs or {}).items():
            self.file.attrs[key] = value

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append ``rows`` (matching the declared dtype) to dataset ``name``."""
        if not len(rows):
            return
        ds = self.file[name]
        start = self.counts[name]
        ds.resize(start + len(rows), axis=0)
        ds[start:start + len(rows)] = rows
        self.counts[name] = start + len(rows)

    def commit(self, expected: int | None = None) -> int:
        """Verify counts, close and publish. Returns the number of rows written."""
        sizes = {name: self.file[name].shape[0] for name in self.counts}
        if len(set(sizes.values())) > 1 or (expected is not None and
                                            any(n != expected for n in sizes.values())):
            self.abort()
            raise BookkeepingError(f"{self.path}: row counts {sizes} differ"
                                   + (f" from the expected {expected}" if expected is not None
                                      else ""))
        self.file.close()
        os.replace(self.tmp, self.path)
        self._committed = True
        return next(iter(sizes.values()), 0)

    def abort(self) -> None:
        """Discard everything written (safe to call twice)."""
        if self._committed:
            return
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 — closing a broken file must not mask the real error
            log.debug("closing %s failed", self.tmp, exc_info=True)
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicH5Writer:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._committed:
            self.abort()
            raise BookkeepingError(f"{self.path}: writer closed without commit")


def pack(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Copy the fields of ``dtype`` from structured ``rows`` into a packed array of ``dtype``."""
    out = np.empty(rows.shape, dtype=dtype)
    for name in dtype.names:
        out[name] = rows[name]
    return out


def sub_dtype(dtype: np.dtype, fields: list[str] | tuple[str, ...]) -> np.dtype:
    """Packed dtype with ``fields`` of ``dtype``, in the input's field order."""
    keep = set(fields)
    return np.dtype([(n, dtype.fields[n][0]) for n in dtype.names if n in keep])
