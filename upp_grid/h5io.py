"""HDF5 building blocks: chunk-aligned batch reads, an atomic writer with exact counts.

Intermediate files (split components) are lossless and full precision, compressed with Blosc
LZ4 (compression level 1) *without* shuffle (``hdf5plugin``, already a dependency of
atlas-ftag-tools). Measured with ``bench/bench_split.py --codecs`` on 1M mock jets (3 files,
40 tracks/jet, 2.24 GB in, 2 cores, quiet machine), same split each time (CLI wall):

=================  ==========  ========  =============================================
codec              split wall  on disk   note
=================  ==========  ========  =============================================
blosc-lz4          1.38 s      0.27 GB   chosen: fastest and smallest
blosc-lz4-shuffle  1.72 s      0.37 GB   byte-shuffle of 33/54-byte records hurts
lzf                3.75 s      0.32 GB   2.7x slower to write
none               1.71 s      0.95 GB   3.5x more bytes to write and to re-read
=================  ==========  ========  =============================================

Level 1 (LZ4's highest acceleration in Blosc) cost 20 % less CPU per split unit than level 4
for the same size on disk. Per dataset, in isolation, Blosc LZ4 writes the packed track rows at
~2.2 GB/s against ~1.7 GB/s uncompressed (HDF5's write path is the bound, not LZ4).
gzip would cost several times the split's whole read time.
Final outputs use gzip by default because that is what Salt users and their tools expect.
Reading any file written here needs ``import hdf5plugin`` first, which this module does.
"""

from __future__ import annotations

import logging
import math
import os
import re
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
INTERMEDIATE_CODECS = ("blosc-lz4", "blosc-lz4-shuffle", "lzf", "none")
INTERMEDIATE_CODEC = "blosc-lz4"  # the codec of split outputs; see the module docstring


def intermediate_codec(name: str | None = None) -> Mapping[str, Any]:
    """``create_dataset`` kwargs for lossless, fast intermediate files (default Blosc LZ4).

    ``name`` (one of :data:`INTERMEDIATE_CODECS`) exists for the benchmark's comparison.
    """
    name = name or INTERMEDIATE_CODEC
    if name in ("blosc-lz4", "blosc-lz4-shuffle"):
        blosc = hdf5plugin.Blosc
        shuffle = blosc.SHUFFLE if name.endswith("shuffle") else blosc.NOSHUFFLE
        return dict(blosc(cname="lz4", clevel=1, shuffle=shuffle))  # see the module docstring
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name == "none":
        return {}
    raise ValueError(f"unknown intermediate codec '{name}' (one of {INTERMEDIATE_CODECS})")


def open_input(path: Path, chunk_cache: bool = True) -> h5py.File:
    """Open an input file read-only; an unreadable/truncated file raises one-line InputError.

    ``chunk_cache=False`` is for reads of whole chunks in order (the split's batches): without
    a chunk cache HDF5 reads uncompressed chunks straight into the caller's buffer instead of
    into its cache and then copying (the split's reads took 0.12 s instead of 0.2-0.35 s per
    333k-jet file).
    """
    try:
        return h5py.File(path, "r", **({} if chunk_cache else {"rdcc_nbytes": 0}))
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: not a readable HDF5 file (truncated or corrupt?): "
                         f"{short_error(err)}") from None


