"""Helpers to check that a command leaves no process behind (this module holds no tests).

* :func:`run_in_session`: ``python -m upp_grid ARGS`` as the leader of a new session; returns
  the completed process and every process still alive in that session once it has exited.
* :func:`children` / :func:`group_alive`: this process's children, and whether a process group
  still has a live member (the plotting process runs in its own group with its helpers).

Linux only (``/proc``). Zombies are not counted: they have exited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, session, ...)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _live(fields: list[str] | None) -> bool:
    return fields is not None and fields[0] not in ("Z", "X")


def session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if _live(fields) and int(fields[3]) == sid:
                out.append(int(entry.name))
    return out


def group_alive(pgid: int) -> bool:
    """Whether a live process is in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if _live(fields) and int(fields[2]) == pgid:
                return True
    return False


def children() -> set[int]:
    """Live children of this process."""
    pids = {int(c) for task in Path(f"/proc/{os.getpid()}/task").iterdir()
            for c in (task / "children").read_text().split()}
    return {pid for pid in pids if _live(_stat(pid))}


def run_in_session(*args: str, cwd: Path | None = None, timeout: float = 300
                   ) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """``python -m upp_grid ARGS`` in a new session: (the result, its processes left alive).

    Its output goes to files, not pipes, so that a process it left behind (which would hold
    the pipes open) cannot delay the return: it is found alive instead.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "upp_grid", *args], cwd=cwd, env=env,
                                stdout=out, stderr=err, text=True, start_new_session=True)
        proc.wait(timeout=timeout)
        left = session_processes(proc.pid)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(),
                                           err.read()), left
