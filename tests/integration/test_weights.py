"""Specification of ``upp-grid weights`` on real (mock) split outputs.

Expected histograms are computed independently here with ``np.histogramdd`` from the train
files listed in the catalogue. np.histogramdd also counts a value equal to the last edge; the
stage's convention (``edges[i] <= x < edges[i+1]``) does not, so such values are dropped first.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

import upp_grid.h5io  # noqa: F401 — registers the Blosc filter of the split outputs
from tests.process_support import children, group_alive, run_in_session
from upp_grid.config import Config, Reweight, load_config
from upp_grid.errors import UppGridError
from upp_grid.mock import make_mock
from upp_grid.stages import plots
from upp_grid.stages.catalogue import read_catalogue
from upp_grid.stages.histograms import compute_weights, flat_bins, load_histograms
from upp_grid.stages.split_local import split_stage
from upp_grid.stages.weights import (
    compute_histograms,
    histograms_path,
    report_path,
    sample_jets,
    weights_stage,
)
from upp_grid.yamlload import load_yaml, to_plain

REPO = Path(__file__).resolve().parents[2]
PT_ETA = {"pt_btagJes": [[20_000, 250_000, 10], [250_000, 6_000_000, 5]],
          "eta_btagJes": [[-2.5, 2.5, 4]]}
FLAVOURS = ("bjets", "cjets", "ujets", "taujets")


def jets_reweight(target: Any = "mean", bins: dict | None = None, **extra: Any) -> dict:
    return {"group": "jets", "reweight_vars": ["pt_btagJes", "eta_btagJes"],
            "bins": bins or PT_ETA, "class_var": "flavour_label", "class_target": target,
            **extra}


TRACKS_RW = {"group": "tracks", "reweight_vars": ["deta"], "bins": {"deta": [[-0.5, 0.5, 20]]},
             "class_var": "leptonID", "class_target": "mean"}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def split_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20k mock jets in 3 files, split with the demo config; returns the base dir."""
    base = tmp_path_factory.mktemp("weights")
    make_mock(base / "ntuples", num_jets=20_000, num_files=3, seed=7)
    split_stage(write_config(base, "split", [jets_reweight(), TRACKS_RW]))
    return base


def write_config(base: Path, name: str, reweights: list[dict], estimate: int = 10**7,
                 seed: int = 42, source: Path = REPO / "configs" / "demo.yaml",
                 max_zero: float | None = 1.0) -> Config:
    """The demo config with these reweights; split outputs shared, outputs in ``name``.

    ``max_zero``: ``reweighting.max_zero_weight_fraction`` (None: the default). 20k mock jets
    leave bins empty; only the zero-weight tests keep the default limit.
    """
    data = to_plain(load_yaml(source))
    data["global"].update(base_dir=str(base), ntuple_dir="ntuples", seed=seed,
                          components_dir=f"split-{source.stem}", out_dir=f"out-{name}")
    data["reweighting"] = {"num_jets_estimate": estimate, "reweights": reweights}
    if max_zero is not None:
        data["reweighting"]["max_zero_weight_fraction"] = max_zero
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def train_rows(config: Config, flavour: str, group: str, sample: bool = False) -> np.ndarray:
    """Train rows of ``flavour`` (all of them, or only the stage's sample) read with h5py."""
    cat = read_catalogue(config)
    rows = {fs.path: fs.rows for fs in sample_jets(config, cat)[flavour]} if sample else {}
    parts = []
    for path in cat.files["train"][flavour]:
        with h5py.File(path, "r") as f:
            data = f[group][:]
        parts.append(data[rows[Path(path)]] if sample else data)
    return np.concatenate(parts)


def expected_hists(rw: Reweight, entries_by_class: dict[int, np.ndarray]) -> dict:
    """Per class ``np.histogramdd`` over the reweight variables (values at edges[-1] dropped)."""
    edges = [rw.edges(v) for v in rw.reweight_vars]
    out = {}
    for c, entries in entries_by_class.items():
        x = np.stack([entries[v].astype(np.float64) for v in rw.reweight_vars], axis=1)
        x = x[(x < np.array([e[-1] for e in edges])).all(axis=1)]
        out[c] = np.histogramdd(x, bins=edges)[0]
    return out


