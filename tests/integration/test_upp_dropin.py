"""A drop-in for UPP users and for Salt: the outputs survive being copied, the test split holds
UPP's jets, and UPP's config constructs work as UPP reads them.

Every expectation is computed here from the mock inputs with plain numpy (UPP's rules re-typed
by hand), never taken from upp-grid's own code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from tests.cli_support import REPO
from upp_grid.config import load_config
from upp_grid.errors import InputError
from upp_grid.mock import make_mock
from upp_grid.stages.catalogue import read_catalogue
from upp_grid.stages.run import run_chain
from upp_grid.stages.split_local import split_stage

TRUTH = {"bjets": 5, "cjets": 4, "ujets": 0, "taujets": 15}
FLAVOURS = tuple(TRUTH)
DSID_SAMPLE = {"601589": "ttbar", "800030": "zprime"}


@pytest.fixture(scope="module")
def ntuples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dropin") / "ntuples"
    make_mock(out, num_jets=30_000, num_files=3, seed=11)
    return out


def demo_data(base: Path, ntuples: Path) -> dict:
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["global"].update(base_dir=str(base), ntuple_dir=str(ntuples),
                          num_jets_per_output_file=8_000)
    data["reweighting"]["max_zero_weight_fraction"] = 1.0
    return data


def write(base: Path, data: dict, name: str = "config.yaml") -> Path:
    base.mkdir(parents=True, exist_ok=True)
    path = base / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(*args: str | Path, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    """``upp-grid ARGS`` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "upp_grid", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def read_inputs(ntuples: Path) -> dict[str, list[np.ndarray]]:
    """Jets of every input file, per sample."""
    out: dict[str, list[np.ndarray]] = {}
    for path in sorted(p for p in ntuples.rglob("*.h5") if p.is_file()):
        with h5py.File(path) as f:
            out.setdefault(DSID_SAMPLE[path.name.split(".")[2]], []).append(f["jets"][:])
    return out


def region_cut(jets: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (jets["pt_btagJes"] > lo) & (jets["pt_btagJes"] < hi) & (jets["absEta_btagJes"] < 2.5)


# --------------------------------------------------------------------------- VDS for Salt
@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory, ntuples: Path) -> Path:
    base = tmp_path_factory.mktemp("merged")
    data = demo_data(base, ntuples)
    data.update(norm_fname="norm/my_norm.yaml", class_fname="my_class.yaml")  # UPP's keys
    config = load_config(write(base, data))
    run_chain(config, plots=False)
    return config.global_.out_dir


