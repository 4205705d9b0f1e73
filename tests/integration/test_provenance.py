"""Stages that know where their inputs came from, and one writer per base_dir.

Two configs share one base_dir (and its components and output directories), as when a user
edits a copy of a config. Every mix of their stages must stop with one line naming the stage to
rerun; a second command writing while another runs must stop at once, naming it and its pid;
and a killed command's lock must be taken over.
"""

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

from tests.cli_support import REPO, run_process
from upp_grid.config import Config, load_config
from upp_grid.lock import LOCK_NAME
from upp_grid.mock import make_mock
from upp_grid.stages.catalogue import read_catalogue
from upp_grid.stages.histograms import content_hash, load_histograms, write_histograms
from upp_grid.stages.merge import merge_stage
from upp_grid.stages.split_local import split_stage
from upp_grid.stages.weights import histograms_path, weights_stage
from upp_grid.yamlload import load_yaml, to_plain

JETS = 120_000


@pytest.fixture(scope="module")
def ntuples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("provenance") / "ntuples"
    make_mock(path, num_jets=JETS, num_files=3, seed=5)
    return path


def write_config(base: Path, ntuples: Path, name: str, target: str = "mean",
                 extra_label: str | None = None, out_dir: str = "output") -> Path:
    """The demo config in ``base`` (shared directories), with the reweight's target."""
    data = to_plain(load_yaml(REPO / "configs" / "demo.yaml"))
    data["global"].update(base_dir=str(base), ntuple_dir=str(ntuples), out_dir=out_dir)
    data["reweighting"]["reweights"][0]["class_target"] = target
    data["reweighting"]["merge_num_proc"] = 2
    if extra_label:
        data["variables"]["jets"]["labels"].append(extra_label)
    path = base / f"{name}.yaml"
    base.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_process(*map(str, args), cwd=cwd, timeout=300)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("upp-grid: error")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def merged_weights(config: Config) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted((config.global_.out_dir / "train").glob("pp_output_train-full_*.h5")):
        with h5py.File(f, "r") as h:
            out[f.name] = h["jets"][:]
    return out


# ----------------------------------------------------------------------------- provenance
def test_norm_on_the_merge_of_another_config_names_the_stage_to_rerun(
        tmp_path: Path, ntuples: Path):
    a = write_config(tmp_path, ntuples, "a")
    b = write_config(tmp_path, ntuples, "b", target="min")
    assert run("run", "-c", a, "--no-plots", cwd=tmp_path).returncode == 0

    result = run("norm", "-c", b, "--overwrite", cwd=tmp_path)  # past b's out_dir check

    assert result.returncode == 1
    assert error_line(result) == (
        f"upp-grid: error: {tmp_path / 'output' / 'train'}: merged with another config ({a}), "
        f"not {b}: rerun `upp-grid merge -c CFG --split train`")


def test_merge_on_the_split_of_another_config_names_the_stage_to_rerun(
        tmp_path: Path, ntuples: Path):
    a = write_config(tmp_path, ntuples, "a")
    b = write_config(tmp_path, ntuples, "b", extra_label="HadronConeExclExtendedTruthLabelID")
    assert run("run", "-c", a, "--no-plots", cwd=tmp_path).returncode == 0
    refused = run("split", "-c", b, cwd=tmp_path)  # another config's components_dir
    assert refused.returncode == 1 and f"split by {a}" in refused.stderr
    assert run("split", "-c", b, "--overwrite", cwd=tmp_path).returncode == 0  # B's replace A's

    result = run("merge", "-c", a, cwd=tmp_path)

    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"upp-grid: error: {tmp_path / 'split-components'}/"
                           "organised-components.yaml: written for another config (split hash ")
    assert line.endswith("rerun `upp-grid split -c CFG` (or `download`) first")


def test_merge_with_histograms_of_another_split_names_the_stage_to_rerun(
        tmp_path: Path, ntuples: Path):
    a = write_config(tmp_path, ntuples, "a")
    assert run("split", "-c", a, "--container", "ttbar", cwd=tmp_path).returncode == 0
    assert run("weights", "-c", a, "--no-plots", cwd=tmp_path).returncode == 0
    assert run("split", "-c", a, cwd=tmp_path).returncode == 0  # now Z' too

    result = run("merge", "-c", a, cwd=tmp_path)

    assert result.returncode == 1
    assert error_line(result) == (
        f"upp-grid: error: {tmp_path / 'output' / 'histograms.h5'}: made from other split "
        "outputs than the catalogue's (split or download ran since): rerun `upp-grid weights "
        "-c CFG`")


def test_merge_uses_the_histograms_it_loaded_even_if_the_file_changes_meanwhile(
        tmp_path: Path, ntuples: Path):
    config = load_config(write_config(tmp_path, ntuples, "a"))
    split_stage(config)
    weights_stage(config, plots=False)
    path = histograms_path(config)
    h = next(iter(load_histograms(path).values()))
    reference = load_config(write_config(tmp_path, ntuples, "ref", out_dir="output-ref"))
    reference.global_.out_dir.mkdir()
    shutil.copy(path, histograms_path(reference))
    merge_stage(reference, ("train",))
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    doubled = type(h)(h.reweight, h.edges, h.classes, h.hists, h.target,
                      {c: 2 * w for c, w in h.weights.items()})
    calls = []

    def swap_the_file(n: int) -> None:  # after the first task: the workers run on
        if not calls:
            write_histograms(path, [doubled], attrs)
        calls.append(n)

    merge_stage(config, ("train",), progress=swap_the_file)

    assert len(calls) > 2
    got, want = merged_weights(config), merged_weights(reference)
    assert got.keys() == want.keys()
    for name in got:
        np.testing.assert_array_equal(got[name][h.reweight.name], want[name][h.reweight.name])


