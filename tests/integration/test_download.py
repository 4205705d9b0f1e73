"""``upp-grid download``: grid outputs in rucio (or the local store) → verified files → training
files equal to a local ``upp-grid run`` on the same inputs.

The grid outputs are made as PanDA makes them: the real grid payload runs once per job (one
input file each here), and each job's one output is uploaded to the local rucio test server
with the grid's file name (``user.<nick>.<taskid>._<serial>.split.tar``) into a per-task
dataset of its output container ``<outDS>_split.tar`` (``tests/fakes/grid_outputs.py``).
Every tag gets its own container names, so tests do not share replicas they damage.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - split outputs are Blosc-compressed
import numpy as np
import pytest
import yaml

from tests.download_support import (
    FLAVOURS,
    SPLITS,
    USER,
    assert_same_training_files,
    catalogue_counts,
    ledger,
    rucio_client,
    write_config,
)
from tests.fakes.grid_outputs import (
    JobOutputs,
    publish_task_outputs,
    split_task,
    upload_task_outputs,
)
from tests.grid_support import clean_env, relabel_containers, run_cli
from upp_grid.config import Config, load_config
from upp_grid.grid import backend as states
from upp_grid.grid.state import StateDB, Submission
from upp_grid.grid.store import LocalStore
from upp_grid.grid.tasks import TaskSpec, plan_tasks
from upp_grid.mock import make_mock


# --------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``upp-grid ARGS`` in this process (the console entry point, exit code and all).

    Cheaper than a subprocess (no interpreter start and imports); the environment is this
    process's (``rucio_client_config`` / ``monkeypatch``).
    """
    from upp_grid.cli import main

    def run(*args: str | Path) -> Result:
        logger = logging.getLogger("upp_grid")
        saved = logger.handlers[:], logger.level, logger.propagate
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            logger.handlers[:], logger.level, logger.propagate = saved
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@dataclass(frozen=True)
class GridTask:
    """A task's spec and its jobs' outputs (split once, uploaded under any tag)."""

    spec: TaskSpec
    jobs: list[JobOutputs]


def make_tasks(config_path: Path, tag: str, work: Path) -> list[GridTask]:
    config = load_config(config_path)
    return [GridTask(s, split_task(config, s, work / tag))
            for s in plan_tasks(config, tag, USER)]


def retag(config: Config, tasks: list[GridTask], tag: str) -> list[GridTask]:
    """The same job outputs under another tag's names (no need to split again)."""
    specs = {s.container: s for s in plan_tasks(config, tag, USER)}
    return [GridTask(specs[t.spec.container], t.jobs) for t in tasks]


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No rucio set up at all in this process."""
    for key in [k for k in os.environ if k.startswith("RUCIO")]:
        monkeypatch.delenv(key)
    for key in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        monkeypatch.delenv(key, raising=False)


# --------------------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 mock input files: 2 in the ttbar container, 1 in the Z' container."""
    ntuples = tmp_path_factory.mktemp("ntuples")
    make_mock(ntuples, num_jets=3_000, num_files=3, seed=11)
    relabel_containers(ntuples, "download")  # input containers of their own in rucio
    return ntuples


