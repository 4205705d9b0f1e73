"""The state DB: schema version and migrations, WAL, transitions, download records, and
concurrent `status` processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from dataclasses import replace

import pytest

from tests.grid_support import clean_env
from upp_grid.grid.state import (
    MIGRATIONS,
    SCHEMA_VERSION,
    DownloadFile,
    StateDB,
    StateError,
    Submission,
)
from upp_grid.grid.tasks import OutputSpec, TaskSpec

# What `upp-grid download` of schema 1 created next to the state tables on its own
V1_DOWNLOAD_TABLES = """
CREATE TABLE download_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO download_meta VALUES ('schema_version', '1');
CREATE TABLE download_files (tag TEXT NOT NULL, did TEXT NOT NULL, container TEXT NOT NULL,
    out_ds TEXT NOT NULL, sample TEXT NOT NULL, output TEXT NOT NULL, serial TEXT NOT NULL,
    bytes INTEGER NOT NULL, adler32 TEXT NOT NULL, dest TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('listed', 'verified', 'failed')),
    fetches INTEGER NOT NULL DEFAULT 0, mtime_ns INTEGER, error TEXT, updated REAL NOT NULL,
    PRIMARY KEY (tag, did));
INSERT INTO download_files VALUES ('v1', 'user.jdoe:user.jdoe.1000._000001.output_a.h5', 'c',
    'outds', 'ttbar', 'a', '_000001', 10, '0000000a', '/c/a.h5', 'verified', 1, 5, NULL, 0);
