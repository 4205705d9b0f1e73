"""Per-file download records: which grid file of a tag goes where, and what is known about it.

Layout
------
One directory per grid job, inside the split-components directory, holding the job's one
output ``split.tar`` unpacked (:mod:`upp_grid.grid.job_archive`): a unit directory per input,
as a local split writes it::

    <components_dir>/<sample>/<outDS>/_<serial>/<input>/output_<split>_<component>.h5

``<serial>`` is the job's serial number from the grid file name
``user.<nick>.<taskid>._<serial>.split.tar``. Archives are fetched into
``<components_dir>/.download/<tag>/``, verified (size, adler32), checked against their
provenance and unpacked into a hidden directory that is renamed into place, then removed: a job
directory in the layout is always complete and checked, and marked with the grid file it came
from, so the catalogue scan is the one of the local split (hidden paths ignored).

State
-----
Every listed file has a ``download_files`` row in the state DB
(:class:`~upp_grid.grid.state.DownloadFile`): its DID, the container it was listed from, outDS,
sample, output and serial, the catalogue's size and adler32, its destination, the state
(``listed`` → ``verified`` or ``failed``), the number of fetches, the destination's mtime at
verification and the last error. A rerun trusts a ``verified`` row while the file at its
destination keeps that size and mtime; otherwise the file is hashed again (and kept if it still
matches), and fetched only if not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from upp_grid.errors import UppGridError
from upp_grid.grid.job_archive import unpacked
from upp_grid.grid.rucio import RemoteFile
from upp_grid.grid.state import DownloadFile, StateDB

STAGING_DIR = ".download"
#: ``user.<nick>.<taskid>._<serial>.split.tar`` (an attempt suffix ``.N`` allowed)
_LFN_RE = re.compile(r"\.(?P<task>\d+)\._(?P<serial>\d+)\.(?P<output>split\.tar)(\.\d+)?$")

Advance = Callable[[int], None]
#: ``progress(total, what[, unit])`` as :func:`upp_grid.progress.progress_bar`
ProgressFactory = Callable[..., AbstractContextManager[Advance]]


class DownloadError(UppGridError):
    """A file could not be fetched or verified, or the outputs cannot be found."""


def more_listed(n: int, what: str = "") -> str:
    """`` (+2 more files failed, listed above)`` after the first of ``n`` problems, or ''."""
    return f" (+{n - 1} more{' ' + what if what else ''}, listed above)" if n > 1 else ""


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Wanted:
    """One grid file of the tag and where it goes."""

    remote: RemoteFile
    container: str  #: the output container it was listed from
    out_ds: str
    sample: str
    output: str  #: the job's output file, ``split.tar``
    serial: str  #: ``_000001``
    dest: Path  #: the job directory it is unpacked into

    def origin(self) -> dict:
        """What marks the unpacked directory as this grid file's."""
        return {"did": self.did, "bytes": self.remote.size, "adler32": self.remote.adler32}

    def in_place(self) -> bool:
        """Whether ``dest`` holds this grid file, unpacked and checked."""
        found = unpacked(self.dest)
        return found is not None and found[0] == self.origin()

    @property
    def did(self) -> str:
        return self.remote.did

    def record(self, tag: str) -> DownloadFile:
        """Its row in the state DB, as listed."""
        r = self.remote
        return DownloadFile(tag, r.did, self.container, self.out_ds, self.sample, self.output,
                            self.serial, r.size, r.adler32, self.dest)

    @classmethod
    def from_record(cls, row: DownloadFile) -> Wanted:
        return cls(RemoteFile(row.scope, row.name, row.size, row.adler32), row.container,
                   row.out_ds, row.sample, row.output, row.serial, row.dest)


def parse_lfn(name: str) -> tuple[int, str, str] | None:
    """``(task id, serial "_NNNNNN", "split.tar")`` of a grid output file name."""
    match = _LFN_RE.search(name)
    if match is None:
        return None
    return int(match["task"]), "_" + match["serial"], match["output"]


def job_dir(components_dir: Path, sample: str, out_ds: str, serial: str) -> Path:
    """The directory of one grid job's outputs (see the module docstring)."""
    return components_dir / sample / out_ds.rstrip("/") / serial


def staging_dir(components_dir: Path, tag: str) -> Path:
    """Where files of ``tag`` arrive before they are verified (hidden from the catalogue)."""
    return components_dir / STAGING_DIR / tag


def check_layout(components_dir: Path, tag: str, dests: Iterable[Path],
                 before_fetch: bool = False) -> None:
    """Refuse split outputs in ``components_dir`` that are not in this tag's job directories.

    The catalogue takes every ``output_*.h5`` there: a local split or another tag's download
    in the same directory would be counted twice.
    """
    known = {Path(p) for p in dests}
    foreign = [p for p in sorted(components_dir.rglob("output_*.h5"))
               if not any(part.startswith(".") for part in p.relative_to(components_dir).parts)
               and not known.intersection(p.parents)]
    if foreign:
        units = sorted({p.parent for p in foreign})
        raise DownloadError(f"{components_dir}: {len(foreign)} split output"
                            f"{'s are' if len(foreign) > 1 else ' is'} not from the download of "
                            f"tag '{tag}' (a local split or another tag's download, in "
                            f"{len(units)} directories, first {units[0]}); the catalogue would "
                            "count their jets twice: remove those directories (`rm -r` each, or "
                            f"all of {components_dir}), or set global.components_dir to another "
                            "directory" + ("; nothing was downloaded" if before_fetch else ""))


# --------------------------------------------------------------------------- state
def record_listed(state: StateDB, tag: str, wanted: Sequence[Wanted]) -> dict[str, DownloadFile]:
    """Record the files just listed (see :meth:`StateDB.record_listed`); every row by DID."""
    state.record_listed(w.record(tag) for w in wanted)
    return {row.did: row for row in state.download_files(tag)}


def still_verified(row: DownloadFile | None) -> bool:
    """A ``verified`` row whose job directory is still there, marked as this grid file's."""
    if row is None or row.state != "verified" or row.mtime_ns is None:
        return False
    return Wanted.from_record(row).in_place()


def download_user(state: StateDB, tag: str) -> str | None:
    """The grid nickname of a tag downloaded before (its files' scope ``user.<nick>``)."""
    scope = state.download_scope(tag) or ""
    return scope.split(".", 1)[1] if scope.startswith("user.") else None


def verified_downloads(state: StateDB, tag: str) -> list[Wanted]:
    """The tag's files from the state DB, every one verified and in place (``--no-download``).

    Raises
    ------
    DownloadError
        Nothing downloaded yet, or a file not (or no longer) verified.
    """
    rows = state.download_files(tag)
    if not rows:
        raise DownloadError(f"{state.path}: nothing downloaded for tag '{tag}' yet (run "
                            "`upp-grid download` without --no-download)")
    wanted = []
    for row in rows:
        w = Wanted.from_record(row)
        if not still_verified(row) and not w.in_place():
            what = "changed since it was verified" if row.state == "verified" else row.state
            raise DownloadError(f"{row.container}: {row.name}: not downloaded and verified "
                                f"({what}{': ' + row.error if row.error else ''}); run "
                                "`upp-grid download` without --no-download")
        wanted.append(w)
    return wanted
