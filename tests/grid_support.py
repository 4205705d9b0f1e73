"""Helpers shared by the grid tests (this module holds no tests).

* :func:`linked_env`: a real but tiny virtualenv whose site-packages only links (``.pth``) to
  the running env's site-packages. A sandbox of it is a few hundred kB, yet the job command
  runs from it (third-party packages through the link, upp_grid from the sandbox). The test
  in test_grid_payload.py packs the real ./env instead.
* :func:`make_project`: mock ntuples in two grid-style containers plus the demo config.
* :func:`run_cli`: ``python -m upp_grid`` in a subprocess, with the working tree first.
* :func:`unshare_works`: whether ``unshare -rn`` can cut a process off the network here.
* :func:`read_h5`: every dataset of an HDF5 file, to compare outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

from upp_grid.demo import bundled_config_text
from upp_grid.mock import make_mock

REPO = Path(__file__).resolve().parents[1]
TTBAR = "user.mock.601589.e8547_s3797_r13144_p6859.tdd.MockDump.25_2_56.mock_output.h5"
ZPRIME = "user.mock.800030.e7954_s3797_r13144_p6859.tdd.MockDump.25_2_56.mock_output.h5"
NICK = "testuser"  # the grid nickname of the submit tests
# the developer's grid setup must not leak into the tests
_SCRUBBED = ("PANDA", "X509", "OIDC", "RUCIO", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
             "NO_PROXY", "UPP_GRID", "PYTHONPATH", "CMAKE_PREFIX_PATH", "CMTCONFIG")


@dataclass(frozen=True)
class Project:
    """A base_dir with mock ntuples and a config, and the environment to run the CLI in."""

    base: Path
    config: Path
    env: dict[str, str]

    @property
    def state(self) -> Path:
        return self.base / "upp-grid.sqlite"

    def sandbox(self, tag: str) -> Path:
        return self.base / "submission" / tag / "sandbox.tar.gz"


def linked_env(root: Path) -> Path:
    """A ``python -m venv`` env under ``root`` linked to the running env's site-packages."""
    env = root / "linked-env"
    if not (env / "pyvenv.cfg").is_file():
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--without-pip", str(env)], check=True)
        site = next(env.glob("lib/python3*/site-packages"))
        (site / "_upp_grid_test_link.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        # installed metadata, as the sandbox's allow-list reads it: upp-grid (its code comes
        # from the working tree) needs one distribution, whose RECORD is the link
        _dist_info(site, "upp-grid", ("upp-grid-test-link",), ())
        _dist_info(site, "upp-grid-test-link", (), ("_upp_grid_test_link.pth",))
    return env


def _dist_info(site: Path, name: str, requires: Sequence[str], files: Sequence[str]) -> None:
    info = site / f"{name.replace('-', '_')}-0.dist-info"
    info.mkdir()
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: 0"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in record))


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without grid settings, with the working tree importable."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(_SCRUBBED)}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def relabel_containers(ntuples: Path, label: str) -> None:
    """Give the mock containers under ``ntuples`` names of their own (``…tdd.MockDump.25_2_56.
    <label>.h5``): input containers registered in the shared rucio test server must not
    collide between tests, as real datasets never do. The config's patterns still match."""
    for folder in sorted(ntuples.glob("user.mock.*.mock_output.h5")):
        folder.rename(folder.with_name(folder.name.replace(".mock_output.h5", f".{label}.h5")))


def make_project(base: Path, *, jets: int = 4000, files: int = 4, seed: int = 7,
                 env_dir: Path | None = None, label: str | None = None) -> Project:
    """Mock containers (``files`` alternate between ttbar and Z', named with ``label`` if
    given: :func:`relabel_containers`) and the demo config."""
    make_mock(base / "ntuples", num_jets=jets, num_files=files, seed=seed)
    if label is not None:
        relabel_containers(base / "ntuples", label)
    data = yaml.safe_load(bundled_config_text())
    data["global"]["base_dir"] = str(base)
    data["reweighting"]["max_zero_weight_fraction"] = 1.0  # zero weights: test_weights.py
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    env = clean_env(UPP_GRID_ENV=str(env_dir or linked_env(base)), HOME=str(base))
    return Project(base, config, env)


def run_cli(args: Sequence[str], env: dict[str, str], cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m upp_grid ARGS``."""
    return subprocess.run([sys.executable, "-m", "upp_grid", *map(str, args)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def unshare_works() -> bool:
    """Whether ``unshare -rn`` (a process without any network) works here."""
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def input_files(project: Project, container: str) -> list[Path]:
    return sorted((project.base / "ntuples" / container).glob("*.h5"))


def read_h5(path: Path) -> dict[str, np.ndarray]:
    """Every top-level dataset of an HDF5 file, by name."""
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f}