def jets_by_label(config: Config, sample: bool = False) -> dict[int, np.ndarray]:
    return {i: train_rows(config, fl, "jets", sample) for i, fl in enumerate(FLAVOURS)}


def expected_weights(hists: dict[int, np.ndarray], target: np.ndarray) -> dict:
    populated = np.logical_and.reduce([h > 0 for h in hists.values()])
    return {c: np.where(populated, target / np.where(h > 0, h, 1), 0.0)
            for c, h in hists.items()}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upp_grid", *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)


# ----------------------------------------------------------------------------- targets
TARGETS = {
    "mean": lambda h: sum(h.values()) / len(h),
    "min": lambda h: np.minimum.reduce(list(h.values())),
    "max": lambda h: np.maximum.reduce(list(h.values())),
    "uniform": lambda h: np.ones_like(h[0]),  # UPP's uniform target: 1 in every bin
    0: lambda h: h[0],
    (0, 1): lambda h: (h[0] + h[1]) / 2,
}


@pytest.mark.parametrize("target", list(TARGETS), ids=str)
def test_each_target_matches_an_independent_histogramdd(split_demo: Path, target: Any):
    config = write_config(split_demo, f"target-{target}",
                          [jets_reweight(list(target) if isinstance(target, tuple) else target)])
    report, _ = weights_stage(config, plots=False)
    h = load_histograms(histograms_path(config))[config.reweighting.reweights[0].name]

    hists = expected_hists(h.reweight, jets_by_label(config))
    target_hist = TARGETS[target](hists)
    weights = expected_weights(hists, target_hist)
    assert h.classes == (0, 1, 2, 3)
    for c in h.classes:
        np.testing.assert_array_equal(h.hists[c], hists[c])
        np.testing.assert_allclose(h.weights[c], weights[c], rtol=1e-12)
    np.testing.assert_allclose(h.target, target_hist, rtol=1e-12)
    assert report.reweights[0].flatness_max_deviation <= 1e-6


def test_every_train_jet_is_used_when_the_estimate_covers_the_classes(split_demo: Path):
    config = write_config(split_demo, "all-jets", [jets_reweight()])
    report, _ = weights_stage(config, plots=False)
    cat = read_catalogue(config)
    for flavour in FLAVOURS:
        assert sum(f.jets for f in report.sample[flavour]) == cat.num_jets["train"][flavour]
        assert report.available[flavour] == cat.num_jets["train"][flavour]


def test_a_bin_where_any_class_is_empty_is_zero_for_all_and_its_entries_are_counted(
        split_demo: Path):
    config = write_config(split_demo, "empty-bins", [jets_reweight()])
    report = weights_stage(config, plots=False)[0].reweights[0]
    h = next(iter(load_histograms(histograms_path(config)).values()))

    counts = np.stack([h.hists[c] for c in h.classes])
    zeroed = (counts > 0).any(axis=0) & (counts == 0).any(axis=0)
    assert zeroed.any()  # taujets leave holes at high pt in 20k mock jets
    for c in h.classes:
        assert not h.weights[c][zeroed].any()
        assert (h.weights[c][(counts > 0).all(axis=0)] > 0).all()
    assert report.zeroed_bins == zeroed.sum()
    assert report.populated_bins == (counts > 0).all(axis=0).sum()
    assert report.empty_bins + report.zeroed_bins + report.populated_bins == report.bins
    for cls in report.classes:
        assert cls.zeroed == h.hists[cls.label][zeroed].sum()
        assert cls.populated + cls.zeroed + cls.out_of_range == cls.entries


# ----------------------------------------------------------------------------- tracks
def test_track_reweight_histograms_valid_tracks_per_lepton_id(split_demo: Path):
    config = write_config(split_demo, "tracks", [TRACKS_RW])
    report, _ = weights_stage(config, plots=False)
    h = next(iter(load_histograms(histograms_path(config)).values()))

    tracks = np.concatenate([train_rows(config, fl, "tracks") for fl in FLAVOURS])
    valid = tracks[tracks["valid"]]
    classes = np.unique(valid["leptonID"])
    hists = expected_hists(h.reweight, {int(c): valid[valid["leptonID"] == c] for c in classes})
    assert h.classes == tuple(int(c) for c in classes)
    assert len(h.classes) > 1
    for c in h.classes:
        np.testing.assert_array_equal(h.hists[c], hists[c])
    everything = tracks.reshape(-1)
    with_invalid = expected_hists(h.reweight, {0: everything[everything["leptonID"] == 0]})
    assert not np.array_equal(with_invalid[0], h.hists[0])  # padding would have counted
    assert sum(c.entries for c in report.reweights[0].classes) == len(valid)


