"""Field types over many inputs, and the content checks ``check`` makes on each input.

Types are decided by the config and the union of the inputs, never by one file: a field that
is float16 in one file and float32 in another is float32 everywhere (then the config's
``precision`` applies), int32 and int64 make int64. A field whose *kind* differs between inputs
(integer in one, float in another, a string, a boolean) cannot be one column: it is an error
naming the field and both files, at ``check``, before a split and at merge.

:func:`check_contents` reads the first chunk of every dataset the config needs, so ``check``
finds what ``run`` would reject: a jets dataset that is not 1-D or a track group that is not
2-D (jets x entries), a field of the wrong kind (a cut or reweight variable that is not a
number, a class variable that is not an integer, a ``valid`` that is not boolean), data that
cannot be decoded, and a track group without a single valid entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from upp_grid.errors import InputError

KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "boolean", "S": "string",
         "U": "string", "O": "string", "V": "compound"}


def kind_name(dtype: np.dtype) -> str:
    return KINDS.get(dtype.kind, dtype.kind)


def union_dtype(a: np.dtype, b: np.dtype) -> np.dtype | None:
    """The dtype that holds both ``a`` and ``b`` exactly, if they are of one kind; else None.

    Within floats and within integers the wider type wins (uint8 and int32 make int32); a
    pair only a float could hold (uint64 and int64) is None, as is any mix of kinds.
    """
    if kind_name(a) != kind_name(b) or kind_name(a) in ("string", "compound"):
        return a if a == b else None
    out = np.promote_types(a, b)
    return out if kind_name(out) == kind_name(a) else None


@dataclass
class FieldTypes:
    """The union of the field types of many inputs: per group and field, the dtype and the
    file that first had it (to name both files of a conflict)."""

    fields: dict[tuple[str, str], tuple[np.dtype, Path]] = field(default_factory=dict)
    shapes: dict[str, tuple[tuple[int, ...], Path]] = field(default_factory=dict)

    def add(self, path: Path, group: str, dtype: np.dtype, row_shape: tuple[int, ...],
            names: Iterable[str] | None = None) -> None:
        """Add one input's dataset ``group`` (only ``names``, default all fields).

        Raises
        ------
        InputError
            A field of another kind than in an earlier file, or another entries per jet.
        """
        first = self.shapes.setdefault(group, (row_shape, path))
        if first[0] != row_shape:
            raise InputError(f"{path}: dataset '{group}' has {_per_jet(row_shape)} per jet, "
                             f"{first[1]} has {_per_jet(first[0])}: every input must have the "
                             "same")
        for name in names if names is not None else dtype.names or ():
            here = dtype.fields[name][0]
            seen = self.fields.get((group, name))
            if seen is None:
                self.fields[(group, name)] = (here, path)
                continue
            merged = union_dtype(seen[0], here)
            if merged is None:
                raise InputError(f"{group}.{name}: {kind_name(here)} ({here}) in {path} but "
                                 f"{kind_name(seen[0])} ({seen[0]}) in {seen[1]}: a field must "
                                 "be of one kind in every input")
            self.fields[(group, name)] = (merged, seen[1])

    def dtype(self, group: str, name: str) -> np.dtype:
        return self.fields[(group, name)][0]


def _per_jet(row_shape: tuple[int, ...]) -> str:
    return f"{row_shape[0]} entries" if row_shape else "one row"


def file_types(paths: Iterable[Path], groups: Mapping[str, Iterable[str] | None]
               ) -> FieldTypes:
    """The union of the types of ``groups`` (group -> fields, None: all) over ``paths``,
    reading only the files' headers. An unreadable file is skipped: its own split reports
    it, and the other inputs are still split."""
    types = FieldTypes()
    for path in paths:
        try:
            with h5py.File(path, "r") as f:
                for group, names in groups.items():
                    if group in f:
                        ds = f[group]
                        if ds.dtype.names is not None:
                            keep = None if names is None else [n for n in names
                                                               if n in ds.dtype.names]
                            types.add(Path(path), group, ds.dtype, ds.shape[1:], keep)
        except OSError:
            continue
    return types


@dataclass(frozen=True)
class FieldRoles:
    """What the config does with each field, to check its kind: per group."""

    numbers: Mapping[str, frozenset[str]]  # cut and reweight variables: int or float
    integers: Mapping[str, frozenset[str]]  # class variables


def check_contents(path: Path, f: h5py.File, jets_name: str, roles: FieldRoles,
                   nonfinite: dict[str, int] | None = None) -> None:
    """Check the shapes and field kinds of every needed dataset and decode its first chunk;
    add the NaN/inf of its float fields there (valid entries) to ``nonfinite``.

    Raises
    ------
    InputError
        One line naming the file, dataset and field.
    """
    for group in sorted(set(roles.numbers) | set(roles.integers) | {jets_name}):
        if group not in f:
            continue  # check_file reports a missing dataset
        ds = f[group]
        want = 1 if group == jets_name else 2
        if ds.ndim != want:
            what = "1-D (one row per jet)" if want == 1 else "2-D (jets x entries)"
            raise InputError(f"{path}: dataset '{group}' is {ds.ndim}-D, it must be {what}")
        names = ds.dtype.names or ()
        for name in sorted(roles.numbers.get(group, ())):
            if name in names and ds.dtype.fields[name][0].kind not in "iuf":
                raise InputError(f"{path}: {group}.{name} is {ds.dtype.fields[name][0]}: a cut "
                                 "or reweight variable must be a number")
        for name in sorted(roles.integers.get(group, ())):
            if name in names and ds.dtype.fields[name][0].kind not in "iub":
                raise InputError(f"{path}: {group}.{name} is {ds.dtype.fields[name][0]}: a class "
                                 "variable must be an integer")
        if want == 2 and "valid" in names and ds.dtype.fields["valid"][0].kind != "b":
            raise InputError(f"{path}: {group}.valid is {ds.dtype.fields['valid'][0]}: it must "
                             "be boolean")
        rows = min(ds.shape[0], ds.chunks[0] if ds.chunks else 1000)
        try:
            first = ds[:rows]
        except (OSError, ValueError, RuntimeError) as err:
            raise InputError(f"{path}: dataset '{group}': cannot decode its data "
                             f"({' '.join(str(err).split())[:120]})") from None
        if want == 2 and "valid" in names and rows and not first["valid"].any():
            raise InputError(f"{path}: dataset '{group}' has no valid entry in its first "
                             f"{rows} jets: is 'valid' filled?")
        if nonfinite is not None:
            _count_nonfinite(group, first, nonfinite)


def _count_nonfinite(group: str, rows: np.ndarray, out: dict[str, int]) -> None:
    valid = rows["valid"] if rows.ndim == 2 and "valid" in (rows.dtype.names or ()) else None
    for name in rows.dtype.names or ():
        if rows.dtype.fields[name][0].kind == "f":
            bad = ~np.isfinite(rows[name])
            n = int(np.count_nonzero(bad if valid is None else bad & valid))
            if n:
                out[f"{group}.{name}"] = out.get(f"{group}.{name}", 0) + n
