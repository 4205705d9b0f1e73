"""The real rucio client against the real local rucio test server.

Proves the calls ``upp_grid/grid/rucio.py`` relies on: upload into a dataset, ``list_files``
with sizes and adler32, ``download_dids`` of a dataset, and that a replica corrupted (or lost)
on the RSE is caught by the download client's checksum validation.
"""

from __future__ import annotations

import uuid
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

pytestmark = pytest.mark.rucio


def adler32_hex(data: bytes) -> str:
    """Rucio's adler32 format: 8 lower-case hex digits, zero-padded."""
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def write_h5(path: Path, n_jets: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    jets = np.zeros(n_jets, dtype=[("pt", "f4"), ("eta", "f4"), ("label", "i4")])
    jets["pt"] = rng.uniform(20e3, 250e3, n_jets)
    jets["eta"] = rng.uniform(-2.5, 2.5, n_jets)
    jets["label"] = rng.integers(0, 3, n_jets)
    with h5py.File(path, "w") as f:
        f.create_dataset("jets", data=jets)
    return path


def unique_dataset(scope: str, what: str) -> str:
    # like the grid outputs: user.<nick>.<...>.h5, no trailing slash
    return f"{scope}.{uuid.uuid4().hex[:10]}.{what}.h5"


def upload(rucio_server, files: list[Path], dataset: str) -> None:
    from rucio.client.uploadclient import UploadClient

    items = [{
        "path": str(p),
        "rse": rucio_server.rse,
        "did_scope": rucio_server.scope,
        "did_name": p.name,
        "dataset_scope": rucio_server.scope,
        "dataset_name": dataset,
    } for p in files]
    assert UploadClient().upload(items) == 0


@pytest.fixture(scope="module")
def uploaded(rucio_server, tmp_path_factory):
    """Two small HDF5 files uploaded into one dataset (shared, never modified by tests)."""
    src = tmp_path_factory.mktemp("upload")
    tag = uuid.uuid4().hex[:8]
    files = [write_h5(src / f"{rucio_server.scope}.{tag}._00000{i}.output.h5", 50 * i, seed=i)
             for i in (1, 2)]
    dataset = unique_dataset(rucio_server.scope, "split")
    mp = pytest.MonkeyPatch()
    for key, value in rucio_server.client_env().items():
        mp.setenv(key, value)
    from rucio.common.config import clean_cached_config

    clean_cached_config()
    try:
        upload(rucio_server, files, dataset)
    finally:
        mp.undo()
        clean_cached_config()
    return dataset, {p.name: p.read_bytes() for p in files}


def test_list_files_reports_bytes_and_adler32(rucio_server, rucio_client_config, uploaded):
    from rucio.client.didclient import DIDClient
    from rucio.client.replicaclient import ReplicaClient

    dataset, originals = uploaded
    listed = {f["name"]: f for f in DIDClient().list_files(rucio_server.scope, dataset)}

    assert sorted(listed) == sorted(originals)
    for name, data in originals.items():
        entry = listed[name]
        assert entry["scope"] == rucio_server.scope
        assert entry["bytes"] == len(data)
        assert entry["adler32"] == adler32_hex(data)
        assert len(entry["adler32"]) == 8
        # the replica really is on the posix RSE, byte for byte, where pfn_path says
        assert rucio_server.pfn_path(rucio_server.scope, name).read_bytes() == data

    replicas = list(ReplicaClient().list_replicas(
        [{"scope": rucio_server.scope, "name": n} for n in originals]))
    assert len(replicas) == 2
    for rep in replicas:
        assert rep["states"] == {rucio_server.rse: "AVAILABLE"}
        (pfn,) = rep["rses"][rucio_server.rse]
        assert pfn == "file://localhost" + str(rucio_server.pfn_path(rucio_server.scope,
                                                                     rep["name"]))


def test_download_dataset_gives_identical_bytes(rucio_server, rucio_client_config, uploaded,
                                                tmp_path):
    from rucio.client.downloadclient import DownloadClient

    dataset, originals = uploaded
    result = DownloadClient().download_dids([{
        "did": f"{rucio_server.scope}:{dataset}",
        "base_dir": str(tmp_path),
        "no_subdir": True,
        "transfer_timeout": 60,
    }])

    assert sorted(r["name"] for r in result) == sorted(originals)
    for r in result:
        assert r["clientState"] == "DONE"
        assert r["adler32"] == adler32_hex(originals[r["name"]])
        assert r["dest_file_paths"] == [str(tmp_path / r["name"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(originals)
    for name, data in originals.items():
        assert (tmp_path / name).read_bytes() == data
        with h5py.File(tmp_path / name, "r") as f:
            assert f["jets"].shape[0] in (50, 100)

    # a second download of the same dataset finds the files already there and valid
    again = DownloadClient().download_dids([{
        "did": f"{rucio_server.scope}:{dataset}", "base_dir": str(tmp_path), "no_subdir": True}])
    assert sorted(r["clientState"] for r in again) == ["ALREADY_DONE", "ALREADY_DONE"]


def test_container_of_datasets_lists_and_downloads_files(rucio_server, rucio_client_config,
                                                         uploaded, tmp_path):
    # grid outputs are containers of per-task datasets: both calls must resolve through them
    from rucio.client.didclient import DIDClient
    from rucio.client.downloadclient import DownloadClient

    dataset, originals = uploaded
    scope = rucio_server.scope
    container = unique_dataset(scope, "split_output_jets")
    dids = DIDClient()
    dids.add_container(scope, container)
    dids.attach_dids(scope, container, [{"scope": scope, "name": dataset}])

    listed = {f["name"]: f for f in dids.list_files(scope, container)}
    assert {n: (f["bytes"], f["adler32"]) for n, f in listed.items()} == {
        n: (len(d), adler32_hex(d)) for n, d in originals.items()}

    result = DownloadClient().download_dids([{
        "did": f"{scope}:{container}", "base_dir": str(tmp_path), "no_subdir": True}])
    assert sorted(r["clientState"] for r in result) == ["DONE", "DONE"]
    for name, data in originals.items():
        assert (tmp_path / name).read_bytes() == data


def test_corrupted_replica_fails_checksum_validation(rucio_server, rucio_client_config,
                                                     tmp_path):
    from rucio.client.didclient import DIDClient
    from rucio.client.downloadclient import DownloadClient
    from rucio.common.exception import NotAllFilesDownloaded

    src = tmp_path / "src"
    src.mkdir()
    tag = uuid.uuid4().hex[:8]
    good = write_h5(src / f"{rucio_server.scope}.{tag}._000001.output.h5", 40, seed=11)
    bad = write_h5(src / f"{rucio_server.scope}.{tag}._000002.output.h5", 60, seed=12)
    dataset = unique_dataset(rucio_server.scope, "corrupt")
    upload(rucio_server, [good, bad], dataset)

    on_disk = rucio_server.corrupt_file(rucio_server.scope, bad.name)
    corrupted = on_disk.read_bytes()
    assert len(corrupted) == bad.stat().st_size
    assert adler32_hex(corrupted) != adler32_hex(bad.read_bytes())
    # the catalogue still has the checksum of what was uploaded
    listed = {f["name"]: f for f in DIDClient().list_files(rucio_server.scope, dataset)}
    assert listed[bad.name]["adler32"] == adler32_hex(bad.read_bytes())

    item = {"did": f"{rucio_server.scope}:{dataset}", "no_subdir": True, "transfer_timeout": 60}

    # default: the good file is downloaded, then NotAllFilesDownloaded is raised
    dest = tmp_path / "raise"
    with pytest.raises(NotAllFilesDownloaded):
        DownloadClient().download_dids([{**item, "base_dir": str(dest)}])
    assert sorted(p.name for p in dest.iterdir()) == [good.name]  # no corrupt file, no .part
    assert (dest / good.name).read_bytes() == good.read_bytes()

    # deactivate_file_download_exceptions=True: per-file states instead of the exception
    dest = tmp_path / "states"
    result = DownloadClient().download_dids([{**item, "base_dir": str(dest)}],
                                            deactivate_file_download_exceptions=True)
    states = {r["name"]: r["clientState"] for r in result}
    assert states == {good.name: "DONE", bad.name: "FAILED"}
    assert sorted(p.name for p in dest.iterdir()) == [good.name]


def test_replica_missing_on_disk_fails_download(rucio_server, rucio_client_config, tmp_path):
    from rucio.client.downloadclient import DownloadClient
    from rucio.common.exception import NoFilesDownloaded

    src = tmp_path / "src"
    src.mkdir()
    lost = write_h5(src / f"{rucio_server.scope}.{uuid.uuid4().hex[:8]}._000001.output.h5",
                    30, seed=21)
    dataset = unique_dataset(rucio_server.scope, "lost")
    upload(rucio_server, [lost], dataset)
    rucio_server.delete_file_on_disk(rucio_server.scope, lost.name)

    dest = tmp_path / "dest"
    with pytest.raises(NoFilesDownloaded):
        DownloadClient().download_dids([{"did": f"{rucio_server.scope}:{lost.name}",
                                         "base_dir": str(dest), "no_subdir": True}])
    assert not dest.exists() or not any(dest.iterdir())