def test_track_weights_of_the_sample_flatten_every_lepton_id_class(split_demo: Path):
    config = write_config(split_demo, "tracks-flat", [TRACKS_RW])
    weights_stage(config, plots=False)
    h = next(iter(load_histograms(histograms_path(config)).values()))
    tracks = np.concatenate([train_rows(config, fl, "tracks") for fl in FLAVOURS])

    w = compute_weights(h, tracks)
    assert not w[~tracks["valid"]].any()
    valid, wv = tracks[tracks["valid"]], w[tracks["valid"]]
    flat = flat_bins(h.edges, [valid["deta"]])
    populated = h.populated.ravel()
    for i, c in enumerate(h.classes):
        mine = valid["leptonID"] == c
        weighted = np.bincount(flat[mine], weights=wv[mine], minlength=populated.size)
        ratio = weighted[populated] / h.target.ravel()[populated]
        np.testing.assert_allclose(ratio, 1.0, atol=1e-6, err_msg=f"class {i}")


# ----------------------------------------------------------------------------- overflow
NARROW = {"pt_btagJes": [[40_000, 150_000, 11]], "eta_btagJes": [[-1.5, 1.5, 3]]}


def test_without_overflow_jets_outside_the_range_get_weight_zero_and_are_counted(
        split_demo: Path):
    config = write_config(split_demo, "no-overflow",
                          [jets_reweight(bins=NARROW, add_overflow=False)])
    report = weights_stage(config, plots=False)[0].reweights[0]
    h = next(iter(load_histograms(histograms_path(config)).values()))

    for label, jets in jets_by_label(config).items():
        inside = ((jets["pt_btagJes"] >= 40_000) & (jets["pt_btagJes"] < 150_000)
                  & (jets["eta_btagJes"] >= -1.5) & (jets["eta_btagJes"] < 1.5))
        assert (~inside).any()
        w = compute_weights(h, jets)
        assert not w[~inside].any()
        cls = next(c for c in report.classes if c.label == label)
        assert cls.out_of_range == (~inside).sum()
        assert cls.entries == len(jets)
        edge = inside & (jets["pt_btagJes"] >= 140_000)  # the last pt bin keeps its weight
        bins = flat_bins(h.edges, [jets["pt_btagJes"][edge], jets["eta_btagJes"][edge]])
        np.testing.assert_allclose(w[edge], h.weights[label].ravel()[bins], rtol=1e-7)


def test_with_overflow_every_jet_has_a_bin(split_demo: Path):
    config = write_config(split_demo, "overflow", [jets_reweight(bins=NARROW)])
    report = weights_stage(config, plots=False)[0].reweights[0]
    h = next(iter(load_histograms(histograms_path(config)).values()))
    assert all(c.out_of_range == 0 for c in report.classes)
    jets = jets_by_label(config)
    for label in h.classes:
        assert h.hists[label].sum() == len(jets[label])
        outside = jets[label]["pt_btagJes"] >= 150_000
        assert (compute_weights(h, jets[label][outside]) > 0).any()


# ----------------------------------------------------------------------------- the sample
def test_a_small_estimate_samples_uniformly_from_every_file_of_each_flavour(split_demo: Path):
    config = write_config(split_demo, "sampled", [jets_reweight()], estimate=300, seed=11)
    report, _ = weights_stage(config, plots=False)
    cat = read_catalogue(config)

    for flavour in FLAVOURS:
        files = report.sample[flavour]
        assert len(files) == len(cat.files["train"][flavour]) == 3
        assert sum(f.jets for f in files) == 300
        assert all(f.jets > 0 for f in files)
        for f in files:  # proportional to file sizes, within 5 sigma of a hypergeometric draw
            p = f.of / report.available[flavour]
            assert abs(f.jets - 300 * p) < 5 * np.sqrt(300 * p * (1 - p)) + 1
    rows = sample_jets(config, cat)["ujets"][0].rows
    assert not np.array_equal(rows, np.arange(len(rows)))  # not the first N jets of a file

    h = next(iter(load_histograms(histograms_path(config)).values()))
    hists = expected_hists(h.reweight, jets_by_label(config, sample=True))
    for c in h.classes:
        np.testing.assert_array_equal(h.hists[c], hists[c])


