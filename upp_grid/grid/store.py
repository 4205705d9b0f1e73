"""A local file store laid out like rucio: ``<root>/<scope>/<dataset>/<file>``.

Each dataset directory has a hidden manifest ``.manifest.json`` with every file's size and
adler32 (``zlib.adler32``, 8 lower-case hex digits, as rucio reports it), so a reader can list
and verify a dataset the way it would with ``DIDClient.list_files``. Files are published
atomically (temporary name, then rename) and the manifest is updated under a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from upp_grid.errors import UppGridError
from upp_grid.fsutil import adler32_file, atomic_path, write_json_atomic

MANIFEST_NAME = ".manifest.json"


@dataclass(frozen=True)
class StoredFile:
    """One file of a dataset, as ``DIDClient.list_files`` would describe it."""

    scope: str
    dataset: str
    name: str
    bytes: int
    adler32: str


class LocalStore:
    """The store under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def dataset_dir(self, scope: str, dataset: str) -> Path:
        for part in (scope, dataset):
            if not part or "/" in part or part.startswith("."):
                raise UppGridError(f"invalid scope or dataset name '{part}'")
        return self.root / scope / dataset

    def path(self, stored: StoredFile) -> Path:
        return self.dataset_dir(stored.scope, stored.dataset) / stored.name

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def publish(self, src: Path, scope: str, dataset: str, name: str) -> StoredFile:
        """Move ``src`` into the dataset as ``name`` (replacing an older one) and list it."""
        folder = self.dataset_dir(scope, dataset)
        folder.mkdir(parents=True, exist_ok=True)
        stored = StoredFile(scope, dataset, name, src.stat().st_size, adler32_file(src))
        with atomic_path(folder / name) as tmp:
            shutil.move(src, tmp)
        with self._locked():
            files = self._read(folder)
            files[name] = {"bytes": stored.bytes, "adler32": stored.adler32}
            self._write(folder, scope, dataset, files)
        return stored

    def list_files(self, scope: str, dataset: str) -> list[StoredFile]:
        """The files of a dataset from its manifest (empty if the dataset does not exist)."""
        files = self._read(self.dataset_dir(scope, dataset))
        return [StoredFile(scope, dataset, name, int(v["bytes"]), str(v["adler32"]))
                for name, v in sorted(files.items())]

    def verify(self, stored: StoredFile) -> bool:
        """Whether the file on disk has the size and adler32 of the manifest."""
        path = self.path(stored)
        return (path.is_file() and path.stat().st_size == stored.bytes
                and adler32_file(path) == stored.adler32)

    @staticmethod
    def _read(folder: Path) -> dict[str, dict]:
        try:
            data = json.loads((folder / MANIFEST_NAME).read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise UppGridError(f"{folder / MANIFEST_NAME}: unreadable manifest ({err})"
                               ) from None
        return dict(data.get("files", {}))

    @staticmethod
    def _write(folder: Path, scope: str, dataset: str, files: dict[str, dict]) -> None:
        write_json_atomic(folder / MANIFEST_NAME, {"scope": scope, "dataset": dataset,
                                                   "files": dict(sorted(files.items()))})
