"""The one data output of a grid job: ``split.tar``, and how it is unpacked again.

A job splits each of its input files (``%IN``, any number) into a unit directory named after
the input (``<input name without .h5>/``, the layout of a local split, with every declared
``output_<split>_<component>.h5`` and the completion record ``split-record.json``), then packs
them into one uncompressed tar with ``provenance.json`` first::

    provenance.json
    <input 1>/output_train_<component>.h5 ... <input 1>/split-record.json
    <input 2>/...

Why one tar rather than one HDF5 file holding every component as a group: the component files
are already compressed (Blosc LZ4), so the tar adds no compression work and no copy of the
data through HDF5; unpacking gives exactly the files a local split writes, so the catalogue,
weights and merge read grid and local splits with the same code. Measured in
``tests/integration/test_grid_payload.py`` and the issue note.

``provenance.json`` says which inputs and row ranges the archive holds and what each gave
(:class:`Provenance`); the download checks it against the files in the archive and against
every other job's provenance: an input covered twice (PanDA may run a job twice) is an error
naming the input.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

import upp_grid
from upp_grid.errors import BookkeepingError, InputError
from upp_grid.fsutil import atomic_path
from upp_grid.grid.safe_tar import safe_members

ARCHIVE_NAME = "split.tar"
PROVENANCE_NAME = "provenance.json"
RECORD_NAME = "split-record.json"  # as upp_grid.stages.split.RECORD_NAME (no heavy import)
FORMAT = 1
MARK_NAME = ".job-archive.json"  # in an unpacked job directory: which archive it came from
FIXED_MTIME = 946_684_800
_MAX_MEMBERS = 100_000  # bounded: a hostile archive cannot make the unpacking loop forever


class ArchiveError(InputError):
    """A job archive that is malformed, unsafe or does not match its provenance."""


@dataclass(frozen=True)
class InputProvenance:
    """One input file of a job: its name, rows ``[start, stop)``, and what it gave."""

    name: str
    rows: tuple[int, int]
    jets_read: int
    no_component: int
    outputs: dict[str, int]
    size: int = 0

    def unit(self) -> str:
        """The archive directory of this input."""
        return unit_name(self.name)


@dataclass(frozen=True)
class Provenance:
    """What one archive holds."""

    inputs: tuple[InputProvenance, ...]
    samples: tuple[str, ...]
    config_hash: str
    split_hash: str
    upp_grid_version: str = upp_grid.__version__
    format: int = FORMAT
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["inputs"] = [asdict(i) | {"rows": list(i.rows)} for i in self.inputs]
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> Provenance:
        try:
            data = json.loads(text)
            if int(data["format"]) != FORMAT:
                raise ArchiveError(f"{where}: {PROVENANCE_NAME} format {data['format']}, this "
                                   f"upp-grid reads format {FORMAT}: upgrade upp-grid")
            inputs = tuple(InputProvenance(
                str(i["name"]), (int(i["rows"][0]), int(i["rows"][1])), int(i["jets_read"]),
                int(i["no_component"]), {str(k): int(v) for k, v in i["outputs"].items()},
                int(i.get("size", 0))) for i in data["inputs"])
            return cls(inputs, tuple(data["samples"]), str(data["config_hash"]),
                       str(data["split_hash"]), str(data.get("upp_grid_version", "")),
                       FORMAT, dict(data.get("extra", {})))
        except ArchiveError:
            raise
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise ArchiveError(f"{where}: unreadable {PROVENANCE_NAME} ({err!r})") from None


def unit_name(input_name: str) -> str:
    """The archive directory of an input file: its name without ``.h5``."""
    name = Path(input_name).name
    return name[:-3] if name.endswith(".h5") else name


# ------------------------------------------------------------------------------- the worker
def pack(out: Path, work: Path, provenance: Provenance) -> int:
    """Write ``out`` (atomically) from the unit directories under ``work``; returns its size.

    Members are sorted, with fixed mtimes and owners, so the same split gives the same bytes.
    """
    units = [i.unit() for i in provenance.inputs]
    with atomic_path(out) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        data = provenance.to_json().encode()
        info = _info(PROVENANCE_NAME, len(data))
        tar.addfile(info, io.BytesIO(data))
        for unit in units:
            tar.addfile(_dir_info(unit))
            for path in sorted((work / unit).iterdir()):
                if not path.is_file() or path.name.startswith("."):
                    continue
                with path.open("rb") as f:
                    tar.addfile(_info(f"{unit}/{path.name}", os.fstat(f.fileno()).st_size), f)
    return out.stat().st_size


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _dir_info(name: str) -> tarfile.TarInfo:
    info = _info(name, 0)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


# ----------------------------------------------------------------------------- the download
def read_provenance(archive: Path) -> Provenance:
    """The provenance of an archive (its first member), without unpacking the rest."""
    try:
        with tarfile.open(archive, "r:") as tar:
            member = tar.next()
            if member is None or member.name != PROVENANCE_NAME or not member.isfile():
                raise ArchiveError(f"{archive}: not a upp-grid job archive (first member is "
                                   f"not {PROVENANCE_NAME})")
            f = tar.extractfile(member)
            assert f is not None
            return Provenance.from_json(f.read(1 << 20).decode(), str(archive))
    except (tarfile.TarError, OSError) as err:
        raise ArchiveError(f"{archive}: unreadable job archive ({err})") from None


def unpack(archive: Path, dest: Path, jets_name: str = "jets",
           origin: dict | None = None) -> Provenance:
    """Unpack ``archive`` into the job directory ``dest``, atomically, after checking it.

    Every member must be a regular file or directory inside ``dest`` (no links, devices,
    absolute paths or ``..``), every unit directory must be an input of the provenance, and
    each unit's ``split-record.json`` and HDF5 files must hold exactly the jets the provenance
    records. ``dest`` is only ever complete or absent; it is marked (:data:`MARK_NAME`) with
    the archive's provenance and ``origin`` (the grid file it came from: DID, size, adler32).

    Raises
    ------
    ArchiveError
        Naming the archive and the member or input at fault.
    """
    provenance = read_provenance(archive)
    units = {i.unit(): i for i in provenance.inputs}
    if len(units) != len(provenance.inputs):
        raise ArchiveError(f"{archive}: two inputs of the job have the same name")
    staging = dest.with_name(f".{dest.name}.unpacking-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:") as tar:
            members = _safe_members(tar, archive, set(units))
            tar.extractall(staging, members=members, filter="data")
        for unit, item in units.items():
            _check_unit(archive, staging / unit, item, jets_name)
        mark = {"origin": origin or {}, "provenance": json.loads(provenance.to_json())}
        (staging / MARK_NAME).write_text(json.dumps(mark, indent=1, sort_keys=True))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return provenance


def _safe_members(tar: tarfile.TarFile, archive: Path, units: set[str]
                  ) -> list[tarfile.TarInfo]:
    out = []
    for member in safe_members(tar, archive, allow_links=False, max_members=_MAX_MEMBERS,
                               error=ArchiveError):
        if member.name == PROVENANCE_NAME:
            continue
        parts = Path(member.name).parts
        if parts[0] not in units or len(parts) > 2:
            raise ArchiveError(f"{archive}: member '{member.name}' is not in the directory of "
                               f"an input the archive's {PROVENANCE_NAME} lists")
        out.append(member)
    return out


def _check_unit(archive: Path, unit_dir: Path, item: InputProvenance, jets_name: str) -> None:
    import h5py

    where = f"{archive}: input {item.name}"
    try:
        record = json.loads((unit_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        raise ArchiveError(f"{where}: no readable {RECORD_NAME}") from None
    if {str(k): int(v) for k, v in record.get("outputs", {}).items()} != item.outputs \
            or int(record.get("jets_read", -1)) != item.jets_read:
        raise ArchiveError(f"{where}: {RECORD_NAME} disagrees with {PROVENANCE_NAME}")
    if sum(item.outputs.values()) + item.no_component != item.jets_read:
        raise BookkeepingError(f"{where}: read {item.jets_read} jets but wrote "
                               f"{sum(item.outputs.values())} and left {item.no_component} in "
                               "no component")
    for name, count in item.outputs.items():
        path = unit_dir / f"output_{name}.h5"
        try:
            with h5py.File(path, "r") as f:
                held = int(f[jets_name].shape[0])
        except (OSError, KeyError):
            raise ArchiveError(f"{where}: output_{name}.h5 missing or unreadable") from None
        if held != count:
            raise BookkeepingError(f"{where}: output_{name}.h5 holds {held} jets, the job "
                                   f"recorded {count}")


def unpacked(job_dir: Path) -> tuple[dict, Provenance] | None:
    """``(origin, provenance)`` of an unpacked job directory; None if it is not one."""
    try:
        mark = json.loads((job_dir / MARK_NAME).read_text())
        return dict(mark["origin"]), Provenance.from_json(json.dumps(mark["provenance"]),
                                                          str(job_dir))
    except (OSError, ValueError, KeyError, TypeError, ArchiveError):
        return None


# ------------------------------------------------------------------------------ coverage
@dataclass(frozen=True)
class Coverage:
    """How the jobs' provenance covers the input files of one input container."""

    missing: tuple[str, ...]  #: input files no job covered
    twice: tuple[tuple[str, tuple[str, ...]], ...]  #: (input, jobs) covered more than once
    unknown: tuple[str, ...]  #: inputs in the provenance that the container does not list


def coverage(inputs: Iterable[str], jobs: Sequence[tuple[str, Provenance]]) -> Coverage:
    """Check that every input file (by name) is covered by exactly one job.

    ``jobs``: ``(job name, provenance)``. An input split in row ranges must be tiled exactly.
    """
    expected = {Path(i).name for i in inputs}
    by_input: dict[str, list[tuple[str, tuple[int, int], int]]] = {}
    for job, prov in jobs:
        for item in prov.inputs:
            by_input.setdefault(Path(item.name).name, []).append((job, item.rows,
                                                                  item.jets_read))
    twice = []
    for name, parts in sorted(by_input.items()):
        ranges = sorted(r for _, r, _ in parts)
        tiled = ranges[0][0] == 0 and all(a[1] == b[0] for a, b in pairwise(ranges))
        if not tiled or len({r for _, r, _ in parts}) != len(parts):
            twice.append((name, tuple(sorted(j for j, _, _ in parts))))
    return Coverage(tuple(sorted(expected - set(by_input))), tuple(twice),
                    tuple(sorted(set(by_input) - expected)))
