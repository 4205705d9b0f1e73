"""Run a command on a pseudo-terminal and read back the screen a user would see (no tests).

The command's output goes through a real pty (so rich sees a terminal and draws its live
progress display) into pyte, a VT100 emulator that applies every cursor movement and erase the
way a terminal does. :func:`screen_of` returns the final screen plus everything that scrolled
off the top, as plain lines: what the user reads after the command ends.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pyte

from tests.cli_support import REPO

BAR_CHARS = "━╸╺"
TABLE_CHARS = "┏┳┓┡╇┩┃│└┘┴"
STAGES = ("make-mock", "split", "weights", "merge", "norm", "plots", "download", "fetch",
          "sandbox", "jobs")


@dataclass(frozen=True)
class Screen:
    """What a command left on the terminal."""

    code: int
    lines: list[str]
    raw: bytes

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def bar_lines(self) -> list[str]:
        """Lines with progress-bar characters (table borders left out)."""
        return [ln for ln in self.lines if any(c in ln for c in BAR_CHARS)
                and not any(c in ln for c in TABLE_CHARS)]


# one finished rich bar: "<stage>  ━━━━  N/N unit  0:00:01 eta 0:00:00[  note]"
WHOLE_BAR = re.compile(r"^\s*(?P<what>[\w\- ()]+?)\s+[━╸╺ ]+\s+[\d,.]+/[\d,.]+ \w+\s+"
                       r"(\d+:)?\d+:\d\d eta( -:--:--| (\d+:)?\d+:\d\d)?"
                       r"(\s+\d+ running, \d+ failed)?\s*$")


def screen_of(args: list[str], cwd: Path, env: dict[str, str] | None = None,
              columns: int = 160, rows: int = 60, timeout: float = 600) -> Screen:
    """``python -m upp_grid ARGS`` on a pty of ``columns`` x ``rows``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color",
           "COLUMNS": str(columns), "LINES": str(rows), **(env or {})}
    env.pop("NO_COLOR", None)
    env.pop("CI", None)
    argv = [sys.executable, "-m", "upp_grid", *args]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its terminal
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    screen = pyte.HistoryScreen(columns, rows, history=100_000)
    stream = pyte.ByteStream(screen)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            raw += data
            stream.feed(data)
        else:
            os.kill(pid, signal.SIGKILL)
            raise TimeoutError(f"{' '.join(args)}: still running after {timeout} s")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    history = ["".join(line[x].data for x in range(columns)).rstrip()
               for line in screen.history.top]
    lines = history + [ln.rstrip() for ln in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return Screen(code, lines, bytes(raw))


def broken_bars(screen: Screen) -> list[str]:
    """Lines holding bar characters that are not one whole finished bar (a bar with log text
    glued on, or two bars on one line)."""
    return [ln for ln in screen.bar_lines() if not WHOLE_BAR.match(ln)]
