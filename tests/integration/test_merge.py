"""Specification of ``upp-grid merge`` on real (mock) split outputs.

Every expectation is computed independently here from the catalogue's full-precision split
files, matched to the merged jets by ``eventNumber`` (unique in the mock data), and from
``histograms.h5`` read with h5py in UPP's layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

import upp_grid.h5io  # noqa: F401 — registers the Blosc filter of the split outputs
from upp_grid.config import SPLITS, Config, load_config
from upp_grid.errors import BookkeepingError, InputError
from upp_grid.mock import make_mock
from upp_grid.stages import merge_plan, merge_scratch, merge_shuffle
from upp_grid.stages.catalogue import catalogue_path, read_catalogue
from upp_grid.stages.merge import merge_stage
from upp_grid.stages.split_local import split_stage
from upp_grid.stages.weights import histograms_path, weights_stage
from upp_grid.yamlload import load_yaml, to_plain

REPO = Path(__file__).resolve().parents[2]
FLAVOURS = ("bjets", "cjets", "ujets", "taujets")
JETS_RW = {"group": "jets", "reweight_vars": ["pt_btagJes", "eta_btagJes"],
           "bins": {"pt_btagJes": [[20_000, 250_000, 20], [250_000, 6_000_000, 10]],
                    "eta_btagJes": [[-2.5, 2.5, 20]]},
           "class_var": "flavour_label", "class_target": "mean"}
TRACKS_RW = {"group": "tracks", "reweight_vars": ["deta"], "bins": {"deta": [[-0.5, 0.5, 20]]},
             "class_var": "leptonID", "class_target": "mean"}
JETS_W = "weight_jets_pt_btagJes_eta_btagJes_target_mean_flavour_label"
TRACKS_W = "weight_tracks_deta_target_mean_leptonID"
PER_FILE = 7_000


# ----------------------------------------------------------------------------- helpers
def write_config(base: Path, name: str, **global_: Any) -> Config:
    """The demo config with a jets and a tracks reweight; split outputs shared under ``base``,
    outputs in ``base/out-<name>``; ``global_`` overrides the global section."""
    data = to_plain(load_yaml(REPO / "configs" / "demo.yaml"))
    data["global"].update({"base_dir": str(base), "out_dir": f"out-{name}",
                           "num_jets_per_output_file": PER_FILE, **global_})
    data["reweighting"] = {"num_jets_estimate": 10**7, "merge_num_proc": 2,
                           "reweights": [JETS_RW, TRACKS_RW],
                           "max_zero_weight_fraction": 1.0}  # zero weights: test_weights.py
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def prepare(base: Path, num_jets: int, seed: int = 5) -> Path:
    """Mock ntuples, split with the test config; returns ``base``."""
    make_mock(base / "ntuples", num_jets=num_jets, num_files=3, seed=seed)
    split_stage(write_config(base, "split"))
    return base


def merged(base: Path, name: str, **global_: Any) -> Config:
    """Weights and merge (all splits) into ``out-<name>``; returns the config."""
    config = write_config(base, name, **global_)
    weights_stage(config, plots=False)
    merge_stage(config)
    return config


def outputs(config: Config, split: str) -> list[Path]:
    return [Path(p) for p in sorted(
        (config.global_.out_dir / split).glob(f"pp_output_{split}-full_*.h5"),
        key=lambda p: int(p.stem.rsplit("_", 1)[1]))]


def read_all(paths: list[Path], group: str) -> np.ndarray:
    parts = []
    for p in paths:
        with h5py.File(p, "r") as f:
            parts.append(f[group][:])
    return np.concatenate(parts)


def inputs(config: Config, split: str, group: str) -> np.ndarray:
    """The catalogue's full-precision rows of ``split``, all flavours."""
    cat = read_catalogue(config)
    return read_all([Path(p) for f in FLAVOURS for p in cat.files[split][f]], group)