def test_the_sample_is_reproducible_with_the_same_seed(split_demo: Path):
    def hists(name: str, seed: int) -> dict[int, np.ndarray]:
        config = write_config(split_demo, name, [jets_reweight()], estimate=300, seed=seed)
        weights_stage(config, plots=False)
        return next(iter(load_histograms(histograms_path(config)).values())).hists

    first, again, other = hists("seed-a", 5), hists("seed-b", 5), hists("seed-c", 6)
    assert all(np.array_equal(first[c], again[c]) for c in first)
    assert not all(np.array_equal(first[c], other[c]) for c in first)


# ----------------------------------------------------------------------------- histograms.h5
def test_histograms_h5_has_upps_layout_names_and_dtypes(split_demo: Path):
    config = write_config(split_demo, "layout", [jets_reweight(), TRACKS_RW])
    weights_stage(config, plots=False)
    path = config.global_.out_dir / "histograms.h5"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        ".upp-grid-owner.json", "histograms.h5", "weights-report.yaml"]  # and which config
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["jets", "tracks"]
        jets = f["jets/weight_jets_pt_btagJes_eta_btagJes_target_mean_flavour_label"]
        tracks = f["tracks/weight_tracks_deta_target_mean_leptonID"]
        assert list(f["jets"]) == [jets.name.split("/")[-1]]
        assert {"bins", "rw_vars", "class_var", "weights"} <= set(jets)
        # as UPP's Reweight.load_weights_hdf5 reads it
        bins = [jets["bins"][f"bin_{i}"][:] for i in range(len(jets["bins"]))]
        assert [b.dtype for b in bins] == [np.float64, np.float64]
        assert bins[0][0] == -np.inf and bins[0][-1] == np.inf and len(bins[0]) == 18
        assert [v.decode("utf-8") for v in jets["rw_vars"][:]] == ["pt_btagJes", "eta_btagJes"]
        assert next(v.decode("utf-8") for v in jets["class_var"][:]) == "flavour_label"
        assert h5py.check_string_dtype(jets["rw_vars"].dtype).encoding == "utf-8"
        assert sorted(jets["weights"]) == ["0", "1", "2", "3"]
        assert jets["weights/0"].dtype == np.float64 and jets["weights/0"].shape == (17, 6)
        # and what upp-grid adds
        assert jets["hists/0"].dtype == np.int64 and jets["target"].dtype == np.float64
        assert sorted(tracks["weights"]) == sorted(tracks["hists"])
        assert tracks["weights/0"].shape == (22,)
        assert list(f.attrs["flavour_label"]) == list(FLAVOURS)


def test_load_histograms_returns_what_the_stage_computed(split_demo: Path):
    config = write_config(split_demo, "roundtrip", [jets_reweight("max"), TRACKS_RW])
    weights_stage(config, plots=False)
    loaded = load_histograms(histograms_path(config))
    assert [h.reweight for h in loaded.values()] == list(config.reweighting.reweights)
    for h in loaded.values():
        assert set(h.hists) == set(h.weights) == set(h.classes)
        assert all(a.dtype == np.float64 for a in h.edges)


# ----------------------------------------------------------------------------- errors
def test_an_unknown_target_label_fails_naming_the_reweight(split_demo: Path):
    config = write_config(split_demo, "bad-label", [{**TRACKS_RW, "class_target": 5}])
    with pytest.raises(UppGridError, match="weight_tracks_deta_target_5_leptonID: "
                                           "class_target label 5"):
        weights_stage(config, plots=False)
    assert not histograms_path(config).exists()
    result = cli("weights", "-c", str(config.path), "--no-plots")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        "upp-grid: error: reweight weight_tracks_deta_target_5_leptonID")


