"""Small file helpers: atomic publication, rucio-style adler32, empty-directory cleanup, sizes.

An atomic write goes to a hidden temporary name next to its target (``.<name>.tmp-<pid>``) and
is renamed into place only once complete, so a reader never sees a partial file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HASH_BLOCK = 4 * 2**20


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` to write; renamed to ``path`` if the block succeeds.

    The temporary file is removed whatever happens; ``path`` is only ever complete or absent.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=1))


def adler32_file(path: Path) -> str:
    """adler32 of a file in rucio's format: 8 lower-case hex digits, zero-padded."""
    value = 1
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            value = zlib.adler32(block, value)
    return f"{value & 0xFFFFFFFF:08x}"


def remove_empty_dirs(path: Path) -> None:
    """Remove the empty directories under ``path``, then ``path`` and its parent if empty."""
    for p in sorted(path.rglob("*"), reverse=True) if path.is_dir() else ():
        if p.is_dir():
            _rmdir_quiet(p)
    _rmdir_quiet(path)
    _rmdir_quiet(path.parent)


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def human_bytes(n: float) -> str:
    """A size in bytes for people, in powers of 1000: ``512 B``, ``1.5 MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


_STALE = re.compile(r"^\..+\.tmp-(\d+)$|^\.sandbox-(\d+)$")


def remove_stale_temps(directory: Path) -> list[Path]:
    """Remove what killed runs left in ``directory`` (not below it): hidden temporary files
    ``.<name>.tmp-<pid>`` and unpacked-sandbox staging ``.sandbox-<pid>`` of other processes.

    Only call it holding the base_dir's writer lock (:mod:`upp_grid.lock`): then no other
    process writes there, and every such entry of another pid is a leftover."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STALE.match(entry.name)
        if not match or int(match[1] or match[2]) == os.getpid():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.info("removed %d leftovers of killed runs in %s", len(removed), directory)
    return removed