"""


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
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    message = (f"{tmp_path / 's.sqlite'}: written by a newer upp-grid (schema 5, this one reads "
               "up to 4): upgrade upp-grid")
    with pytest.raises(StateError) as err:
        StateDB(tmp_path / "s.sqlite")
    assert str(err.value) == message
    done = subprocess.run([sys.executable, "-m", "upp_grid", "status", "--state",
                           str(tmp_path / "s.sqlite")], env=clean_env(), capture_output=True,
                          text=True, timeout=120, check=False)
    assert (done.returncode, done.stderr) == (1, f"upp-grid: error: {message}\n")


def write_v1(path, with_download_tables: bool) -> None:
    """A state file as upp-grid of schema 1 left it, with one submission."""
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[1]:
        db.execute(statement)
    db.execute("INSERT INTO submissions VALUES ('v1', 'local', '/cfg.yaml', 'hash', 'jdoe', "
               "'/sb.tar.gz', NULL, NULL, 'then', 'then')")
    if with_download_tables:
        db.executescript(V1_DOWNLOAD_TABLES)
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


@pytest.mark.parametrize("with_download_tables", [False, True])
def test_a_schema_1_file_is_migrated_and_keeps_its_rows(tmp_path, with_download_tables):
    path = tmp_path / "s.sqlite"
    write_v1(path, with_download_tables)

    with StateDB(path) as state:
        assert state.submission("v1").sandbox == "/sb.tar.gz"
        assert state.download_scope("v1") == ("user.jdoe" if with_download_tables else None)
        state.record_listed([DownloadFile("v2", "user.jdoe:f.h5", "c", "o", "s", "a", "_000001",
                                          3, "00000003", tmp_path / "f.h5")])
        assert [f.name for f in state.download_files("v2")] == ["f.h5"]

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "download_files" in tables and "download_meta" not in tables
    assert "task_attempts" in tables
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_schema_2_file_is_migrated_and_every_task_becomes_an_attempt(tmp_path):
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    for version in (1, 2):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
    db.execute("INSERT INTO submissions VALUES ('v1', 'panda', '/cfg.yaml', 'hash', 'jdoe', "
               "'/sb.tar.gz', NULL, NULL, 'then', 'then')")
    db.execute("""INSERT INTO tasks (tag, container, samples, out_ds, outputs, command, status,
                  jedi_task_id, attempt, submitted_at, updated_at) VALUES ('v1', 'c', '["s"]',
                  'user.jdoe.1.e1.v1_split.h5', '[]', 'cmd', 'done', 1000, 2, 'then', 'then')""")
    db.executescript(V1_DOWNLOAD_TABLES.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()

    with StateDB(path) as state:
        (task,) = state.tasks("v1")
        assert (task.jedi_task_id, task.attempt, task.runtime, task.error_dialog) == (
            1000, 2, None, None)
        (attempt,) = state.attempts("v1")
        assert (attempt.out_ds, attempt.jedi_task_id, attempt.outcome) == (
            "user.jdoe.1.e1.v1_split.h5", 1000, "submitted")
        assert state.next_attempts("v1") == {"c": 3}
        assert [f.state for f in state.download_files("v1")] == ["verified"]


def test_a_schema_3_file_gets_platform_and_image_columns_from_its_runtime(tmp_path):
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    for version in (1, 2, 3):
        for statement in MIGRATIONS[version]:
            db.execute(statement)
    db.execute("INSERT INTO submissions VALUES ('v1', 'panda', '/cfg.yaml', 'hash', 'jdoe', "
               "'/sb.tar.gz', NULL, NULL, 'then', 'then')")
    image = '{"runtime": "image", "platform": null, "image": "/cvmfs/unpacked.cern.ch/x:1"}'
    el9 = '{"runtime": "@el9", "platform": "@el9", "image": null}'
    for container, runtime in (("c1", image), ("c2", el9)):
        db.execute("""INSERT INTO tasks (tag, container, samples, out_ds, outputs, command,
                      status, jedi_task_id, attempt, submitted_at, updated_at, runtime)
                      VALUES ('v1', ?, '["s"]', ?, '[]', 'cmd', 'done', 1000, 1, 'then',
                      'then', ?)""", (container, f"user.jdoe.1.e1.v1_split.{container}.h5",
                                     runtime))
        db.execute("""INSERT INTO task_attempts (tag, container, attempt, out_ds, jedi_task_id,
                      config_hash, runtime, outcome, detail, at) VALUES ('v1', ?, 1, ?, 1000,
                      'hash', ?, 'submitted', NULL, 'then')""",
                   (container, f"user.jdoe.1.e1.v1_split.{container}.h5", runtime))
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()

    with StateDB(path) as state:
        tasks = {t.container: t for t in state.tasks("v1")}
        assert (tasks["c1"].platform, tasks["c1"].container_image) == (
            None, "/cvmfs/unpacked.cern.ch/x:1")
        assert (tasks["c2"].platform, tasks["c2"].container_image) == ("@el9", None)
        attempts = {a.container: a for a in state.attempts("v1")}
        assert attempts["c1"].container_image == "/cvmfs/unpacked.cern.ch/x:1"
        assert attempts["c2"].platform == "@el9"


def test_a_file_with_only_the_old_download_tables_is_migrated(tmp_path):
    # `upp-grid download` without any submission used to create the file on its own
    path = tmp_path / "s.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_DOWNLOAD_TABLES)
    db.close()

    with StateDB(path) as state:
        (row,) = state.download_files("v1")
        assert (row.state, row.fetches, row.mtime_ns, row.size) == ("verified", 1, 5, 10)
        assert state.submissions() == []


def test_download_rows_keep_their_state_until_the_catalogue_entry_changes(tmp_path):
    listed = DownloadFile("v1", "user.jdoe:f.h5", "c", "o", "s", "a", "_000001", 3, "00000003",
                          tmp_path / "f.h5")
    with StateDB(tmp_path / "s.sqlite") as state:
        state.record_listed([listed])
        state.download_fetched("v1", listed.did)
        state.download_verified("v1", listed.did, 123)
        state.record_listed([listed])  # listed again, unchanged: still verified
        (row,) = state.download_files("v1")
        assert (row.state, row.fetches, row.mtime_ns) == ("verified", 1, 123)

        state.record_listed([replace(listed, adler32="00000004")])
        (row,) = state.download_files("v1")
        assert (row.state, row.adler32) == ("listed", "00000004")

        state.download_failed("v1", listed.did, "bad")
        (row,) = state.download_files("v1")
        assert (row.state, row.error, row.mtime_ns) == ("failed", "bad", None)


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
        again = state.record_task(submission(backend="panda"), replace(spec("a"), attempt=2),
                                  status="submitted", jedi_task_id=1001)

        assert [e.event for e in state.events("v1")] == ["submitted", "running", "failed",
                                                         "submitted"]
        assert (again.id, again.jedi_task_id, again.attempt, again.n_files) == (task.id, 1001,
                                                                                2, None)
        assert state.submission("v1").backend == "panda"
        assert [(a.attempt, a.jedi_task_id) for a in state.attempts("v1", "a")] == [
            (1, 1000), (2, 1001)]
        assert again.runtime == {"runtime": "@el9", "platform": "el9", "image": None,
                                 "job_size": "10 GB per job", "dest_se": None}


def test_a_name_panda_did_not_turn_into_a_task_is_never_used_again(tmp_path):
    with StateDB(tmp_path / "s.sqlite") as state:
        state.record_unused_name(submission(backend="panda"), spec("a"), "reactivated",
                                 "reactivation accepted. jediTaskID=77", 77)
        assert state.tasks("v1") == []
        assert state.next_attempts("v1") == {"a": 2}
        assert [e.event for e in state.events("v1")] == ["reactivated"]


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
