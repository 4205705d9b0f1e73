"""The plotting process: the weights plots are drawn beside the stage, off its critical path.

The life of a :class:`PlotProcess`:

1. :meth:`PlotProcess.start` forks it (the weights stage does so before it opens any HDF5
   file). It imports matplotlib, which takes about as long as the stage's sampling and
   histogramming, and waits for work.
2. :meth:`PlotProcess.submit` hands it the figures (:class:`~upp_grid.stages.plots.PlotJob`,
   plain picklable data) from a thread and returns at once. It draws them one at a time with a
   lower CPU priority (``nice`` +:data:`NICE`, set once matplotlib is imported), so work
   overlapping it (``run``'s merge) keeps the cores; each figure it finishes is reported on a
   pipe.
3. :meth:`PlotProcess.result` tells it that the caller is idle now: it forks helpers that draw
   the remaining figures on the other cores (at most :data:`MAX_DRAWERS` processes in all), and
   returns the :class:`PlotResult` once every drawing process has exited.

It runs in its own process group: Ctrl-C at the terminal reaches the caller only, and
:meth:`PlotProcess.cancel` ends it and its helpers together (SIGTERM, then SIGKILL). If the
caller dies, the process sees its pipes close and exits. A figure that fails does not stop the
others; its file and error are reported. The process and its helpers never log or print.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from upp_grid.stages import plots

NICE = 10  # niceness added to the drawing processes
MAX_DRAWERS = 4  # drawing processes once the caller is idle (the process and its helpers)
TERM_TIMEOUT_S = 5.0  # cancel(): SIGKILL if SIGTERM has not ended the process by then
ERROR_CHARS = 400  # an error is cut to this: every message stays below PIPE_BUF, so the
#                    messages of several drawing processes on one pipe never interleave
_IDLE = "idle"


@dataclass(frozen=True)
class PlotResult:
    """What the plotting process did.

    ``draw_s`` is the wall time from the figures' arrival to the last one written (matplotlib's
    import excluded). ``skipped`` says why nothing was drawn (matplotlib is missing);
    ``failed`` holds every planned figure that was not written, with its error.
    """

    planned: tuple[Path, ...]
    written: tuple[Path, ...]
    failed: tuple[tuple[Path, str], ...]
    draw_s: float = 0.0
    skipped: str | None = None

    @property
    def warning(self) -> str | None:
        """One line for the user when something was not drawn, else None."""
        if self.skipped is not None:
            return f"plots skipped: {self.skipped}"
        if not self.failed:
            return None
        path, error = self.failed[0]
        return (f"plots: {len(self.failed)} of {len(self.planned)} not written; {path}: "
                f"{error}")


class PlotProcess:
    """A forked process that draws plots in the background; see the module docstring."""

    def __init__(self, process: Any, jobs_conn: Connection, results_conn: Connection) -> None:
        self._process = process
        self._jobs_conn = jobs_conn  # to the process: the jobs, then _IDLE
        self._results = results_conn  # from it: one message per figure, then the end
        self._jobs: list[plots.PlotJob] = []
        self._sender: threading.Thread | None = None
        self._outcomes: dict[int, str | None] = {}  # job index -> error (None: written)
        self._end: tuple[float, str | None] | None = None  # (draw_s, helper problem)
        self._skipped: str | None = None
        self._problem: str | None = None
        self._open = True

    @classmethod
    def start(cls) -> PlotProcess:
        """Fork the process; it imports matplotlib and waits for :meth:`submit`.

        Raises
        ------
        OSError
            If the process cannot be started.
        """
        ctx = mp.get_context("fork")
        jobs_r, jobs_w = ctx.Pipe(duplex=False)
        results_r, results_w = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_serve, args=(jobs_r, results_w, (jobs_w, results_r)),
                              name="upp-grid-plots")
        try:
            process.start()
        except BaseException:
            for conn in (jobs_r, jobs_w, results_r, results_w):
                conn.close()
            raise
        jobs_r.close()
        results_w.close()
        with contextlib.suppress(OSError):  # the process does it too: whoever is first
            os.setpgid(process.pid, process.pid)
        return cls(process, jobs_w, results_r)

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def submit(self, jobs: Sequence[plots.PlotJob]) -> None:
        """Send the figures to draw and return at once (a thread sends them)."""
        self._jobs = list(jobs)
        self._sender = threading.Thread(target=self._send, args=(self._jobs,), daemon=True,
                                        name="upp-grid-plots-send")
        self._sender.start()

    def _send(self, message: object) -> None:
        try:
            self._jobs_conn.send(message)
        except (OSError, ValueError):
            pass  # the process has gone: result() says so
        except Exception as err:  # e.g. a pickling error: nothing will be drawn
            self._problem = _describe(err)
            self._jobs_conn.close()  # the process sees the end of its input and exits

    def poll(self) -> int:
        """Read what the process has reported so far (without waiting): figures done."""
        self._receive(block=False)
        return len(self._outcomes)

    def result(self, progress: Callable[[int], None] | None = None) -> PlotResult:
        """Wait for every figure, using every core; ``progress(n)``: n more figures done."""
        if self._sender is not None:
            self._sender.join()
        with contextlib.suppress(OSError, ValueError):
            self._jobs_conn.send(_IDLE)
        reported = 0

        def report() -> None:  # figures received so far, polled earlier ones included
            nonlocal reported
            if progress and len(self._outcomes) > reported:
                progress(len(self._outcomes) - reported)
                reported = len(self._outcomes)

        report()
        while self._receive(block=True):
            report()
        report()
        self._process.join()
        self._close()
        return self._result()

    def cancel(self) -> None:
        """End the process and its helpers now, if still running, and release the pipes."""
        if self._open and self._process.exitcode is None:
            _signal_group(self.pid, signal.SIGTERM)
            self._process.join(TERM_TIMEOUT_S)
            if self._process.exitcode is None:
                _signal_group(self.pid, signal.SIGKILL)
                self._process.join()
        if self._sender is not None:
            self._sender.join(TERM_TIMEOUT_S)
        self._close()

    def _receive(self, block: bool) -> bool:
        """Handle the messages that are there (blocking: at least one); False at the end."""
        if not self._open:
            return False
        try:
            if block:
                self._handle(self._results.recv())
            while self._results.poll():
                self._handle(self._results.recv())
        except (EOFError, OSError):
            return False  # every drawing process has exited
        return True

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "plot":
            self._outcomes[message[1]] = message[2]
        elif kind == "end":
            self._end = (message[1], message[2])
        elif kind == "skipped":
            self._skipped = message[1]
        else:  # "error": the process failed outside a figure
            self._problem = message[1]

    def _result(self) -> PlotResult:
        planned = tuple(job.path for job in self._jobs)
        if self._skipped is not None:
            return PlotResult(planned, (), (), skipped=self._skipped)
        draw_s, helper_problem = self._end or (0.0, None)
        lost = self._problem or helper_problem or (
            f"the plotting process died ({_exit_text(self._process.exitcode)})")
        written, failed = [], []
        for i, path in enumerate(planned):
            if i in self._outcomes and self._outcomes[i] is None:
                written.append(path)
            else:
                failed.append((path, self._outcomes.get(i) or lost))
        return PlotResult(planned, tuple(written), tuple(failed), draw_s)

    def _close(self) -> None:
        if self._open:
            self._open = False
            self._jobs_conn.close()
            self._results.close()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):  # no group yet: the process alone
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:ERROR_CHARS]


# --------------------------------------------------------------------------- in the process
def _serve(jobs_conn: Connection, results: Connection, callers_ends: Sequence[Connection]
           ) -> None:
    """The plotting process: import matplotlib, receive the jobs, draw them, report."""
    for conn in callers_ends:  # so that the caller's death closes our pipes
        conn.close()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller handles Ctrl-C and ends us
    warnings.simplefilter("ignore")  # matplotlib's warnings would reach the user's terminal
    try:
        try:
            plots.import_matplotlib()  # at full priority: it is short and the stage waits
        except plots.PlottingUnavailable as err:
            results.send(("skipped", str(err)))
            return
        with contextlib.suppress(OSError):
            os.nice(NICE)  # drawing yields to the work it overlaps (merge)
        jobs = jobs_conn.recv()
        start = time.perf_counter()
        problem = _draw_all(jobs, jobs_conn, results)
        results.send(("end", time.perf_counter() - start, problem))
    except (EOFError, BrokenPipeError):
        return  # cancelled, or the caller is gone
    except Exception as err:
        with contextlib.suppress(OSError):
            results.send(("error", _describe(err)))


def _draw_all(jobs: Sequence[plots.PlotJob], jobs_conn: Connection, results: Connection
              ) -> str | None:
    """Draw every job, with helpers once the caller is idle; a helper's death, or None."""
    ctx = mp.get_context("fork")
    next_job = ctx.Value("i", 0)
    drawer = plots.Drawer()
    helpers: list[Any] = []
    idle = False
    while True:
        if not idle and jobs_conn.poll():
            idle = jobs_conn.recv() == _IDLE
            helpers = _start_helpers(ctx, drawer, jobs, next_job, results) if idle else []
        i = _claim(next_job)
        if i >= len(jobs):
            break
        _draw_one(drawer, jobs, i, results)
    for helper in helpers:
        helper.join()
    codes = [h.exitcode for h in helpers if h.exitcode]
    return f"a drawing process died ({_exit_text(codes[0])})" if codes else None