def short_error(err: BaseException) -> str:
    """The first line of an exception's message (HDF5 messages can span many lines)."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


_short = short_error  # backwards-compatible private name


def dataset(f: h5py.File, name: str) -> h5py.Dataset:
    """``f[name]`` or a one-line InputError naming the file and the dataset."""
    try:
        found = name in f
        ds = f[name] if found else None
    except (OSError, KeyError, RuntimeError, ValueError) as err:
        raise InputError(f"{f.filename}: cannot open dataset '{name}' (corrupt file?): "
                         f"{short_error(err)}") from None
    if not isinstance(ds, h5py.Dataset):
        what = "is not a dataset" if found else "not found"
        raise InputError(f"{f.filename}: dataset '{name}' {what} "
                         f"(has: {', '.join(sorted(f.keys())) or 'nothing'})")
    return ds


def batch_ranges(num: int, batch_size: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """``[start, stop)`` ranges covering ``range(num)`` exactly, aligned to ``chunk`` rows."""
    step = batch_size
    if chunk:
        step = max(chunk, (batch_size // chunk) * chunk)
    for start in range(0, num, step):
        yield start, min(start + step, num)


def aligned_batch_size(datasets: list[h5py.Dataset], batch_size: int,
                       max_bytes: int) -> tuple[int, int]:
    """``(batch rows, alignment)`` for reading ``datasets`` row-parallel.

    The batch is at most ``batch_size`` rows and at most ``max_bytes`` per dataset (so memory
    does not grow with the configured batch size or the track multiplicity), rounded down to a
    multiple of the least common multiple of the datasets' chunk lengths, so every read covers
    whole chunks; never less than one such multiple.
    """
    align = 1
    for ds in datasets:
        if ds.chunks:
            align = math.lcm(align, ds.chunks[0])
    sizes = [ds.dtype.itemsize * math.prod(ds.shape[1:]) for ds in datasets]
    row_bytes = max(sizes)
    rows = min(batch_size, max(1, max_bytes // max(row_bytes, 1)))
    if align * row_bytes > max_bytes:
        # chunk lengths with a huge common multiple: align on the biggest dataset only, which
        # dominates the read cost, so memory stays bounded by max_bytes
        biggest = datasets[sizes.index(row_bytes)]
        align = biggest.chunks[0] if biggest.chunks else 1
    return max(align, rows // align * align), align


def read_rows(ds: h5py.Dataset, start: int, stop: int, out: np.ndarray | None = None
              ) -> np.ndarray:
    """Rows ``[start, stop)`` of ``ds``, read directly into ``out[:stop - start]`` if given.

    Raises
    ------
    InputError
        Naming the file and dataset if HDF5 cannot read the rows (truncated or corrupt file).
    """
    if out is None:
        out = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
    else:
        out = out[:stop - start]
    if stop > start:
        try:
            ds.read_direct(out, np.s_[start:stop], np.s_[0:stop - start])
        except (OSError, ValueError, RuntimeError, TypeError) as err:
            raise InputError(f"{ds.file.filename}: cannot read '{ds.name}' rows {start}-{stop} "
                             f"(truncated or corrupt?): {short_error(err)}") from None
    return out


class AtomicH5File:
    """An HDF5 file written under a temporary name next to ``path`` and renamed into place by
    :meth:`publish`; on any error (or a close without publishing) the temporary file is
    removed, so ``path`` is either absent, the previous version, or complete."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._committed = False
        # no chunk cache: only whole chunks are written
        self.file = h5py.File(self.tmp, "w", libver="latest", rdcc_nbytes=0)

    def publish(self) -> None:
        """Close the file and rename it into place."""
        self.file.close()
        self.tmp.replace(self.path)
        self._committed = True

    def abort(self) -> None:
        """Discard everything written (safe to call twice)."""
        if self._committed:
            return
        try:
            self.file.close()
        except Exception:  # closing a broken file must not mask the real error
            log.debug("closing %s failed", self.tmp, exc_info=True)
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicH5File:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._committed:
            self.abort()
            raise BookkeepingError(f"{self.path}: writer closed without commit")