# ----------------------------------------------------------------------------- plots, CLI
JETS_PLOTS = ["eta_btagJes.png", "map_pt_btagJes_eta_btagJes.png", "pt_btagJes.png",
              "weights.png"]
TRACKS_PLOTS = ["deta.png", "weights.png"]


def plot_files(out: Path) -> list[Path]:
    """Every file under ``<out>/plots``, temporary ones included."""
    return sorted(p for p in (out / "plots").rglob("*") if p.is_file())


def assert_histograms_intact(config: Config) -> None:
    """histograms.h5 loads, holds every reweight, and matches a stage run without plots."""
    written = load_histograms(histograms_path(config))
    assert list(written) == [rw.name for rw in config.reweighting.reweights]
    expected, _ = compute_histograms(config, sample_jets(config, read_catalogue(config)))
    for h in expected:
        assert all(np.array_equal(h.weights[c], written[h.reweight.name].weights[c])
                   for c in h.classes)


def warning_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
         ) -> pytest.LogCaptureFixture:
    """The stage's log records (the CLI may have set the logger not to propagate)."""
    monkeypatch.setattr(logging.getLogger("upp_grid"), "propagate", True)
    caplog.set_level(logging.INFO, logger="upp_grid")
    return caplog


def test_cli_writes_histograms_report_and_plots_and_leaves_no_process(split_demo: Path):
    config = write_config(split_demo, "cli", [jets_reweight(), TRACKS_RW])
    result, left = run_in_session("weights", "-c", str(config.path))
    assert result.returncode == 0, result.stderr
    assert left == []
    assert "weight_jets_pt_btagJes_eta_btagJes_target_mean_flavour_label" in result.stdout
    assert "flatness 1 ±" in result.stdout
    assert "plots: 6 files, drawn in the background" in result.stdout
    out = config.global_.out_dir
    report = yaml.safe_load((out / "weights-report.yaml").read_text())
    assert [r["name"] for r in report["reweights"]] == [rw.name for rw in
                                                         config.reweighting.reweights]
    assert all(r["flatness_max_deviation"] <= 1e-6 for r in report["reweights"])
    jets_dir = out / "plots" / "jets" / config.reweighting.reweights[0].name
    tracks_dir = out / "plots" / "tracks" / config.reweighting.reweights[1].name
    expected = sorted([jets_dir / n for n in JETS_PLOTS] + [tracks_dir / n for n in TRACKS_PLOTS])
    assert plot_files(out) == expected  # no temporary file left either
    assert sorted(Path(p) for p in report["plots"]) == expected
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in expected)
    timings = report["timings"]
    assert timings["plots_s"] > 0
    assert 0 <= timings["plots_wait_s"] < 60
    assert timings["total_s"] > 0
    assert_histograms_intact(config)


def test_no_plots_writes_no_plots(split_demo: Path):
    config = write_config(split_demo, "no-plots", [jets_reweight()])
    result, left = run_in_session("weights", "-c", str(config.path), "--no-plots")
    assert result.returncode == 0, result.stderr
    assert left == []
    assert not (config.global_.out_dir / "plots").exists()
    report = yaml.safe_load(report_path(config).read_text())
    assert report["plots"] == []
    assert report["timings"]["plots_s"] == report["timings"]["plots_wait_s"] == 0


def test_the_stage_returns_before_the_plots_and_wait_lists_them(
        split_demo: Path, logs: pytest.LogCaptureFixture):
    config = write_config(split_demo, "pending", [jets_reweight(), TRACKS_RW])
    before = children()
    report, pending = weights_stage(config)
    first = yaml.safe_load(report_path(config).read_text())  # written before the plots
    assert report.plots == () and first["plots"] == []
    assert histograms_path(config).is_file()
    assert pending.planned == 6 and pending.pid in children()
    written = pending.wait()
    assert len(written) == 6 and all(p.is_file() for p in written)
    final = yaml.safe_load(report_path(config).read_text())
    assert [Path(p) for p in final["plots"]] == written == list(pending.report.plots)
    assert final["timings"]["plots_s"] > 0 and final["timings"]["plots_wait_s"] >= 0
    assert final["reweights"] == first["reweights"]
    assert pending.pid is None and children() == before
    assert warning_lines(logs) == []
    assert pending.wait() == written  # waiting again is harmless