def by_event(out_jets: np.ndarray, in_jets: np.ndarray) -> np.ndarray:
    """Index into ``in_jets`` of every output jet (matched by eventNumber)."""
    order = np.argsort(in_jets["eventNumber"])
    pos = np.searchsorted(in_jets["eventNumber"], out_jets["eventNumber"], sorter=order)
    idx = order[np.minimum(pos, len(order) - 1)]
    assert np.array_equal(in_jets["eventNumber"][idx], out_jets["eventNumber"])
    return idx


def upp_histograms(path: Path, group: str, name: str) -> dict[str, Any]:
    """One reweight of ``histograms.h5``, read the way UPP reads it."""
    with h5py.File(path, "r") as f:
        g = f[group][name]
        return {"edges": [g["bins"][f"bin_{i}"][:] for i in range(len(g["bins"]))],
                "vars": [v.decode() if isinstance(v, bytes) else v for v in g["rw_vars"][:]],
                "class_var": g["class_var"][0].decode(),
                "weights": {int(c): g["weights"][c][:] for c in g["weights"]},
                "hists": {int(c): g["hists"][c][:] for c in g["hists"]},
                "target": g["target"][:]}


def bin_index(h: dict[str, Any], rows: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.searchsorted(e, rows[v], side="right") - 1
                 for e, v in zip(h["edges"], h["vars"], strict=True))


