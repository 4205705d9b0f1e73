"""One writer per base_dir: every command that writes there holds ``<base_dir>/.upp-grid.lock``.

Two commands writing into one base_dir at once mix their outputs silently (a ``weights -c B``
during a ``merge -c A`` gives files with both configs' weights; one ``run``'s clean-up removes
the other's staging directory). So split, weights, merge, norm, run, download, submit and demo
take this lock first, and a second writer stops at once with one line naming the command that
holds it and its pid. ``status`` only reads and takes no lock.

The lock file holds the holder's pid, its process start time, the command line and when it
started, as JSON; an empty file is a free lock. It is read and written under a short
``flock``, which is released before any work starts, so worker processes forked later never
inherit a held lock. A holder that is gone (killed with ``kill -9``, the machine rebooted, or
only its orphaned workers left) is taken over, never waited for: the pid no longer exists, or
belongs to a process started at another time (a reused pid).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from upp_grid.errors import UppGridError

log = logging.getLogger(__name__)

LOCK_NAME = ".upp-grid.lock"
FLOCK_WAIT_S = 10.0  # the flock is held for microseconds: this is only reached when suspended


class BaseDirBusyError(UppGridError):
    """Another upp-grid command is writing into the same base_dir."""


@dataclass(frozen=True)
class Holder:
    """Who holds the lock."""

    pid: int
    start: str  # the process's start time (/proc/<pid>/stat), to tell a reused pid apart
    command: str
    since: float  # time.time() when it took the lock
    host: str

    @classmethod
    def me(cls, command: str) -> Holder:
        return cls(os.getpid(), process_start(os.getpid()), command, time.time(),
                   socket.gethostname())

    def alive(self) -> bool:
        """Whether the holding process still runs (on this host)."""
        if self.host != socket.gethostname():
            return True  # a shared file system: we cannot tell, so assume it does
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        return process_start(self.pid) == self.start


def process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ('' where /proc is unavailable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22, after the command name


def command_line() -> str:
    """``upp-grid <arguments>`` of this process, for the message another writer sees."""
    return " ".join(["upp-grid", *sys.argv[1:]])


@contextlib.contextmanager
def writer_lock(base_dir: Path, command: str | None = None) -> Iterator[None]:
    """Hold the base_dir's writer lock for the block.

    Re-entrant within one process (``run`` calls the stages, ``demo`` calls ``run``).

    Raises
    ------
    BaseDirBusyError
        Another living process holds it: one line with its command, pid and start.
    """
    base_dir.mkdir(parents=True, exist_ok=True)
    path = base_dir / LOCK_NAME
    me = Holder.me(command or command_line())
    with _locked(path) as fd:
        holder = _read(fd)
        if holder is not None and holder.pid == me.pid and holder.start == me.start:
            nested = True
        elif holder is not None and holder.alive():
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.since))
            raise BaseDirBusyError(f"{base_dir}: `{holder.command}` (pid {holder.pid}, since "
                              f"{since}) is writing here; wait for it to finish or stop it "
                              "first: one command at a time per base_dir")
        else:
            nested = False
            if holder is not None:
                log.info("%s: taking over the lock of `%s` (pid %d), which is gone", base_dir,
                         holder.command, holder.pid)
            _write(fd, me)
    try:
        yield
    finally:
        if not nested:
            with _locked(path) as fd:
                holder = _read(fd)
                if holder is not None and holder.pid == me.pid and holder.start == me.start:
                    _write(fd, None)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The lock file, under an exclusive flock held for a read and a write, never during
    work. Never waits forever: a holder suspended right there (Ctrl-Z) is an error."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + FLOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BaseDirBusyError(f"{path}: held by a suspended process for over "
                                           f"{FLOCK_WAIT_S:.0f} s (see `fuser {path}`)") from None
                time.sleep(0.01)
        yield fd
    finally:
        os.close(fd)  # releases the flock


def _read(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64 * 1024).decode(errors="replace").strip()
    if not text:
        return None
    try:
        return Holder(**json.loads(text))
    except (ValueError, TypeError):
        return None  # unreadable (a torn write of a crashed holder): free


def _write(fd: int, holder: Holder | None) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    if holder is not None:
        os.write(fd, json.dumps(asdict(holder)).encode())
    os.fsync(fd)

