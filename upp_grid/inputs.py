"""Finding input ntuples and checking they hold what a config needs."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py

from upp_grid.config import Config, Sample
from upp_grid.errors import InputError
from upp_grid.input_types import FieldRoles, FieldTypes, check_contents

log = logging.getLogger(__name__)

FLAVOUR_LABEL = "flavour_label"


@dataclass(frozen=True)
class Container:
    """One grid container: the files one sample pattern matches under ``ntuple_dir``."""

    sample: str
    pattern: str
    files: tuple[Path, ...]


def container_files(ntuple_dir: Path, pattern: str) -> tuple[Path, ...]:
    """Files matched by ``pattern`` under ``ntuple_dir``; a matched directory means its ``*.h5``.

    An absolute pattern (UPP allows them) is matched from the file system's root instead.
    Hidden files (such as in-progress temporaries) are ignored. Sorted for reproducibility.
    """
    files: set[Path] = set()
    path = Path(pattern).expanduser()
    if path.is_absolute():
        matches = Path(path.anchor).glob(str(path.relative_to(path.anchor)))
    else:
        matches = ntuple_dir.glob(pattern)
    for match in matches:
        if match.name.startswith("."):
            continue
        if match.is_dir():
            files.update(f for f in match.glob("*.h5") if not f.name.startswith("."))
        elif match.is_file():
            files.add(match)
    return tuple(sorted(files))


def find_containers(config: Config, samples: tuple[Sample, ...] | None = None
                    ) -> list[Container]:
    """All containers of ``samples`` (default: every sample of the config).

    Raises
    ------
    InputError
        If ``ntuple_dir`` is missing or a pattern matches no file (the pattern is named).
    """
    ntuple_dir = config.global_.ntuple_dir
    relative = any(not Path(pat).expanduser().is_absolute()
                   for s in samples or config.samples for pat in s.patterns)
    if relative and not ntuple_dir.is_dir():
        raise InputError(f"{config.path}: global.ntuple_dir: directory {ntuple_dir} not found")
    out = []
    for sample in samples or config.samples:
        for pattern in sample.patterns:
            files = container_files(ntuple_dir, pattern)
            if not files:
                where = "" if Path(pattern).is_absolute() else f" under {ntuple_dir}"
                raise InputError(f"{config.path}: sample '{sample.name}': pattern '{pattern}' "
                                 f"matches no file{where}")
            out.append(Container(sample.name, pattern, files))
    return out


def required_fields(config: Config) -> dict[str, set[str]]:
    """Fields each input group must have for the cuts, variables and reweights to work."""
    jets = config.jets_name
    need: dict[str, set[str]] = {g: set(v.variables) for g, v in config.variables.items()}
    for g, v in config.variables.items():
        if v.selection:
            need[g].update(c for c in v.selection.variables if c != "NSHARED")
    need.setdefault(jets, set())
    for split in config.global_cuts.values():
        need[jets].update(split.variables)
    for comp in config.components:
        need[jets].update(comp.region.cuts.variables)
        need[jets].update(comp.flavour.cuts.variables)
    if config.reweighting:
        for rw in config.reweighting.reweights:
            need.setdefault(rw.group, set()).update(rw.reweight_vars)
            need[rw.group].add(rw.class_var)
    for group, fields in need.items():
        fields.discard(FLAVOUR_LABEL)  # written by the split stage
        if group != jets:
            fields.add("valid")
    return need


def field_roles(config: Config) -> FieldRoles:
    """What the config does with each field: numbers (cuts, reweight variables) and integers
    (class variables), per group."""
    jets = config.jets_name
    numbers: dict[str, set[str]] = {jets: set()}
    integers: dict[str, set[str]] = {}
    for split in config.global_cuts.values():
        numbers[jets].update(split.variables)
    for comp in config.components:
        numbers[jets].update(comp.region.cuts.variables)
        numbers[jets].update(comp.flavour.cuts.variables)
    for rw in config.reweighting.reweights if config.reweighting else ():
        numbers.setdefault(rw.group, set()).update(rw.reweight_vars)
        integers.setdefault(rw.group, set()).add(rw.class_var)
    for group in config.variables:
        numbers.setdefault(group, set())
    for names in integers.values():
        names.discard(FLAVOUR_LABEL)
    return FieldRoles({g: frozenset(n) for g, n in numbers.items()},
                      {g: frozenset(n) for g, n in integers.items()})


def check_file(path: Path, need: dict[str, set[str]], roles: FieldRoles | None = None,
               types: FieldTypes | None = None, jets_name: str = "jets",
               nonfinite: dict[str, int] | None = None) -> int:
    """Check one input file has every needed dataset and field; return its number of jets.

    With ``roles``, also the shapes, kinds and first chunk of its datasets
    (:func:`upp_grid.input_types.check_contents`); with ``types``, its field types are added
    to the union over the inputs (a kind conflict with an earlier file is an error).

    Raises
    ------
    InputError
        Naming the file and the missing dataset or field, or saying the file is unreadable.
    """
    try:
        with h5py.File(path, "r") as f:
            counts = {}
            for group, fields in sorted(need.items()):
                if group not in f:
                    hint = _suggest(group, list(f.keys()))
                    raise InputError(f"{path}: dataset '{group}' not found{hint}")
                ds = f[group]
                names = ds.dtype.names or ()
                for field in sorted(fields):
                    if field not in names:
                        raise InputError(f"{path}: dataset '{group}' has no field '{field}'"
                                         f"{_suggest(field, names)}")
                counts[group] = ds.shape[0]
            if roles is not None:
                check_contents(path, f, jets_name, roles, nonfinite)
            for group in sorted(need) if types is not None else ():
                ds = f[group]
                if ds.dtype.names is not None:  # after its own checks: they say more
                    types.add(path, group, ds.dtype, ds.shape[1:])
    except InputError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err})") from None
    if len(set(counts.values())) > 1:
        raise InputError(f"{path}: datasets have different numbers of jets: {counts}")
    return next(iter(counts.values()), 0)


def _suggest(word: str, options: list[str] | tuple[str, ...]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
