"""What a user sees on a terminal: commands run on a pseudo-terminal, read back as a screen.

Every progress bar must be left whole (one finished bar per line, no log text glued on, no
half-drawn bar), and the log lines emitted while the bars ran must be on the screen, on lines
of their own. In a pipe the same commands write plain lines without control characters.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.cli_support import REPO
from tests.grid_support import NICK, make_project, run_cli
from tests.pty_support import broken_bars, screen_of
from upp_grid.mock import make_mock

CONTROL = re.compile(r"\x1b\[|\r")


def bars_by_stage(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = re.match(r"^\s*(\S+(?: scan)?)\s+━", line)
        if match:
            out[match[1]] = line
    return out


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("terminal")
    make_mock(base / "ntuples", num_jets=60_000, num_files=3, seed=3)
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["global"]["base_dir"] = str(base)
    data["reweighting"]["max_zero_weight_fraction"] = 1.0
    (base / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return base


def test_run_on_a_terminal_leaves_whole_bars_and_every_log_line(demo_project):
    screen = screen_of(["run", "-c", "config.yaml"], demo_project)

    assert screen.code == 0, screen.text
    assert broken_bars(screen) == [], screen.text
    bars = bars_by_stage(screen.lines)
    assert set(bars) >= {"split", "weights", "merge", "norm", "plots"}, screen.text
    assert "60000/60000 jets" in bars["split"]
    merged = sum(int(n.replace(",", "")) for n in re.findall(
        r"merge (?:train|val|test): ([\d,]+) jets from", screen.text))
    assert f"{merged}/{merged} jets" in bars["merge"]  # each jet counted once
    assert "4/4 plots" in bars["plots"]  # plots drawn during merge are counted too
    # log lines written while the bars were live: whole, on lines of their own
    assert any(re.fullmatch(r"wrote \S+/output/histograms\.h5 \(1 reweights\)", ln)
               for ln in screen.lines), screen.text
    assert any(ln.startswith("run: merge done in ") for ln in screen.lines)
    # the summary's paths are not cut with an ellipsis
    assert "…" not in screen.text


def test_run_in_a_pipe_writes_plain_lines(demo_project):
    done = run_cli(["run", "-c", "config.yaml", "--no-plots"], {}, cwd=demo_project)
    assert done.returncode == 0, done.stderr
    assert not CONTROL.search(done.stderr), done.stderr[:500]
    assert "run: merge done in" in done.stderr


@pytest.fixture(scope="module")
def grid_project(tmp_path_factory: pytest.TempPathFactory):
    return make_project(tmp_path_factory.mktemp("terminal-grid") / "work", jets=4000, files=2)


def test_submit_local_on_a_terminal_shows_sandbox_and_jobs_progress(grid_project):
    p = grid_project
    screen = screen_of(["submit", "-c", p.config, "--tag", "pty1", "--backend", "local",
                        "--workers", "2", "--rucio-user", NICK], p.base, env=p.env)

    assert screen.code == 0, screen.text
    assert broken_bars(screen) == [], screen.text
    bars = bars_by_stage(screen.lines)
    assert "2/2 jobs" in bars["jobs"] and "0 failed" in bars["jobs"], screen.text
    assert re.search(r"(\d+)/\1 files", bars["sandbox"]), screen.text
    assert any(ln.startswith("running 2 job(s) with 2 worker(s)") for ln in screen.lines)


def test_download_local_on_a_terminal_leaves_whole_bars(grid_project):
    p = grid_project
    if not (p.base / "upp-grid.sqlite").exists():  # run on its own: submit first
        first = run_cli(["submit", "-c", p.config, "--tag", "pty1", "--backend", "local",
                         "--rucio-user", NICK], p.env)
        assert first.returncode == 0, first.stderr
    screen = screen_of(["download", "-c", p.config, "--tag", "pty1", "--backend", "local"],
                       p.base, env=p.env)

    assert screen.code == 0, screen.text
    assert broken_bars(screen) == [], screen.text
    bars = bars_by_stage(screen.lines)
    assert {"merge", "norm"} <= set(bars), screen.text
    assert any("fetched and verified now" in ln for ln in screen.lines), screen.text