class AtomicH5Writer(AtomicH5File):
    """Write structured datasets to ``path`` atomically, with exact counts.

    Datasets are declared up front (name → dtype and per-row shape). Rows are appended in
    batches of any size; the writer buffers them and writes whole chunks only, so HDF5 never
    has to read back, decompress and recompress a partially written chunk. :meth:`commit`
    writes the last partial chunk, checks every dataset holds the same number of rows (and, if
    given, the expected number), and renames the temporary file into place. On any error the
    temporary file is removed, so ``path`` is either absent, the previous version, or complete.
    """

    def __init__(self, path: Path, groups: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                 codec: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None,
                 chunk_bytes: int | None = None) -> None:
        super().__init__(path)  # HDF5 compresses straight from our whole-chunk buffers
        self.counts = dict.fromkeys(groups, 0)
        self._datasets: dict[str, h5py.Dataset] = {}
        self._pending: dict[str, np.ndarray] = {}  # one chunk of buffered rows per dataset
        self._pending_rows = dict.fromkeys(groups, 0)
        self._written = dict.fromkeys(groups, 0)
        codec = dict(codec or {})
        for name, (dtype, shape) in groups.items():
            chunk_rows = TRACKS_CHUNK if shape else JETS_CHUNK
            if chunk_bytes:
                row_bytes = np.dtype(dtype).itemsize * math.prod(shape)
                chunk_rows = max(1, chunk_bytes // max(row_bytes, 1))
            self._datasets[name] = self.file.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                chunks=(chunk_rows, *shape), track_times=False, fill_time="never", **codec,
            )
        for key, value in (attrs or {}).items():
            self.file.attrs[key] = value

    def append(self, name: str, rows: np.ndarray) -> None:
        """Append ``rows`` (of the declared dtype and row shape) to dataset ``name``."""
        n = len(rows)
        if not n:
            return
        ds = self._datasets[name]
        chunk = ds.chunks[0]
        done = 0
        pending = self._pending_rows[name]
        if pending:
            take = min(chunk - pending, n)
            copy_rows(self._pending[name][pending:pending + take], rows[:take])
            pending += take
            done = take
            if pending == chunk:
                self._write(name, self._pending[name])
                pending = 0
        whole = (n - done) // chunk * chunk
        if whole:
            self._write(name, rows[done:done + whole])
            done += whole
        if done < n:
            if name not in self._pending:
                self._pending[name] = np.empty((chunk, *ds.shape[1:]), dtype=ds.dtype)
            copy_rows(self._pending[name][:n - done], rows[done:])
            pending = n - done
        self._pending_rows[name] = pending
        self.counts[name] += n

    def _write(self, name: str, rows: np.ndarray) -> None:
        ds = self._datasets[name]
        start = self._written[name]
        stop = start + len(rows)
        ds.resize(stop, axis=0)
        ds.write_direct(np.ascontiguousarray(rows), dest_sel=np.s_[start:stop])
        self._written[name] = stop

    def _flush(self) -> None:
        for name, pending in self._pending_rows.items():
            if pending:
                self._write(name, self._pending[name][:pending])
                self._pending_rows[name] = 0
        self._pending.clear()

    def commit(self, expected: int | None = None) -> int:
        """Verify counts, close and publish. Returns the number of rows written."""
        try:
            self._flush()
        except BaseException:
            self.abort()
            raise
        sizes = {name: self._datasets[name].shape[0] for name in self.counts}
        if len(set(sizes.values())) > 1 or (expected is not None and
                                            any(n != expected for n in sizes.values())):
            self.abort()
            raise BookkeepingError(f"{self.path}: row counts {sizes} differ"
                                   + (f" from the expected {expected}" if expected is not None
                                      else ""))
        self.publish()
        return next(iter(sizes.values()), 0)

    def abort(self) -> None:
        self._pending.clear()
        super().abort()