def expected_weights(h: dict[str, Any], rows: np.ndarray) -> np.ndarray:
    """``weights[class][bin]`` for every row (1-D entries with full-precision values)."""
    idx = bin_index(h, rows)
    out = np.zeros(len(rows), dtype=np.float64)
    for c, w in h["weights"].items():
        m = rows[h["class_var"]] == c
        out[m] = w[tuple(i[m] for i in idx)]
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30k mock jets in 3 files, split once for the whole module."""
    return prepare(tmp_path_factory.mktemp("merge"), 30_000)


@pytest.fixture(scope="module")
def done(base: Path) -> Config:
    """The reference merge: half precision, gzip, 7000 jets per file, 2 processes."""
    return merged(base, "ref")


# ----------------------------------------------------------------------------- counts
@pytest.mark.parametrize("split", SPLITS)
def test_every_catalogue_jet_is_written_exactly_once(done: Config, split: str) -> None:
    out = read_all(outputs(done, split), "jets")
    src = inputs(done, split, "jets")
    assert len(out) == len(src)
    assert np.array_equal(np.sort(out["eventNumber"]), np.sort(src["eventNumber"]))
    # and keeps its flavour
    idx = by_event(out, src)
    assert np.array_equal(out["flavour_label"], src["flavour_label"][idx])


@pytest.mark.parametrize("split", SPLITS)
def test_counts_per_flavour_equal_the_catalogue(done: Config, split: str) -> None:
    cat = read_catalogue(done)
    out = read_all(outputs(done, split), "jets")
    counts = np.bincount(out["flavour_label"], minlength=len(FLAVOURS))
    assert dict(zip(FLAVOURS, counts.tolist(), strict=True)) == cat.num_jets[split]
    record = json.loads((done.global_.out_dir / split / "merge-record.json").read_text())
    assert record["jet_counts"] == cat.num_jets[split]


@pytest.mark.parametrize("split", SPLITS)
def test_files_have_exact_sizes_and_names(done: Config, split: str) -> None:
    total = read_catalogue(done).total(split)
    sizes = [h5py.File(p, "r")["jets"].shape[0] for p in outputs(done, split)]
    full, rest = divmod(total, PER_FILE)
    assert sizes == [PER_FILE] * full + ([rest] if rest else [])
    names = [p.name for p in outputs(done, split)]
    assert names == [f"pp_output_{split}-full_{i}.h5" for i in range(len(sizes))]
    for p in outputs(done, split):
        with h5py.File(p, "r") as f:
            assert f["tracks"].shape[0] == f["jets"].shape[0]


def test_unset_file_size_means_one_file(base: Path) -> None:
    config = merged(base, "single", num_jets_per_output_file=None)
    for split in SPLITS:
        paths = outputs(config, split)
        assert len(paths) == 1
        assert h5py.File(paths[0], "r")["jets"].shape[0] == read_catalogue(config).total(split)


# ----------------------------------------------------------------------------- shuffle
def test_flavour_mix_of_every_file_matches_the_overall_mix(done: Config) -> None:
    paths = outputs(done, "train")
    labels = [h5py.File(p, "r")["jets"]["flavour_label"] for p in paths]
    overall = np.bincount(np.concatenate(labels), minlength=4) / sum(map(len, labels))
    for lab in labels:
        frac = np.bincount(lab, minlength=4) / len(lab)
        sigma = np.sqrt(overall * (1 - overall) / len(lab))
        assert np.all(np.abs(frac - overall) < 5 * sigma + 1e-12)


def test_jets_are_mixed_across_input_files_and_flavours(done: Config) -> None:
    out = h5py.File(outputs(done, "train")[0], "r")["jets"][:1000]
    assert len(np.unique(out["flavour_label"])) == 4
    assert len(np.unique(out["pt_btagJes"] > 250_000)) == 2  # both samples (regions)
    runs = np.count_nonzero(np.diff(out["flavour_label"]) != 0)
    assert runs > 300  # nothing like sorted by flavour
    assert not np.all(np.diff(out["eventNumber"]) > 0)


def test_same_seed_same_files_other_seed_other_order(base: Path, done: Config) -> None:
    again = merged(base, "again")
    other = merged(base, "seed", seed=43)
    a, b = read_all(outputs(done, "val"), "tracks"), read_all(outputs(again, "val"), "tracks")
    assert np.array_equal(a, b)
    ev_ref = read_all(outputs(done, "val"), "jets")["eventNumber"]
    ev_other = read_all(outputs(other, "val"), "jets")["eventNumber"]
    assert not np.array_equal(ev_ref, ev_other)
    assert np.array_equal(np.sort(ev_ref), np.sort(ev_other))


def test_the_same_bytes_for_any_number_of_workers_and_scratch_place(
        base: Path, done: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers and where the scratch goes change the speed, never the files: every output file
    is byte-identical with one worker and scratch in memory, and with three workers and scratch
    on disk, and holds the reference merge's jets, weights and order. No scratch is left."""
    config = write_config(base, "workers")
    weights_stage(config, plots=False)
    digests = []
    for workers, memory in ((1, "1"), (3, "0")):
        monkeypatch.setenv(merge_scratch.ENV, memory)
        for split in SPLITS:
            shutil.rmtree(config.global_.out_dir / split, ignore_errors=True)
        merge_stage(config, workers=workers)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                        for split in SPLITS for p in outputs(config, split)})
        assert not own_scratch()
        assert not list(config.global_.out_dir.glob("*/.staging"))
    assert digests[0] == digests[1]
    assert len(digests[0]) == sum(len(outputs(done, s)) for s in SPLITS)
    for split in SPLITS:
        for group in ("jets", "tracks"):
            assert np.array_equal(read_all(outputs(config, split), group),
                                  read_all(outputs(done, split), group))


def test_the_shuffle_is_a_uniform_permutation() -> None:
    """Blocks of 3 and 2 jets into buckets [2, 3] (files [2], [3]): over many seeds every jet
    lands at every output position equally often."""
    blocks, caps = np.array([3, 2]), np.array([2, 3])
    hits = np.zeros((5, 5))
    for seed in range(10_000):
        counts = merge_plan.assign(blocks, caps, np.random.default_rng([seed, 0, 0]))
        out = [[] for _ in caps]
        start = 0
        for i, b in enumerate(blocks):
            keep = np.ones(len(caps), dtype=bool)
            sel = merge_shuffle.block_selection(counts[i], keep,
                                                np.random.default_rng([seed, 1, i]))
            bounds = np.concatenate([[0], np.cumsum(counts[i])])
            for j in range(len(caps)):
                out[j] += list(start + sel[bounds[j]:bounds[j + 1]])
            start += b
        order = []
        for j, jets in enumerate(out):
            pos = np.random.default_rng([seed, 2, j]).permutation(len(jets))
            placed = np.empty(len(jets), dtype=int)
            placed[pos] = jets
            order += list(placed)
        hits[order, np.arange(5)] += 1
    expected = 10_000 / 5
    chi2 = ((hits - expected) ** 2 / expected).sum()
    assert chi2 < 60  # 16 degrees of freedom: p < 1e-6 above ~60


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("split", SPLITS)
def test_jet_weights_equal_their_bin_weight_from_full_precision_inputs(done: Config,
                                                                      split: str) -> None:
    h = upp_histograms(histograms_path(done), "jets", JETS_W)
    out = read_all(outputs(done, split), "jets")
    src = inputs(done, split, "jets")
    expected = expected_weights(h, src[by_event(out, src)])
    assert out[JETS_W].dtype == np.float32
    assert np.array_equal(out[JETS_W], expected)


