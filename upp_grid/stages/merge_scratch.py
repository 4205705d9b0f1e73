"""Where the merge's scratch files go: memory (tmpfs) when the machine has room, else disk.

Pass 1 writes every jet of a split once to scratch and pass 2 reads it back once. On a disk
filesystem that round trip costs more CPU than the compression of the output (writing and
reading 340 MB of scratch here: 0.27 s + 0.86 s under ``/tmp`` on ext4, 0.11 s + 0.11 s in
``/dev/shm``). So a split's scratch goes to ``/dev/shm`` when it fits in a quarter of the
memory available and half of the free tmpfs space, counting the other splits' scratch of the
same merge; otherwise, and with ``UPP_GRID_SCRATCH_MEMORY=0``, to
``<out_dir>/<split>/.staging/scratch``. Either way the files are the same bytes, no process
holds them in its own memory (tmpfs pages are the kernel's), and a split's scratch is removed
as soon as its files are written.

tmpfs outlives a killed process, so each merge first removes the scratch of dead merges of the
same user (directories named after their process id).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

from upp_grid.stages.merge_plan import SplitPaths

log = logging.getLogger(__name__)

TMPFS = Path("/dev/shm")
MEMORY_SHARE = 0.25  # of MemAvailable, for all scratch in memory at once
TMPFS_SHARE = 0.5  # of the free tmpfs space
ENV = "UPP_GRID_SCRATCH_MEMORY"


def memory_available() -> int:
    """Bytes of memory this process may still use: ``MemAvailable`` of /proc/meminfo, or less
    if its cgroup (a batch slot, a login node's per-user limit) has less left, since tmpfs pages
    count against the cgroup of the process that writes them. 0 where neither is known."""
    avail = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    left = _cgroup_left()
    return min(avail, left) if left is not None else avail


def _cgroup_left() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), None if unlimited."""
    try:
        rel = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1]
        base = Path("/sys/fs/cgroup") / rel.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        return None


def tmpfs_free(root: Path = TMPFS) -> int:
    try:
        st = os.statvfs(root)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class ScratchSpace:
    """The scratch directories of one merge: :meth:`place` one per split, :meth:`release`
    each when its split is written, :meth:`release_all` on the way out (also after errors)."""

    def __init__(self, root: Path = TMPFS) -> None:
        self.root = root / f"upp-grid-scratch-{os.getuid()}"
        enabled = os.environ.get(ENV, "1") != "0"
        self.budget = (int(min(memory_available() * MEMORY_SHARE, tmpfs_free(root) * TMPFS_SHARE))
                       if enabled and root.is_dir() else 0)
        self._placed: dict[Path, int] = {}
        if self.budget:
            remove_dead(self.root)

    def place(self, paths: SplitPaths, nbytes: int) -> Path:
        """An empty directory for ``nbytes`` of the scratch of ``paths.split``."""
        shutil.rmtree(paths.scratch, ignore_errors=True)  # an earlier run's, on disk
        used = sum(self._placed.values())
        where = paths.scratch
        if nbytes <= self.budget - used:
            where = self.root / f"{os.getpid()}-{paths.split}-{uuid.uuid4().hex[:8]}"
        where.mkdir(parents=True, exist_ok=True)
        self._placed[where] = nbytes if where != paths.scratch else 0
        log.debug("merge %s: %.0f MB of scratch in %s", paths.split, nbytes / 1e6, where)
        return where

    def release(self, where: Path) -> None:
        shutil.rmtree(where, ignore_errors=True)
        self._placed.pop(where, None)

    def release_all(self) -> None:
        for where in list(self._placed):
            self.release(where)
        with contextlib.suppress(OSError):
            self.root.rmdir()  # if no other merge of this user is using it


def remove_dead(root: Path) -> None:
    """Remove the scratch directories under ``root`` of merges whose process is gone."""
    if not root.is_dir():
        return
    for entry in root.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing the scratch of a merge that did not finish: %s", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: not ours to judge
        return True
    return True
