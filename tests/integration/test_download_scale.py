"""`upp-grid download` of a tag of 1,000+ job outputs in 3 output containers from the real
local rucio server: the REST calls (counted from the server's request log) grow with the
containers, not the files; output lifetime warnings; `upp-grid replicate`.

The job outputs are made from one real job output per container (the grid payload run on one
mock input), cloned under other input names (:func:`tests.fakes.grid_outputs.clone_archive`),
and registered in bulk as the grid's stage-out leaves them, each container's inputs too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.download_support import (
    USER,
    publish_clones,
    rebased_config,
    rucio_client,
    scale_project,
)
from tests.grid_support import clean_env, run_cli
from upp_grid.config import load_config
from upp_grid.grid.state import StateDB
from upp_grid.grid.tasks import plan_tasks


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``projects(label)``: three mock input containers of their own (named with ``label``)
    of one small file each, and a config with one sample each."""
    return lambda label: scale_project(tmp_path_factory.mktemp(label), label)


@pytest.fixture(scope="module")
def download(rucio_server) -> Callable[[Path, str, int], tuple[int, float, object]]:
    """``upp-grid download`` without a state DB, as a user runs it: (REST calls, wall, run)."""
    def run(config_path: Path, tag: str, threads: int = 10):
        env = clean_env(**rucio_server.client_env())
        before = len(rucio_server.rest_calls())
        start = time.perf_counter()
        done = run_cli(["download", "-c", config_path, "--tag", tag, "--prepare-only",
                        "--rucio-user", USER, "--threads", str(threads)], env, timeout=900)
        wall = time.perf_counter() - start
        return len(rucio_server.rest_calls()) - before, wall, done
    return run


def test_rest_calls_grow_with_containers_not_files(rucio_server, projects, download, tmp_path):
    project, other = projects("scale_big"), projects("scale_small")
    big = publish_clones(rucio_server, project, "big", 334, tmp_path / "jobs")
    small = publish_clones(rucio_server, other, "small", 34, tmp_path / "jobs")

    calls_big, wall_big, done = download(rebased_config(project, tmp_path / "big"), "big")
    calls_small, _, done_small = download(rebased_config(other, tmp_path / "small"), "small")

    assert big == 1002 and small == 102
    assert done.returncode == 0, done.stderr
    assert done_small.returncode == 0, done_small.stderr
    assert f"3 output containers, {big} files" in done.stdout
    assert f"fetched and verified now: {big} files" in done.stdout
    config = load_config(tmp_path / "big" / "config.yaml")
    catalogue = yaml.safe_load((config.global_.components_dir / "organised-components.yaml")
                               .read_text())
    assert sum(len(v) for split in catalogue["files"].values() for v in split.values()) > 0
    # the files add at most one call per 100 files; everything else is per container
    assert calls_big - calls_small <= math.ceil((big - small) / 100), (calls_big, calls_small)
    assert calls_big <= big / 100 + 60, calls_big
    print(f"\n{big} files in 3 containers: {calls_big} REST calls, {wall_big:.1f} s; "
          f"{small} files: {calls_small} calls")


def test_one_container_costs_fewer_calls_than_three(rucio_server, projects, download,
                                                     tmp_path):
    project = projects("scale_three")
    publish_clones(rucio_server, project, "three", 5, tmp_path / "jobs")
    one = rebased_config(project, tmp_path / "one")
    data = yaml.safe_load(one.read_text())
    data["components"] = data["components"][:1]
    one.write_text(yaml.safe_dump(data, sort_keys=False))

    calls_one, _, done_one = download(one, "three")
    calls_three, _, done_three = download(rebased_config(project, tmp_path / "all"), "three")

    assert done_one.returncode == 0, done_one.stderr
    assert done_three.returncode == 0, done_three.stderr
    assert "1 output containers, 5 files" in done_one.stdout
    assert calls_three > calls_one + 2 * 3  # each container: its listing and rules


def test_scratch_only_outputs_are_warned_about_until_replicated(rucio_server, projects,
                                                                download, tmp_path):
    project = projects("scale_keep")
    publish_clones(rucio_server, project, "keep", 3, tmp_path / "jobs")
    config = rebased_config(project, tmp_path / "keep")

    _, _, warned = download(config, "keep")
    env = clean_env(**rucio_server.client_env())
    replicated = run_cli(["replicate", "-c", config, "--tag", "keep", "--rse",
                          rucio_server.keep_rse, "--rucio-user", USER], env)
    again = run_cli(["replicate", "-c", config, "--tag", "keep", "--rse",
                     rucio_server.keep_rse, "--rucio-user", USER], env)
    _, _, quiet = download(config, "keep")

    assert warned.returncode == 0, warned.stderr
    lines = [ln for ln in warned.stdout.splitlines() if "only on scratch disks" in ln]
    assert len(lines) == 3
    assert "3 of 3 files only on scratch disks (UPPTEST_SCRATCHDISK)" in lines[0]
    assert "they expire on" in lines[0] and "in 14.0 days" in lines[0]
    assert "upp-grid replicate --tag keep --rse <RSE>" in lines[0]
    assert replicated.returncode == 0, replicated.stderr
    assert replicated.stdout.count(": rule ") == 3
    assert f"kept on {rucio_server.keep_rse} with no expiry" in replicated.stdout
    assert again.returncode == 0 and again.stdout.count("rule existed") == 3
    with StateDB(config.parent / "upp-grid.sqlite") as state:
        recorded = state.rules("keep")
    assert len(recorded) == 3
    assert {(r["rse"], r["lifetime_days"]) for r in recorded} == {(rucio_server.keep_rse, None)}
    # the rules are there for the rucio client, on each output container
    from rucio.client.didclient import DIDClient

    with rucio_client(rucio_server):
        for task in plan_tasks(load_config(config), "keep", USER):
            (output,) = task.outputs
            rules = list(DIDClient().list_did_rules(task.scope, output.container))
            assert [(r["rse_expression"], r["expires_at"]) for r in rules] == [
                (rucio_server.keep_rse, None)]
    assert quiet.returncode == 0 and "only on scratch disks" not in quiet.stdout
