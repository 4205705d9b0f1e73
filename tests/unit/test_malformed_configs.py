"""Configs as a new user gets them wrong: `upp-grid check` says what is wrong in ONE line.

Each file in ``malformed/`` starts with ``# expect: <text>``: the one line on stderr must contain
that text, which names the file, the line and the key path. Every file runs through the CLI's
``main`` in-process (fast); a few also run as a real ``python -m upp_grid`` process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_support import run_main, run_process
from upp_grid.errors import ConfigError

MALFORMED = Path(__file__).resolve().parent / "malformed"
FILES = sorted(MALFORMED.glob("*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text().partition("\n")[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <text>'"
    return first.removeprefix("# expect: ")


def test_there_are_at_least_25_malformed_configs() -> None:
    assert len(FILES) >= 25


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_check_reports_a_malformed_config_in_one_line(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(["check", "-c", str(path)], capsys)

    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1
    assert len(lines) == 1, err
    assert lines[0].startswith("upp-grid: error: ")
    assert expected(path) in lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("name", ["tabs.yaml", "unknown_flavour.yaml", "include_missing.yaml"])
def test_a_real_process_prints_one_line_and_exits_1(name: str, tmp_path: Path) -> None:
    path = MALFORMED / name

    result = run_process("check", "-c", str(path), cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert expected(path) in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    path = MALFORMED / "unknown_flavour.yaml"

    result = run_process("-v", "check", "-c", str(path), cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "upp_grid.errors.ConfigError" in result.stderr
    assert expected(path) in result.stderr


def test_verbose_after_the_subcommand_lets_the_error_through(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError, match="unknown flavour 'bjet'"):
        run_main(["check", "-c", str(MALFORMED / "unknown_flavour.yaml"), "-v"], capsys)


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB of address space


@pytest.mark.parametrize("name", ["yaml_bomb.yaml", "deep_nesting.yaml", "bins_billion.yaml"])
def test_a_hostile_config_is_refused_within_bounded_memory(name: str, tmp_path: Path) -> None:
    """A 0.6 kB anchor chain expands to 10^11 values: refused by counting, not by expanding;
    1e9 bins are refused before any array is made. Under 1 GiB of address space the process
    would die (MemoryError, signal) if it tried; it must exit 1 with the one line instead."""
    import subprocess
    import sys

    path = MALFORMED / name
    result = subprocess.run(
        [sys.executable, "-m", "upp_grid", "check", "-c", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, preexec_fn=_limit_memory,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1
    assert expected(path) in result.stderr


def test_a_config_of_a_million_lines_is_refused_by_its_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text((MALFORMED / "bins_gap.yaml").read_text() + "# padding\n" * 1_000_000)

    code, _, err = run_main(["check", "-c", str(path)], capsys)

    assert code == 1
    assert err.strip() == (f"upp-grid: error: {path}: config file is {path.stat().st_size:,} "
                           "bytes, more than the 1,048,576 a config may have")
