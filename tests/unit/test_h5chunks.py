"""The chunk writer of the merged files: chunks compressed outside HDF5 (in threads), written
whole with ``write_direct_chunk``, read back by plain h5py."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from upp_grid.errors import BookkeepingError
from upp_grid.h5chunks import CODECS, ChunkFile, encode_chunks

JETS = np.dtype([("pt", "<f4"), ("eta", "<f2"), ("flavour_label", "i1"), ("w", "<f4")])
TRACKS = np.dtype([("deta", "<f2"), ("valid", "?"), ("leptonID", "i1")])
CHUNKS = {"jets": 1_000, "tracks": 100}
N = 2_345  # not a multiple of either chunk length: the last chunk is partial


def rows(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    jets = np.zeros(N, dtype=JETS)
    jets["pt"] = rng.exponential(50_000, N)
    jets["eta"] = rng.uniform(-2.5, 2.5, N)
    jets["flavour_label"] = rng.integers(0, 4, N)
    jets["w"] = rng.uniform(0, 3, N)
    tracks = np.zeros((N, 7), dtype=TRACKS)
    tracks["deta"] = rng.normal(0, 0.1, (N, 7))
    tracks["valid"] = rng.uniform(size=(N, 7)) < 0.6
    tracks["leptonID"] = rng.integers(-1, 2, (N, 7))
    return {"jets": jets, "tracks": tracks}


def spec(data: dict[str, np.ndarray]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {k: (v.dtype, v.shape[1:]) for k, v in data.items()}


def write(path: Path, data: dict[str, np.ndarray], codec: str, pieces: int = 1_000,
          reverse: bool = False, threads: int = 2) -> None:
    """``data`` in pieces of ``pieces`` rows (a multiple of both chunk lengths), encoded in
    ``threads`` threads, written in order or backwards."""
    jobs = [(name, a) for name in data for a in range(0, N, pieces)]
    with ThreadPoolExecutor(threads) as pool:
        encoded = list(pool.map(lambda j: encode_chunks(j[0], data[j[0]][j[1]:j[1] + pieces],
                                                        j[1], CHUNKS[j[0]], codec), jobs))
    with ChunkFile(path, spec(data), N, codec, CHUNKS) as w:
        for chunks in reversed(encoded) if reverse else encoded:
            w.write(chunks)
        w.commit()


@pytest.mark.parametrize("codec", CODECS)
def test_rows_read_back_exactly_with_the_declared_layout(tmp_path: Path, codec: str) -> None:
    data = rows()
    path = tmp_path / "out.h5"
    write(path, data, codec)
    with h5py.File(path, "r") as f:
        for name, want in data.items():
            ds = f[name]
            assert ds.dtype == want.dtype and ds.shape == want.shape
            assert ds.chunks == (CHUNKS[name], *want.shape[1:])
            assert ds.compression == {"gzip": "gzip", "lzf": "lzf", "none": None}[codec]
            assert not ds.shuffle
            assert np.array_equal(ds[:], want)
        if codec == "gzip":
            assert f["jets"].compression_opts == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5"]  # no temporary file left


def test_plain_h5py_reads_the_gzip_chunks(tmp_path: Path) -> None:
    """What Salt does: h5py alone, without hdf5plugin or upp_grid imported."""
    data = rows()
    path = tmp_path / "out.h5"
    write(path, data, "gzip")
    code = ("import hashlib, sys, h5py\n"
            "f = h5py.File(sys.argv[1], 'r')\n"
            "print(hashlib.sha256(f['jets'][:].tobytes() + f['tracks'][:].tobytes()).hexdigest())\n"
            "assert 'hdf5plugin' not in sys.modules and 'upp_grid' not in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True)
    want = hashlib.sha256(data["jets"].tobytes() + data["tracks"].tobytes()).hexdigest()
    assert out.stdout.strip() == want


def test_same_rows_same_bytes_whatever_the_order_and_threads(tmp_path: Path) -> None:
    data = rows()
    write(tmp_path / "a.h5", data, "gzip", threads=1)
    write(tmp_path / "b.h5", data, "gzip", threads=4)
    write(tmp_path / "c.h5", data, "gzip", pieces=2_000)
    a, b, c = ((tmp_path / n).read_bytes() for n in ("a.h5", "b.h5", "c.h5"))
    assert a == b == c
    write(tmp_path / "d.h5", data, "gzip", reverse=True)  # other chunk order: same rows
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert np.array_equal(f["tracks"][:], data["tracks"])


def test_a_missing_chunk_fails_the_commit_and_leaves_no_file(tmp_path: Path) -> None:
    data = rows()
    path = tmp_path / "out.h5"
    missing = r"chunks never written per dataset \{'tracks': 10\}"
    with pytest.raises(BookkeepingError, match=missing), \
            ChunkFile(path, spec(data), N, "gzip", CHUNKS) as w:
        w.write(encode_chunks("jets", data["jets"], 0, CHUNKS["jets"], "gzip"))
        w.write(encode_chunks("tracks", data["tracks"][1_000:], 1_000, CHUNKS["tracks"], "gzip"))
        w.commit()
    assert list(tmp_path.iterdir()) == []


def test_rows_written_twice_or_off_a_chunk_are_refused(tmp_path: Path) -> None:
    data = rows()
    with pytest.raises(BookkeepingError, match="do not start a chunk"):
        encode_chunks("jets", data["jets"][:10], 10, CHUNKS["jets"], "gzip")
    piece = encode_chunks("jets", data["jets"][:1_000], 0, CHUNKS["jets"], "gzip")
    with pytest.raises(BookkeepingError, match="written twice"), \
            ChunkFile(tmp_path / "out.h5", spec(data), N, "gzip", CHUNKS) as w:
        w.write(piece)
        w.write(piece)
    assert list(tmp_path.iterdir()) == []


def test_an_empty_file_has_empty_datasets(tmp_path: Path) -> None:
    data = {k: v[:0] for k, v in rows().items()}
    with ChunkFile(tmp_path / "out.h5", spec(data), 0, "gzip", CHUNKS) as w:
        assert w.commit() == 0
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f["jets"].shape == (0,) and f["tracks"].shape == (0, 7)
