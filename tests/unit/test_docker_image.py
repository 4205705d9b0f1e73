"""docker/: the worker image pins every run-time dependency a job imports, within setup.cfg's
bounds, and checks at build time that a job's imports load (this machine cannot pull the el9
base image, so the build itself is not run here)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from upp_grid.grid.sandbox import find_env_dir
from upp_grid.grid.sandbox_members import LOCAL_ONLY_DISTS, runtime_distributions, site_packages

REPO = Path(__file__).resolve().parents[2]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, Version]:
    out = {}
    for line in (REPO / "docker" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"docker/requirements.txt: {line} is not pinned with =="
            out[canonical(name)] = Version(version)
    return out


def test_every_runtime_distribution_is_pinned_and_nothing_submit_only():
    site = site_packages(find_env_dir())
    needed = {canonical(d.metadata["Name"]) for d in runtime_distributions(site)} - {"upp-grid"}
    assert set(pins()) == needed
    assert not LOCAL_ONLY_DISTS & set(pins())


def test_pins_satisfy_the_lower_bounds_of_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    for line in cfg["options"]["install_requires"].split("\n"):
        if not line.strip():
            continue
        req = Requirement(line.strip())
        name = canonical(req.name)
        if name in LOCAL_ONLY_DISTS:
            continue
        assert name in pins(), f"{name} is not pinned in docker/requirements.txt"
        assert req.specifier.contains(pins()[name]), (name, str(req.specifier))


def test_dockerfile_is_el9_installs_the_pins_and_runs_the_preflight_check():
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM \S*alma9\S*", text, re.MULTILINE)
    assert "-r /tmp/upp-grid-requirements.txt" in text
    assert "--no-deps" in text  # upp-grid itself: no submit-side dependencies
    assert "python3 -m upp_grid.grid.preflight" in text