def copy_rows(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` for arrays of one structured dtype, as one memcpy.

    numpy assigns structured arrays field by field even when the dtypes are equal; copying the
    bytes is the same result, several times faster. Falls back to numpy for non-contiguous or
    differently typed arrays.
    """
    if (dst.dtype == src.dtype and dst.shape == src.shape and dst.flags.c_contiguous
            and src.flags.c_contiguous):
        np.copyto(dst.reshape(-1).view(np.uint8), src.reshape(-1).view(np.uint8))
    else:
        dst[...] = src


def pack(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Copy the fields of ``dtype`` from structured ``rows`` into a packed array of ``dtype``."""
    out = np.empty(rows.shape, dtype=dtype)
    FieldPacker(rows.dtype, dtype).pack(rows, out)
    return out


class FieldPacker:
    """Copies a subset of the fields of one structured dtype into another, fast.

    Fields that sit next to each other in both dtypes are merged into one byte run, and each run
    is copied as one opaque fixed-size element per row: a handful of strided memcpy loops instead
    of one type-aware copy per field. Fields of ``dst`` missing from ``src`` are left untouched.
    """

    def __init__(self, src: np.dtype, dst: np.dtype) -> None:
        self.src = np.dtype(src)
        self.dst = np.dtype(dst)
        runs: list[list[int]] = []  # [src offset, dst offset, length]
        for name in self.dst.names or ():
            if name not in (self.src.names or ()):
                continue
            sdt, soff = self.src.fields[name][:2]
            ddt, doff = self.dst.fields[name][:2]
            if sdt != ddt:
                raise ValueError(f"field '{name}': {sdt} in the source, {ddt} in the target")
            if runs and runs[-1][0] + runs[-1][2] == soff and runs[-1][1] + runs[-1][2] == doff:
                runs[-1][2] += sdt.itemsize
            else:
                runs.append([soff, doff, sdt.itemsize])
        self.runs = tuple(tuple(r) for r in runs)
        self.identity = self.src == self.dst

    def pack(self, src: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy the shared fields of C-contiguous ``src`` into C-contiguous ``out``."""
        if self.identity:
            copy_rows(out, src)
            return out
        n = src.size
        for soff, doff, length in self.runs:
            run = np.dtype((np.void, length))
            s = np.ndarray((n,), run, src, soff, (self.src.itemsize,))
            d = np.ndarray((n,), run, out, doff, (self.dst.itemsize,))
            d[...] = s
        return out


def sub_dtype(dtype: np.dtype, fields: list[str] | tuple[str, ...]) -> np.dtype:
    """Packed dtype with ``fields`` of ``dtype``, in the input's field order."""
    keep = set(fields)
    return np.dtype([(n, dtype.fields[n][0]) for n in dtype.names if n in keep])


# --------------------------------------------------------------------------- final outputs
def final_dtype(dtype: np.dtype, precision: str, full_precision_vars: tuple[str, ...] | list[str]
                ) -> np.dtype:
    """``dtype`` with its float fields stored at the final ``precision``.

    ``half``: every float field becomes float16, except ``full_precision_vars`` (float32).
    ``full``: float fields keep their type. Other fields are unchanged.
    """
    keep = set(full_precision_vars)
    fields = []
    for name in dtype.names:
        sub = dtype.fields[name][0]
        if sub.kind == "f" and precision == "half":
            full = name in keep or is_mev_scale(name)
            sub = np.dtype("f4") if full else np.dtype("f2")
        fields.append((name, sub))
    return np.dtype(fields)


F16_MIN_NORMAL = 2.0**-14  # the smallest normal float16; below it float16 is subnormal
F16_SUBNORMAL_STEP = 2.0**24  # float16 subnormals are multiples of 2**-24
TINY_SAMPLE_STEP = 61  # cast_field looks at every 61st value to choose its way
TINY_SHARE = 0.15  # above this share of subnormal results, they are built directly


def cast_field(out: np.ndarray, rows: np.ndarray, name: str) -> None:
    """``out[name] = rows[name]``, the same bits as numpy's cast, faster into float16.

    numpy casts a float whose float16 value is subnormal (``|x| < 2**-14``, e.g. ``qOverP``
    in 1/MeV) about 20 times slower than any other value (60 ns against 2.6 ns here). Those
    values are built directly: a float16 subnormal is ``sign | round(|x| * 2**24)``, with the
    product exact (a power of two) and ``np.rint`` rounding half to even as IEEE (and numpy)
    do; ``|x| * 2**24`` below one half gives a signed zero and 1024 gives the smallest normal,
    both as numpy gives them. NaN and inf take numpy's own cast. Building them costs a few
    passes over the field (about 7.5 ns a value, against 57 ns more per subnormal in numpy),
    so it is done only where a sample of the values has more than :data:`TINY_SHARE` of them:
    a field of high-momentum ``qOverP``, not the mock's (which numpy casts faster).
    """
    src = rows[name]
    if out.dtype.fields[name][0] != np.float16 or src.dtype.kind != "f" or src.itemsize <= 2:
        out[name] = src
        return
    sample = src.reshape(-1)[::TINY_SAMPLE_STEP]
    if np.count_nonzero(_tiny(sample)) <= TINY_SHARE * len(sample):
        out[name] = src  # few subnormals: numpy's cast is the cheaper (the same bits either way)
        return
    tiny = _tiny(src)
    out[name] = np.where(tiny, 0, src)
    values = src[tiny]
    bits = np.rint(np.abs(values) * F16_SUBNORMAL_STEP).astype(np.uint16)
    bits |= np.signbit(values).astype(np.uint16) << 15
    out[name].view(np.uint16)[tiny] = bits


def _tiny(values: np.ndarray) -> np.ndarray:
    """Non-zero values whose float16 is subnormal (zero, padding included, casts fast)."""
    return (np.abs(values) < F16_MIN_NORMAL) & (values != 0)


_MEV_SCALE = re.compile(r"(^|_)(pt|energy|mass|et)([A-Z_]|$)|(Pt|Energy|Mass|Et)([A-Z_]|$)")


def is_mev_scale(name: str) -> bool:
    """Whether a field looks like a momentum, energy or mass in MeV (``pt``, ``pt_btagJes``,
    ``HadronConeExclTruthLabelPt``, ``ptFromTruthJet``, ``energy``, ``mass``): such values
    overflow float16 (max 65504) above 65 GeV, so half precision keeps them in float32."""
    return bool(_MEV_SCALE.search(name))


def write_virtual_file(path: Path, sources: list[tuple[Path, int]],
                       groups: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                       attrs: Mapping[str, Any] | None = None,
                       group_attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write a virtual file concatenating ``groups`` of exactly ``sources`` (path, rows).

    Sources are referenced by absolute path, as UPP and atlas-ftag-tools write them, so a copy
    of the virtual file alone (Salt's ``move_files_temp``) still reads the real data (an
    output directory that is moved needs a new merge: its virtual files point at the old
    place). Rows of a source HDF5 cannot open read as :func:`vds_fill_value` (NaN floats,
    ``flavour_label`` -1), never as plausible zeros; ``upp-grid verify`` checks every source.
    Written to a temporary name and renamed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    total = sum(n for _, n in sources)
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            for name, (dtype, shape) in groups.items():
                layout = _UntimedLayout(shape=(total, *shape), dtype=dtype)
                start = 0
                for src, n in sources:
                    vsrc = h5py.VirtualSource(str(Path(src).absolute()), name,
                                              shape=(n, *shape), dtype=dtype)
                    layout[start:start + n] = vsrc
                    start += n
                ds = f.create_virtual_dataset(name, layout, fillvalue=vds_fill_value(dtype))
                for key, value in (group_attrs or {}).get(name, {}).items():
                    ds.attrs[key] = value
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class _UntimedLayout(h5py.VirtualLayout):
    """A virtual layout whose dataset records no creation/modification times, so two runs
    write byte-identical files (h5py's ``create_virtual_dataset`` has no ``track_times``)."""

    def _get_dcpl(self, dst_filename: str) -> Any:
        dcpl = super()._get_dcpl(dst_filename)
        dcpl.set_obj_track_times(False)
        return dcpl


def vds_fill_value(dtype: np.dtype) -> np.void:
    """What a virtual dataset reads where its source is unreachable: NaN for floats, -1 for
    signed integers (``flavour_label`` -1 is no class), the largest value for unsigned ones,
    False for booleans (``valid``), so a lost source never reads as plausible data."""
    fill = np.zeros((), dtype=dtype)
    for name in dtype.names or ():
        kind = dtype.fields[name][0]
        base = kind.base
        if base.kind == "f":
            fill[name] = np.nan
        elif base.kind == "i":
            fill[name] = -1
        elif base.kind == "u":
            fill[name] = np.iinfo(base).max
    return fill[()]
