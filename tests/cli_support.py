"""Helpers shared by the CLI tests (this module holds no tests).

* :func:`run_main`: ``upp-grid ARGV`` in-process through the CLI's ``main``, fast.
* :func:`run_process`: ``python -m upp_grid ARGS`` as a real process on the working tree's code.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from upp_grid.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``upp-grid ARGV`` in-process: (exit code, stdout, stderr). Leaves logging as it was."""
    logger = logging.getLogger("upp_grid")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    out, err = capsys.readouterr()
    return code, out, err


def run_process(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m upp_grid ARGS`` on the working tree's code."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "upp_grid", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
