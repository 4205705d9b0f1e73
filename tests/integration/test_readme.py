"""The README's examples, walked in order as a new user would type them in a fresh clone.

Every ``upp-grid`` line of the README's ``bash`` blocks that can run on this machine (no grid
proxy, no PanDA, no rucio server) runs as written, in order, from a copy of the repository's
files, and must exit 0. The only change is the size of the mock data (``--jets``), scaled down
to keep the test short. The other lines (PanDA and rucio commands, placeholders such as
``CFG`` or ``<nick>``) are parsed by the CLI exactly as written, so an option the README names
but the CLI lacks still fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.cli_support import REPO
from upp_grid.cli import cli

JETS = "60000"  # instead of the README's 200k / 1M: the same commands, less waiting
# commands that need the grid (a proxy, PanDA or a rucio server) or a placeholder filled in
NEEDS_GRID = re.compile(r"(\bCFG\b|<\w+>|/path/|MY-INSTITUTE|ANALY_|replicate|# GRID$)")


def readme_commands(shell: bool = False) -> list[str]:
    """The ``upp-grid`` lines of the README's bash blocks (and its ``rm`` lines if ``shell``),
    comments cut."""
    text = (REPO / "README.md").read_text()
    # the Grid section's commands act on a PanDA submission (tag v1), all but the dry run
    grid = text[text.index("\n## Grid"):text.index("\n## Local grid backend")]
    text = text.replace(grid, re.sub(r"(?m)^(upp-grid (?!submit .*--dryrun).*)$",
                                     r"\1  # GRID", grid))
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            grid_only = line.endswith("  # GRID")
            line = line.split("  #")[0].strip() + (" # GRID" if grid_only else "")
            if line.startswith("upp-grid ") or (shell and line.startswith("rm ")):
                lines.append(line)
    return lines


def runs_here(line: str) -> bool:
    """Whether a README line runs without the grid (the dry run is offline by design)."""
    return "--dryrun" in line or not NEEDS_GRID.search(line)


def test_the_readme_has_examples_of_every_command():
    used = {shlex.split(line)[1] for line in readme_commands()}
    assert used >= set(cli.commands), sorted(set(cli.commands) - used)


@pytest.mark.parametrize("line", [ln for ln in readme_commands() if not runs_here(ln)])
def test_grid_examples_parse_as_written(line):
    args = shlex.split(line.removesuffix(" # GRID"))[1:]
    command = cli.commands[args[0]]
    with command.make_context(args[0], args[1:], resilient_parsing=False) as ctx:
        assert ctx.params  # every option and argument the README writes exists


def test_local_examples_run_as_written_in_order(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "configs", clone / "configs")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RUCIO_ACCOUNT", "PANDA_NICKNAME", "X509_USER_PROXY")}
    env.update(PYTHONPATH=str(REPO), HOME=str(tmp_path), UPP_GRID_ENV=sys.prefix)
    ran = []
    for line in readme_commands(shell=True):
        if not runs_here(line):
            continue
        if line.startswith("rm "):
            subprocess.run(shlex.split(line), cwd=clone, check=True)
            continue
        args = shlex.split(re.sub(r"--jets \d+", f"--jets {JETS}", line))[1:]
        done = subprocess.run([sys.executable, "-m", "upp_grid", *args], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr, line
        ran.append(args[0])
    assert {"make-mock", "check", "demo", "split", "weights", "merge", "norm", "verify",
            "run", "submit", "status", "retry", "kill", "download"} <= set(ran), ran
