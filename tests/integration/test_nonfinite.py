"""NaN and inf are never silent: counted, sent nowhere when they decide a jet's fate, passed
through (with a warning) or refused in training variables, and left out of the norm."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.cli_support import REPO, run_process
from upp_grid.mock import make_mock
from upp_grid.yamlload import load_yaml, to_plain

D0_NAN = 700  # valid tracks with d0 = NaN, in the first rows of one input
ETA_NAN, PT_INF = 100, 50  # jets with NaN eta / inf pt (reweight and cut variables)


def project(tmp_path: Path, nan_policy: str | None = None) -> tuple[Path, Path]:
    make_mock(tmp_path / "ntuples", num_jets=60_000, num_files=3, seed=11)
    data = to_plain(load_yaml(REPO / "configs" / "demo.yaml"))
    data["global"]["base_dir"] = str(tmp_path)
    if nan_policy:
        data["global"]["nan_policy"] = nan_policy
    data["reweighting"]["max_zero_weight_fraction"] = 1.0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    first = sorted(p for p in (tmp_path / "ntuples").rglob("*.h5") if p.is_file())[0]
    with h5py.File(first, "r+") as f:
        tracks = f["tracks"][:2000]
        rows, cols = np.nonzero(tracks["valid"])
        tracks["d0"][rows[:D0_NAN], cols[:D0_NAN]] = np.nan
        f["tracks"][:2000] = tracks
        jets = f["jets"][2000:2000 + ETA_NAN + PT_INF]
        jets["eta_btagJes"][:ETA_NAN] = np.nan
        jets["pt_btagJes"][ETA_NAN:] = np.inf
        f["jets"][2000:2000 + ETA_NAN + PT_INF] = jets
    return path, first


def merged(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "output").glob("*/pp_output_*-full_[0-9]*.h5"))


def test_nan_in_a_training_variable_passes_through_counted_and_left_out_of_the_norm(
        tmp_path: Path):
    config, _ = project(tmp_path)

    result = run_process("run", "-c", str(config), "--no-plots", cwd=tmp_path, timeout=300)

    assert result.returncode == 0, result.stderr
    recorded, found, kept = 0, 0, []
    for path in merged(tmp_path):
        with h5py.File(path, "r") as f:
            recorded += json.loads(f.attrs["nonfinite_counts"]).get("tracks.d0", 0)
            tracks = f["tracks"][:]
        valid = tracks["valid"]
        found += int(np.count_nonzero(np.isnan(tracks["d0"]) & valid))
        if "/train/" in str(path):
            kept.append(tracks["d0"][valid].astype(np.float64))
    assert 0 < found <= D0_NAN  # the NaN of jets in a component reach the merged files
    assert recorded == found
    warnings = [line for line in result.stderr.splitlines() if "tracks.d0:" in line]
    assert any(f"tracks.d0: {found} NaN/inf values in the merged files, passed through"
               in line for line in warnings), result.stderr
    values = np.concatenate(kept)
    norm = yaml.safe_load((tmp_path / "output" / "norm_dict.yaml").read_text())
    finite = values[np.isfinite(values)]
    assert norm["tracks"]["d0"]["mean"] == pytest.approx(finite.mean(), rel=1e-6)
    assert norm["tracks"]["d0"]["std"] == pytest.approx(finite.std(), rel=1e-6)
    left_out = len(values) - len(finite)
    assert f"NaN/inf left out of the statistics: tracks.d0 {left_out:,}" in result.stdout


def test_nan_or_inf_in_a_cut_or_reweight_variable_sends_the_jet_nowhere_counted(
        tmp_path: Path):
    config, first = project(tmp_path)

    result = run_process("split", "-c", str(config), cwd=tmp_path, timeout=300)

    assert result.returncode == 0, result.stderr
    assert f"{ETA_NAN + PT_INF:,} had NaN/inf in a cut or jets reweight variable" in (
        result.stdout)
    records = [json.loads(p.read_text())
               for p in (tmp_path / "split-components").rglob("split-record.json")]
    mine = [r for r in records if Path(r["input"]).name == first.name]
    assert sum(r["nonfinite_dropped"] for r in mine) == ETA_NAN + PT_INF
    assert sum(r["nonfinite_dropped"] for r in records) == ETA_NAN + PT_INF
    for r in records:  # still exact: read = written + in no component
        assert sum(r["outputs"].values()) + r["no_component"] == r["jets_read"]
    with h5py.File(first, "r") as f:
        bad = set(f["jets"]["eventNumber"][2000:2000 + ETA_NAN + PT_INF].tolist())
    for path in (tmp_path / "split-components").rglob("output_*.h5"):
        with h5py.File(path, "r") as f:
            jets = f["jets"][:]
        assert not bad & set(jets["eventNumber"].tolist())
        assert np.isfinite(jets["eta_btagJes"]).all() and np.isfinite(jets["pt_btagJes"]).all()


def test_nan_policy_error_refuses_a_nan_in_a_training_variable_naming_field_and_file(
        tmp_path: Path):
    config, first = project(tmp_path, nan_policy="error")

    for command in ("check", "run"):
        result = run_process(command, "-c", str(config), cwd=tmp_path, timeout=300)
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("upp-grid: error")]
        assert result.returncode == 1, result.stderr
        assert len(errors) == 1, result.stderr
        assert "tracks.d0: " in errors[0] and "global.nan_policy: error" in errors[0]
        if command == "run":  # eta and pt NaN/inf jets go nowhere: not an error
            assert errors[0].startswith(f"upp-grid: error: {first}: tracks.d0: ")
    assert not (tmp_path / "output" / "norm_dict.yaml").exists()
