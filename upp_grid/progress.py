"""Progress reporting: a rich bar with ETA on a terminal, plain log lines otherwise.

Library code takes an optional ``progress: Callable[[int], None]`` and calls it with the
amount of work just done; the CLI decides how that is shown via :func:`progress_bar`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("upp_grid")


@contextmanager
def progress_bar(total: int, what: str, unit: str = "jets",
                 enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callable that reports progress towards ``total``."""
    if not enabled or total <= 0:
        yield lambda n: None
        return
    if sys.stderr.isatty():
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
                   TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.advance(task, n)
        return
    state = {"done": 0, "last": 0.0, "start": time.monotonic()}

    def advance(n: int) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["last"] < 10 and state["done"] < total:
            return
        state["last"] = now
        elapsed = now - state["start"]
        rate = state["done"] / elapsed if elapsed > 0 else 0.0
        eta = (total - state["done"]) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d %s (%.0f%%), %.0fs elapsed, eta %.0fs", what, state["done"], total,
                 unit, 100 * state["done"] / total, elapsed, eta)

    yield advance
