"""The whole grid path, locally: submit → (the grid runs the jobs) → status → download → the
same training files as ``upp-grid run`` on the same inputs.

* ``upp-grid submit`` talks to the fake PanDA server with the real pandaclient, and uploads the
  real sandbox (of a small linked venv, see ``tests.grid_support.linked_env``).
* When the server accepts a task, :class:`GridSite` does what the grid would: it unpacks the
  uploaded sandbox, runs one job per input file of the task's inDS (the task's own command,
  ``bash grid/split.sh … %IN``, in a job directory holding the sandbox and the staged input),
  names each declared output as the task parameters say (``user.<nick>.<taskid>._<serial>.…``)
  and uploads it to the rucio test server into the task's output containers; then it marks the
  task done.
* ``upp-grid status`` reports the tasks done; ``upp-grid download`` fetches, verifies and
  prepares; the merged files, histograms and norm/class dicts equal those of ``upp-grid run``.

Every command runs as a user runs it, in a subprocess.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tests.download_support import (
    USER,
    assert_same_training_files,
    catalogue_counts,
    ledger,
    write_config,
)
from tests.fakes.grid_outputs import GridFile, register_inputs, upload_grid_files
from tests.fakes.panda_server import FakePanda
from tests.grid_support import make_project, run_cli
from upp_grid.grid import sandbox as sandboxes
from upp_grid.grid.names import scope_of

TAG = "path1"


class GridSite:
    """The grid's side of an accepted task (the fake PanDA server's ``on_submit`` hook)."""

    def __init__(self, rse: str, ntuple_dir: Path, work: Path) -> None:
        self.rse = rse
        self.ntuple_dir = ntuple_dir
        self.work = work
        self.fake: FakePanda | None = None
        self.jobs: dict[int, list[subprocess.CompletedProcess[str]]] = {}
        self._lock = threading.Lock()

    def __call__(self, task_id: int, params: dict[str, Any], sandbox: Path | None) -> None:
        assert sandbox is not None, "the task refers to no uploaded sandbox"
        unpacked = self.work / "sandbox" / sandbox.name
        with self._lock:  # tasks arrive in parallel threads; they share the sandbox
            if not unpacked.is_dir():
                sandboxes.unpack(sandbox, unpacked)
        inputs = sorted((self.ntuple_dir / params["dsForIN"]).glob("*.h5"))
        command = shlex.split(exec_of(params))
        assert self.fake is not None
        # JEDI: the scout job takes the first job of the split rule; then the scouts find the
        # jobs short and remove nFilesPerJob, so the later jobs take all the other files
        sizes = [(p.name, p.stat().st_size) for p in inputs]
        scout = self.fake.split_into_jobs(task_id, sizes)[0]
        self.fake.scout_change_split_rule(task_id)
        rest = self.fake.split_into_jobs(task_id, sizes[len(scout):])
        by_name = {p.name: p for p in inputs}
        jobs = [[by_name[n] for n in job] for job in [scout, *rest]]
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(lambda job: self._run_job(task_id, job[0], job[1], unpacked,
                                                           command), enumerate(jobs, 1)))
        self.jobs[task_id] = [len(job) for job in jobs]
        for run in runs:
            assert run.returncode == 0, run.stdout + run.stderr
        outputs = output_templates(params)
        files = [GridFile(self._job_dir(task_id, k) / name,
                          template.replace("$JEDITASKID", str(task_id))
                          .replace("${SN/P}", f"{k:06d}"), container)
                 for k in range(1, len(jobs) + 1)
                 for name, (template, container) in outputs.items()]
        scope = scope_of(next(iter(outputs.values()))[0])
        register_inputs(self.rse, params["dsForIN"], [p.name for p in inputs])  # the inDS
        upload_grid_files(self.rse, scope, task_id, files, [c for _, c in outputs.values()])
        assert self.fake is not None
        self.fake.set_task_status(task_id, "done", nfiles=len(inputs),
                                  nfiles_finished=len(inputs), nfiles_failed=0)

    def _job_dir(self, task_id: int, k: int) -> Path:
        return self.work / "jobs" / str(task_id) / f"{k:06d}"

    def _run_job(self, task_id: int, k: int, sources: list[Path], sandbox: Path,
                 command: list[str]) -> subprocess.CompletedProcess[str]:
        """One job: the sandbox and the staged inputs in a fresh directory, then the command
        with ``%IN`` the comma-separated inputs (runGen)."""
        job = self._job_dir(task_id, k)
        job.mkdir(parents=True)
        for member in sandbox.iterdir():
            (job / member.name).symlink_to(member)
        for source in sources:
            (job / source.name).symlink_to(source)
        argv = [",".join(s.name for s in sources) if arg == "%IN" else arg for arg in command]
        env = {"PATH": os.environ["PATH"], "HOME": str(job)}
        return subprocess.run(argv, cwd=job, env=env, capture_output=True, text=True,
                              timeout=300, check=False)


def exec_of(params: dict[str, Any]) -> str:
    """The task's ``--exec``: the URL-quoted constant after ``-p "``."""
    values = [str(item["value"]) for item in params["jobParameters"]]
    return unquote(values[values.index('-p "') + 1])


