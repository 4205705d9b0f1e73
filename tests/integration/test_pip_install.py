"""`submit --dryrun` from a plain `pip install` of the project into a fresh venv: no checkout,
no ./env, the worker scripts come from the installed package data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile

from tests.grid_support import NICK, REPO, clean_env, make_project


def test_submit_dryrun_works_from_a_plain_pip_install(tmp_path):
    src = tmp_path / "src"  # what a source distribution holds: no tests, no env/, no .git
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "upp_grid", src / "upp_grid",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                          "--disable-pip-version-check", "--no-input", str(src)],
                         capture_output=True, text=True, timeout=1200, check=False)
    assert pip.returncode == 0, pip.stderr[-2000:]
    project = make_project(tmp_path / "work")
    env = clean_env(HOME=str(tmp_path / "work"))
    del env["PYTHONPATH"]  # the installed package only

    done = subprocess.run([str(venv / "bin" / "upp-grid"), "submit", "-c", str(project.config),
                           "--tag", "t1", "--dryrun", "--rucio-user", NICK],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)

    assert done.returncode == 0, done.stderr
    sandbox = project.sandbox("t1")
    with tarfile.open(sandbox) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile("manifest.json").read())
        script = tar.extractfile("grid/split.sh").read()
    installed = next(venv.glob("lib/python3*/site-packages"))
    assert script == (installed / "upp_grid" / "grid" / "worker_scripts" / "split.sh"
                      ).read_bytes()
    site = "env/" + installed.relative_to(venv).as_posix()
    assert {f"{site}/upp_grid/grid/worker.py", f"{site}/numpy/__init__.py",
            f"{site}/h5py/__init__.py", "env/pyvenv.cfg", "config.yaml"} <= names
    assert not any(n.startswith(f"{site}/pandaclient") for n in names)
    assert manifest["files"][f"{site}/upp_grid/grid/worker.py"]
    tasks = list((project.base / "submission" / "t1" / "tasks").glob("*.json"))
    assert len(tasks) == 2  # one task per input container
