"""upp-grid imports ftag's cuts and flavours without ftag's package __init__ (and scipy), and
ftag still works whole for anyone who uses more of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_split_path_does_not_import_scipy():
    out = run("import sys, upp_grid.cli, upp_grid.config, upp_grid.stages.split_local\n"
              "print('scipy' in sys.modules, 'ftag.hdf5' in sys.modules)")
    assert out == "False False"


def test_ftag_loads_whole_on_first_use_of_anything_else():
    out = run("import upp_grid.config, ftag\n"
              "from ftag import Flavours, calculate_best_fraction_values\n"
              "import ftag.hdf5\n"
              "from ftag.cuts import Cuts\n"
              "print(ftag.__version__.startswith('v'), 'bjets' in Flavours, ftag.Cuts is Cuts,"
              " callable(calculate_best_fraction_values), hasattr(ftag, 'hdf5'))")
    assert out == "True True True True True"


def test_ftag_imported_first_is_left_alone():
    out = run("import ftag, upp_grid.config\nprint(ftag.__version__.startswith('v'))")
    assert out == "True"
