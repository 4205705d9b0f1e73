"""``upp-grid verify``: do the virtual datasets of an output directory read real data?

A virtual file (``pp_output_<split>_vds.h5``) holds no rows, only references to the merged
files. If a reference cannot be resolved, HDF5 reads the fill value instead and raises nothing
(:func:`upp_grid.h5io.vds_fill_value` makes that NaN / -1, but a training job still starts).
:func:`verify_vds` resolves every source the way HDF5 does (the absolute path, else the file
name next to the virtual file: ``H5F_prefix_open_file``), opens it, and checks that the rows
it maps are the rows the source holds, that the sources of every group agree, and that the
total and the per-flavour counts equal the virtual file's own ``unique_jets`` / ``jet_counts``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from upp_grid.errors import InputError

VDS_GLOB = "pp_output_*_vds.h5"


@dataclass
class VdsReport:
    """What one virtual file maps, and every problem found (one line each)."""

    path: Path
    jets: int = 0
    sources: int = 0
    problems: list[str] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)  # sources not found


def resolve_source(vds: Path, name: str) -> Path | None:
    """The file HDF5 opens for source ``name`` of ``vds`` (None: none, the rows read as fill)."""
    direct = Path(name) if Path(name).is_absolute() else vds.parent / name
    if direct.is_file():
        return direct
    beside = vds.parent / Path(name).name
    return beside if beside.is_file() else None


def verify_vds(path: Path) -> VdsReport:
    """Check one virtual file (see the module docstring). Each source is opened once."""
    report = VdsReport(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        report.problems.append(f"{path}: unreadable ({err})")
        return report
    with f:
        jets = _jets_group(f)
        totals: dict[str, int] = {}
        by_file: dict[str, list[tuple[str, int]]] = {}  # source -> (dataset, rows mapped)
        for group, ds in f.items():
            if not isinstance(ds, h5py.Dataset) or not ds.is_virtual:
                report.problems.append(f"{path}: '{group}' is not a virtual dataset")
                continue
            dcpl = ds.id.get_create_plist()
            totals[group] = 0
            for i in range(dcpl.get_virtual_count()):
                lo, hi = dcpl.get_virtual_vspace(i).get_select_bounds()
                rows = int(hi[0]) - int(lo[0]) + 1
                totals[group] += rows
                by_file.setdefault(dcpl.get_virtual_filename(i), []).append(
                    (dcpl.get_virtual_dsetname(i), rows))
        counts = {}
        for name, dsets in by_file.items():
            _check_source(path, name, dsets, jets, report, counts)
        if len(set(totals.values())) > 1:
            report.problems.append(f"{path}: groups map different numbers of rows: {totals}")
        report.jets = max(totals.values(), default=0)
        expected = f.attrs.get("unique_jets")
        if expected is not None and int(expected) != report.jets:
            report.problems.append(f"{path}: maps {report.jets:,} jets, its unique_jets says "
                                   f"{int(expected):,}")
        wanted = json.loads(f.attrs["jet_counts"]) if "jet_counts" in f.attrs else None
        if (wanted is not None and counts and not report.missing
                and counts != {k: int(v) for k, v in wanted.items()}):
            report.problems.append(f"{path}: sources hold {counts} jets per flavour, its "
                                   f"jet_counts says {wanted}")
    return report


def _check_source(path: Path, name: str, dsets: list[tuple[str, int]], jets: str,
                  report: VdsReport, counts: dict[str, int]) -> None:
    """One source file: found, each mapped dataset of the mapped length; its jet counts."""
    where = resolve_source(path, name)
    if where is None:
        report.missing.add(name)
        rows = max(r for _, r in dsets)
        report.problems.append(f"{path}: source {name} not found (nor {Path(name).name} next "
                               f"to it): its {rows:,} jets read as fill values (NaN, "
                               "flavour_label -1)")
        return
    try:
        with h5py.File(where, "r") as src:
            for dset, rows in dsets:
                held = src[dset].shape[0]
                if held != rows:
                    report.problems.append(f"{path}: {where} '{dset}' holds {held:,} rows, "
                                           f"the virtual file maps {rows:,}")
            for flavour, n in json.loads(src.attrs.get("jet_counts", "{}")).items():
                counts[flavour] = counts.get(flavour, 0) + int(n)
    except (OSError, KeyError, ValueError) as err:
        report.problems.append(f"{path}: source {where} unreadable ({err})")
        return
    if any(d == jets for d, _ in dsets):
        report.sources += 1


def _jets_group(f: h5py.File) -> str:
    """The jets dataset: the one carrying ``flavour_label`` names, else ``jets``."""
    for name, ds in f.items():
        if "flavour_label" in ds.attrs:
            return name
    return "jets"


def verify_dir(out_dir: Path) -> list[VdsReport]:
    """Verify every virtual file of ``out_dir`` (raises if there is none)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: no such directory")
    paths = sorted(out_dir.glob(VDS_GLOB))
    if not paths:
        raise InputError(f"{out_dir}: no virtual files ({VDS_GLOB}): run `upp-grid merge` "
                         "first, or give the merge's out_dir")
    return [verify_vds(p) for p in paths]