def output_templates(params: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Declared output file -> (its LFN template, its output container)."""
    out = {}
    for item in params["jobParameters"]:
        if item.get("param_type") == "output":
            template = str(item["value"])
            out[template.split("${SN/P}.", 1)[1]] = (template, str(item["dataset"]))
    return out


def test_submit_status_download_gives_the_training_files_of_a_local_run(
        rucio_server, rucio_client_config, tmp_path):
    project = make_project(tmp_path / "grid", jets=3000, files=5, seed=5, label="grid_path")
    ntuples = project.base / "ntuples"
    config = write_config(project.base, ntuples)  # the demo config, two flavours
    site = GridSite(rucio_server.rse, ntuples, tmp_path / "site")

    with FakePanda(tmp_path / "panda-cache", on_submit=site) as fake:
        site.fake = fake
        panda_env = {**project.env, **fake.client_env(nickname=USER)}

        submitted = run_cli(["submit", "-c", config, "--tag", TAG, "--files-per-job", "1",
                             "--allow-local-python"], panda_env, cwd=project.base)
        assert submitted.returncode == 0, submitted.stderr
        fake.wait_for_hooks(timeout=300)
        assert fake.hook_errors == []
        # ttbar has 3 files, Z' 2: a one-file scout job each, then the scouts dropped
        # nFilesPerJob and the other files went to one job
        assert site.jobs == {1000: [1, 2], 1001: [1, 1]}

        status = run_cli(["status", "-c", config, "--tag", TAG, "--json"],
                         {**panda_env, **rucio_server.client_env()})
        assert status.returncode == 0, status.stderr
        tasks = json.loads(status.stdout)["tags"][0]["tasks"]
        assert [t["status"] for t in tasks] == ["done", "done"]
        # the outputs sit on the scratch disk under JEDI's 14-day rule: status says so
        warnings = [ln for ln in status.stderr.splitlines() if "only on scratch disks" in ln]
        assert len(warnings) == 2 and "in 14.0 days" in warnings[0], status.stderr
        assert f"upp-grid replicate --tag {TAG} --rse <RSE>" in warnings[0]

    rucio_env = {**project.env, **rucio_server.client_env()}
    downloaded = run_cli(["download", "-c", config, "--tag", TAG, "--no-plots"], rucio_env)
    assert downloaded.returncode == 0, downloaded.stderr
    assert "fetched and verified now: 4 files" in downloaded.stdout  # one per job
    rows = ledger(config, TAG)
    assert len(rows) == 4 and {r["state"] for r in rows.values()} == {"verified"}

    local = write_config(tmp_path / "local", ntuples)
    ran = run_cli(["run", "-c", local, "--no-plots"], project.env)
    assert ran.returncode == 0, ran.stderr

    assert catalogue_counts(config) == catalogue_counts(local)
    assert_same_training_files(project.base / "output", tmp_path / "local" / "output")

