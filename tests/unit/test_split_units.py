"""Building blocks of the split: field packing, the buffered atomic writer, batch sizing."""

from __future__ import annotations

import h5py
import hdf5plugin  # noqa: F401 — the writer's default codec is Blosc
import numpy as np
import pytest

from upp_grid.errors import BookkeepingError
from upp_grid.h5io import (
    AtomicH5Writer,
    FieldPacker,
    aligned_batch_size,
    intermediate_codec,
    sub_dtype,
)
from upp_grid.mock import track_dtype

TRACKS = track_dtype()


def random_tracks(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=n * 5 * TRACKS.itemsize, dtype=np.uint8)
    return raw.view(TRACKS).reshape(n, 5)


def test_packer_copies_exactly_the_kept_fields_in_target_order():
    rows = random_tracks(300)
    keep = ["d0", "deta", "numberOfPixelHits", "leptonID", "valid"]
    dtype = sub_dtype(TRACKS, keep)
    out = np.empty(rows.shape, dtype)

    FieldPacker(TRACKS, dtype).pack(rows, out)

    assert out.dtype.names == tuple(keep)
    for name in keep:
        assert out[name].tobytes() == rows[name].tobytes()  # bit for bit, NaNs included


def test_packer_merges_adjacent_fields_into_byte_runs():
    dtype = sub_dtype(TRACKS, ["d0", "z0SinTheta", "dphi", "valid"])

    packer = FieldPacker(TRACKS, dtype)

    assert packer.runs == ((0, 0, 12), (TRACKS.fields["valid"][1], 12, 1))
    assert FieldPacker(TRACKS, TRACKS).identity


def test_packer_leaves_fields_missing_from_the_source_alone():
    src = np.zeros(4, [("a", "f4"), ("b", "i8")])
    src["a"], src["b"] = [1, 2, 3, 4], [5, 6, 7, 8]
    out = np.zeros(4, [("b", "i8"), ("flavour_label", "i4")])
    out["flavour_label"] = 9

    FieldPacker(src.dtype, out.dtype).pack(src, out)

    assert out["b"].tolist() == [5, 6, 7, 8]
    assert out["flavour_label"].tolist() == [9, 9, 9, 9]


@pytest.mark.parametrize("codec", ["blosc-lz4", "lzf", "none"])
def test_writer_appends_of_any_size_give_the_concatenation(tmp_path, codec):
    rows = random_tracks(2_345, seed=1)
    jets = np.zeros(2_345, dtype=[("x", "i8")])
    jets["x"] = np.arange(2_345)
    path = tmp_path / "out.h5"
    writer = AtomicH5Writer(path, {"jets": (jets.dtype, ()), "tracks": (TRACKS, (5,))},
                            intermediate_codec(codec), {"split": "train"}, chunk_bytes=1_000)
    start = 0
    for size in [0, 1, 3, 700, 1, 0, 999, 641]:
        writer.append("jets", jets[start:start + size])
        writer.append("tracks", rows[start:start + size])
        start += size
    assert start == len(jets)

    assert writer.commit(expected=len(jets)) == len(jets)

    assert not list(tmp_path.glob(".*"))  # no temporary left
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["jets"][:], jets)
        np.testing.assert_array_equal(f["tracks"][:].view(np.uint8), rows.view(np.uint8))
        assert f["tracks"].chunks[0] == 1_000 // (5 * TRACKS.itemsize)
        assert f.attrs["split"] == "train"


def test_writer_refuses_to_publish_a_wrong_count(tmp_path):
    path = tmp_path / "out.h5"
    writer = AtomicH5Writer(path, {"jets": (np.dtype([("x", "i8")]), ())})
    writer.append("jets", np.zeros(5, [("x", "i8")]))

    with pytest.raises(BookkeepingError, match="expected 6"):
        writer.commit(expected=6)

    assert list(tmp_path.iterdir()) == []


def test_writer_abort_leaves_nothing_and_keeps_a_previous_version(tmp_path):
    path = tmp_path / "out.h5"
    path.write_bytes(b"previous")
    writer = AtomicH5Writer(path, {"jets": (np.dtype([("x", "i8")]), ())})
    writer.append("jets", np.zeros(5, [("x", "i8")]))

    writer.abort()

    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]
    assert path.read_bytes() == b"previous"


def test_an_empty_output_still_has_every_dataset(tmp_path):
    path = tmp_path / "out.h5"
    AtomicH5Writer(path, {"jets": (np.dtype([("x", "i8")]), ()),
                          "tracks": (TRACKS, (5,))}).commit(expected=0)

    with h5py.File(path) as f:
        assert f["jets"].shape == (0,)
        assert f["tracks"].shape == (0, 5)


def test_batches_are_whole_chunks_and_bounded_in_bytes(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        jets = f.create_dataset("jets", shape=(100_000,), dtype="f4", chunks=(1_000,))
        tracks = f.create_dataset("tracks", shape=(100_000, 40), dtype=TRACKS,
                                  chunks=(300, 40))
        row_bytes = 40 * TRACKS.itemsize

        rows, align = aligned_batch_size([jets, tracks], 1_000_000, 64 * 2**20)
        assert align == 3_000
        assert rows % align == 0
        assert rows * row_bytes <= 64 * 2**20 < (rows + align) * row_bytes

        assert aligned_batch_size([jets, tracks], 7_000, 2**30)[0] == 6_000
        assert aligned_batch_size([jets, tracks], 10, 2**30)[0] == 3_000  # at least one


def test_chunk_lengths_with_a_huge_common_multiple_keep_batches_bounded(tmp_path):
    # e.g. files written with byte-sized chunks: 13107 jets vs 397 tracks rows -> lcm 5.2M rows
    with h5py.File(tmp_path / "in.h5", "w") as f:
        jets = f.create_dataset("jets", shape=(100_000,), dtype="f4", chunks=(13_107,))
        tracks = f.create_dataset("tracks", shape=(100_000, 40), dtype=TRACKS, chunks=(397, 40))
        row_bytes = 40 * TRACKS.itemsize

        rows, align = aligned_batch_size([jets, tracks], 1_000_000, 32 * 2**20)

        assert align == 397
        assert rows % 397 == 0
        assert rows * row_bytes <= 32 * 2**20


def test_half_precision_keeps_mev_scale_fields_in_float32():
    from upp_grid.h5io import final_dtype

    dtype = np.dtype([("pt", "f4"), ("HadronConeExclTruthLabelPt", "f4"), ("eta", "f4"),
                      ("qOverP", "f4"), ("eventNumber", "i8")])

    half = final_dtype(dtype, "half", ("pt",))

    assert half["pt"] == np.float32
    assert half["HadronConeExclTruthLabelPt"] == np.float32  # > 65 GeV overflows float16
    assert half["eta"] == np.float16
    assert half["qOverP"] == np.float16
    assert half["eventNumber"] == np.int64
    assert final_dtype(dtype, "full", ())["eta"] == np.float32
