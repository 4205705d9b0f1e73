"""Progress reporting: a rich bar with ETA on a terminal, plain log lines otherwise.

Library code takes an optional ``progress: Callable[[int], None]`` and calls it with the
amount of work just done; the CLI decides how that is shown via :func:`progress_bar`. The bar
draws on the one stderr console the log handler writes to (:mod:`upp_grid.console`), so log
lines emitted while it runs scroll above it and the bar stays whole; when it ends it stays on
screen as one finished line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from upp_grid.console import is_terminal, stderr_console

log = logging.getLogger("upp_grid")


class Advance:
    """``advance(n)`` reports ``n`` more units done; ``set_total(n)`` fixes the total once the
    work is planned (a bar may start before that, with an unknown total)."""

    def __init__(self, total: int | None, on_update: Callable[[Advance], None]) -> None:
        self.total = total
        self.done = 0
        self.note = ""  # shown after the counts: e.g. "2 running, 1 failed"
        self._on_update = on_update

    def __call__(self, n: int) -> None:
        self.done += n
        self._on_update(self)

    def set_total(self, total: int) -> None:
        self.total = total
        self._on_update(self)

    def set_note(self, note: str) -> None:
        self.note = note
        self._on_update(self)


@contextmanager
def progress_bar(total: int | None, what: str, unit: str = "jets",
                 enabled: bool = True) -> Iterator[Advance]:
    """Yield an :class:`Advance` that reports progress towards ``total`` (None: set later)."""
    if not enabled:
        yield Advance(total, lambda a: None)
        return
    if is_terminal():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn(unit), TimeElapsedColumn(), TextColumn("eta"),
                   TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
        with Progress(*columns, transient=False, console=stderr_console()) as bar:
            task = bar.add_task(what, total=total, note="")
            yield Advance(total, lambda a: bar.update(task, completed=a.done, total=a.total,
                                                      note=a.note))
        return
    start = time.monotonic()
    last = [0.0]

    def log_line(a: Advance) -> None:
        now = time.monotonic()
        if not a.total or not a.done or (now - last[0] < 10 and a.done < a.total):
            return
        last[0] = now
        elapsed = now - start
        rate = a.done / elapsed if elapsed > 0 else 0.0
        eta = (a.total - a.done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d %s (%.0f%%), %.0fs elapsed, eta %.0fs%s", what, a.done, a.total,
                 unit, 100 * a.done / a.total, elapsed, eta, f" ({a.note})" if a.note else "")

    yield Advance(total, log_line)
