"""Helpers shared by the download tests (this module holds no tests).

* :func:`write_config`: the demo config with two flavours (few outputs, so few uploads).
* :func:`ledger`: the per-file download state of a tag, read straight from SQLite.
* :func:`assert_same_training_files`: merged files, histograms, norm and class dicts equal.
* :func:`rucio_client`: point this process's rucio client at the test server (module fixtures).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - split outputs are Blosc-compressed
import numpy as np
import pytest
import yaml

from upp_grid.config import load_config
from upp_grid.demo import bundled_config_text
from upp_grid.stages.catalogue import read_catalogue

SPLITS = ("train", "val", "test")
USER = "upptest"  # the rucio test server's account, and so the grid nickname
FLAVOURS = ("bjets", "ujets")


def write_config(base_dir: Path, ntuple_dir: Path, samples: dict[str, str] | None = None) -> Path:
    """The bundled demo config with its own ``base_dir``, reading ``ntuple_dir``, with two
    flavours (b and light jets: 6 outputs per container, to keep the uploads few).

    ``samples``: keep only these samples (name -> pattern), e.g. one container.
    """
    data = yaml.safe_load(bundled_config_text())
    data["global"]["base_dir"] = str(base_dir)
    data["global"]["ntuple_dir"] = str(ntuple_dir)
    for component in data["components"]:
        component["flavours"] = list(FLAVOURS)
    if samples is not None:
        data["components"] = [c for c in data["components"] if c["sample"]["name"] in samples]
        for c in data["components"]:
            c["sample"]["pattern"] = samples[c["sample"]["name"]]
    base_dir.mkdir(parents=True, exist_ok=True)
    path = base_dir / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ledger(config_path: Path, tag: str) -> dict[str, dict]:
    """The download state of a tag: the ``download_files`` rows by file name."""
    config = load_config(config_path)
    with sqlite3.connect(config.global_.base_dir / "upp-grid.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM download_files WHERE tag = ?", (tag,)).fetchall()
    return {r["did"].split(":", 1)[1]: dict(r) for r in rows}


def read_split(out_dir: Path, split: str) -> dict[str, np.ndarray]:
    """Every group of a merged split, concatenated over its files, ordered by eventNumber."""
    files = sorted((out_dir / split).glob(f"pp_output_{split}_*.h5"))
    assert files, f"no merged {split} files in {out_dir}"
    groups: dict[str, list[np.ndarray]] = {}
    for path in files:
        with h5py.File(path, "r") as f:
            for name in f:
                groups.setdefault(name, []).append(f[name][:])
    data = {name: np.concatenate(parts) for name, parts in groups.items()}
    order = np.argsort(data["jets"]["eventNumber"], kind="stable")
    return {name: arr[order] for name, arr in data.items()}


def assert_same_training_files(grid_out: Path, local_out: Path) -> None:
    """Merged files, histograms, norm and class dicts: equal counts and values."""
    for split in SPLITS:
        grid, local = read_split(grid_out, split), read_split(local_out, split)
        assert sorted(grid) == sorted(local)
        for group in local:
            assert grid[group].dtype == local[group].dtype, (split, group)
            assert grid[group].shape == local[group].shape, (split, group)
            for field in local[group].dtype.names:
                np.testing.assert_array_equal(grid[group][field], local[group][field],
                                              err_msg=f"{split} {group}.{field}")
    for name in ("norm_dict.yaml", "class_dict.yaml"):
        assert (yaml.safe_load((grid_out / name).read_text())
                == yaml.safe_load((local_out / name).read_text())), name
    with h5py.File(grid_out / "histograms.h5", "r") as g, \
            h5py.File(local_out / "histograms.h5", "r") as loc:
        weights = []
        loc.visititems(lambda n, o: weights.append(n) if isinstance(o, h5py.Dataset) else None)
        assert weights
        for name in weights:
            np.testing.assert_array_equal(g[name][()], loc[name][()], err_msg=name)


def catalogue_counts(config_path: Path) -> dict[str, dict[str, int]]:
    return {s: dict(n) for s, n in read_catalogue(load_config(config_path)).num_jets.items()}


@contextmanager
def rucio_client(server) -> Iterator[None]:
    """Point the rucio client of this process at the test server (for module fixtures)."""
    from rucio.common.config import clean_cached_config

    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.client_env().items():
            mp.setenv(key, value)
        clean_cached_config()
        yield
    clean_cached_config()
