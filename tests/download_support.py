"""Helpers shared by the download tests (this module holds no tests).

* :func:`write_config`: the demo config with two flavours (few outputs, so few uploads).
* :func:`ledger`: the per-file download state of a tag, read straight from SQLite.
* :func:`assert_same_training_files`: merged files, histograms, norm and class dicts equal.
* :func:`rucio_client`: point this process's rucio client at the test server (module fixtures).
* :func:`scale_project`, :func:`publish_clones`, :func:`rebased_config`: a tag of many job
  outputs in three containers (the scale tests and ``bench/bench_download.py``).
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - split outputs are Blosc-compressed
import numpy as np
import pytest
import yaml

from tests.fakes.grid_outputs import (
    clone_archive,
    grid_lfn,
    register_grid_files,
    register_inputs,
    split_task,
    task_dataset,
)
from tests.grid_support import relabel_containers
from upp_grid.config import load_config
from upp_grid.demo import bundled_config_text
from upp_grid.grid.tasks import plan_tasks
from upp_grid.mock import make_mock
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
    data["reweighting"]["max_zero_weight_fraction"] = 1.0  # zero weights: test_weights.py
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
    files = sorted((out_dir / split).glob(f"pp_output_{split}-full_*.h5"))
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


#: jediTaskIDs are unique on the grid, and so are the output names made from them
_TASK_IDS = itertools.count(5000)


def scale_project(base: Path, label: str) -> Path:
    """Three mock input containers of their own (named with ``label``) of one small file each,
    and the demo config (b and light jets) with one sample each; returns the config."""
    ntuples = base / "ntuples"
    make_mock(ntuples, num_jets=600, num_files=2, seed=3)
    relabel_containers(ntuples, label)
    ttbar = next(ntuples.glob("user.mock.601589.*"))
    copy = ntuples / ttbar.name.replace("601589", "601590")
    copy.mkdir()
    for f in ttbar.iterdir():
        (copy / f.name.replace("601589", "601590")).write_bytes(f.read_bytes())
    config = write_config(base, ntuples)  # the demo config, b and light jets
    data = yaml.safe_load(config.read_text())
    low, high = data["components"]
    third = {**low, "sample": {**low["sample"], "name": "ttbar2",
                               "pattern": "user.mock.601590.*.h5"}}
    data["components"] = [low, third, high]
    (base / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return base / "config.yaml"


def publish_clones(server, config_path: Path, tag: str, per_container: int, work: Path) -> int:
    """``per_container`` job outputs of each container under ``tag`` in rucio (and each input
    container listing its inputs), cloned from one real job output per container
    (:func:`tests.fakes.grid_outputs.clone_archive`) and registered in bulk; returns the
    number of files. The rucio client of this process is pointed at ``server``."""
    config = load_config(config_path)
    n = 0
    with rucio_client(server):
        for spec in plan_tasks(config, tag, USER):
            (job,) = split_task(config, spec, work / tag)
            dsid = spec.container.split(".")[2]
            inputs = [f"user.mock.{dsid}._{i:06d}.output.h5" for i in range(1, per_container + 1)]
            register_inputs(server.rse, spec.container, inputs)
            task_id = next(_TASK_IDS)
            (output,) = spec.outputs
            files = [(grid_lfn(USER, task_id, f"_{i:06d}", output.file),
                      clone_archive(job.directory / output.file, name))
                     for i, name in enumerate(inputs, start=1)]
            register_grid_files(server.rse, spec.scope, task_dataset(output.container, task_id),
                                output.container, files, server.pfn_path)
            n += len(files)
    return n


def rebased_config(config_path: Path, base: Path) -> Path:
    """The config with a new base dir (no state DB, no split outputs)."""
    data = yaml.safe_load(config_path.read_text())
    data["global"]["base_dir"] = str(base)
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return base / "config.yaml"
