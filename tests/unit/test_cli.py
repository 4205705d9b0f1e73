"""The command line's contract: exit codes, one-line errors, `-v` anywhere before `--`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cli_support import REPO, run_main, run_process
from upp_grid import __version__
from upp_grid.errors import InputError
from upp_grid.mock import make_mock

UPP_RW_CONFIG = REPO / "configs" / "upp-rw-integration.yaml"


def copy_config(tmp_path: Path) -> Path:
    """The UPP integration config (and its include) where ``base_dir: .`` means ``tmp_path``."""
    shutil.copytree(REPO / "configs" / "includes", tmp_path / "includes")
    return Path(shutil.copy(UPP_RW_CONFIG, tmp_path / "config.yaml"))


def test_help_exits_0_and_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["--help"], capsys)

    assert code == 0
    assert "Usage: upp-grid" in out
    assert "check" in out and "make-mock" in out
    assert err == ""


def test_version_exits_0_through_python_dash_m(tmp_path: Path) -> None:
    result = run_process("--version", cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout.strip() == f"upp-grid, version {__version__}"


def test_unknown_command_exits_2_with_clicks_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["chekc", "-c", "x.yaml"], capsys)

    assert code == 2
    assert "Usage: upp-grid" in err
    assert "No such command 'chekc'" in err
    assert "Traceback" not in out + err


def test_missing_required_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["check"], capsys)

    assert code == 2
    assert "Missing option '-c' / '--config'" in err


def test_check_passes_on_a_valid_config_with_its_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = copy_config(tmp_path)
    make_mock(tmp_path / "ntuples", num_jets=2_000, num_files=2, seed=1)
    monkeypatch.chdir(tmp_path)

    code, out, err = run_main(["check", "-c", str(config)], capsys)

    assert code == 0, err
    assert "weight_tracks_deta_target_mean_leptonID" in out
    assert "flavour_label: 0=bjets, 1=cjets, 2=ujets, 3=taujets" in out


def test_check_with_a_missing_ntuple_dir_exits_1_naming_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = copy_config(tmp_path)
    monkeypatch.chdir(tmp_path)

    code, out, err = run_main(["check", "-c", str(config)], capsys)

    assert code == 1
    assert err.splitlines() == [
        f"upp-grid: error: {config}: global.ntuple_dir: directory {tmp_path / 'ntuples'} not found"
    ]
    assert "Traceback" not in out + err


def test_check_of_a_config_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["check", "-c", str(tmp_path / "nope.yaml")], capsys)

    assert code == 1
    assert err.splitlines() == [f"upp-grid: error: {tmp_path / 'nope.yaml'}: config file not found"]


def test_check_lists_every_problem_one_per_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = UPP_RW_CONFIG.read_text()
    text = text.replace("class_target: min}", "class_target: minimum}")
    text = text.replace("flavours: [bjets, cjets, ujets, taujets]", "flavours: [bjets, tau]", 1)
    config = tmp_path / "config.yaml"
    config.write_text(text)
    shutil.copytree(REPO / "configs" / "includes", tmp_path / "includes")

    code, _, err = run_main(["check", "-c", str(config)], capsys)

    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"upp-grid: error: {config}:") for line in lines)
    assert "components[0].flavours[1]: unknown flavour 'tau'" in lines[0]
    assert "reweighting.reweights[1].class_target: must be one of mean, min" in lines[1]


@pytest.mark.parametrize(
    "argv",
    [["-v", "check", "-c", "{config}"], ["check", "-c", "{config}", "-v"]],
    ids=["before the command", "after the command"],
)
def test_verbose_anywhere_lets_the_error_and_its_traceback_through(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    config = copy_config(tmp_path)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(InputError, match=r"global\.ntuple_dir: directory .* not found"):
        run_main([a.format(config=config) for a in argv], capsys)
