"""One console for everything a command writes to stderr: log lines and progress bars.

On a terminal, log lines go through rich's logging handler bound to the same
:class:`rich.console.Console` as the progress display, so they scroll above the bars and never
break them. In a pipe or a log file, log lines are plain text (no colour, no control
characters) and progress is a plain line every few seconds (see :mod:`upp_grid.progress`).
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler

_STDERR: Console | None = None


def stderr_console() -> Console:
    """The console of stderr, shared by the log handler and every progress display."""
    global _STDERR
    if _STDERR is None or _STDERR.file is not sys.stderr:
        _STDERR = Console(file=sys.stderr, highlight=False, soft_wrap=False)
    return _STDERR


def is_terminal() -> bool:
    """Whether stderr is a terminal a live display can draw on (not a pipe, not ``TERM=dumb``)."""
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def log_handler(verbose: bool) -> logging.Handler:
    """rich's handler on the shared console on a terminal; a plain stream handler otherwise."""
    if is_terminal():
        handler: logging.Handler = RichHandler(
            console=stderr_console(), show_time=False, show_path=False,
            show_level=verbose, markup=False, rich_tracebacks=False, highlighter=None)
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)-7s %(message)s" if verbose
                                           else "%(message)s"))
    return handler
