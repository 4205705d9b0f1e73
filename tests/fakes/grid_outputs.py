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

import contextlib
from collections.abc import Callable, Sequence
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


#: JEDI's rule lifetime for outputs on a SCRATCHDISK (pandajedi/jediddm/AtlasDDMClient.py)
SCRATCH_LIFETIME_S = 14 * 86400


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

    # the per-task dataset gets a rule with JEDI's 14-day scratch lifetime, as on the grid
    items = [{"path": str(f.path), "rse": rse, "did_scope": scope, "did_name": f.lfn,
              "dataset_scope": scope, "lifetime": SCRATCH_LIFETIME_S,
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
    """Upload the jobs' outputs under grid names, with the task's input container registered
    as the grid has it (every file of ``spec.files``); returns the LFNs.

    ``skip``: ``(serial, output file)`` pairs not to upload (a job output that never arrived).
    """
    register_inputs(rse, spec.container, [p.name for p in spec.files])
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


def register_grid_files(rse: str, scope: str, dataset: str, container: str,
                        files: Sequence[tuple[str, bytes]],
                        pfn_path: Callable[[str, str], Path] | None = None) -> None:
    """Many files at once, as the grid's stage-out leaves them (the rucio client of this
    process must point at the test server): each written to ``rse`` at its PFN
    (``pfn_path(scope, name)``; None: a catalogue entry only, as for input files read
    elsewhere), one ``add_replicas`` call per 500 files, a dataset with JEDI's 14-day scratch
    rule, attached to ``container`` (created if needed)."""
    import zlib

    from rucio.client.didclient import DIDClient
    from rucio.client.replicaclient import ReplicaClient
    from rucio.client.scopeclient import ScopeClient
    from rucio.common.exception import DataIdentifierAlreadyExists, Duplicate

    scopes = ScopeClient()
    with contextlib.suppress(Duplicate):
        scopes.add_scope(scopes.account, scope)
    replicas = []
    for name, data in files:
        if pfn_path is not None:
            path = pfn_path(scope, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        replicas.append({"scope": scope, "name": name, "bytes": len(data),
                         "adler32": f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"})
    dids = DIDClient()
    for start in range(0, len(replicas), 500):
        ReplicaClient().add_replicas(rse, replicas[start:start + 500])
    dids.add_dataset(scope, dataset, rules=[{"account": scopes.account, "copies": 1,
                                             "rse_expression": rse,
                                             "lifetime": SCRATCH_LIFETIME_S}])
    for start in range(0, len(replicas), 500):
        dids.attach_dids(scope, dataset, [{"scope": scope, "name": r["name"]}
                                          for r in replicas[start:start + 500]])
    with contextlib.suppress(DataIdentifierAlreadyExists):
        dids.add_container(scope, container)
    dids.attach_dids(scope, container, [{"scope": scope, "name": dataset}])


def register_inputs(rse: str, in_ds: str, names: Sequence[str]) -> None:
    """An input container as rucio lists it (one dataset of ``names``, catalogue entries only:
    the jobs read the files elsewhere); nothing if it is registered already."""
    from rucio.client.didclient import DIDClient
    from rucio.common.exception import DataIdentifierNotFound, ScopeNotFound

    from upp_grid.grid.names import scope_of

    scope = scope_of(in_ds)
    try:
        list(DIDClient().list_files(scope, in_ds))
        return
    except (DataIdentifierNotFound, ScopeNotFound):
        pass
    register_grid_files(rse, scope, f"{in_ds.rstrip('/')}_tid01_00", in_ds,
                        [(n, n.encode()) for n in names])


def clone_archive(template: Path, input_name: str) -> bytes:
    """A job archive like ``template`` (one input) that claims to hold ``input_name``: the
    provenance and the split record name it and the unit directory is renamed; the component
    files are the same bytes. Many distinct, valid job outputs without running as many jobs."""
    import io
    import json
    import tarfile

    from upp_grid.grid.job_archive import PROVENANCE_NAME, unit_name

    out = io.BytesIO()
    with tarfile.open(template) as src, tarfile.open(fileobj=out, mode="w",
                                                     format=tarfile.PAX_FORMAT) as dst:
        members = src.getmembers()
        provenance = json.loads(src.extractfile(members[0]).read())
        assert members[0].name == PROVENANCE_NAME and len(provenance["inputs"]) == 1
        old_unit = unit_name(provenance["inputs"][0]["name"])
        provenance["inputs"][0]["name"] = input_name
        data = json.dumps(provenance, indent=1, sort_keys=True).encode()
        info = tarfile.TarInfo(PROVENANCE_NAME)
        info.size = len(data)
        dst.addfile(info, io.BytesIO(data))
        for member in members[1:]:
            content = src.extractfile(member) if member.isfile() else None
            if member.name.endswith("/split-record.json"):  # the input it records, too
                record = json.loads(content.read())
                record["input"] = str(Path(record["input"]).with_name(input_name))
                text = json.dumps(record).encode()
                member.size, content = len(text), io.BytesIO(text)
            member.name = unit_name(input_name) + member.name[len(old_unit):]
            dst.addfile(member, content)
    return out.getvalue()