def _start_helpers(ctx: Any, drawer: plots.Drawer, jobs: Sequence[plots.PlotJob],
                   next_job: Any, results: Connection) -> list[Any]:
    remaining = len(jobs) - next_job.value
    n = min(os.cpu_count() or 1, MAX_DRAWERS, remaining) - 1
    helpers = [ctx.Process(target=_help, args=(drawer, jobs, next_job, results),
                           name=f"upp-grid-plots-{i + 1}") for i in range(max(n, 0))]
    for helper in helpers:
        helper.start()
    return helpers


def _help(drawer: plots.Drawer, jobs: Sequence[plots.PlotJob], next_job: Any,
          results: Connection) -> None:
    """A helper (forked with the process's figures): draw jobs until none is left."""
    with contextlib.suppress(BrokenPipeError):
        while (i := _claim(next_job)) < len(jobs):
            _draw_one(drawer, jobs, i, results)


def _claim(next_job: Any) -> int:
    with next_job.get_lock():
        i = next_job.value
        next_job.value += 1
    return int(i)


def _draw_one(drawer: plots.Drawer, jobs: Sequence[plots.PlotJob], i: int,
              results: Connection) -> None:
    try:
        drawer.draw(jobs[i])
        error = None
    except Exception as err:
        error = _describe(err)
    results.send(("plot", i, error))