def read_groups(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {g: f[g][:] for g in f}


def concat_files(split_dir: Path) -> dict[str, np.ndarray]:
    files = sorted(split_dir.glob("pp_output_*-full_*.h5"),
                   key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    parts = [read_groups(p) for p in files]
    return {g: np.concatenate([p[g] for p in parts]) for g in parts[0]}


def test_merged_files_have_upp_names_and_root_attributes(merged):
    names = sorted(p.name for p in (merged / "train").glob("*.h5"))
    assert names == [f"pp_output_train-full_{i}.h5" for i in range(len(names))]
    assert len(names) > 1
    with h5py.File(merged / "train" / names[0]) as f:
        total = sum(json.loads(h5py.File(merged / "pp_output_train_vds.h5").attrs["jet_counts"])
                    .values())
        assert int(f.attrs["jets_counts"]) == total  # UPP: the split's jets, in every file
        assert str(f.attrs["upp_hash"]).startswith("upp-grid ")
        assert str(f.attrs["writer_version"]).startswith("upp-grid ")
        assert "upp_grid_version" in f.attrs and "config_hash" in f.attrs  # ours stay


def test_vds_copied_alone_reads_the_real_data(merged, tmp_path):
    """Salt's move_files_temp copies the virtual file alone: it must still read the jets."""
    for split in ("train", "val", "test"):
        copy = tmp_path / split / f"pp_output_{split}_vds.h5"
        copy.parent.mkdir()
        shutil.copy(merged / f"pp_output_{split}_vds.h5", copy)
        expected = concat_files(merged / split)
        got = read_groups(copy)
        assert set(got) == set(expected) == {"jets", "tracks"}
        for g in got:
            assert got[g].dtype == expected[g].dtype
            np.testing.assert_array_equal(got[g], expected[g])
        assert (got["jets"]["flavour_label"] >= 0).all()
        result = cli("verify", copy.parent, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


def test_vds_with_a_missing_source_reads_nan_and_minus_one_and_verify_fails(merged, tmp_path):
    vds = tmp_path / "alone" / "pp_output_train_vds.h5"
    vds.parent.mkdir()
    shutil.copy(merged / "pp_output_train_vds.h5", vds)
    # the copy reads the merged files by absolute path; lose the second one
    with h5py.File(vds) as f:
        dcpl = f["jets"].id.get_create_plist()
        lo, hi = dcpl.get_virtual_vspace(0).get_select_bounds()
        first_file_rows = int(hi[0]) - int(lo[0]) + 1
    hidden = merged.with_name("gone")
    lost = merged / "train" / "pp_output_train-full_1.h5"
    lost.rename(hidden)
    try:
        with h5py.File(vds) as f:
            jets, tracks = f["jets"][:], f["tracks"][:]
        result = cli("verify", vds.parent, cwd=tmp_path)
    finally:
        hidden.rename(lost)
    second = slice(first_file_rows, None)
    assert np.isnan(jets["pt"][second]).all() and (jets["flavour_label"][second] == -1).all()
    assert not tracks["valid"][second].any() and np.isnan(tracks["d0"][second]).all()
    assert np.isfinite(jets["pt"][:first_file_rows]).all()
    assert (jets["flavour_label"][:first_file_rows] >= 0).all()
    assert result.returncode == 1
    assert "pp_output_train-full_1.h5 not found" in result.stderr
    assert "read as fill values (NaN, flavour_label -1)" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the test split
def two_region_data(base: Path, ntuples: Path, test_region_cuts: bool | None) -> dict:
    """ttbar in both regions (UPP would write its test jets twice and crash)."""
    data = demo_data(base, ntuples)
    data["components"] = [
        {"region": data["lowpt"], "sample": data["ttbar"], "flavours": list(FLAVOURS),
         "num_jets": -1},
        {"region": data["highpt"], "sample": data["ttbar"], "flavours": list(FLAVOURS),
         "num_jets": -1},
        {"region": data["highpt"], "sample": data["zprime"], "flavours": list(FLAVOURS),
         "num_jets": -1},
    ]
    if test_region_cuts is not None:
        data["global"]["test_region_cuts"] = test_region_cuts
    return data


def expected_test(ntuples: Path, region_cuts: bool) -> dict[str, dict[str, np.ndarray]]:
    """eventNumbers of the test jets per sample and flavour by UPP's rule (no region cuts), or
    with the region cuts of the two-region config."""
    regions = {"ttbar": [(20e3, 250e3), (250e3, 6e6)], "zprime": [(250e3, 6e6)]}
    out: dict[str, dict[str, np.ndarray]] = {}
    for sample, parts in read_inputs(ntuples).items():
        jets = np.concatenate(parts)
        sel = jets["eventNumber"] % 10 == 9
        if region_cuts:
            sel &= np.logical_or.reduce([region_cut(jets, lo, hi) for lo, hi in regions[sample]])
        for flavour, truth in TRUTH.items():
            mask = sel & (jets["HadronConeExclTruthLabelID"] == truth)
            out.setdefault(sample, {})[flavour] = np.sort(jets["eventNumber"][mask])
    return out


def test_test_split_takes_no_region_cuts_and_writes_a_sample_once(tmp_path, ntuples):
    config = load_config(write(tmp_path, two_region_data(tmp_path, ntuples, None)))
    summary = run_chain(config, plots=False)
    expected = expected_test(ntuples, region_cuts=False)
    cat = read_catalogue(config)
    assert set(cat.components["test"]) == {f"inclusive_{s}_{f}" for s in ("ttbar", "zprime")
                                           for f in FLAVOURS}
    for sample, per_flavour in expected.items():
        for flavour, events in per_flavour.items():
            assert cat.components["test"][f"inclusive_{sample}_{flavour}"] == len(events)
    with h5py.File(config.global_.out_dir / "pp_output_test_vds.h5") as f:
        jets = f["jets"][:]
    all_expected = np.sort(np.concatenate([e for s in expected.values() for e in s.values()]))
    np.testing.assert_array_equal(np.sort(jets["eventNumber"]), all_expected)
    assert len(np.unique(jets["eventNumber"])) == len(jets)  # every jet once
    for i, flavour in enumerate(FLAVOURS):
        got = np.sort(jets["eventNumber"][jets["flavour_label"] == i])
        want = np.sort(np.concatenate([expected[s][flavour] for s in expected]))
        np.testing.assert_array_equal(got, want)
    assert dict(summary.jets_out["test"]) == {f: sum(len(expected[s][f]) for s in expected)
                                        for f in FLAVOURS}
    # the test jets include the ones outside every region (pt below 20 GeV)
    inputs = np.concatenate([j for parts in read_inputs(ntuples).values() for j in parts])
    low = inputs[(inputs["eventNumber"] % 10 == 9) & (inputs["pt_btagJes"] < 20e3)]
    assert len(low) and np.isin(low["eventNumber"], jets["eventNumber"]).all()


def test_test_region_cuts_true_keeps_the_region_cuts(tmp_path, ntuples):
    config = load_config(write(tmp_path, two_region_data(tmp_path, ntuples, True)))
    split_stage(config)
    cat = read_catalogue(config)
    expected = expected_test(ntuples, region_cuts=True)
    assert "inclusive_ttbar_bjets" not in cat.components["test"]
    for sample, per_flavour in expected.items():
        for flavour, events in per_flavour.items():
            regions = ("lowpt", "highpt") if sample == "ttbar" else ("highpt",)
            assert sum(cat.components["test"][f"{r}_{sample}_{flavour}"]
                       for r in regions) == len(events)
    assert yaml.safe_load((config.global_.components_dir / "organised-components.yaml")
                          .read_text())["provenance"]["test_region_cuts"] is True


def test_check_and_split_say_which_test_rule_applies(tmp_path, ntuples):
    path = write(tmp_path, two_region_data(tmp_path, ntuples, None))
    result = cli("check", "-c", path, "--config-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no region cuts (UPP's rule)" in " ".join(result.stdout.split())


# --------------------------------------------------------------------------- config language
def test_check_config_only_needs_no_inputs(tmp_path):
    data = demo_data(tmp_path, tmp_path / "no-such-ntuples")
    path = write(tmp_path, data)
    result = cli("check", "-c", path, "--config-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout and "components" in result.stdout
    full = cli("check", "-c", path, cwd=tmp_path)
    assert "no-such-ntuples" in one_line_error(full)


def test_resampling_config_is_refused_at_check_with_one_line(tmp_path, ntuples):
    data = demo_data(tmp_path, ntuples)
    del data["reweighting"]
    data["resampling"] = {"target": "cjets", "method": "countup", "sampling_fraction": "auto",
                          "variables": {"pt_btagJes": {"bins": [[20e3, 250e3, 50]]},
                                        "absEta_btagJes": {"bins": [[0, 2.5, 20]]}}}
    result = cli("check", "-c", write(tmp_path, data), "--config-only", cwd=tmp_path)
    line = one_line_error(result)
    assert "resampling" in line and "upp-grid reweights" in line and "reweighting:" in line
    assert "pt_btagJes, absEta_btagJes" in line and "target: cjets" in line
    assert not (tmp_path / "split-components").exists()


def test_overlapping_split_cuts_are_caught_at_check(tmp_path, ntuples):
    data = demo_data(tmp_path, ntuples)
    data["global_cuts"]["val"] = [["eventNumber", "%10>=", 7]]
    result = cli("check", "-c", write(tmp_path, data), "--config-only", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()  # one line per overlapping pair
    assert len(lines) == 2, result.stderr
    assert "the train and val split cuts overlap: a jet with eventNumber=7" in lines[0]
    assert "the val and test split cuts overlap: a jet with eventNumber=9" in lines[1]


UPP_SIMPLE_SPLIT = """\
train:
  - [eventNumber, "%10<=", 7]
val:
  - [eventNumber, "%10==", 8]
test:
  - [eventNumber, "%10==", 9]
"""


def upp_shaped(base: Path, ntuples: Path) -> dict:
    """Shaped like UPP's tests/integration/fixtures/test_config_rw.yaml: the split cuts from
    UPP's configs folder, object-agnostic keys."""
    data = demo_data(base, ntuples)
    for comp in data["components"]:
        comp["classes"] = comp.pop("flavours")
        comp["num_global_objects"] = comp.pop("num_jets")
    data["global"]["global_name"] = data["global"].pop("jets_name")
    return data


def test_include_from_upp_include_path_and_from_upps_configs_folder(tmp_path, ntuples):
    data = upp_shaped(tmp_path, ntuples)
    data["global_cuts"] = "INCLUDE"
    path = tmp_path / "cfg" / "config.yaml"
    write(path.parent, data)
    path.write_text(path.read_text().replace("global_cuts: INCLUDE",
                                             "global_cuts: !include GN3V01/simple-split.yaml"))
    missing = cli("check", "-c", path, "--config-only", cwd=tmp_path)
    assert "GN3V01/simple-split.yaml" in one_line_error(missing)
    # a folder on UPP_GRID_INCLUDE_PATH
    shared = tmp_path / "shared"
    (shared / "GN3V01").mkdir(parents=True)
    (shared / "GN3V01" / "simple-split.yaml").write_text(UPP_SIMPLE_SPLIT)
    ok = cli("check", "-c", path, "--config-only", cwd=tmp_path,
             env={"UPP_GRID_INCLUDE_PATH": f"{tmp_path / 'nowhere'}{os.pathsep}{shared}"})
    assert ok.returncode == 0, ok.stderr
    # UPP's own configs/ folder (upp/configs of an installed umami-preprocessing)
    site = tmp_path / "site"
    (site / "upp" / "configs" / "GN3V01").mkdir(parents=True)
    (site / "upp" / "__init__.py").write_text('raise ImportError("never imported")\n')
    (site / "upp" / "configs" / "GN3V01" / "simple-split.yaml").write_text(UPP_SIMPLE_SPLIT)
    ok = cli("check", "-c", path, "--config-only", cwd=tmp_path,
             env={"PYTHONPATH": f"{REPO}{os.pathsep}{site}"})
    assert ok.returncode == 0, ok.stderr
    assert "eventNumber %10== 8" in ok.stdout


def test_class_config_custom_flavours_through_ftags_loader(tmp_path, ntuples):
    flavours = [
        {"name": "heavy", "label": "b or c", "category": "custom", "colour": "tab:red",
         "cuts": ["HadronConeExclTruthLabelID >= 4", "HadronConeExclTruthLabelID <= 5"]},
        {"name": "light", "label": "light", "category": "custom", "colour": "tab:green",
         "cuts": ["HadronConeExclTruthLabelID == 0"]},
    ]
    (tmp_path / "flavours").mkdir()
    (tmp_path / "flavours" / "my-flavours.yaml").write_text(yaml.safe_dump(flavours))
    data = upp_shaped(tmp_path, ntuples)
    data["global"]["class_config"] = "flavours/my-flavours.yaml"  # relative to base_dir
    for comp in data["components"]:
        comp["classes"] = ["heavy", "light"]
    path = write(tmp_path, data)
    config = load_config(path)
    assert config.flavour_names == ("heavy", "light")
    split_stage(config)
    cat = read_catalogue(config)
    want = {"heavy": 0, "light": 0}
    regions = {"ttbar": (20e3, 250e3), "zprime": (250e3, 6e6)}  # the demo's components
    for sample, parts in read_inputs(ntuples).items():
        jets = np.concatenate(parts)
        inside = region_cut(jets, *regions[sample]) & (jets["eventNumber"] % 10 <= 7)
        truth = jets["HadronConeExclTruthLabelID"]
        want["heavy"] += np.count_nonzero(inside & np.isin(truth, (4, 5)))
        want["light"] += np.count_nonzero(inside & (truth == 0))
    assert cat.num_jets["train"] == want
    # the definitions travel with the config (the grid worker has no copy of the file)
    assert load_config(path).raw["global"]["class_config"][0]["name"] == "heavy"
    (tmp_path / "flavours" / "my-flavours.yaml").unlink()
    line = one_line_error(cli("check", "-c", path, "--config-only", cwd=tmp_path))
    assert "global.class_config" in line and "my-flavours.yaml: file not found" in line


def test_num_global_objects_auto_is_solved_as_upp_solves_it(tmp_path, ntuples):
    data = upp_shaped(tmp_path, ntuples)
    for comp in data["components"]:
        comp["num_global_objects"] = "auto"
    data["ttbar"]["sample_weight"] = 2
    data["components"][0]["sample"]["sample_weight"] = 2
    config = load_config(write(tmp_path, data))
    assert config.auto_counts
    _, cat = split_stage(config)
    solved = yaml.safe_load((config.global_.components_dir / "organised-components.yaml")
                            .read_text())["auto_counts"]["solved_train"]
    # UPP's solve_counts: per class, the fewest available per unit of region weight
    avail = cat.components["train"]
    weights = {"lowpt_ttbar": 2, "highpt_zprime": 1}
    for flavour in FLAVOURS:
        unit = min(avail[f"{r}_{flavour}"] / w for r, w in weights.items())
        for r, w in weights.items():
            assert solved[f"{r}_{flavour}"] == int(unit) * w
    # nothing is capped: every jet is kept (UPP's reweighting chain keeps them too)
    assert sum(cat.num_jets["train"].values()) == sum(avail.values())


def test_auto_in_only_some_components_is_an_error(tmp_path, ntuples):
    data = upp_shaped(tmp_path, ntuples)
    data["components"][0]["num_global_objects"] = "auto"
    line = one_line_error(cli("check", "-c", write(tmp_path, data), "--config-only",
                              cwd=tmp_path))
    assert "num_jets: auto" in line and "all or none" in line


def test_absolute_sample_patterns(tmp_path, ntuples):
    data = demo_data(tmp_path, ntuples)
    data["global"]["ntuple_dir"] = str(tmp_path / "unused")
    data["ttbar"]["pattern"] = str(ntuples / "*601589*" / "*.h5")
    data["zprime"]["pattern"] = [str(ntuples / "*800030*")]
    for comp, sample in zip(data["components"], ("ttbar", "zprime"), strict=True):
        comp["sample"] = data[sample]
    config = load_config(write(tmp_path, data))
    _, cat = split_stage(config)
    jets = read_inputs(ntuples)
    ttbar = np.concatenate(jets["ttbar"])
    want = np.count_nonzero((ttbar["eventNumber"] % 10 <= 7) & region_cut(ttbar, 20e3, 250e3)
                            & (ttbar["HadronConeExclTruthLabelID"] == 5))
    assert cat.components["train"]["lowpt_ttbar_bjets"] == want


def test_track_selection_makes_failing_tracks_invalid(tmp_path, ntuples):
    data = demo_data(tmp_path, ntuples)
    data["variables"]["tracks"]["selection"] = ["d0 < 3.5"]  # UPP's fixture's form
    config = load_config(write(tmp_path, data))
    split_stage(config)
    path = next(p for p in sorted(ntuples.rglob("*601589*.h5")) if p.is_file())
    with h5py.File(path) as f:
        jets, tracks = f["jets"][:], f["tracks"][:]
    rows = np.flatnonzero((jets["eventNumber"] % 10 <= 7) & region_cut(jets, 20e3, 250e3)
                          & (jets["HadronConeExclTruthLabelID"] == 5))
    src = tracks[rows]
    unit = next(config.global_.components_dir.rglob(f"{path.stem}/output_train_lowpt_ttbar_"
                                                    "bjets.h5"))
    with h5py.File(unit) as f:
        out = f["tracks"][:]
    keep = src["valid"] & (src["d0"] < 3.5)
    assert (src["valid"] & ~keep).any()  # the selection removes some valid tracks
    np.testing.assert_array_equal(out["valid"], keep)
    np.testing.assert_array_equal(out["d0"][keep], src["d0"][keep])
    assert np.isnan(out["d0"][src["valid"] & ~keep]).all()


def test_selection_on_jets_is_an_error(tmp_path, ntuples):
    data = demo_data(tmp_path, ntuples)
    data["variables"]["jets"]["selection"] = ["pt > 20000"]
    line = one_line_error(cli("check", "-c", write(tmp_path, data), "--config-only",
                              cwd=tmp_path))
    assert "variables.jets.selection" in line and "global_cuts" in line


def test_norm_fname_and_class_fname_are_honoured(merged, tmp_path, ntuples):
    out = merged
    assert (out / "norm" / "my_norm.yaml").is_file() and (out / "my_class.yaml").is_file()
    assert not (out / "norm_dict.yaml").exists() and not (out / "class_dict.yaml").exists()
    norm = yaml.safe_load((out / "norm" / "my_norm.yaml").read_text())
    assert set(norm) == {"jets", "tracks"} and "pt_btagJes" in norm["jets"]
    data = demo_data(tmp_path, ntuples)
    data["norm_fname"] = "../outside.yaml"
    line = one_line_error(cli("check", "-c", write(tmp_path, data), "--config-only",
                              cwd=tmp_path))
    assert "norm_fname" in line and "under global.out_dir" in line


def test_upp_catalogue_key_is_read_and_refused_with_the_reason(merged, tmp_path, ntuples):
    base = tmp_path
    data = demo_data(base, ntuples)
    config = load_config(write(base, data))
    cat_path = config.global_.components_dir / "organised-components.yaml"
    cat_path.parent.mkdir(parents=True)
    upp = {"files": {s: {f: [] for f in FLAVOURS} for s in ("train", "val", "test")},
           "num_global_objects": {s: dict.fromkeys(FLAVOURS, 0)
                                  for s in ("train", "val", "test")}}
    cat_path.write_text(yaml.safe_dump(upp))
    with pytest.raises(InputError, match="written by UPP"):
        read_catalogue(config)