def test_track_weights_equal_their_bin_weight_and_zero_for_invalid(done: Config) -> None:
    h = upp_histograms(histograms_path(done), "tracks", TRACKS_W)
    out_j = read_all(outputs(done, "train"), "jets")
    out_t = read_all(outputs(done, "train"), "tracks")
    src_t = inputs(done, "train", "tracks")[by_event(out_j, inputs(done, "train", "jets"))]
    valid = src_t["valid"]
    assert np.array_equal(out_t["valid"], valid)
    assert np.all(out_t[TRACKS_W][~valid] == 0)
    assert np.array_equal(out_t[TRACKS_W][valid], expected_weights(h, src_t[valid]))


def test_rounding_to_half_precision_never_changes_a_weight(done: Config) -> None:
    """Jets whose float16 eta falls in another bin keep the weight of their true bin."""
    h = upp_histograms(histograms_path(done), "jets", JETS_W)
    out = read_all(outputs(done, "train"), "jets")
    src = inputs(done, "train", "jets")
    src = src[by_event(out, src)]
    assert out["eta_btagJes"].dtype == np.float16
    true_bin = bin_index(h, src)[1]
    rounded_bin = np.searchsorted(h["edges"][1], out["eta_btagJes"].astype(np.float64),
                                  side="right") - 1
    moved = true_bin != rounded_bin
    assert moved.sum() > 0  # the mock data has such jets: the test has teeth
    assert np.array_equal(out[JETS_W][moved], expected_weights(h, src[moved]))


