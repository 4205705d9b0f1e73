"""Directories that belong to one config: another config file is refused with one line naming
both configs and the way out (``--overwrite``, or another directory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli_support import REPO
from upp_grid.mock import make_mock
from upp_grid.ownership import OWNER_NAME


@pytest.fixture(scope="module")
def ntuples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("owners") / "ntuples"
    make_mock(out, num_jets=20_000, num_files=2, seed=9)
    return out


def write(base: Path, name: str, ntuples: Path, low_cut: float = 20_000) -> Path:
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["global"].update(base_dir=str(base), ntuple_dir=str(ntuples))
    data["reweighting"]["max_zero_weight_fraction"] = 1.0
    data["lowpt"]["cuts"][0][2] = low_cut
    data["components"][0]["region"] = data["lowpt"]
    path = base / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "upp_grid", *map(str, args)], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=300)


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_another_config_is_refused_until_overwrite(tmp_path, ntuples):
    a = write(tmp_path, "a.yaml", ntuples)
    b = write(tmp_path, "b.yaml", ntuples, low_cut=30_000)  # splits differently
    assert cli("run", "-c", a, "--no-plots", cwd=tmp_path).returncode == 0
    owner = json.loads((tmp_path / "split-components" / OWNER_NAME).read_text())
    assert Path(owner["config"]) == a

    line = one_line(cli("split", "-c", b, cwd=tmp_path))
    assert f"split by {a}" in line and f"not {b}" in line and "--overwrite" in line
    assert "global.components_dir" in line
    line = one_line(cli("weights", "-c", b, cwd=tmp_path))
    assert f"written by {a}" in line and f"not {b}" in line and "--overwrite" in line
    assert "global.out_dir" in line
    before = sorted(p.name for p in (tmp_path / "output" / "train").iterdir())

    # nothing of a's was touched by the refusals
    assert sorted(p.name for p in (tmp_path / "output" / "train").iterdir()) == before
    taken = cli("run", "-c", b, "--no-plots", "--overwrite", cwd=tmp_path)
    assert taken.returncode == 0, taken.stderr
    owner = json.loads((tmp_path / "output" / OWNER_NAME).read_text())
    assert Path(owner["config"]) == b
    # and now a is the other config
    assert f"written by {b}" in one_line(cli("merge", "-c", a, cwd=tmp_path))


def test_a_copy_that_splits_the_same_way_shares_the_split(tmp_path, ntuples):
    a = write(tmp_path, "a.yaml", ntuples)
    copy = write(tmp_path, "copy.yaml", ntuples)  # same split hash, another file
    assert cli("split", "-c", a, cwd=tmp_path).returncode == 0
    again = cli("split", "-c", copy, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already split" in again.stderr


def test_run_takes_split_workers_and_overwrite(tmp_path, ntuples):
    a = write(tmp_path, "a.yaml", ntuples)
    done = cli("run", "-c", a, "--no-plots", "--split", "val", "--workers", "1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "output" / "val" / "merge-record.json").is_file()
    assert not (tmp_path / "output" / "train").exists()
    assert "norm: not run" in done.stdout
    redo = cli("run", "-c", a, "--no-plots", "--overwrite", cwd=tmp_path)
    assert redo.returncode == 0, redo.stderr
    assert "already split" not in redo.stderr
    assert (tmp_path / "output" / "norm_dict.yaml").is_file()