def test_a_plot_that_cannot_be_written_is_one_warning_line_and_the_rest_are_listed(
        split_demo: Path):
    config = write_config(split_demo, "unwritable", [jets_reweight(), TRACKS_RW])
    jets_name = config.reweighting.reweights[0].name
    blocker = config.global_.out_dir / "plots" / "jets" / jets_name
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the reweight's plot directory should be")
    result, left = run_in_session("weights", "-c", str(config.path))
    assert result.returncode == 0, result.stderr
    assert left == []
    lines = [line for line in result.stderr.splitlines() if "not written" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"plots: 4 of 6 not written; {blocker}/")
    assert "NotADirectoryError" in lines[0] or "FileExistsError" in lines[0]
    assert "Traceback" not in result.stderr
    report = yaml.safe_load(report_path(config).read_text())
    tracks_dir = blocker.parents[1] / "tracks" / config.reweighting.reweights[1].name
    assert sorted(Path(p) for p in report["plots"]) == [tracks_dir / n for n in TRACKS_PLOTS]
    assert [r["name"] for r in report["reweights"]] == [jets_name,
                                                         config.reweighting.reweights[1].name]
    assert_histograms_intact(config)


def test_the_plotting_process_dying_is_one_warning_and_loses_nothing_else(
        split_demo: Path, logs: pytest.LogCaptureFixture):
    config = write_config(split_demo, "killed", [jets_reweight(), TRACKS_RW])
    before = children()
    report, pending = weights_stage(config)
    pid = pending.pid
    os.kill(pid, signal.SIGKILL)
    written = pending.wait()
    warnings = warning_lines(logs)
    assert len(warnings) == 1
    assert "the plotting process died (killed by SIGKILL)" in warnings[0]
    final = yaml.safe_load(report_path(config).read_text())
    assert [Path(p) for p in final["plots"]] == written
    assert len(warnings[0].split(" not written;")[0].split(" of ")) == 2
    assert final["reweights"] == yaml.safe_load(yaml.safe_dump(report.as_dict()))["reweights"]
    assert_histograms_intact(config)
    assert children() == before and not group_alive(pid)


def test_an_interrupted_stage_ends_the_plotting_process(split_demo: Path):
    config = write_config(split_demo, "interrupted", [jets_reweight()])
    before = children()

    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        weights_stage(config, progress=interrupt, workers=1)
    assert children() == before
    assert not histograms_path(config).exists()


def test_an_error_after_the_stage_cancels_the_plots(split_demo: Path):
    config = write_config(split_demo, "cancelled", [jets_reweight()])
    before = children()
    _, pending = weights_stage(config)
    pid = pending.pid
    with pytest.raises(RuntimeError, match="merge failed"), pending:
        raise RuntimeError("merge failed")
    assert children() == before and not group_alive(pid)
    assert yaml.safe_load(report_path(config).read_text())["plots"] == []
    assert_histograms_intact(config)
    assert not [p for p in plot_files(config.global_.out_dir) if ".tmp-" in p.name]


