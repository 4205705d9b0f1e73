"""Specification of ``upp-grid norm``: checked against numpy over the full merged train arrays."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from upp_grid.config import Config, load_config
from upp_grid.errors import InputError, UppGridError
from upp_grid.mock import make_mock
from upp_grid.stages.merge import merge_stage
from upp_grid.stages.normalise import Moments, norm_stage
from upp_grid.stages.split_local import split_stage
from upp_grid.stages.weights import weights_stage
from upp_grid.yamlload import load_yaml, to_plain

REPO = Path(__file__).resolve().parents[2]
JETS_W = "weight_jets_pt_btagJes_eta_btagJes_target_mean_flavour_label"
FLAVOURS = ("bjets", "cjets", "ujets", "taujets")


def write_config(base: Path, per_file: int = 4_000, out: str = "output") -> Config:
    """The demo config on ``base``, several train files, a small batch size."""
    data = to_plain(load_yaml(REPO / "configs" / "demo.yaml"))
    data["global"].update(base_dir=str(base), num_jets_per_output_file=per_file, out_dir=out)
    data["reweighting"]["max_zero_weight_fraction"] = 1.0  # zero weights: test_weights.py
    path = base / f"{out}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> Config:
    base = tmp_path_factory.mktemp("norm")
    make_mock(base / "ntuples", num_jets=25_000, num_files=3, seed=9)
    config = write_config(base)
    split_stage(config)
    weights_stage(config, plots=False)
    merge_stage(config, ("train",))
    return config


def train_arrays(config: Config) -> tuple[np.ndarray, np.ndarray]:
    files = sorted((config.global_.out_dir / "train").glob("pp_output_train-full_*.h5"))
    jets, tracks = [], []
    for p in files:
        with h5py.File(p, "r") as f:
            jets.append(f["jets"][:])
            tracks.append(f["tracks"][:])
    return np.concatenate(jets), np.concatenate(tracks)


def numpy_norm(values: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    x = values.astype(np.float64)
    mean = np.average(x, weights=weights)
    return float(mean), float(np.sqrt(np.average((x - mean) ** 2, weights=weights)))


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def assert_norm(config: Config, norm: dict, weighted: bool) -> None:
    jets, tracks = train_arrays(config)
    w_jets = jets[JETS_W].astype(np.float64) if weighted else None
    valid = tracks["valid"]
    w_tracks = np.broadcast_to(w_jets[:, None], valid.shape)[valid] if weighted else None
    for group, arr, w in (("jets", jets, w_jets), ("tracks", tracks[valid], w_tracks)):
        assert list(norm[group]) == list(config.variables[group].inputs)
        for var, got in norm[group].items():
            mean, std = numpy_norm(arr[var], w)
            assert got["mean"] == pytest.approx(mean, rel=1e-6, abs=1e-12), (group, var)
            assert got["std"] == pytest.approx(std, rel=1e-6), (group, var)


@pytest.mark.parametrize("use_cache", [True, False])
def test_norm_dict_equals_numpy_over_all_jets_and_valid_tracks(merged: Config,
                                                               use_cache: bool) -> None:
    result = norm_stage(merged, use_cache=use_cache)
    assert result.num_jets == len(train_arrays(merged)[0])
    assert_norm(merged, read_yaml(result.norm_path), weighted=False)


def test_weighted_norm_uses_the_jet_weights_and_says_so(merged: Config) -> None:
    result = norm_stage(merged, weighted=True)
    assert result.weight == JETS_W
    assert_norm(merged, read_yaml(result.norm_path), weighted=True)
    assert f"weighted by the jets weight {JETS_W}" in result.norm_path.read_text()
    unweighted = norm_stage(merged)
    assert "unweighted" in unweighted.norm_path.read_text()


def test_class_dict_is_upps_inverse_frequency_over_present_values(merged: Config) -> None:
    classes = read_yaml(norm_stage(merged).class_path)
    jets, tracks = train_arrays(merged)
    valid = tracks["valid"]

    def upp_weights(values: np.ndarray) -> list[float]:
        _, counts = np.unique(values, return_counts=True)
        w = counts.sum() / counts
        return np.around(w / w.min(), 2).tolist()

    assert list(classes) == ["jets", "tracks"]
    assert set(classes["jets"]) == {"flavour_label", "HadronConeExclTruthLabelID",
                                    "HadronGhostTruthLabelID"}  # eventNumber is no class
    for var, got in classes["jets"].items():
        assert got == upp_weights(jets[var])
    assert classes["tracks"] == {"ftagTruthOriginLabel":
                                 upp_weights(tracks["ftagTruthOriginLabel"][valid])}


def test_statistics_cached_by_merge_equal_a_fresh_pass(merged: Config) -> None:
    cached = norm_stage(merged)
    fresh = norm_stage(merged, use_cache=False)
    for group, per_var in fresh.norm.items():
        for var, got in per_var.items():
            assert cached.norm[group][var]["mean"] == pytest.approx(got["mean"], rel=1e-12)
            assert cached.norm[group][var]["std"] == pytest.approx(got["std"], rel=1e-12)
    assert cached.classes == fresh.classes
    assert (cached.num_jets, cached.entries) == (fresh.num_jets, fresh.entries)


def test_chan_combination_is_exact_for_any_batching() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(1e5, 3.0, 100_001)  # large mean, small spread: naive sums lose digits
    w = rng.uniform(0, 2, len(x))
    for weights in (None, w):
        total = Moments()
        for part in np.array_split(np.arange(len(x)), 37):
            total = total.combine(Moments.of(x[part], None if weights is None
                                             else weights[part]))
        mean, std = numpy_norm(x, weights)
        assert total.mean == pytest.approx(mean, rel=1e-12)
        assert total.std == pytest.approx(std, rel=1e-9)


def test_the_log_states_the_true_number_of_jets(merged: Config,
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="upp_grid"):
        result = norm_stage(merged)
    assert f"norm: {result.num_jets} train jets from" in caplog.text
    assert result.num_jets == len(train_arrays(merged)[0])


def test_cli_weighted(merged: Config) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "upp_grid", "norm", "-c", str(merged.path),
                          "--weighted"], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert f"weighted by {JETS_W}" in run.stdout
    assert_norm(merged, read_yaml(merged.global_.out_dir / "norm_dict.yaml"), weighted=True)


def test_norm_needs_a_completed_train_merge(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with pytest.raises(InputError, match="no completed merge of train"):
        norm_stage(config)


def test_unknown_weight_is_refused(merged: Config) -> None:
    with pytest.raises(UppGridError, match="unknown jets weight"):
        norm_stage(merged, weighted=True, weight="weight_nope")
