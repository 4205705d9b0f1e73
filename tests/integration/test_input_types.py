"""Inputs as they come from real productions: types decided by the config and the union of the
inputs, never by one file; and ``check`` finding what ``run`` would reject.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.cli_support import REPO, run_process
from upp_grid.mock import make_mock
from upp_grid.yamlload import load_yaml, to_plain


def project(tmp_path: Path, jets: int = 60_000, **global_: object) -> Path:
    """Mock inputs and the demo config (any zero weights allowed: not what is tested here)."""
    make_mock(tmp_path / "ntuples", num_jets=jets, num_files=3, seed=3)
    data = to_plain(load_yaml(REPO / "configs" / "demo.yaml"))
    data["global"].update(base_dir=str(tmp_path), **global_)
    data["reweighting"]["max_zero_weight_fraction"] = 1.0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def inputs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "ntuples").rglob("*.h5") if p.is_file())


def rewrite(path: Path, group: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Rewrite ``group`` of an input file as ``change`` makes it (other datasets copied)."""
    with h5py.File(path, "r") as f:
        data = {name: f[name][:] for name in f}
    data[group] = change(data[group])
    with h5py.File(path, "w") as f:
        for name, values in data.items():
            f.create_dataset(name, data=values, chunks=True, compression="gzip")


def retype(field: str, dtype: str) -> Callable[[np.ndarray], np.ndarray]:
    def change(rows: np.ndarray) -> np.ndarray:
        new = np.dtype([(n, dtype if n == field else rows.dtype.fields[n][0])
                        for n in rows.dtype.names])
        out = np.empty(rows.shape, new)
        for n in rows.dtype.names:
            out[n] = rows[n]
        return out
    return change


def one_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("upp-grid: error")]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- one kind
@pytest.mark.parametrize("command", ["check", "split", "run"])
def test_an_integer_field_in_one_file_and_float_in_others_is_refused_naming_both(
        tmp_path: Path, command: str):
    config = project(tmp_path)
    *_, last = inputs(tmp_path)
    rewrite(last, "jets", retype("eta_btagJes", "i4"))

    line = one_error(run_process(command, "-c", str(config), cwd=tmp_path))

    assert f"jets.eta_btagJes: integer (int32) in {last} but float (float32) in " in line
    assert line.endswith("a field must be of one kind in every input")
    assert not (tmp_path / "output").exists()


def test_a_wider_float_in_one_file_widens_the_field_for_every_jet(tmp_path: Path):
    """The first file (in catalogue order) holds float16 eta and mass, the others float32 and
    float64: merged with full precision, every jet keeps the widest type and its exact value,
    whichever file comes first."""
    config = project(tmp_path, precision="full")
    first, *_ = inputs(tmp_path)
    rewrite(first, "jets", retype("eta_btagJes", "f2"))
    for path in inputs(tmp_path)[1:]:
        rewrite(path, "jets", retype("mass", "f8"))

    assert run_process("run", "-c", str(config), "--no-plots", cwd=tmp_path,
                       timeout=300).returncode == 0

    originals = {}
    for path in inputs(tmp_path):
        with h5py.File(path, "r") as f:
            jets = f["jets"][:]
        for row in jets[["eventNumber", "eta_btagJes", "mass"]]:
            originals[int(row["eventNumber"])] = (float(row["eta_btagJes"]), float(row["mass"]))
    merged = sorted((tmp_path / "output").glob("test/pp_output_test-full_*.h5"))
    assert merged
    for path in merged:
        with h5py.File(path, "r") as f:
            jets = f["jets"][:]
        assert jets.dtype["eta_btagJes"] == np.float32
        assert jets.dtype["mass"] == np.float64
        for row in jets[:2000]:
            assert originals[int(row["eventNumber"])] == (float(row["eta_btagJes"]),
                                                         float(row["mass"]))


# ----------------------------------------------------------------------------- check = run
def _string_eta(path: Path) -> None:
    rewrite(path, "jets", retype("eta_btagJes", "S8"))


def _tracks_1d(path: Path) -> None:
    rewrite(path, "tracks", lambda t: t[:, 0].copy())


def _jets_2d(path: Path) -> None:
    rewrite(path, "jets", lambda j: j.reshape(-1, 1))


def _more_tracks(path: Path) -> None:
    rewrite(path, "tracks", lambda t: np.concatenate([t] * 10, axis=1))


def _no_valid_tracks(path: Path) -> None:
    def change(t: np.ndarray) -> np.ndarray:
        t = t.copy()
        t["valid"] = False
        return t
    rewrite(path, "tracks", change)


def _valid_as_int(path: Path) -> None:
    rewrite(path, "tracks", retype("valid", "i1"))


def _garbage_in_data(path: Path) -> None:
    rewrite(path, "jets", lambda jets: jets)  # gzip chunks: garbage in one is detectable
    with h5py.File(path, "r") as f:
        info = f["jets"].id.get_chunk_info(0)
    with open(path, "r+b") as raw:
        raw.seek(info.byte_offset + 16)
        raw.write(b"\xde\xad\xbe\xef" * 64)


BROKEN = {
    "eta-as-string": (_string_eta, "jets.eta_btagJes is |S8: a cut or reweight variable must "
                      "be a number"),
    "1-D-tracks": (_tracks_1d, "dataset 'tracks' is 1-D, it must be 2-D (jets x entries)"),
    "2-D-jets": (_jets_2d, "dataset 'jets' is 2-D, it must be 1-D (one row per jet)"),
    "400-tracks": (_more_tracks, "dataset 'tracks' has 400 entries per jet"),
    "no-valid-track": (_no_valid_tracks, "dataset 'tracks' has no valid entry in its first"),
    "valid-as-int": (_valid_as_int, "tracks.valid is int8: it must be boolean"),
    "garbage": (_garbage_in_data, "dataset 'jets': cannot decode its data"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_check_finds_what_run_would_reject(tmp_path: Path, case: str):
    config = project(tmp_path, jets=30_000)
    *_, last = inputs(tmp_path)
    breaks, expected = BROKEN[case]
    breaks(last)

    line = one_error(run_process("check", "-c", str(config), cwd=tmp_path))

    assert str(last) in line
    assert expected in line