def test_weighted_classes_equal_the_target_in_every_populated_bin(done: Config) -> None:
    """All train jets are histogrammed (num_jets_estimate > train jets), so the weighted count
    of every class in every populated bin is the target."""
    h = upp_histograms(histograms_path(done), "jets", JETS_W)
    out = read_all(outputs(done, "train"), "jets")
    src = inputs(done, "train", "jets")
    src = src[by_event(out, src)]
    n_bins = h["target"].size
    flat = np.ravel_multi_index(bin_index(h, src), h["target"].shape)
    populated = np.logical_and.reduce([n > 0 for n in h["hists"].values()]).ravel()
    assert populated.sum() > 20
    target = h["target"].ravel()[populated]
    for c in h["weights"]:
        m = out["flavour_label"] == c
        weighted = np.bincount(flat[m], weights=out[JETS_W][m].astype(np.float64),
                               minlength=n_bins)[populated]
        assert np.allclose(weighted / target, 1, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- precision
def test_half_precision_keeps_full_precision_vars_and_f4_weights(done: Config) -> None:
    with h5py.File(outputs(done, "train")[0], "r") as f:
        jets, tracks = f["jets"].dtype, f["tracks"].dtype
    assert jets["pt_btagJes"] == np.float32 and jets["pt"] == np.float32
    assert jets["eta_btagJes"] == np.float16 and jets["eta"] == np.float16
    assert jets[JETS_W] == np.float32 and tracks[TRACKS_W] == np.float32
    assert tracks["d0"] == np.float16 and tracks["valid"] == np.bool_
    assert jets["flavour_label"] == np.int32


def test_full_precision_and_lzf(base: Path) -> None:
    config = merged(base, "full", precision="full", compression="lzf")
    with h5py.File(outputs(config, "val")[0], "r") as f:
        assert f["jets"].dtype["eta_btagJes"] == np.float32
        assert f["tracks"].dtype["d0"] == np.float32
        assert f["tracks"].compression == "lzf"
    out = read_all(outputs(config, "val"), "jets")
    src = inputs(config, "val", "jets")
    assert np.array_equal(out["eta_btagJes"], src["eta_btagJes"][by_event(out, src)])


def test_train_keeps_configured_variables_test_keeps_everything(done: Config) -> None:
    with h5py.File(outputs(done, "train")[0], "r") as f:
        names = set(f["jets"].dtype.names)
    assert names == {*done.variables["jets"].variables, "flavour_label", JETS_W}
    with h5py.File(outputs(done, "test")[0], "r") as f:
        assert "absEta_btagJes" in f["jets"].dtype.names  # not configured: test keeps all
        assert f["tracks"].compression == "gzip"


# ----------------------------------------------------------------------------- attributes, VDS
def test_attributes_hold_what_was_written(done: Config) -> None:
    for p in outputs(done, "train"):
        with h5py.File(p, "r") as f:
            labels = f["jets"]["flavour_label"]
            counts = dict(zip(FLAVOURS, np.bincount(labels, minlength=4).tolist(),
                              strict=True))
            assert list(f["jets"].attrs["flavour_label"]) == list(FLAVOURS)
            assert json.loads(f.attrs["jet_counts"]) == counts
            assert f.attrs["unique_jets"] == len(labels)
            assert f.attrs["resampling_method"] == "reweighting"
            assert f.attrs["upp_grid_version"]
            assert json.loads(f.attrs["config"])["global"]["num_jets_per_output_file"] == PER_FILE
            dsids = f.attrs["dsids"]
            assert "user.mock.601589" in dsids and "user.mock.800030" in dsids


@pytest.mark.parametrize("split", SPLITS)
def test_vds_covers_exactly_the_files(done: Config, split: str) -> None:
    out_dir = done.global_.out_dir
    files = outputs(done, split)
    with h5py.File(out_dir / f"pp_output_{split}_vds.h5", "r") as f:
        sources = [(out_dir / s.file_name).resolve() for s in f["jets"].virtual_sources()]
        assert sources == [p.resolve() for p in files]
        assert np.array_equal(f["jets"][:], read_all(files, "jets"))
        assert f["tracks"].shape[0] == f["jets"].shape[0]
        assert f.attrs["unique_jets"] == f["jets"].shape[0]
        assert json.loads(f.attrs["jet_counts"]) == read_catalogue(done).num_jets[split]
        assert list(f["jets"].attrs["flavour_label"]) == list(FLAVOURS)


def test_stale_files_of_an_earlier_run_are_removed_not_globbed(base: Path) -> None:
    config = merged(base, "stale", num_jets_per_output_file=3_000)
    many = len(outputs(config, "train"))
    config = merged(base, "stale", num_jets_per_output_file=9_000)
    files = outputs(config, "train")
    assert len(files) < many
    total = read_catalogue(config).total("train")
    with h5py.File(config.global_.out_dir / "pp_output_train_vds.h5", "r") as f:
        assert f["jets"].shape[0] == total
        assert len(f["jets"].virtual_sources()) == len(files)
    assert sum(h5py.File(p, "r")["jets"].shape[0] for p in files) == total


# ----------------------------------------------------------------------------- bookkeeping
@pytest.fixture
def small(tmp_path: Path) -> Config:
    """A private 6k-jet dataset, split and weighted, for tests that break things."""
    prepare(tmp_path, 6_000, seed=11)
    config = write_config(tmp_path, "small", num_jets_per_output_file=1_000)
    weights_stage(config, plots=False)
    return config


def own_scratch() -> list[Path]:
    """Scratch directories of this process's merges left in memory (tmpfs)."""
    root = merge_scratch.TMPFS / f"upp-grid-scratch-{os.getuid()}"
    return list(root.glob(f"{os.getpid()}-*")) if root.is_dir() else []


def nothing_published(config: Config) -> bool:
    out = config.global_.out_dir
    return not list(out.glob("*/pp_output_*.h5")) and not list(out.glob("*_vds.h5"))


def test_a_wrong_catalogue_count_publishes_nothing(small: Config) -> None:
    path = catalogue_path(small)
    data = yaml.safe_load(path.read_text())
    data["num_jets"]["train"]["bjets"] += 1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BookkeepingError, match="bjets"):
        merge_stage(small)
    assert nothing_published(small)


