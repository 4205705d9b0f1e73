"""Grid outputs for tests, made the way a PanDA task makes them.

A task's jobs each take some input files of its container (one file per job here, as JEDI may
cut them); job ``k`` (serial ``_00000k``) writes its one output ``split.tar`` with the real grid
payload (:func:`upp_grid.grid.worker.run`); the grid renames it to
``user.<nick>.<taskid>._<serial>.split.tar`` and adds it to a per-task dataset inside the
output container ``<outDS>_split.tar``.

:func:`split_task` runs those jobs locally; :func:`upload_task_outputs` uploads them to the rucio
test server under those names (the rucio client must be configured in this process), and
:func:`publish_task_outputs` puts them into a local store as the local backend does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from upp_grid.config import Config
from upp_grid.grid.store import LocalStore
from upp_grid.grid.tasks import TaskSpec
from upp_grid.grid.worker import run as run_worker


@dataclass(frozen=True)
class JobOutputs:
    """The output of one grid job: ``directory/split.tar``."""

    serial: str  # "_000001"
    input: Path  # the first input
    directory: Path
    inputs: tuple[Path, ...] = ()


def split_task(config: Config, spec: TaskSpec, work: Path, files_per_job: int = 1
               ) -> list[JobOutputs]:
    """Run the task's jobs (``files_per_job`` inputs each, serials from 1) with the real
    worker payload into ``work/<serial>/split.tar``."""
    jobs = []
    groups = [spec.files[i:i + files_per_job] for i in range(0, len(spec.files), files_per_job)]
    for k, group in enumerate(groups, start=1):
        serial = f"_{k:06d}"
        out = work / spec.container / serial
        out.mkdir(parents=True, exist_ok=True)
        code = run_worker(config.path, list(spec.samples), [str(p) for p in group], out)
        assert code == 0, f"worker exit {code} for {group}"
        jobs.append(JobOutputs(serial, group[0], out, tuple(group)))
    return jobs


def grid_lfn(user: str, task_id: int, serial: str, filename: str) -> str:
    """The file name PanDA gives a job's output: ``user.<nick>.<taskid>._<serial>.<file>``."""
    return f"user.{user}.{task_id}.{serial}.{filename}"


def task_dataset(container: str, task_id: int) -> str:
    """The per-task dataset the grid attaches to an output container."""
    return f"{container}.{task_id}"


@dataclass(frozen=True)
class GridFile:
    """One job output as the grid stores it: the local file, its LFN and output container."""

    path: Path
    lfn: str
    container: str


def upload_grid_files(rse: str, scope: str, task_id: int, files: Sequence[GridFile],
                      containers: Sequence[str]) -> None:
    """Upload ``files`` into per-task datasets ``<container>.<task_id>`` attached to their
    containers; every container of ``containers`` is created, even one left empty.

    Container names are used without ATLAS's trailing ``/`` (the test server is not asked to
    handle it, see docs/dev/rucio-test-server.md).
    """
    from rucio.client.didclient import DIDClient
    from rucio.client.uploadclient import UploadClient

    items = [{"path": str(f.path), "rse": rse, "did_scope": scope, "did_name": f.lfn,
              "dataset_scope": scope,
              "dataset_name": task_dataset(f.container.rstrip("/"), task_id)} for f in files]
    if items:
        assert UploadClient().upload(items) == 0
    dids = DIDClient()
    uploaded = {item["dataset_name"] for item in items}
    for container in (c.rstrip("/") for c in containers):
        dids.add_container(scope, container)
        dataset = task_dataset(container, task_id)
        if dataset in uploaded:
            dids.attach_dids(scope, container, [{"scope": scope, "name": dataset}])


def upload_task_outputs(rse: str, spec: TaskSpec, task_id: int, jobs: Sequence[JobOutputs],
                        skip: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Upload the jobs' outputs under grid names; returns the LFNs.

    ``skip``: ``(serial, output file)`` pairs not to upload (a job output that never arrived).
    """
    files = [GridFile(job.directory / output.file,
                      grid_lfn(spec.user, task_id, job.serial, output.file), output.container)
             for job in jobs for output in spec.outputs if (job.serial, output.file) not in skip]
    upload_grid_files(rse, spec.scope, task_id, files, [o.container for o in spec.outputs])
    return [f.lfn for f in files]


def publish_task_outputs(store: LocalStore, spec: TaskSpec, task_id: int,
                         jobs: Sequence[JobOutputs]) -> None:
    """Put the jobs' outputs into a local store, named as the local backend names them."""
    for job in jobs:
        for output in spec.outputs:
            copy = job.directory / f".{output.file}.copy"
            copy.write_bytes((job.directory / output.file).read_bytes())
            store.publish(copy, spec.scope, output.container,
                          grid_lfn(spec.user, task_id, job.serial, output.file))
