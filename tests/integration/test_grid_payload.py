"""The sandbox of the real ./env, unpacked elsewhere, runs the split payload on its own.

The sandbox is built once for the module (compression level 1: the members are the same as at
the default level, only the gzip stream is larger). It is unpacked into a fresh directory and
the job command runs there with an empty environment: no PYTHONPATH, no venv on PATH, nothing
installed but the base interpreter that ``env/pyvenv.cfg`` points to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.grid_support import REPO, TTBAR, input_files, make_project, read_h5
from upp_grid.config import load_config
from upp_grid.grid import sandbox as sandboxes
from upp_grid.grid.job_archive import unpack
from upp_grid.grid.preflight import EXIT_IMPORTS
from upp_grid.grid.submit import build_sandbox
from upp_grid.grid.tasks import TaskOptions
from upp_grid.stages.split import declared_outputs, split_file

REAL_ENV = REPO / "env"
pytestmark = pytest.mark.skipif(not (REAL_ENV / "pyvenv.cfg").is_file(),
                                reason="./env not built (bash scripts/setup_env.sh)")


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory):
    """A project and the sandbox of the real ./env for it."""
    base = tmp_path_factory.mktemp("payload")
    project = make_project(base, jets=3000, files=6, env_dir=REAL_ENV)
    config = load_config(project.config)
    info = build_sandbox(config, base / "submission" / "real", env_dir=REAL_ENV, level=1)
    return project, config, info


def run_job(job_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command in the job directory with an empty environment, as on a bare worker node."""
    return subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", f"HOME={job_dir}", *args],
                          cwd=job_dir, capture_output=True, text=True, timeout=300, check=False)


def test_one_job_with_three_inputs_writes_one_output_equal_to_split(real, tmp_path):
    project, config, info = real
    job = tmp_path / "somewhere" / "job"
    job.mkdir(parents=True)
    with tarfile.open(info.path) as tar:
        tar.extractall(job, filter="tar")
    sources = input_files(project, TTBAR)
    assert len(sources) == 3
    for source in sources:
        shutil.copy(source, job / source.name)

    done = run_job(job, "bash", "grid/split.sh", "--samples", "ttbar",
                   ",".join(s.name for s in sources))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Cannot initialize filter" not in done.stdout + done.stderr
    assert "pre-flight ok" in done.stdout
    assert sorted(p.name for p in job.iterdir() if p.suffix in (".tar", ".h5")) == sorted(
        ["split.tar", *(s.name for s in sources)])  # one output, nothing else
    unpacked = tmp_path / "unpacked"
    provenance = unpack(job / "split.tar", unpacked, config.jets_name)
    assert [i.name for i in provenance.inputs] == [s.name for s in sources]
    assert provenance.config_hash == config.config_hash
    expected = {o.filename for o in declared_outputs(config, ["ttbar"])}
    for source, item in zip(sources, provenance.inputs, strict=True):
        reference = tmp_path / "reference" / source.stem
        record = split_file(config, source, reference, ["ttbar"])
        assert item.rows == (0, record.jets_read) and item.outputs == record.outputs
        assert expected == {p.name for p in (unpacked / item.unit()).glob("output_*.h5")}
        for name in sorted(expected):
            got = read_h5(unpacked / item.unit() / name)
            want = read_h5(reference / name)
            assert got.keys() == want.keys()
            for group in want:
                np.testing.assert_array_equal(got[group], want[group], err_msg=f"{name}/{group}")


def test_a_runtime_whose_imports_fail_stops_before_any_input_with_one_line(real, tmp_path):
    project, _config, info = real
    job = tmp_path / "job"
    sandboxes.unpack(info.path, job)
    h5py_dir = next((job / "env").glob("lib/python3*/site-packages/h5py"))
    shutil.rmtree(h5py_dir)  # a runtime without h5py
    source = input_files(project, TTBAR)[0]
    shutil.copy(source, job / source.name)

    done = run_job(job, "bash", "grid/split.sh", "--samples", "ttbar", source.name)

    assert done.returncode == EXIT_IMPORTS == 11
    errors = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("upp-grid job: error: run-time import "
                                                     "failed")
    assert "h5py: ModuleNotFoundError" in errors[0]
    assert not (job / "split.tar").exists()


def test_hdf5_file_locking_is_off_in_the_job(real, tmp_path):
    _project, _config, info = real
    job = tmp_path / "job"
    sandboxes.unpack(info.path, job)
    (job / "grid" / "probe.sh").write_text(
        'set -e; . runtime.sh; sed -n "/^export HDF5_USE_FILE_LOCKING/p" grid/split.sh\n')
    done = run_job(job, "bash", "grid/probe.sh")
    assert done.stdout.strip() == "export HDF5_USE_FILE_LOCKING=FALSE"
    assert "UPP_RUNTIME=venv" in (job / "runtime.sh").read_text()


def test_container_sandbox_holds_code_only_and_runs_with_the_image_python(real, tmp_path):
    project, config, _info = real
    image = "/cvmfs/unpacked.cern.ch/gitlab-registry.cern.ch/atlas-flavor-tagging-tools/upp:1"
    info = build_sandbox(config, tmp_path / "submission", env_dir=REAL_ENV,
                         options=TaskOptions(container_image=image))
    assert info.size < sandboxes.NO_BUILD_LIMIT
    assert not any(m.startswith("env/") for m in info.members)
    assert {"code/upp_grid/__init__.py", "grid/split.sh", "runtime.sh", "config.yaml",
            "manifest.json"} <= set(info.members)
    job = tmp_path / "job"
    sandboxes.unpack(info.path, job)
    assert json.loads((job / "manifest.json").read_text())["runtime"]["image"] == image
    source = input_files(project, TTBAR)[0]
    shutil.copy(source, job / source.name)
    # "the image": a PATH whose python3 has the run-time dependencies (this env's)
    done = subprocess.run(["env", "-i", f"PATH={REAL_ENV / 'bin'}:/usr/bin:/bin",
                           f"HOME={job}", "bash", "grid/split.sh", "--samples", "ttbar",
                           source.name], cwd=job, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"image {image}" in done.stdout
    assert (job / "split.tar").is_file()


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
