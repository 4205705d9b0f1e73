"""Specification of the mock dumper ntuples written by ``upp_grid.mock.make_mock``."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from ftag import Flavours

from upp_grid.mock import MOCK_SAMPLES, make_mock

GEV = 1_000.0
TTBAR, ZPRIME = MOCK_SAMPLES

JET_FIELDS = {
    "pt": "f4",
    "eta": "f4",
    "phi": "f4",
    "mass": "f4",
    "energy": "f4",
    "pt_btagJes": "f4",
    "eta_btagJes": "f4",
    "absEta_btagJes": "f4",
    "eventNumber": "i8",
    "mcEventWeight": "f4",
    "averageInteractionsPerCrossing": "f4",
    "HadronConeExclTruthLabelID": "i4",
    "HadronConeExclExtendedTruthLabelID": "i4",
    "HadronGhostTruthLabelID": "i4",
    "HadronGhostExtendedTruthLabelID": "i4",
    "PartonTruthLabelID": "i4",
    "HadronConeExclTruthLabelPt": "f4",
    "n_tracks": "i4",
}
TRACK_FLOATS = [
    "d0",
    "z0SinTheta",
    "dphi",
    "deta",
    "qOverP",
    "IP3D_signed_d0_significance",
    "IP3D_signed_z0_significance",
    "phiUncertainty",
    "thetaUncertainty",
    "qOverPUncertainty",
]
TRACK_COUNTS = [
    "numberOfPixelHits",
    "numberOfSCTHits",
    "numberOfInnermostPixelLayerHits",
    "numberOfNextToInnermostPixelLayerHits",
    "numberOfInnermostPixelLayerSharedHits",
    "numberOfInnermostPixelLayerSplitHits",
    "numberOfPixelSharedHits",
    "numberOfPixelSplitHits",
    "numberOfSCTSharedHits",
    "numberOfPixelHoles",
    "numberOfSCTHoles",
]
TRACK_FIELDS = {
    **dict.fromkeys(TRACK_FLOATS, "f4"),
    **dict.fromkeys(TRACK_COUNTS, "u1"),
    "leptonID": "i1",
    "ftagTruthOriginLabel": "i1",
    "valid": "?",
}
FLAVOURS = [
    "bjets",
    "cjets",
    "ujets",
    "taujets",
    "ghostbjets",
    "ghostcjets",
    "ghostsjets",
    "ghostudjets",
    "ghostgjets",
    "ghosttaujets",
]


def read(path: Path, group: str = "jets") -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[group][:]


@pytest.fixture(scope="module")
def mock_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """20k jets in 3 files: ttbar files 0 and 2, zprime file 1."""
    return make_mock(tmp_path_factory.mktemp("mock"), num_jets=20_000, num_files=3)


@pytest.fixture(scope="module")
def jets_by_file(mock_files: list[Path]) -> list[np.ndarray]:
    return [read(path) for path in mock_files]


@pytest.fixture(scope="module")
def all_jets(jets_by_file: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(jets_by_file)


def test_samples_are_ttbar_then_zprime() -> None:
    assert [s.name for s in MOCK_SAMPLES] == ["ttbar", "zprime"]
    assert [s.dsid for s in MOCK_SAMPLES] == [601589, 800030]
    assert TTBAR.container == (
        "user.mock.601589.e8547_s3797_r13144_p6859.tdd.MockDump.25_2_56.mock_output.h5"
    )
    assert ZPRIME.container == (
        "user.mock.800030.e7954_s3797_r13144_p6859.tdd.MockDump.25_2_56.mock_output.h5"
    )


def test_files_are_laid_out_like_a_grid_download(tmp_path: Path) -> None:
    paths = make_mock(tmp_path, num_jets=5_002, num_files=5)

    assert paths == [
        tmp_path / TTBAR.container / "user.mock.601589._000001.output.h5",
        tmp_path / ZPRIME.container / "user.mock.800030._000001.output.h5",
        tmp_path / TTBAR.container / "user.mock.601589._000002.output.h5",
        tmp_path / ZPRIME.container / "user.mock.800030._000002.output.h5",
        tmp_path / TTBAR.container / "user.mock.601589._000003.output.h5",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TTBAR.container, ZPRIME.container])
    assert [len(read(p)) for p in paths] == [1_001, 1_001, 1_000, 1_000, 1_000]


def test_single_file_holds_all_jets_as_ttbar(tmp_path: Path) -> None:
    (path,) = make_mock(tmp_path, num_jets=1_234, num_files=1)

    assert path.parent.name == TTBAR.container
    assert len(read(path)) == 1_234
    assert [p.name for p in tmp_path.iterdir()] == [TTBAR.container]


def test_file_attributes_name_sample_dsid_and_seed(mock_files: list[Path]) -> None:
    for path, sample in zip(mock_files, [TTBAR, ZPRIME, TTBAR], strict=True):
        with h5py.File(path, "r") as f:
            assert f.attrs["mock_sample"] == sample.name
            assert f.attrs["dsid"] == sample.dsid
            assert f.attrs["mock_seed"] == 42


def test_jets_and_tracks_have_dumper_dtypes_and_shapes(mock_files: list[Path]) -> None:
    for path in mock_files:
        with h5py.File(path, "r") as f:
            assert set(f) == {"jets", "tracks"}
            jets, tracks = f["jets"], f["tracks"]
            assert jets.ndim == 1
            assert tracks.shape == (jets.shape[0], 40)
            for name, dtype in JET_FIELDS.items():
                assert jets.dtype[name] == np.dtype(dtype), name
            assert {n: tracks.dtype[n] for n in tracks.dtype.names} == {
                n: np.dtype(d) for n, d in TRACK_FIELDS.items()
            }
            assert tracks.dtype.itemsize == 54


def test_datasets_are_chunked_and_uncompressed(mock_files: list[Path]) -> None:
    with h5py.File(mock_files[0], "r") as f:
        assert f["jets"].chunks == (1_000,)
        assert f["tracks"].chunks == (100, 40)
        assert f["jets"].compression is None
        assert f["tracks"].compression is None


def test_track_dataset_name_and_width_are_configurable(tmp_path: Path) -> None:
    (path,) = make_mock(
        tmp_path, num_jets=500, num_files=1, tracks_name="tracks_ghost", num_tracks=7
    )

    with h5py.File(path, "r") as f:
        assert set(f) == {"jets", "tracks_ghost"}
        assert f["tracks_ghost"].shape == (500, 7)
        assert f["jets"]["n_tracks"].max() == 7


def test_valid_tracks_fill_each_row_from_the_start(mock_files: list[Path]) -> None:
    for path in mock_files:
        jets, tracks = read(path), read(path, "tracks")
        n_tracks = jets["n_tracks"]

        expected_valid = np.arange(40) < n_tracks[:, None]
        np.testing.assert_array_equal(tracks["valid"], expected_valid)
        invalid = tracks[~tracks["valid"]]
        assert not invalid.view(np.uint8).any(), "invalid track entries must be all zeros"
        assert (n_tracks == 0).any()
        assert (n_tracks == 40).any()
        assert 5 < n_tracks.mean() < 20


def test_track_values_are_plausible(mock_files: list[Path]) -> None:
    tracks = read(mock_files[1], "tracks")
    valid = tracks[tracks["valid"]]

    assert np.mean(np.abs(valid["deta"]) < 0.4) > 0.99
    assert np.mean(np.abs(valid["dphi"]) < 0.4) > 0.99
    assert set(np.unique(valid["leptonID"])) == {-13, -11, 0, 11, 13}
    assert 0.01 < np.mean(valid["leptonID"] != 0) < 0.1
    assert set(np.unique(valid["ftagTruthOriginLabel"])) == set(range(8))
    assert (valid["numberOfPixelHits"] > 0).all()
    for name in TRACK_FLOATS:
        assert np.isfinite(valid[name]).all(), name


def test_event_numbers_are_unique_across_files(all_jets: np.ndarray) -> None:
    assert len(np.unique(all_jets["eventNumber"])) == len(all_jets) == 20_000


def test_every_file_splits_80_10_10_on_event_number(jets_by_file: list[np.ndarray]) -> None:
    for jets in jets_by_file:
        mod = jets["eventNumber"] % 10
        assert np.mean(mod <= 7) == pytest.approx(0.8, abs=0.01)
        assert np.mean(mod == 8) == pytest.approx(0.1, abs=0.01)
        assert np.mean(mod == 9) == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_ftag_flavour_selects_jets_in_every_sample(
    jets_by_file: list[np.ndarray], flavour: str
) -> None:
    for jets in jets_by_file[:2]:
        assert len(Flavours[flavour].cuts(jets).idx) > 50


def test_ghost_labels_mostly_agree_with_cone_labels(all_jets: np.ndarray) -> None:
    differ = all_jets["HadronGhostTruthLabelID"] != all_jets["HadronConeExclTruthLabelID"]
    assert 0.005 < differ.mean() < 0.1
    extended = set(np.unique(all_jets["HadronConeExclExtendedTruthLabelID"]))
    assert extended == {0, 4, 5, 15, 44, 54, 55}


def test_pt_is_in_mev_and_spans_soft_to_tev_jets(all_jets: np.ndarray) -> None:
    pt = all_jets["pt"]
    assert (pt > 0).all()
    assert (pt < 20 * GEV).any()
    assert (pt > 1_000 * GEV).any()
    assert pt.max() < 10_000 * GEV
    ratio = all_jets["pt_btagJes"] / pt
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
    np.testing.assert_array_equal(all_jets["absEta_btagJes"], np.abs(all_jets["eta_btagJes"]))


def test_zprime_is_harder_than_ttbar(jets_by_file: list[np.ndarray]) -> None:
    ttbar_pt = np.concatenate([jets_by_file[0]["pt"], jets_by_file[2]["pt"]])
    zprime_pt = jets_by_file[1]["pt"]

    assert np.median(zprime_pt) > 1.5 * np.median(ttbar_pt)
    assert np.mean(ttbar_pt < 250 * GEV) > 0.9
    assert np.mean((zprime_pt > 250 * GEV) & (zprime_pt < 5_000 * GEV)) > 0.25


def test_heavy_flavour_jets_are_harder_than_light_jets(jets_by_file: list[np.ndarray]) -> None:
    jets = jets_by_file[0]
    label = jets["HadronConeExclTruthLabelID"]
    median_pt = {flav: np.median(jets["pt"][label == flav]) for flav in (5, 4, 0)}
    assert median_pt[5] > median_pt[4] > median_pt[0]


def test_some_jets_are_outside_the_tracker_acceptance(all_jets: np.ndarray) -> None:
    assert 0.03 < np.mean(np.abs(all_jets["eta"]) > 2.5) < 0.15


def test_same_arguments_give_identical_files(tmp_path: Path) -> None:
    first = make_mock(tmp_path / "a", num_jets=3_000, seed=7)
    second = make_mock(tmp_path / "b", num_jets=3_000, seed=7)

    for a, b in zip(first, second, strict=True):
        assert read(a).tobytes() == read(b).tobytes()
        assert read(a, "tracks").tobytes() == read(b, "tracks").tobytes()


def test_a_different_seed_gives_different_jets(tmp_path: Path) -> None:
    first = make_mock(tmp_path / "a", num_jets=3_000, seed=7)
    second = make_mock(tmp_path / "b", num_jets=3_000, seed=8)

    for a, b in zip(first, second, strict=True):
        assert not np.array_equal(read(a)["pt"], read(b)["pt"])


def test_chunk_size_does_not_change_the_content(tmp_path: Path) -> None:
    whole = make_mock(tmp_path / "whole", num_jets=5_000, num_files=2)
    chunked = make_mock(tmp_path / "chunked", num_jets=5_000, num_files=2, chunk_size=777)

    for a, b in zip(whole, chunked, strict=True):
        assert read(a).tobytes() == read(b).tobytes()
        assert read(a, "tracks").tobytes() == read(b, "tracks").tobytes()


def test_progress_reports_every_chunk(tmp_path: Path) -> None:
    reported: list[int] = []
    make_mock(tmp_path, num_jets=5_000, num_files=2, chunk_size=1_000, progress=reported.append)

    assert sum(reported) == 5_000
    assert reported == [1_000, 1_000, 500, 1_000, 1_000, 500]


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    paths = make_mock(tmp_path, num_jets=3_000, num_files=3, chunk_size=500)

    on_disk = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert on_disk == sorted(paths)


def test_an_interrupted_write_leaves_no_file(tmp_path: Path) -> None:
    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_mock(tmp_path, num_jets=3_000, num_files=1, chunk_size=1_000, progress=interrupt)

    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_jets": 0}, "num_jets must be at least 1"),
        ({"num_jets": -5}, "num_jets must be at least 1"),
        ({"num_files": 0}, "num_files must be at least 1"),
        ({"num_jets": 2, "num_files": 3}, r"num_jets \(2\) must be at least num_files \(3\)"),
        ({"seed": -1}, "seed must be non-negative"),
        ({"num_tracks": 0}, "num_tracks must be at least 1"),
        ({"chunk_size": 0}, "chunk_size must be at least 1"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_mock(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []
