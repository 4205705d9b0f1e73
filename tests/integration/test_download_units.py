"""The pieces of ``download`` that need no server: rucio configuration, grid names, checksums,
retries of transient failures, and the guard against counting foreign split outputs.

Real files and a real local store (:class:`~upp_grid.grid.store.LocalStore`) stand in for rucio.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from upp_grid.fsutil import adler32_file
from upp_grid.grid.download_records import DownloadError, Wanted, check_layout, job_dir, parse_lfn
from upp_grid.grid.job_archive import Provenance, pack, unpacked
from upp_grid.grid.names import scope_of
from upp_grid.grid.rucio import (
    FetchOutcome,
    RemoteFile,
    RucioConfigError,
    TransientRucioError,
    find_rucio_config,
)
from upp_grid.grid.sources import StoreSource
from upp_grid.grid.state import StateDB
from upp_grid.grid.store import LocalStore
from upp_grid.grid.transfer import RetryPolicy, transfer

SCOPE = "user.jdoe"
CONTAINER = "user.jdoe.601589.e1_s2.t1_split.h5_split.tar"


def test_rucio_config_is_found_or_the_error_says_what_to_set_up(tmp_path):
    with pytest.raises(RucioConfigError, match=r"^no rucio client config: set RUCIO_CONFIG to "
                       r"a rucio.cfg with a \[client\] section .* searched .*/etc/rucio.cfg"):
        find_rucio_config({"RUCIO_HOME": str(tmp_path)})
    with pytest.raises(RucioConfigError, match=r"^RUCIO_CONFIG=/nowhere/rucio.cfg: file not "):
        find_rucio_config({"RUCIO_CONFIG": "/nowhere/rucio.cfg"})

    cfg = tmp_path / "etc" / "rucio.cfg"
    cfg.parent.mkdir()
    cfg.write_text("[common]\nloglevel = INFO\n")
    with pytest.raises(RucioConfigError, match=r"rucio.cfg: no \[client\] section"):
        find_rucio_config({"RUCIO_HOME": str(tmp_path)})
    cfg.write_text("[client]\nrucio_host = https://rucio\n")
    with pytest.raises(RucioConfigError, match=r"rucio.cfg: \[client\] has no auth_host, "
                       "auth_type"):
        find_rucio_config({"RUCIO_CONFIG": str(cfg)})
    cfg.write_text("[client]\nrucio_host = https://r\nauth_host = https://a\nauth_type = x509\n")
    assert find_rucio_config({"RUCIO_HOME": str(tmp_path)}) == cfg


def test_grid_file_names_map_back_to_one_directory_per_job(tmp_path):
    lfn = "user.jdoe.41234567._000012.split.tar"

    assert parse_lfn(lfn) == (41234567, "_000012", "split.tar")
    assert parse_lfn(lfn + ".2") == (41234567, "_000012", "split.tar")
    assert parse_lfn("user.jdoe.41234567.log.tgz") is None
    # a per-component output of an older upp-grid is not a job output
    assert parse_lfn("user.jdoe.41234567._000012.output_train_lowpt_ttbar_bjets.h5") is None
    assert scope_of(lfn) == SCOPE and scope_of("mc20_13TeV.601589.x") == "mc20_13TeV"
    assert job_dir(tmp_path, "ttbar", "user.jdoe.601589.e1_s2.t1_split.h5/", "_000012") == (
        tmp_path / "ttbar" / "user.jdoe.601589.e1_s2.t1_split.h5" / "_000012")


def test_adler32_is_eight_zero_padded_lower_case_hex_digits(tmp_path):
    empty, data = tmp_path / "empty", tmp_path / "data"
    empty.write_bytes(b"")
    data.write_bytes(bytes(range(256)) * 40_000)  # several hashing blocks

    assert adler32_file(empty) == "00000001"
    assert adler32_file(data) == f"{zlib.adler32(data.read_bytes()) & 0xFFFFFFFF:08x}"


class FlakySource(StoreSource):
    """The local store, but the first ``failures`` fetches fail as a dropped connection does."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def fetch(self, files: Sequence[RemoteFile], staging: Path, threads: int = 2
              ) -> list[FetchOutcome]:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientRucioError("download of 2 file(s): ConnectionError: reset by peer")
        return super().fetch(files, staging, threads)


def stored(tmp_path: Path, n: int) -> tuple[LocalStore, list[Wanted]]:
    """``n`` grid files of one container in a local store, and where each should go."""
    store = LocalStore(tmp_path / "store")
    wanted = []
    for k in range(1, n + 1):
        src = tmp_path / f"src{k}"
        # an archive of a job that had no input rows (provenance only), distinct per job
        pack(src, tmp_path, Provenance((), ("ttbar",), f"config{k}", "split"))
        lfn = f"user.jdoe.1000._{k:06d}.split.tar"
        s = store.publish(src, SCOPE, CONTAINER, lfn)
        dest = job_dir(tmp_path / "components", "ttbar", "outds", f"_{k:06d}")
        wanted.append(Wanted(RemoteFile(SCOPE, lfn, s.bytes, s.adler32), CONTAINER, "outds",
                             "ttbar", "split.tar", f"_{k:06d}", dest))
    return store, wanted


def test_transient_failures_are_retried_and_every_file_is_verified(tmp_path):
    store, wanted = stored(tmp_path, 2)
    source = FlakySource(store.root, failures=2)
    source.list_files(SCOPE, CONTAINER)

    with StateDB(tmp_path / "state.sqlite") as state:
        result = transfer("t1", wanted, source, state, tmp_path / "components" / ".download",
                          policy=RetryPolicy(attempts=3, backoff=0.01))
        rows = state.download_files("t1")

    assert result.failures == {} and result.fetched == 2
    assert source.calls == 3
    assert {r.state for r in rows} == {"verified"}
    assert {r.fetches for r in rows} == {3}
    for k, w in enumerate(wanted, start=1):
        assert w.in_place()  # unpacked and marked with the grid file it came from
        assert unpacked(w.dest)[1].config_hash == f"config{k}"


def test_a_file_still_unreadable_after_the_retries_is_named(tmp_path):
    _store, wanted = stored(tmp_path, 1)
    source = FlakySource(tmp_path / "store", failures=99)
    source.list_files(SCOPE, CONTAINER)

    with StateDB(tmp_path / "state.sqlite") as state:
        result = transfer("t1", wanted, source, state, tmp_path / "staging",
                          policy=RetryPolicy(attempts=2, backoff=0.01))

    (message,) = result.failures.values()
    assert message == (f"{CONTAINER}: {wanted[0].remote.name}: not downloaded (ERROR (download "
                       "of 2 file(s): ConnectionError: reset by peer)) after 2 fetches")


def test_split_outputs_not_from_the_tag_are_refused(tmp_path):
    mine = (tmp_path / "ttbar" / "outds" / "_000001" / "input1" /
            "output_train_lowpt_ttbar_bjets.h5")
    local = tmp_path / "ttbar" / "inputs" / "file1" / "output_train_lowpt_ttbar_bjets.h5"
    staged = tmp_path / ".download" / "t1" / "output_train_lowpt_ttbar_bjets.h5"
    for path in (mine, local, staged):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    job = mine.parent
    with pytest.raises(DownloadError, match=rf"^{tmp_path}: 1 split output is not from the "
                       rf"download of tag 't1' \(a local split or another tag's download, in "
                       rf"1 directories, first {local.parent}\).*remove those directories.*"
                       "nothing was downloaded$"):
        check_layout(tmp_path, "t1", [job], before_fetch=True)
    local.unlink()
    check_layout(tmp_path, "t1", [job])  # hidden staging files do not count
