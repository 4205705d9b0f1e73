"""Where a tag's outputs are read from: rucio, or the local backend's store read like rucio.

A :class:`Source` lists a dataset or container (every file with its size and adler32) and
fetches files into a staging directory, one :class:`~upp_grid.grid.rucio.FetchOutcome` each.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from upp_grid.fsutil import atomic_path
from upp_grid.grid.download_records import DownloadError
from upp_grid.grid.rucio import FetchOutcome, RemoteFile, RucioSource
from upp_grid.grid.state import Submission
from upp_grid.grid.store import LocalStore

log = logging.getLogger(__name__)


class Source(Protocol):
    """Where the outputs are: rucio (:class:`~upp_grid.grid.rucio.RucioSource`) or a store."""

    description: str

    def list_files(self, scope: str, name: str) -> list[RemoteFile] | None: ...

    def fetch(self, files: Sequence[RemoteFile], staging: Path, threads: int = 2
              ) -> list[FetchOutcome]: ...


class StoreSource:
    """The local backend's store (:class:`~upp_grid.grid.store.LocalStore`), read like rucio."""

    def __init__(self, root: Path) -> None:
        self.store = LocalStore(root)
        self.description = f"the local store {root}"
        self._where: dict[str, Path] = {}  #: DID -> path, filled by list_files

    def list_files(self, scope: str, name: str) -> list[RemoteFile] | None:
        name = name.rstrip("/")
        if not self.store.dataset_dir(scope, name).is_dir():
            return None
        listed = self.store.list_files(scope, name)
        for s in listed:
            self._where[f"{s.scope}:{s.name}"] = self.store.path(s)
        return [RemoteFile(s.scope, s.name, s.bytes, s.adler32) for s in listed]

    def fetch(self, files: Sequence[RemoteFile], staging: Path, threads: int = 2
              ) -> list[FetchOutcome]:
        staging.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            return list(pool.map(lambda f: self._copy(f, self._where.get(f.did), staging),
                                 files))

    @staticmethod
    def _copy(f: RemoteFile, src: Path | None, staging: Path) -> FetchOutcome:
        if src is None or not src.is_file():
            return FetchOutcome(f, "FILE_NOT_FOUND", None)
        dest = staging / f.name
        try:
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
        except OSError as err:
            log.debug("%s: copy failed: %s", src, err)
            return FetchOutcome(f, "FAILED", None)
        return FetchOutcome(f, "DONE", dest)


def default_backend(submission: Submission | None) -> str:
    """``local`` for a tag submitted with the local backend, else ``rucio``."""
    return "local" if submission is not None and submission.backend == "local" else "rucio"


def open_source(backend: str, tag: str, submission: Submission | None, state_path: Path
                ) -> Source:
    """The source of ``--backend``: ``rucio`` or ``local`` (the tag's local store)."""
    if backend == "rucio":
        return RucioSource()
    if backend == "local":
        if submission is None or not submission.store_dir:
            raise DownloadError(f"--backend local: tag '{tag}' has no local submission in "
                                f"{state_path}, so there is no store to read from")
        return StoreSource(Path(submission.store_dir))
    raise DownloadError(f"unknown --backend '{backend}' (rucio or local)")
