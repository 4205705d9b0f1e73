"""`upp-grid submit --backend local`: the grid jobs from the same sandbox, in local processes.

A job is made to fail for real (a truncated input file), then fixed and retried; the outputs in
the rucio-like local store must equal what `upp-grid split` writes for the same inputs. A job
whose process dies with the submitting process is detected and rerun.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.grid_support import (
    NICK,
    TTBAR,
    ZPRIME,
    Project,
    input_files,
    make_project,
    read_h5,
    run_cli,
)
from upp_grid.config import load_config
from upp_grid.grid.job_archive import unpack
from upp_grid.grid.state import StateDB
from upp_grid.grid.store import LocalStore
from upp_grid.stages.split_local import plan_units, split_stage


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """Two inputs per container."""
    return make_project(tmp_path / "work", jets=6000, files=4)


@pytest.fixture
def small(tmp_path: Path) -> Project:
    """One input per container."""
    return make_project(tmp_path / "work", jets=3000, files=2)


def status(project: Project) -> dict[str, dict[str, Any]]:
    done = run_cli(["status", "--state", project.state, "--json"], project.env)
    assert done.returncode == 0, done.stderr
    return {t["container"]: t for t in json.loads(done.stdout)["tags"][0]["tasks"]}


def test_local_jobs_match_split_and_a_failed_job_is_retried(project, tmp_path):
    broken = input_files(project, TTBAR)[1]
    content = broken.read_bytes()
    broken.write_bytes(content[: len(content) // 2])  # a truncated transfer

    first = run_cli(["submit", "-c", project.config, "--tag", "t1", "--backend", "local",
                     "--workers", "2", "--rucio-user", NICK], project.env)
    failed = status(project)
    broken.write_bytes(content)  # fixed
    retried = run_cli(["retry", "--state", project.state, "--tag", "t1"], project.env)
    fixed = status(project)

    assert first.returncode == 1
    # 10 GB per job: each container's files are one job, %IN holds both files
    assert "1 of 2 jobs failed" in first.stderr and "upp-grid retry --tag t1" in first.stderr
    assert (failed[TTBAR]["status"], failed[ZPRIME]["status"]) == ("failed", "done")
    bad = [j for j in failed[TTBAR]["jobs"] if j["state"] == "failed"]
    ttbar_inputs = ",".join(str(p.absolute()) for p in input_files(project, TTBAR))
    assert [(j["input"], j["attempt"]) for j in bad] == [(ttbar_inputs, 1)]
    assert bad[0]["exit_code"] == 1 and "truncated or corrupt" in bad[0]["error"]
    assert broken.name in Path(bad[0]["log_path"]).read_text()
    assert retried.returncode == 0, retried.stderr
    assert f"retried: {TTBAR}" in retried.stdout
    assert {c: t["status"] for c, t in fixed.items()} == {TTBAR: "done", ZPRIME: "done"}
    assert [(j["state"], j["attempt"]) for j in fixed[TTBAR]["jobs"]] == [("done", 2)]
    # each job's one output holds, per input, the same outputs as `upp-grid split`
    config = load_config(project.config)
    split_stage(config)
    units = {u.path.name: u for u in plan_units(config)}
    store = LocalStore(project.base / "local-store")
    compared = 0
    for task in fixed.values():
        (output,) = task["outputs"]
        assert output["file"] == "split.tar"
        for job in task["jobs"]:
            name = f"{task['scope']}.{task['id']}._{job['index']:06d}.split.tar"
            stored = next(s for s in store.list_files(task["scope"], output["container"])
                          if s.name == name)
            assert store.verify(stored)  # size and adler32 of the manifest
            unpacked = tmp_path / "unpacked" / name
            provenance = unpack(store.path(stored), unpacked, config.jets_name)
            assert [i.name for i in provenance.inputs] == [
                Path(p).name for p in job["input"].split(",")]
            for item in provenance.inputs:
                unit = units[item.name]
                assert item.rows == (0, unit.num_jets)
                for want_file in sorted(unit.out_dir.glob("output_*.h5")):
                    got = read_h5(unpacked / item.unit() / want_file.name)
                    want = read_h5(want_file)
                    for group in want:
                        np.testing.assert_array_equal(got[group], want[group])
                    compared += 1
    assert compared == 4 * 12


def wait_for_running_job(state_path: Path, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state_path.exists():
            with StateDB(state_path) as state:
                for sub in state.submissions():
                    for task in state.tasks(sub.tag):
                        for job in state.jobs(task.id):
                            if job.state == "running" and job.pid is not None:
                                return {"task": task.id, "index": job.index, "pid": job.pid}
        time.sleep(0.01)
    raise AssertionError("no job started")


def start_submit(project: Project) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "upp_grid", "submit", "-c", str(project.config), "--tag", "t1",
         "--backend", "local", "--workers", "1", "--rucio-user", NICK],
        env=project.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def test_a_job_killed_mid_run_is_marked_lost_and_rerun(small):
    project = small
    submit = start_submit(project)
    job = wait_for_running_job(project.state)
    os.killpg(submit.pid, signal.SIGKILL)  # the submitting process dies ...
    os.killpg(job["pid"], signal.SIGKILL)  # ... and takes its running job with it
    submit.wait(timeout=30)

    after_crash = status(project)
    retried = run_cli(["retry", "--state", project.state, "--tag", "t1"], project.env)
    final = status(project)

    jobs = {(t["id"], j["index"]): j for t in after_crash.values() for j in t["jobs"]}
    lost = jobs[(job["task"], job["index"])]
    assert lost["state"] == "failed" and lost["error"].startswith("lost")
    assert not any(j["state"] == "running" for j in jobs.values())
    assert retried.returncode == 0, retried.stderr
    assert {t["status"] for t in final.values()} == {"done"}
    final_jobs = {(t["id"], j["index"]): j for t in final.values() for j in t["jobs"]}
    assert final_jobs[(job["task"], job["index"])]["attempt"] == 2


def test_kill_stops_running_local_jobs(small):
    project = small
    submit = start_submit(project)
    job = wait_for_running_job(project.state)

    killed = run_cli(["kill", "--state", project.state, "--tag", "t1"], project.env)
    _out, submit_err = submit.communicate(timeout=60)
    after = status(project)

    assert killed.returncode == 0, killed.stderr
    assert "killed:" in killed.stdout
    assert submit.returncode == 1, submit_err  # its jobs did not all succeed
    with pytest.raises(ProcessLookupError):
        os.kill(job["pid"], 0)
    statuses = {t["status"] for t in after.values()}
    assert "aborted" in statuses and "running" not in statuses
    errors = {j["error"] for t in after.values() for j in t["jobs"] if j["state"] == "failed"}
    assert errors <= {"killed", "killed before it ran"} and errors


def test_a_sandbox_replaced_after_submit_is_refused_and_never_run(small, tmp_path):
    broken = input_files(small, TTBAR)[0]
    content = broken.read_bytes()
    broken.write_bytes(content[: len(content) // 2])  # a failed job, so retry has work
    first = run_cli(["submit", "-c", small.config, "--tag", "t1", "--backend", "local",
                     "--rucio-user", NICK], small.env)
    assert first.returncode == 1
    broken.write_bytes(content)
    sandbox = small.sandbox("t1")
    size = sandbox.stat().st_size
    ran = tmp_path / "hostile-ran"
    script = f"#!/bin/bash\ntouch {ran}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("grid/split.sh")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    replaced = buffer.getvalue()
    sandbox.write_bytes(replaced + b"\0" * (size - len(replaced)))  # the same size
    shutil.rmtree(small.base / "submission" / "t1" / "local" / "sandbox")  # must unpack again

    retried = run_cli(["retry", "--state", small.state, "--tag", "t1"], small.env)

    assert sandbox.stat().st_size == size
    assert retried.returncode == 1
    assert retried.stderr.startswith(f"upp-grid: error: {sandbox}: not the sandbox tag 't1' "
                                     "was submitted with")
    assert "replaced after submit; nothing was run" in retried.stderr
    assert not ran.exists()
    assert not (small.base / "submission" / "t1" / "local" / "sandbox").exists()