def test_a_missing_input_publishes_nothing(small: Config) -> None:
    Path(read_catalogue(small).files["val"]["cjets"][0]).unlink()
    with pytest.raises(InputError, match="missing or unreadable"):
        merge_stage(small)
    assert nothing_published(small)


def test_a_lost_jet_fails_the_stage_and_publishes_nothing(small: Config,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Like UPP's reader dropping a jet: the count check catches it."""
    real = merge_shuffle.block_selection

    def lossy(counts: np.ndarray, keep: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return real(counts, keep, rng)[:-1]

    monkeypatch.setattr(merge_shuffle, "block_selection", lossy)
    with pytest.raises(BookkeepingError):
        merge_stage(small)
    assert nothing_published(small)
    assert not own_scratch()  # the raw rows in memory are gone with the failure


# ----------------------------------------------------------------------------- resume
def test_a_rerun_keeps_a_complete_merge(small: Config) -> None:
    first = merge_stage(small)
    mtimes = [p.stat().st_mtime_ns for p in outputs(small, "train")]
    again = merge_stage(small)
    assert [p.stat().st_mtime_ns for p in outputs(small, "train")] == mtimes
    by_split = {r.split: r for r in again.results}
    assert by_split["train"].reused == len(mtimes)
    assert [r.jets_out for r in again.results] == [r.jets_out for r in first.results]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_resume_after_sigkill_gives_identical_files(tmp_path: Path) -> None:
    prepare(tmp_path, 24_000, seed=3)
    reference = write_config(tmp_path, "uninterrupted", num_jets_per_output_file=1_000)
    weights_stage(reference, plots=False)
    merge_stage(reference)
    config = write_config(tmp_path, "killed", num_jets_per_output_file=1_000)
    weights_stage(config, plots=False)
    staging = config.global_.out_dir / "train" / ".staging"
    proc = subprocess.Popen([sys.executable, "-m", "upp_grid", "merge", "-c", str(config.path),
                             "--split", "train", "--workers", "1"], env=cli_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(staging.glob("pp_output_train-full_*.h5")) and time.monotonic() < deadline:
        assert proc.poll() is None, "merge finished before it could be interrupted"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (config.global_.out_dir / "pp_output_train_vds.h5").exists()
    kept = len(list(staging.glob("pp_output_train-full_*.h5")))
    assert 1 <= kept < len(outputs(reference, "train"))  # killed mid-way
    result = subprocess.run([sys.executable, "-m", "upp_grid", "merge", "-c", str(config.path),
                             "--split", "train"], env=cli_env(), capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert f"({kept} kept from an earlier run)" in result.stdout
    assert not staging.exists()
    ref_files, files = outputs(reference, "train"), outputs(config, "train")
    assert len(files) == len(ref_files)
    for a, b in zip(ref_files, files, strict=True):
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            for group in ("jets", "tracks"):
                assert np.array_equal(fa[group][:], fb[group][:])


def test_cli_without_histograms_is_a_one_line_error(small: Config) -> None:
    histograms_path(small).unlink()
    run = subprocess.run([sys.executable, "-m", "upp_grid", "merge", "-c", str(small.path)],
                         env=cli_env(), capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"upp-grid: error: {histograms_path(small)}: no histograms "
        "(run `upp-grid weights -c CFG` first)"]