@pytest.fixture(scope="module")
def local_run(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``upp-grid run`` on the same inputs: the reference. Returns its config."""
    config = write_config(tmp_path_factory.mktemp("local-run"), inputs)
    done = run_cli(["run", "-c", config, "--no-plots"], clean_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    return config


@pytest.fixture(scope="module")
def grid_jobs(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> list[GridTask]:
    """The grid jobs of the demo config, run once (one per input file)."""
    work = tmp_path_factory.mktemp("grid-jobs")
    return make_tasks(write_config(work / "cfg", inputs), "jobs", work)


@pytest.fixture(scope="module")
def uploaded(rucio_server, inputs: Path, grid_jobs: list[GridTask],
             tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tag ``full``: every job's outputs in rucio, as PanDA would leave them. Returns the tag."""
    config = load_config(write_config(tmp_path_factory.mktemp("upload"), inputs))
    with rucio_client(rucio_server):
        for k, task in enumerate(retag(config, grid_jobs, "full")):
            upload_task_outputs(rucio_server.rse, task.spec, 2000 + k, task.jobs)
    return "full"


TTBAR = {"ttbar": "user.mock.601589.*.h5"}


# --------------------------------------------------------------------------- the happy path
@pytest.fixture(scope="module")
def downloaded(rucio_server, uploaded: str, inputs: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``upp-grid download`` of the whole tag into a fresh base dir, in a subprocess as a user
    runs it: (config, the finished process)."""
    config = write_config(tmp_path_factory.mktemp("downloaded"), inputs)
    env = clean_env(**rucio_server.client_env())
    return config, run_cli(["download", "-c", config, "--tag", uploaded, "--threads", "2",
                            "--no-plots"], env, timeout=600)


def test_download_prepares_the_same_training_files_as_a_local_run(downloaded, uploaded,
                                                                  local_run):
    config, done = downloaded

    assert done.returncode == 0, done.stderr
    assert "fetched and verified now: 3 files" in done.stdout  # one per job
    # one directory per grid job, its archive unpacked: a unit directory per input
    components = load_config(config).global_.components_dir
    out_ds = "user.upptest.601589.e8547_s3797_r13144_p6859.full_split.h5"
    job = components / "ttbar" / out_ds / "_000002"
    (unit,) = [p for p in job.iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in unit.glob("output_*.h5")) == sorted(
        f"output_{s}_{'inclusive' if s == 'test' else 'lowpt'}_ttbar_{f}.h5"
        for s in SPLITS for f in FLAVOURS)  # test: no region cuts
    assert not (components / ".download").exists()
    assert not list(components.rglob("*.split.tar"))  # unpacked, then removed
    # every file verified once, and recorded
    rows = ledger(config, uploaded)
    assert len(rows) == 3
    assert {r["state"] for r in rows.values()} == {"verified"}
    assert {r["fetches"] for r in rows.values()} == {1}
    # same catalogue and the same training files as `upp-grid run`
    assert catalogue_counts(config) == catalogue_counts(local_run)
    assert_same_training_files(load_config(config).global_.out_dir,
                               load_config(local_run).global_.out_dir)


def test_rerun_fetches_nothing_and_no_download_prepares_offline(
        downloaded, uploaded, rucio_client_config, cli, monkeypatch):
    config, _ = downloaded
    rows = ledger(config, uploaded)
    mtimes = {n: Path(r["dest"]).stat().st_mtime_ns for n, r in rows.items()}

    again = cli("download", "-c", config, "--tag", uploaded, "--prepare-only")

    assert again.returncode == 0, again.stderr
    assert "fetched and verified now: 0 files" in again.stdout
    assert "verified before: 3" in again.stdout
    rows = ledger(config, uploaded)
    assert {r["fetches"] for r in rows.values()} == {1}
    assert {n: Path(r["dest"]).stat().st_mtime_ns for n, r in rows.items()} == mtimes

    # --no-download needs no rucio at all: it prepares from what is verified ...
    offline(monkeypatch)
    catalogue = load_config(config).global_.components_dir / "organised-components.yaml"
    catalogue.unlink()
    prepared = cli("download", "-c", config, "--tag", uploaded, "--no-download",
                   "--prepare-only")
    assert prepared.returncode == 0, prepared.stderr
    assert catalogue.is_file()

    # ... and refuses a job directory changed since it was verified
    lfn, row = next(iter(rows.items()))
    victim = Path(row["dest"]) / ".job-archive.json"
    victim.write_text(victim.read_text().replace('"bytes"', '"bytes_"'))
    refused = cli("download", "-c", config, "--tag", uploaded, "--no-download",
                  "--prepare-only")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(
        f"upp-grid: error: {row['container']}: {lfn}: not downloaded and verified (changed "
        "since it was verified)")


# --------------------------------------------------------------------------- faults
TTBAR_ONE_FILE = {"ttbar": "user.mock.601589.*.h5/user.mock.601589._000001.output.h5"}


def test_damaged_replicas_are_fetched_again_then_named(rucio_server, rucio_client_config, cli,
                                                       inputs, grid_jobs, tmp_path):
    config = load_config(write_config(tmp_path / "grid", inputs, TTBAR))
    (task,) = retag(config, [next(t for t in grid_jobs if "ttbar" in t.spec.samples)],
                    "damaged")
    corrupt, lost = upload_task_outputs(rucio_server.rse, task.spec, 3001, task.jobs)
    rucio_server.corrupt_file(rucio_server.scope, corrupt)  # same size, other adler32
    rucio_server.delete_file_on_disk(rucio_server.scope, lost)

    done = cli("download", "-c", config.path, "--tag", "damaged", "--prepare-only")

    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    out_ds = task.spec.out_ds
    assert error.startswith(f"upp-grid: error: {out_ds}_split.tar: {corrupt}: adler32 is ")
    assert "after 2 fetches (+1 more files failed, listed above)" in error
    assert (f"{out_ds}_split.tar: {lost}: not downloaded (FAILED: no replica could be read) "
            "after 3 fetches") in done.stderr
    rows = ledger(config.path, "damaged")
    assert (rows[corrupt]["state"], rows[corrupt]["fetches"]) == ("failed", 2)
    assert (rows[lost]["state"], rows[lost]["fetches"]) == ("failed", 3)
    assert not Path(rows[corrupt]["dest"]).exists() and not Path(rows[lost]["dest"]).exists()
    assert not (config.global_.components_dir / "organised-components.yaml").exists()


def _first_job(tasks: list[GridTask], sample: str) -> GridTask:
    task = next(t for t in tasks if sample in t.spec.samples)
    return GridTask(task.spec, task.jobs[:1])


def test_missing_containers_are_listed_with_the_reason(rucio_client_config, cli, inputs,
                                                       tmp_path):
    config_path = write_config(tmp_path / "grid", inputs, TTBAR)

    # no state: the names are derived; tag or user may be wrong
    done = cli("download", "-c", config_path, "--tag", "nosuchtag")

    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("upp-grid: error: 1 output container not found in rucio: "
                            "user.upptest.601589.e8547_s3797_r13144_p6859.nosuchtag_split.h5_"
                            "split.tar: ")
    assert "is --tag or the user (--rucio-user / RUCIO_ACCOUNT) wrong?" in error
    assert done.stderr.count("missing: user.upptest.601589.") == 1

    # the state says why: the task has not finished
    config = load_config(config_path)
    (spec,) = plan_tasks(config, "running", USER)
    with StateDB(config.global_.base_dir / "upp-grid.sqlite") as state:
        sub = Submission("running", "panda", str(config_path), config.config_hash, USER, "sb")
        rec = state.record_task(sub, spec, status=states.RUNNING, jedi_task_id=4242)
        state.update_task(rec.id, status=states.RUNNING, backend_status="running",
                          counts=(2, 0, 0))
    done = cli("download", "-c", config_path, "--tag", "running")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"task 4242 of {spec.container} (running, 0/2 files done): not finished yet "
        "(see `upp-grid status`)")


def test_interrupted_download_resumes_without_fetching_verified_files_again(
        rucio_client_config, cli, uploaded, inputs, tmp_path, monkeypatch):
    from upp_grid.grid.download import DownloadOptions, download_and_prepare
    from upp_grid.grid.rucio import RucioSource
    from upp_grid.grid.transfer import RetryPolicy

    config = load_config(write_config(tmp_path / "grid", inputs))
    fetch, calls = RucioSource.fetch, []

    def fetch_then_interrupt(self, files, staging, threads=2):
        calls.append(len(files))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third batch
        return fetch(self, files, staging, threads)

    options = DownloadOptions(uploaded, prepare_only=True, policy=RetryPolicy(batch_files=1))
    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(RucioSource, "fetch", fetch_then_interrupt)
        download_and_prepare(config, options)

    before = ledger(config.path, uploaded)
    verified = {n: Path(r["dest"]).stat().st_mtime_ns for n, r in before.items()
                if r["state"] == "verified"}
    assert len(verified) == 2 and len(before) == 3

    done = cli("download", "-c", config.path, "--tag", uploaded, "--prepare-only")

    assert done.returncode == 0, done.stderr
    assert "fetched and verified now: 1 files" in done.stdout
    after = ledger(config.path, uploaded)
    assert {r["state"] for r in after.values()} == {"verified"}
    assert {r["fetches"] for r in after.values()} == {1}  # nothing fetched twice
    assert {n: Path(after[n]["dest"]).stat().st_mtime_ns for n in verified} == verified


def test_inputs_without_outputs_block_prepare_unless_allowed(rucio_server, rucio_client_config,
                                                             cli, inputs, grid_jobs, tmp_path):
    config_path = write_config(tmp_path / "grid", inputs, TTBAR)
    config = load_config(config_path)
    ttbar = next(t for t in grid_jobs if "ttbar" in t.spec.samples)
    (task,) = retag(config, [ttbar], "partial")
    # PanDA finished the task with one of its two jobs failed: only the first job's output
    upload_task_outputs(rucio_server.rse, task.spec, 3004, task.jobs[:1])
    with StateDB(config.global_.base_dir / "upp-grid.sqlite") as state:
        sub = Submission("partial", "panda", str(config_path), config.config_hash, USER, "sb")
        rec = state.record_task(sub, task.spec, status=states.PARTIAL, jedi_task_id=3004)
        state.update_task(rec.id, status=states.PARTIAL, backend_status="finished",
                          counts=(2, 1, 1))

    refused = cli("download", "-c", config_path, "--tag", "partial", "--prepare-only")

    assert refused.returncode == 1
    missing = task.jobs[1].input.name
    assert f"incomplete: {task.spec.container}: input {missing} has no output" in (
        refused.stderr)
    assert "--allow-partial" in refused.stderr.strip().splitlines()[-1]
    assert {r["state"] for r in ledger(config_path, "partial").values()} == {"verified"}
    assert not (config.global_.components_dir / "organised-components.yaml").exists()

    allowed = cli("download", "-c", config_path, "--tag", "partial", "--prepare-only",
                  "--allow-partial")

    assert allowed.returncode == 0, allowed.stderr
    assert "fetched and verified now: 0 files" in allowed.stdout
    assert f"WARNING left out (--allow-partial): {task.spec.container}: input {missing}" in (
        allowed.stdout)
    left_out = yaml.safe_load((config.global_.components_dir / "left-out-partial.yaml")
                              .read_text())
    assert left_out == {"tag": "partial", "left_out": [
        f"{task.spec.container}: input {missing} has no output (task 3004 of "
        f"{task.spec.container} (partial, 1/2 files done, 1 failed))"]}
    assert catalogue_counts(config_path) == _jets_in(config, task.jobs[0])


def test_a_missing_input_is_named_from_rucio_without_a_state_db(rucio_server,
                                                                 rucio_client_config, cli,
                                                                 inputs, grid_jobs, tmp_path):
    config_path = write_config(tmp_path / "grid", inputs, TTBAR)
    config = load_config(config_path)
    ttbar = next(t for t in grid_jobs if "ttbar" in t.spec.samples)
    (task,) = retag(config, [ttbar], "nostate")
    upload_task_outputs(rucio_server.rse, task.spec, 3006, task.jobs[1:])  # job 1 lost

    done = cli("download", "-c", config_path, "--tag", "nostate", "--prepare-only",
               "--rucio-user", USER)

    assert done.returncode == 1
    missing = task.jobs[0].input.name
    assert (f"upp-grid: error: incomplete outputs: {task.spec.container}: input {missing} "
            "has no output;") in done.stderr
    assert not (config.global_.components_dir / "organised-components.yaml").exists()


def test_an_input_covered_by_two_jobs_is_an_error_naming_it(rucio_server, rucio_client_config,
                                                            cli, inputs, grid_jobs, tmp_path):
    config_path = write_config(tmp_path / "grid", inputs, TTBAR)
    config = load_config(config_path)
    ttbar = next(t for t in grid_jobs if "ttbar" in t.spec.samples)
    (task,) = retag(config, [ttbar], "twice")
    # PanDA ran the first job twice: its output appears under two serials
    again = JobOutputs("_000003", ttbar.jobs[0].input, ttbar.jobs[0].directory)
    upload_task_outputs(rucio_server.rse, task.spec, 3005, [*task.jobs, again])

    done = cli("download", "-c", config_path, "--tag", "twice", "--prepare-only",
               "--rucio-user", USER)

    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert f"input {ttbar.jobs[0].input.name} is covered by 2 job outputs" in error
    assert "_000001" in error and "_000003" in error
    assert not (config.global_.components_dir / "organised-components.yaml").exists()


def _jets_in(config: Config, job: JobOutputs) -> dict[str, dict[str, int]]:
    from upp_grid.grid.job_archive import read_provenance

    counts = {s: dict.fromkeys(FLAVOURS, 0) for s in SPLITS}
    names = {c.name: c.flavour.name for s in SPLITS for c in config.split_components(s)}
    for item in read_provenance(job.directory / "split.tar").inputs:
        for output, n in item.outputs.items():
            split, component = output.split("_", 1)
            counts[split][names[component]] += n
    return counts


# --------------------------------------------------------------------------- other sources
def test_local_backend_store_gives_the_same_catalogue(cli, inputs, grid_jobs, local_run,
                                                      tmp_path, monkeypatch):
    config_path = write_config(tmp_path / "grid", inputs)
    config = load_config(config_path)
    store = LocalStore(tmp_path / "store")
    with StateDB(config.global_.base_dir / "upp-grid.sqlite") as state:
        sub = Submission("loc", "local", str(config_path), config.config_hash, USER, "sb",
                         work_dir=str(tmp_path / "work"), store_dir=str(store.root))
        for task in retag(config, grid_jobs, "loc"):
            rec = state.record_task(sub, task.spec, status=states.DONE)
            publish_task_outputs(store, task.spec, rec.id, task.jobs)
            state.reset_jobs(rec.id, [",".join(map(str, j.inputs)) for j in task.jobs])
            for job in state.jobs(rec.id):
                claimed = state.claim_job(rec.id, job.index, str(tmp_path / "log"))
                state.finish_job(claimed, "done", 0, None)
            state.update_task(rec.id, status=states.DONE, backend_status="done",
                              counts=(len(task.jobs), len(task.jobs), 0))

    # no rucio needed: the tag's backend is local
    offline(monkeypatch)
    done = cli("download", "-c", config_path, "--tag", "loc", "--prepare-only")

    assert done.returncode == 0, done.stderr
    assert f"from the local store {store.root}" in done.stdout
    assert catalogue_counts(config_path) == catalogue_counts(local_run)
    local_files = _component_files(load_config(local_run).global_.components_dir)
    grid_files = _component_files(config.global_.components_dir)
    assert sorted(grid_files) == sorted(local_files)
    for key, paths in local_files.items():
        for a, b in zip(sorted(paths), sorted(grid_files[key]), strict=True):
            with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
                for group in fa:
                    np.testing.assert_array_equal(fa[group][:], fb[group][:])


def _component_files(root: Path) -> dict[str, list[Path]]:
    """Split outputs by (sample dir, output name); the job directories differ by design."""
    out: dict[str, list[Path]] = {}
    for path in root.rglob("output_*.h5"):
        if not any(p.startswith(".") for p in path.relative_to(root).parts):
            out.setdefault(f"{path.relative_to(root).parts[0]}/{path.name}", []).append(path)
    return out


def test_without_a_rucio_config_the_error_says_what_to_set_up(cli, inputs, tmp_path,
                                                              monkeypatch):
    config_path = write_config(tmp_path / "grid", inputs, TTBAR)
    offline(monkeypatch)
    monkeypatch.setenv("RUCIO_ACCOUNT", USER)

    done = cli("download", "-c", config_path, "--tag", "t1")

    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(
        "upp-grid: error: no rucio client config: set RUCIO_CONFIG to a rucio.cfg with a "
        "[client] section")
