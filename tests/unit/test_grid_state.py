"""The state DB: schema version, WAL, transitions, and concurrent `status` processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from tests.integration.test_grid_support import clean_env
from upp_grid.grid.jobs import OutputSpec, TaskSpec
from upp_grid.grid.state import SCHEMA_VERSION, StateDB, StateError, Submission


def spec(container: str) -> TaskSpec:
    out_ds = f"user.jdoe.601589.e1_s2.v1_split.{container}.h5"
    outputs = (OutputSpec("output_train_a.h5", f"{out_ds}_output_train_a.h5"),)
    return TaskSpec(container, ("ttbar",), out_ds, outputs, "bash grid/split.sh --samples "
                    "ttbar %IN", (), (), "jdoe")


def submission(tag: str = "v1", backend: str = "local") -> Submission:
    return Submission(tag, backend, "/cfg.yaml", "hash", "jdoe", "/sandbox.tar.gz",
                      work_dir="/work", store_dir="/store")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_new_state_file_has_schema_version_and_wal(tmp_path):
    with StateDB(tmp_path / "s.sqlite"):
        pass
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="newer upp-grid"):
        StateDB(tmp_path / "s.sqlite")


def test_missing_state_is_an_error_when_only_reading(tmp_path):
    with pytest.raises(StateError, match="nothing submitted yet"):
        StateDB(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()


def test_task_transitions_are_recorded_as_events(tmp_path):
    with StateDB(tmp_path / "s.sqlite") as state:
        task = state.record_task(submission(backend="panda"), spec("a"), status="submitted",
                                 jedi_task_id=1000)
        state.update_task(task.id, status="running", backend_status="running")
        state.update_task(task.id, status="running", backend_status="running")  # no change
        state.update_task(task.id, status="failed", backend_status="failed", counts=(3, 2, 1))
        again = state.record_task(submission(backend="panda"), spec("a"), status="submitted",
                                  jedi_task_id=1001)

        assert [e.event for e in state.events("v1")] == ["submitted", "running", "failed",
                                                         "submitted"]
        assert (again.id, again.jedi_task_id, again.attempt, again.n_files) == (task.id, 1001,
                                                                                2, None)
        assert state.submission("v1").backend == "panda"


def test_a_job_ends_once_per_attempt(tmp_path):
    with StateDB(tmp_path / "s.sqlite") as state:
        task = state.record_task(submission(), spec("a"), status="submitted")
        state.reset_jobs(task.id, ["/in/1.h5"])
        job = state.claim_job(task.id, 1, "/logs/000001")

        assert job is not None and (job.attempt, job.log_path) == (1, "/logs/000001.1.log")
        assert state.claim_job(task.id, 1, "/logs/000001") is None  # already running
        assert state.finish_job(job, "failed", None, "killed") is True
        assert state.finish_job(job, "done", 0, None) is False  # the kill came first
        assert state.requeue_failed(task.id) == 1
        second = state.claim_job(task.id, 1, "/logs/000001")
        assert second is not None and second.attempt == 2


def test_two_status_processes_at_once_do_not_corrupt_the_state(tmp_path):
    path = tmp_path / "s.sqlite"
    gone = dead_pid()
    with StateDB(path) as state:
        for k in range(6):
            task = state.record_task(submission(), spec(f"c{k}"), status="running")
            state.reset_jobs(task.id, [f"/in/{k}_{i}.h5" for i in range(20)])
            for i in range(1, 21, 2):  # every other job "running" in a process that is gone
                job = state.claim_job(task.id, i, f"/logs/{k}")
                assert job is not None
                state.job_started(job, gone, None)
    loop = ("import sys; from pathlib import Path; from upp_grid.grid.control import status\n"
            "for _ in range(15): status(Path(sys.argv[1]))")
    cli = [sys.executable, "-m", "upp_grid", "status", "--state", str(path), "--json"]
    env = clean_env()

    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for cmd in ([sys.executable, "-c", loop, str(path)],
                         [sys.executable, "-c", loop, str(path)], cli, cli)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]

    assert [code for code, _ in results] == [0, 0, 0, 0], results
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM jobs WHERE state = 'running'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM jobs WHERE error LIKE 'lost%'").fetchone()[0] == 60