def test_a_rerun_rewrites_merged_files_whose_histograms_changed(tmp_path: Path, ntuples: Path):
    config = load_config(write_config(tmp_path, ntuples, "a"))
    split_stage(config)
    weights_stage(config, plots=False)
    merge_stage(config, ("train",))
    before = merged_weights(config)
    path = histograms_path(config)
    h = next(iter(load_histograms(path).values()))
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    halved = type(h)(h.reweight, h.edges, h.classes, h.hists, h.target,
                     {c: w / 2 for c, w in h.weights.items()})
    write_histograms(path, [halved], attrs)

    summary = merge_stage(config, ("train",))

    assert summary.results[0].reused == 0
    after = merged_weights(config)
    for name, rows in after.items():
        np.testing.assert_array_equal(rows[h.reweight.name], before[name][h.reweight.name] / 2)


def test_two_clean_runs_give_byte_identical_histograms_and_merged_files(
        tmp_path: Path, ntuples: Path):
    config = write_config(tmp_path, ntuples, "a")
    out = tmp_path / "output"
    first = {}
    for attempt in range(2):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(tmp_path / "split-components", ignore_errors=True)
        assert run("run", "-c", config, "--no-plots", cwd=tmp_path).returncode == 0
        files = sorted(out.rglob("*.h5"))
        assert len(files) > 5
        digest = {f.relative_to(out): f.read_bytes() for f in files}
        if attempt == 0:
            first = digest
        time.sleep(1.1)  # file times differ between the runs
    assert digest.keys() == first.keys()
    for name, data in digest.items():
        assert data == first[name], f"{name} differs between two clean runs"


# ----------------------------------------------------------------------------- one writer
def start(*args: object, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "upp_grid", *map(str, args)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_lock(base: Path, proc: subprocess.Popen[str]) -> dict:
    """Wait until ``proc`` holds the base_dir's lock; then stop it there (SIGSTOP), so the
    second command surely meets a running writer."""
    for _ in range(600):
        text = (base / LOCK_NAME).read_text() if (base / LOCK_NAME).exists() else ""
        if text.strip() and json.loads(text)["pid"] == proc.pid:
            time.sleep(0.3)  # out of the lock's microsecond read-write section
            os.killpg(proc.pid, signal.SIGSTOP)
            return json.loads(text)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the first command never took the lock")


@pytest.mark.parametrize("second", [
    ("weights", "-c", "{b}", "--no-plots"),
    ("split", "--overwrite", "-c", "{b}"),
    ("run", "-c", "{a}", "--no-plots"),
    ("norm", "-c", "{b}"),
], ids=["weights-B", "split-overwrite-B", "run-A-again", "norm-B"])
def test_a_second_writer_stops_at_once_naming_the_running_command(
        tmp_path: Path, ntuples: Path, second: tuple[str, ...]):
    a = write_config(tmp_path, ntuples, "a")
    b = write_config(tmp_path, ntuples, "b", target="min")
    first = start("run", "-c", a, "--no-plots", cwd=tmp_path)
    try:
        holder = wait_for_lock(tmp_path, first)

        result = run(*(arg.format(a=a, b=b) for arg in second), cwd=tmp_path)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)

    assert result.returncode == 1
    line = error_line(result)
    assert line.startswith(f"upp-grid: error: {tmp_path}: `upp-grid run -c {a} --no-plots` "
                           f"(pid {first.pid}, since ")
    assert line.endswith("is writing here; wait for it to finish or stop it first: one "
                         "command at a time per base_dir")
    assert holder["command"] == f"upp-grid run -c {a} --no-plots"
    assert first.returncode == 0, err
    config = load_config(a)  # the first run finished, with its own config and weights only
    digest = content_hash(load_histograms(histograms_path(config)))
    for f in (tmp_path / "output").rglob("pp_output_*-full_[0-9]*.h5"):
        with h5py.File(f, "r") as h:
            assert h.attrs["config_hash"] == config.config_hash
            assert h.attrs["histograms_hash"] == digest
    assert read_catalogue(config).total("train") == sum(len(r) for r in
                                                         merged_weights(config).values())


def test_the_lock_of_a_killed_command_is_taken_over(tmp_path: Path, ntuples: Path):
    a = write_config(tmp_path, ntuples, "a")
    first = start("run", "-c", a, "--no-plots", cwd=tmp_path)
    wait_for_lock(tmp_path, first)
    os.killpg(first.pid, signal.SIGKILL)  # the command and any workers
    first.communicate(timeout=60)
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == first.pid  # left behind

    result = run("run", "-c", a, "--no-plots", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output" / "norm_dict.yaml").is_file()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # released


def test_status_takes_no_lock(tmp_path: Path, ntuples: Path):
    a = write_config(tmp_path, ntuples, "a")
    first = start("run", "-c", a, "--no-plots", cwd=tmp_path)
    try:
        wait_for_lock(tmp_path, first)
        result = run("status", "-c", a, cwd=tmp_path)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    first.communicate(timeout=300)

    assert "is writing here" not in result.stderr
    assert first.returncode == 0
