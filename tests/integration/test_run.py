"""Specification of ``upp-grid run`` (and of ``demo``, which runs the whole chain)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.process_support import run_in_session
from upp_grid.config import SPLITS
from upp_grid.mock import make_mock

REPO = Path(__file__).resolve().parents[2]
FLAVOURS = ("bjets", "cjets", "ujets", "taujets")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "upp_grid", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


@pytest.fixture
def integration(tmp_path: Path) -> Path:
    """UPP's reweighting integration-test config, as shipped, next to 100k mock jets.

    Its ``base_dir`` is ``.``: relative to the working directory, as in UPP.
    """
    shutil.copy(REPO / "configs" / "upp-rw-integration.yaml", tmp_path)
    shutil.copytree(REPO / "configs" / "includes", tmp_path / "includes")
    make_mock(tmp_path / "ntuples", num_jets=100_000, num_files=3, seed=1)
    return tmp_path


def jets_per_flavour(paths: list[Path]) -> dict[str, int]:
    labels = np.concatenate([h5py.File(p, "r")["jets"]["flavour_label"] for p in paths])
    return dict(zip(FLAVOURS, np.bincount(labels, minlength=4).tolist(), strict=True))


def assert_complete(out: Path, catalogue: Path) -> None:
    """Every split merged with the catalogue's counts, VDS and norm files in place."""
    cat = yaml.safe_load(catalogue.read_text())
    for split in SPLITS:
        record = json.loads((out / split / "merge-record.json").read_text())
        files = [Path(f["path"]) for f in record["files"]]
        assert jets_per_flavour(files) == cat["num_jets"][split]
        with h5py.File(out / f"pp_output_{split}_vds.h5", "r") as f:
            assert f["jets"].shape[0] == sum(cat["num_jets"][split].values())
    for name in ("histograms.h5", "norm_dict.yaml", "class_dict.yaml"):
        assert (out / name).is_file()


def test_upp_integration_config_runs_end_to_end(integration: Path) -> None:
    run, left = run_in_session("run", "-c", "upp-rw-integration.yaml", cwd=integration)
    assert run.returncode == 0, run.stderr
    assert left == []  # the plotting process and its helpers have ended
    out = integration / "output-upp-rw"
    assert_complete(out, integration / "split-components-upp-rw" / "organised-components.yaml")
    for stage in ("split", "weights", "merge", "norm", "plots (wait)", "total"):
        assert stage in run.stdout.split("time per stage")[1]
    report = yaml.safe_load((out / "weights-report.yaml").read_text())
    plots = sorted(p for p in (out / "plots").rglob("*") if p.is_file())
    assert len(plots) == 26  # 6 jets reweights x 4 figures, 1 tracks reweight x 2
    assert sorted(Path(p) for p in report["plots"]) == [p.resolve() for p in plots]
    assert report["timings"]["plots_s"] > 0 and report["timings"]["plots_wait_s"] >= 0
    assert f"wrote 26 plots to {(out / 'plots').resolve()}" in run.stderr
    with h5py.File(integration / "output-upp-rw" / "pp_output_train_vds.h5", "r") as f:
        names = f["jets"].dtype.names
        assert sum(n.startswith("weight_jets_pt_eta_target_") for n in names) == 6
        assert "weight_tracks_deta_target_mean_leptonID" in f["tracks"].dtype.names


def test_a_plotting_failure_is_one_warning_line_and_the_chain_completes(
        integration: Path) -> None:
    out = integration / "output-upp-rw"
    out.mkdir()
    (out / "plots").write_text("a file where the plots directory should be")
    run, left = run_in_session("run", "-c", "upp-rw-integration.yaml", cwd=integration)
    assert run.returncode == 0, run.stderr
    assert left == []
    lines = [line for line in run.stderr.splitlines() if "not written" in line]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"plots: 26 of 26 not written; {(out / 'plots').resolve()}/")
    assert "Traceback" not in run.stderr
    assert_complete(out, integration / "split-components-upp-rw" / "organised-components.yaml")
    report = yaml.safe_load((out / "weights-report.yaml").read_text())
    assert report["plots"] == [] and len(report["reweights"]) == 7


def test_a_rerun_after_a_crash_finishes_the_job(integration: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    staging = integration / "output-upp-rw" / "train" / ".staging"
    proc = subprocess.Popen([sys.executable, "-m", "upp_grid", "run", "-c",
                             "upp-rw-integration.yaml", "--no-plots"], cwd=integration, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not staging.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (integration / "output-upp-rw" / "norm_dict.yaml").exists()  # died mid-way
    run = cli("run", "-c", "upp-rw-integration.yaml", "--no-plots", cwd=integration)
    assert run.returncode == 0, run.stderr
    assert "3 inputs already split" in run.stdout
    assert_complete(integration / "output-upp-rw",
                    integration / "split-components-upp-rw" / "organised-components.yaml")


def test_demo_runs_the_whole_chain(tmp_path: Path) -> None:
    run = cli("demo", "--workdir", str(tmp_path / "demo"), "--jets", "50000", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert_complete(tmp_path / "demo" / "output",
                    tmp_path / "demo" / "split-components" / "organised-components.yaml")
    assert "demo done" in run.stdout
