"""The ``upp-grid`` console entry point: the CLI, then an exit without interpreter teardown.

After a split, Python's own teardown (freeing every module and object, then HDF5's and
multiprocessing's exit handlers) took 0.08-0.19 s of the command's wall time, about a tenth of
a 1M-jet split, for nothing: by the time a command returns, every output is closed and renamed
into place and worker processes are joined. So :func:`run` flushes the standard streams and
logging and leaves with :func:`os._exit`. Tracebacks (``-v``) still propagate normally.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from upp_grid.cli import main


def run() -> None:
    """Run the CLI with ``sys.argv``; exit with its status, skipping interpreter teardown."""
    try:
        main()
        code = 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:  # sys.exit("message"): Python prints it and exits 1
            print(done.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed, or a broken pipe
            stream.flush()
    os._exit(code)
