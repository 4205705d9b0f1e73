"""The sandbox of the real ./env, unpacked elsewhere, runs the split payload on its own.

The sandbox is built once for the module (compression level 1: the members are the same as at
the default level, only the gzip stream is larger). It is unpacked into a fresh directory and
the job command runs there with an empty environment: no PYTHONPATH, no venv on PATH, nothing
installed but the base interpreter that ``env/pyvenv.cfg`` points to.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.grid_support import REPO, TTBAR, input_files, make_project, read_h5
from upp_grid.config import load_config
from upp_grid.grid import sandbox as sandboxes
from upp_grid.grid.submit import build_sandbox
from upp_grid.stages.split import declared_outputs, split_file

REAL_ENV = REPO / "env"
pytestmark = pytest.mark.skipif(not (REAL_ENV / "pyvenv.cfg").is_file(),
                                reason="./env not built (bash scripts/setup_env.sh)")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory):
    """A project and the sandbox of the real ./env for it."""
    base = tmp_path_factory.mktemp("payload")
    project = make_project(base, jets=3000, files=2, env_dir=REAL_ENV)
    config = load_config(project.config)
    info = build_sandbox(config, base / "submission" / "real", env_dir=REAL_ENV, level=1)
    return project, config, info


def run_job(job_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command in the job directory with an empty environment, as on a bare worker node."""
    return subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", f"HOME={job_dir}", *args],
                          cwd=job_dir, capture_output=True, text=True, timeout=300, check=False)


def test_unpacked_real_sandbox_runs_the_split_with_nothing_else_installed(real, tmp_path):
    project, config, info = real
    job = tmp_path / "somewhere" / "job"
    job.mkdir(parents=True)
    with tarfile.open(info.path) as tar:
        tar.extractall(job, filter="tar")
    source = input_files(project, TTBAR)[0]
    shutil.copy(source, job / source.name)

    done = run_job(job, "bash", "grid/split.sh", "--samples", "ttbar", source.name)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Cannot initialize filter" not in done.stdout + done.stderr
    expected = {o.filename for o in declared_outputs(config, ["ttbar"])}
    assert expected <= {p.name for p in job.glob("output_*.h5")}
    reference = tmp_path / "reference"
    split_file(config, source, reference, ["ttbar"])
    for name in sorted(expected):
        got, want = read_h5(job / name), read_h5(reference / name)
        assert got.keys() == want.keys()
        for group in want:
            np.testing.assert_array_equal(got[group], want[group], err_msg=f"{name}/{group}")


def test_sandbox_python_is_relocated_and_only_ships_the_payloads_packages(real, tmp_path):
    _project, _config, info = real
    job = tmp_path / "elsewhere"
    sandboxes.unpack(info.path, job)
    probe = ("import importlib.util as u, sys, upp_grid; print(sys.prefix); "
             "print(upp_grid.__file__); "
             "print([m for m in ('pandaclient', 'rucio', 'pip', 'pytest', 'matplotlib') "
             "if u.find_spec(m)])")

    done = run_job(job, "env/bin/python", "-c", probe)

    assert done.returncode == 0, done.stderr
    prefix, package, absent = done.stdout.splitlines()
    assert Path(prefix) == job / "env"
    assert Path(package).is_relative_to(job / "env")
    assert absent == "[]"
    assert (job / "env" / "bin" / "python").is_symlink()
    assert not (job / "env" / "bin" / "python3").is_symlink()  # the base binary, dereferenced
    assert info.size < sandboxes.SANDBOX_LIMIT


@pytest.mark.slow
def test_production_sandbox_of_real_env_is_under_pandas_limit(real, tmp_path):
    _project, config, _info = real
    info = build_sandbox(config, tmp_path, env_dir=REAL_ENV)  # default gzip level
    print(f"sandbox of {REAL_ENV}: {info.size_mib:.1f} MiB, {len(info.members)} members")
    assert info.size < sandboxes.SANDBOX_LIMIT