def test_a_reused_figure_draws_the_same_pixels_as_a_new_one(split_demo: Path, tmp_path: Path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    between = jets_reweight("max", {**PT_ETA, "pt_btagJes": [[20_000, 400_000, 7]]})
    config = write_config(split_demo, "reuse", [jets_reweight("mean"), between,
                                                jets_reweight("min")])  # same layout as mean
    hists, _ = compute_histograms(config, sample_jets(config, read_catalogue(config)))
    jobs = [plots.plan_jobs(plots.PlotData.of(h, {}), tmp_path / name)
            for h, name in zip(hists, ("a", "b", "c"), strict=True)]
    drawer = plots.Drawer()
    reused = [drawer.draw(job) for batch in jobs for job in batch]  # c's reuse a's
    fresh = [plots.draw(replace(job, path=tmp_path / "fresh" / job.path.relative_to(tmp_path)))
             for batch in jobs for job in batch]
    assert len(reused) == len(fresh) == 12
    for a, b in zip(reused, fresh, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a


def test_without_matplotlib_plots_are_skipped_with_one_warning(
        split_demo: Path, monkeypatch: pytest.MonkeyPatch, logs: pytest.LogCaptureFixture):
    def unavailable() -> None:
        raise plots.PlottingUnavailable("matplotlib is not installed")

    monkeypatch.setattr(plots, "_figure_class", unavailable)  # in the forked process too
    config = write_config(split_demo, "no-mpl", [jets_reweight()])
    before = children()
    _, pending = weights_stage(config, plots=True)
    assert pending.wait() == []
    assert warning_lines(logs) == ["plots skipped: matplotlib is not installed"]
    assert pending.report.plots == ()
    assert histograms_path(config).exists()
    assert children() == before


# ----------------------------------------------------------------------------- UPP's list
def test_upps_reweight_integration_list_runs_flat(split_demo: Path):
    source = REPO / "configs" / "upp-rw-integration.yaml"
    data = to_plain(load_yaml(source))["reweighting"]
    config = write_config(split_demo, "upp-rw", data["reweights"], data["num_jets_estimate"],
                          source=source)
    split_stage(config)
    report, _ = weights_stage(config, plots=False)
    assert [r.name for r in report.reweights] == [
        "weight_jets_pt_eta_target_mean_flavour_label",
        "weight_jets_pt_eta_target_min_flavour_label",
        "weight_jets_pt_eta_target_max_flavour_label",
        "weight_jets_pt_eta_target_uniform_flavour_label",
        "weight_jets_pt_eta_target_0_1",
        "weight_jets_pt_eta_target_0_flavour_label",
        "weight_tracks_deta_target_mean_leptonID",
    ]
    for rw in report.reweights:
        assert rw.flatness_max_deviation <= 1e-6
        assert rw.populated_bins > 0
    # the config samples up to 1M jets per flavour: all of the 20k here
    assert report.available == {fl: sum(f.jets for f in files)
                                for fl, files in report.sample.items()}


def test_processes_and_a_single_process_give_the_same_histograms(split_demo: Path):
    config = write_config(split_demo, "workers", [jets_reweight(), TRACKS_RW], estimate=500)
    results = []
    for workers in (1, 2):
        weights_stage(config, plots=False, workers=workers)
        results.append(load_histograms(histograms_path(config)))
    for name, h in results[0].items():
        assert all(np.array_equal(h.hists[c], results[1][name].hists[c]) for c in h.classes)


# ----------------------------------------------------------------------------- zero weights
FINE = {"pt_btagJes": [[20_000, 250_000, 100], [250_000, 6_000_000, 100]],
        "eta_btagJes": [[-2.5, 2.5, 40]]}


def test_a_config_zeroing_most_jets_fails_naming_the_reweight_class_and_cause(
        split_demo: Path):
    config = write_config(split_demo, "zero-fine", [jets_reweight(bins=FINE)], estimate=200,
                          max_zero=None)

    result = cli("weights", "-c", str(config.path), "--no-plots")

    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 1
    assert len(lines) == 1, result.stderr
    name = config.reweighting.reweights[0].name
    assert lines[0].startswith(f"upp-grid: error: reweight {name}: ")
    assert "train jets get weight 0 (limit 1 %, reweighting.max_zero_weight_fraction)" in lines[0]
    assert "too few jets per class for the number of bins (200 sampled per class)" in lines[0]
    assert "raise reweighting.num_jets_estimate (e.g. to " in lines[0]
    assert not histograms_path(config).exists()  # nothing for merge to use
    report = yaml.safe_load(report_path(config).read_text())  # the report stays, to look at
    worst = max(c["zero_fraction"] for c in report["reweights"][0]["classes"])
    assert worst > 0.9
    assert f"{100 * worst:.3g} % of the" in lines[0]


def test_zero_weights_with_all_jets_histogrammed_suggest_fewer_bins(split_demo: Path):
    config = write_config(split_demo, "zero-all", [jets_reweight(bins=FINE)], max_zero=None)

    with pytest.raises(UppGridError, match=r"every train jet is already histogrammed .*use "
                       "fewer or wider bins"):
        weights_stage(config, plots=False)


def test_the_limit_is_configurable_and_a_tenth_of_it_warns(
        split_demo: Path, caplog: pytest.LogCaptureFixture):
    config = write_config(split_demo, "zero-allowed", [jets_reweight(bins=FINE)], max_zero=1)

    with caplog.at_level(logging.WARNING, logger="upp_grid"):
        report, _ = weights_stage(config, plots=False)

    worst = report.reweights[0].worst
    assert 0.1 < worst.zero_fraction <= 1
    assert worst.zero_weight == worst.zeroed + worst.out_of_range + worst.nan
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("get weight 0 (limit 100 %" in w for w in warnings)
    assert histograms_path(config).is_file()


@pytest.mark.parametrize("jets", [50_000, 200_000])  # the smallest and the default demo
def test_the_demo_gives_sane_weights(tmp_path: Path, jets: int):
    result = cli("demo", "--workdir", str(tmp_path), "--jets", str(jets))

    assert result.returncode == 0, result.stderr
    report = yaml.safe_load((tmp_path / "output" / "weights-report.yaml").read_text())
    fractions = [c["zero_fraction"] for c in report["reweights"][0]["classes"]]
    assert len(fractions) == 4
    assert max(fractions) < (0.01 if jets < 200_000 else 0.001)
    assert "weight 0" in result.stdout  # the weights table is printed


def test_figures_show_every_class_with_a_legend_units_and_densities(split_demo: Path):
    """Read the figures' data, not their pixels: what a user looks for in them."""
    config = write_config(split_demo, "figures", [jets_reweight("mean")])
    (h,), _ = compute_histograms(config, sample_jets(config, read_catalogue(config)))
    data = plots.PlotData.of(h, {0: "bjets", 1: "cjets", 2: "ujets", 3: "taujets"})
    jobs = {job.path.name: job for job in plots.plan_jobs(data, split_demo / "figs")}
    drawer = plots.Drawer()

    fig = drawer.figure(jobs["pt_btagJes.png"])
    before, after = fig.axes
    assert after.get_title().startswith("after weighting")
    for ax in (before, after):
        legend = ax.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == ["bjets", "cjets", "ujets",
                                                             "taujets"]
        lines = ax.get_lines()
        assert len(lines) == 4 and all(len(ln.get_xdata()) > 1 for ln in lines)
        assert len({str(ln.get_linestyle()) for ln in lines}) == 4  # told apart when equal
        assert ax.get_xlabel() == "pt_btagJes [GeV]"
        assert ax.get_xscale() == "log"
        for line in lines:  # a density: the fractions times the bin widths sum to one
            x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
            assert np.isclose(np.sum(y[:-1] * np.diff(x)), 1.0)
            assert x.max() == pytest.approx(6_000) or x.max() > 6_000  # in GeV, not MeV
    assert before.get_ylabel() == "fraction of entries / GeV"
    # after weighting every class is the target: the four lines coincide
    ys = [np.asarray(ln.get_ydata()) for ln in after.get_lines()]
    for y in ys[1:]:
        np.testing.assert_allclose(y, ys[0], rtol=1e-5)
    # tick labels are plain numbers
    fig.canvas.draw()
    labels = [t.get_text() for t in before.get_xticklabels() if t.get_text()]
    assert labels and not any("e+" in t or "$" in t for t in labels), labels

    eta = drawer.figure(jobs["eta_btagJes.png"])
    assert eta.axes[0].get_xlabel() == "eta_btagJes"  # no unit
    assert eta.axes[0].get_ylabel() == "fraction of entries / unit"

    weights = drawer.figure(jobs["weights.png"]).axes[0]
    assert weights.get_legend() is not None and weights.get_xlabel() == "weight"
    assert weights.title.get_fontsize() >= 10

    heat = drawer.figure(jobs["map_pt_btagJes_eta_btagJes.png"])
    assert heat.axes[0].get_xlabel() == "pt_btagJes [GeV]"
    assert heat.axes[0].get_ylabel() == "eta_btagJes"


def test_plots_of_earlier_histograms_are_removed(split_demo: Path):
    config = write_config(split_demo, "stale", [jets_reweight("mean")])
    split_stage(config)
    _, pending = weights_stage(config, plots=True)
    with pending:
        drawn = pending.wait()
    assert drawn and all(p.is_file() for p in drawn)
    weights_stage(config, plots=False)  # new histograms, no plots: the old ones would mislead
    assert not any(p.exists() for p in drawn)
    assert (config.global_.out_dir / "histograms.h5").is_file()
