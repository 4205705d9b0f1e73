"""The split stage, checked against an independent numpy selection of the mock inputs.

Expected outputs are computed here from the input files with h5py and plain numpy (the cuts are
re-typed from the configs on purpose), never with the code under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 — split outputs are Blosc-compressed
import numpy as np
import pytest
import yaml
from numpy.lib import recfunctions as rfn

from upp_grid.config import load_config
from upp_grid.mock import JET_DTYPE, make_mock
from upp_grid.stages.split import RECORD_NAME, split_file
from upp_grid.stages.split_local import split_stage

REPO = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")
SPLIT_CUT = {"train": lambda e: e % 10 <= 7, "val": lambda e: e % 10 == 8,
             "test": lambda e: e % 10 == 9}
TRUTH = {"bjets": 5, "cjets": 4, "ujets": 0, "taujets": 15}  # HadronConeExclTruthLabelID
FLAVOURS = ("bjets", "cjets", "ujets", "taujets")  # config order = flavour_label
DSID_SAMPLE = {"601589": "ttbar", "800030": "zprime"}
Cut = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Expectation:
    """What a config should produce, re-typed by hand from the YAML."""

    regions: dict[str, Cut]  # region name -> jet selection
    sample_regions: dict[str, tuple[str, ...]]  # sample -> its regions
    train_fields: dict[str, set[str]]  # group -> fields of train/val outputs


DEMO = Expectation(
    regions={
        "lowpt": lambda j: (j["pt_btagJes"] > 20_000) & (j["pt_btagJes"] < 250_000)
        & (j["absEta_btagJes"] < 2.5),
        "highpt": lambda j: (j["pt_btagJes"] > 250_000) & (j["pt_btagJes"] < 6_000_000)
        & (j["absEta_btagJes"] < 2.5),
    },
    sample_regions={"ttbar": ("lowpt",), "zprime": ("highpt",)},
    train_fields={
        "jets": {"pt_btagJes", "eta_btagJes", "pt", "eta", "mass", "eventNumber",
                 "HadronConeExclTruthLabelID", "HadronGhostTruthLabelID", "flavour_label"},
        "tracks": {"d0", "z0SinTheta", "dphi", "deta", "qOverP", "IP3D_signed_d0_significance",
                   "IP3D_signed_z0_significance", "numberOfPixelHits", "numberOfSCTHits",
                   "leptonID", "ftagTruthOriginLabel", "valid"},
    },
)

UPP_RW = Expectation(
    regions={
        "lowpt": lambda j: (j["pt"] > 20_000) & (j["pt"] < 250_000) & (j["eta"] < 2.5)
        & (j["eta"] > -2.5),
        "highpt": lambda j: (j["pt"] > 250_000) & (j["pt"] < 6_000_000) & (j["eta"] < 2.5)
        & (j["eta"] > -2.5),
    },
    sample_regions={"ttbar": ("lowpt",), "zprime": ("highpt",)},
    train_fields={
        "jets": {"pt", "eta", "mass", "eventNumber", "flavour_label"},
        "tracks": {"dphi", "deta", "qOverP", "leptonID", "valid"},
    },
)


# ------------------------------------------------------------------------------ helpers
def demo_config(tmp_path: Path, ntuples: Path, edit: Callable[[dict], None] | None = None
                ) -> Path:
    """configs/demo.yaml with base_dir = tmp_path and the given ntuple dir (optionally edited)."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["global"]["base_dir"] = str(tmp_path)
    data["global"]["ntuple_dir"] = str(ntuples)
    if edit:
        edit(data)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def upp_rw_config(tmp_path: Path, ntuples: Path) -> Path:
    """configs/upp-rw-integration.yaml (with its include) rooted at tmp_path."""
    shutil.copytree(REPO / "configs" / "includes", tmp_path / "includes")
    text = (REPO / "configs" / "upp-rw-integration.yaml").read_text()
    text, n_base = re.subn(r"(?m)^  base_dir: .*$", f"  base_dir: {tmp_path}", text)
    text, n_nt = re.subn(r"(?m)^  ntuple_dir: .*$", f"  ntuple_dir: {ntuples}", text)
    assert (n_base, n_nt) == (1, 1)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """``upp-grid ARGS`` as a user runs it: a subprocess with this working tree first."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "upp_grid", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def inputs(ntuples: Path) -> list[Path]:
    return sorted(p for p in ntuples.rglob("*.h5") if p.is_file())


def input_of(ntuples: Path, sample: str) -> Path:
    """The first input file of ``sample``."""
    return next(p for p in inputs(ntuples) if sample_of(p) == sample)


def sample_of(path: Path) -> str:
    return DSID_SAMPLE[path.name.split(".")[2]]


def unit_dir(components: Path, ntuples: Path, path: Path) -> Path:
    return components / sample_of(path) / path.relative_to(ntuples).with_suffix("")


def expected_rows(jets: np.ndarray, spec: Expectation, sample: str,
                  test_region_cuts: bool = False) -> dict[str, np.ndarray]:
    """``{output name: input row indices}`` for one input file, by plain numpy."""
    out = {}
    for split in SPLITS:
        in_split = SPLIT_CUT[split](jets["eventNumber"])
        # UPP's test split: no region cuts, one output per sample and flavour
        regions = (spec.sample_regions[sample] if split != "test" or test_region_cuts
                   else ("inclusive",))
        for region in regions:
            in_region = (np.ones(len(jets), dtype=bool) if region == "inclusive"
                         else spec.regions[region](jets))
            for flavour in FLAVOURS:
                mask = in_split & in_region & (jets["HadronConeExclTruthLabelID"]
                                               == TRUTH[flavour])
                out[f"{split}_{region}_{sample}_{flavour}"] = np.flatnonzero(mask)
    return out


def read_all(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f}


def check_split_outputs(components: Path, ntuples: Path, spec: Expectation) -> dict[str, int]:
    """Every output of every input equals the numpy selection; returns jets per split."""
    per_split = dict.fromkeys(SPLITS, 0)
    events: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for path in inputs(ntuples):
        src = read_all(path)
        unit = unit_dir(components, ntuples, path)
        expected = expected_rows(src["jets"], spec, sample_of(path))
        produced = sorted(p.name for p in unit.glob("output_*.h5"))
        assert produced == sorted(f"output_{name}.h5" for name in expected)
        for name, rows in expected.items():
            split, flavour = name.split("_")[0], name.split("_")[-1]
            out = read_all(unit / f"output_{name}.h5")
            assert set(out) == {"jets", "tracks"}
            assert len(out["jets"]) == len(out["tracks"]) == len(rows), name
            for group in ("jets", "tracks"):
                fields = set(out[group].dtype.names)
                if split == "test":
                    assert fields == set(src[group].dtype.names) | ({"flavour_label"} if
                                                                     group == "jets" else set())
                else:
                    assert fields == spec.train_fields[group], (name, group)
                for field in fields - {"flavour_label"}:
                    assert out[group][field].dtype == src[group][field].dtype  # full precision
                    np.testing.assert_array_equal(out[group][field], src[group][field][rows])
            assert (out["jets"]["flavour_label"] == FLAVOURS.index(flavour)).all()
            per_split[split] += len(rows)
            events[split].append(out["jets"]["eventNumber"])
    for split in SPLITS:
        numbers = np.concatenate(events[split])
        assert len(np.unique(numbers)) == len(numbers), f"a {split} jet is written twice"
    return per_split


def snapshot(components: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every array of every split output, by path relative to the components dir."""
    return {str(p.relative_to(components)): read_all(p)
            for p in sorted(components.rglob("output_*.h5"))
            if not any(part.startswith(".") for part in p.relative_to(components).parts)}


def assert_same_outputs(a: Path, b: Path) -> None:
    snap_a, snap_b = snapshot(a), snapshot(b)
    assert snap_a.keys() == snap_b.keys()
    assert snap_a
    for name, groups in snap_a.items():
        assert groups.keys() == snap_b[name].keys()
        for group, arr in groups.items():
            assert arr.dtype == snap_b[name][group].dtype
            np.testing.assert_array_equal(arr, snap_b[name][group], err_msg=f"{name} {group}")


def records(components: Path) -> dict[Path, dict]:
    return {p.parent: json.loads(p.read_text()) for p in components.rglob(RECORD_NAME)
            if not any(part.startswith(".") for part in p.relative_to(components).parts)}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The CLI's error contract: exit 1, exactly one stderr line, no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def rewrite(src: Path, dst: Path, drop_dataset: str | None = None,
            drop_field: tuple[str, str] | None = None) -> None:
    """Copy mock file ``src`` to ``dst`` without a dataset or without one field of a dataset."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = read_all(src)
    with h5py.File(dst, "w") as f:
        for name, arr in data.items():
            if name == drop_dataset:
                continue
            if drop_field and drop_field[0] == name:
                keep = [n for n in arr.dtype.names if n != drop_field[1]]
                arr = rfn.repack_fields(arr[keep])
            f.create_dataset(name, data=arr)


# ------------------------------------------------------------------------------ content
def test_demo_outputs_equal_an_independent_numpy_selection(tmp_path, split_ntuples):
    config = load_config(demo_config(tmp_path, split_ntuples))
    summary, cat = split_stage(config, workers=2)

    per_split = check_split_outputs(config.global_.components_dir, split_ntuples, DEMO)
    assert {s: cat.total(s) for s in SPLITS} == per_split
    assert len(summary.records) == 3 and not summary.failures
    for rec in summary.records:
        assert rec.jets_read == sum(rec.outputs.values()) + rec.no_component
        with h5py.File(rec.input) as f:
            assert rec.jets_read == len(f["jets"])


def test_catalogue_is_in_upp_format_and_counts_the_files_on_disk(tmp_path, split_ntuples):
    config = load_config(demo_config(tmp_path, split_ntuples))
    split_stage(config)

    cat = yaml.safe_load((config.global_.components_dir / "organised-components.yaml")
                         .read_text())
    for split in SPLITS:
        assert list(cat["files"][split]) == list(FLAVOURS)
        for flavour in FLAVOURS:
            files = cat["files"][split][flavour]
            assert len(files) == 3  # one per input file
            n = 0
            for file in files:
                assert Path(file).name.startswith(f"output_{split}_")
                assert Path(file).name.endswith(f"_{flavour}.h5")
                with h5py.File(file) as f:
                    n += len(f["jets"])
            assert cat["num_jets"][split][flavour] == n


def test_upp_integration_config_shape_splits_correctly(tmp_path, split_ntuples):
    result = cli("split", "-c", upp_rw_config(tmp_path, split_ntuples), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    per_split = check_split_outputs(tmp_path / "split-components-upp-rw", split_ntuples, UPP_RW)
    assert per_split["train"] > 0 and per_split["test"] > 0
    assert "total" in result.stdout  # the bookkeeping table


def test_split_file_writes_every_declared_output_even_with_zero_jets(tmp_path, split_ntuples):
    def add_empty_region(data: dict) -> None:
        data["components"].append({
            "region": {"name": "nowhere", "cuts": [["pt_btagJes", ">", 1e15]]},
            "sample": data["components"][0]["sample"],
            "flavours": list(FLAVOURS), "num_jets": -1})

    config = load_config(demo_config(tmp_path, split_ntuples, add_empty_region))
    path = input_of(split_ntuples, "ttbar")
    record = split_file(config, path, tmp_path / "job", ["ttbar"])

    names = {f"output_{s}_{r}_ttbar_{f}.h5" for s in ("train", "val")
             for r in ("lowpt", "nowhere") for f in FLAVOURS}
    names |= {f"output_test_inclusive_ttbar_{f}.h5" for f in FLAVOURS}  # no region cuts
    assert {p.name for p in (tmp_path / "job").iterdir()} == names | {RECORD_NAME}
    for split in ("train", "val"):
        out = read_all(tmp_path / "job" / f"output_{split}_nowhere_ttbar_bjets.h5")
        assert len(out["jets"]) == len(out["tracks"]) == 0
        assert "flavour_label" in out["jets"].dtype.names
        assert out["tracks"].shape == (0, 40)
    assert record.outputs["train_nowhere_ttbar_bjets"] == 0
    assert sum(record.outputs.values()) + record.no_component == record.jets_read


def test_flavour_label_in_the_input_is_overwritten(tmp_path, split_ntuples):
    src = input_of(split_ntuples, "zprime")
    ntuples = tmp_path / "ntuples"
    dst = ntuples / src.relative_to(split_ntuples)
    dst.parent.mkdir(parents=True)
    data = read_all(src)
    jets = np.empty(len(data["jets"]), [*JET_DTYPE.descr, ("flavour_label", "i4")])
    for name in JET_DTYPE.names:
        jets[name] = data["jets"][name]
    jets["flavour_label"] = 99
    with h5py.File(dst, "w") as f:
        f["jets"], f["tracks"] = jets, data["tracks"]
    config = load_config(demo_config(tmp_path, ntuples, lambda d: d["components"].pop(0)))

    split_file(config, dst, tmp_path / "job", ["zprime"])

    for split in SPLITS:
        region = "inclusive" if split == "test" else "highpt"
        out = read_all(tmp_path / "job" / f"output_{split}_{region}_zprime_cjets.h5")["jets"]
        assert len(out) > 0
        assert (out["flavour_label"] == FLAVOURS.index("cjets")).all()
        assert out.dtype.names.count("flavour_label") == 1


def test_batches_smaller_than_a_file_give_the_same_outputs(tmp_path, split_ntuples):
    def small_batches(data: dict) -> None:
        data["global"]["batch_size"] = 1_500  # rounded to whole input chunks (1000 jets)

    big = load_config(demo_config(tmp_path / "big", split_ntuples))
    small = load_config(demo_config(tmp_path / "small", split_ntuples, small_batches))
    split_stage(big, workers=1)
    split_stage(small, workers=1)

    assert_same_outputs(big.global_.components_dir, small.global_.components_dir)


# ------------------------------------------------------------------------------ duplicates
def test_overlapping_regions_fail_with_the_count_and_both_names(tmp_path, split_ntuples):
    def overlap(data: dict) -> None:
        data["components"].append({
            "region": {"name": "midpt", "cuts": [["pt_btagJes", ">", 100_000],
                                                 ["pt_btagJes", "<", 400_000],
                                                 ["absEta_btagJes", "<", 2.5]]},
            "sample": data["components"][0]["sample"],  # ttbar, like lowpt
            "flavours": list(FLAVOURS), "num_jets": -1})

    result = cli("split", "-c", demo_config(tmp_path, split_ntuples, overlap), cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    expected = {}
    for path in inputs(split_ntuples):
        if sample_of(path) == "ttbar":
            jets = read_all(path)["jets"]
            pt = jets["pt_btagJes"]
            both = DEMO.regions["lowpt"](jets) & (pt > 100_000) & (pt < 400_000) \
                & np.isin(jets["HadronConeExclTruthLabelID"], list(TRUTH.values())) \
                & (jets["eventNumber"] % 10 <= 8)  # test takes no region cuts: no overlap
            expected[str(path)] = int(both.sum())
    lines = [ln for ln in result.stderr.splitlines() if "written twice" in ln]
    assert len(lines) == 2  # one per ttbar file
    for line in lines:
        path = next(p for p in expected if p in line)
        assert f": {expected[path]} jets would be written twice" in line
        assert "in both lowpt_ttbar_bjets and midpt_ttbar_bjets" in line
    assert not (tmp_path / "split-components" / "organised-components.yaml").exists()
    written = [p for p in (tmp_path / "split-components").rglob("*.h5")
               if p.is_file() and "ttbar" in str(p.relative_to(tmp_path))]
    assert written == []  # never writes duplicates


# ------------------------------------------------------------------------------ resume
def test_rerun_skips_complete_inputs_without_touching_them(tmp_path, split_ntuples):
    config_path = demo_config(tmp_path, split_ntuples)
    assert cli("split", "-c", config_path, cwd=tmp_path).returncode == 0
    components = tmp_path / "split-components"
    before = {p: p.stat().st_mtime_ns for p in components.rglob("*") if p.is_file()}
    recs = records(components)

    result = cli("split", "-c", config_path, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "3 of 3 inputs already split" in result.stderr
    assert records(components) == recs
    after = {p: p.stat().st_mtime_ns for p in components.rglob("*") if p.is_file()}
    catalogue = components / "organised-components.yaml"
    assert {p: t for p, t in after.items() if p != catalogue} == \
        {p: t for p, t in before.items() if p != catalogue}


def test_overwrite_redoes_every_input(tmp_path, split_ntuples):
    config = load_config(demo_config(tmp_path, split_ntuples))
    split_stage(config, workers=1)
    components = config.global_.components_dir
    reference = tmp_path / "reference"
    shutil.copytree(components, reference)
    stamps = {p: p.stat().st_mtime_ns for p in components.rglob(RECORD_NAME)}

    summary, _ = split_stage(config, workers=1, overwrite=True)

    assert summary.skipped == 0
    assert all(p.stat().st_mtime_ns != t for p, t in stamps.items())
    assert_same_outputs(components, reference)


def test_a_unit_with_a_missing_output_is_redone(tmp_path, split_ntuples):
    config = load_config(demo_config(tmp_path, split_ntuples))
    split_stage(config, workers=1)
    components = config.global_.components_dir
    reference = tmp_path / "reference"
    shutil.copytree(components, reference)
    damaged = unit_dir(components, split_ntuples, inputs(split_ntuples)[0])
    (damaged / "output_val_lowpt_ttbar_cjets.h5").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in components.rglob(RECORD_NAME)}

    summary, _ = split_stage(config, workers=1)

    assert summary.skipped == 2
    redone = {p for p, t in stamps.items() if p.stat().st_mtime_ns != t}
    assert redone == {damaged / RECORD_NAME}
    assert_same_outputs(components, reference)


@pytest.fixture(scope="module")
def kill_ntuples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough jets (3 x 60k, 10 tracks each) that a split with small batches takes a while."""
    out = tmp_path_factory.mktemp("kill-ntuples")
    make_mock(out, num_jets=180_000, num_files=3, seed=11, num_tracks=10)
    return out


def test_kill_9_mid_run_then_rerun_gives_exactly_the_uninterrupted_outputs(tmp_path,
                                                                            kill_ntuples):
    def small_batches(data: dict) -> None:
        data["global"]["batch_size"] = 1_000

    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    killed_cfg = demo_config(killed_dir, kill_ntuples, small_batches)
    clean_cfg = demo_config(clean_dir, kill_ntuples, small_batches)
    components = killed_dir / "split-components"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "upp_grid", "split", "-c", str(killed_cfg),
                             "--workers", "1"], cwd=killed_dir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        staged = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:  # the running split renames directories under our feet: retry the scan
                staging = list(components.rglob(".*.partial-*/.output_*.tmp-*"))
                complete = records(components) if components.exists() else {}
            except FileNotFoundError:
                continue
            if staging and complete:  # one unit done, the next one half-written
                staged = True
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert staged, "the split finished before it could be interrupted"
    assert proc.returncode == -signal.SIGKILL
    assert not (components / "organised-components.yaml").exists()

    rerun = cli("split", "-c", killed_cfg, "--workers", "1", cwd=killed_dir)
    clean = cli("split", "-c", clean_cfg, cwd=clean_dir)

    assert rerun.returncode == 0, rerun.stderr
    assert clean.returncode == 0, clean.stderr
    assert "1 of 3 inputs already split" in rerun.stderr or \
        "2 of 3 inputs already split" in rerun.stderr
    assert not list(components.rglob(".*.partial-*"))
    assert_same_outputs(components, clean_dir / "split-components")
    strip = {"input_mtime_ns"}
    assert [{k: v for k, v in r.items() if k not in strip} for r in
            sorted(records(components).values(), key=lambda r: r["input"])] == \
        [{k: v for k, v in r.items() if k not in strip} for r in
         sorted(records(clean_dir / "split-components").values(), key=lambda r: r["input"])]


# ------------------------------------------------------------------------------ errors
def copy_inputs(src: Path, dst: Path) -> list[Path]:
    shutil.copytree(src, dst)
    return inputs(dst)


def test_a_pattern_matching_no_file_is_named(tmp_path, split_ntuples):
    def typo(data: dict) -> None:
        data["components"][1]["sample"]["pattern"] = "user.mock.800031.*.h5"

    line = one_line_error(cli("split", "-c", demo_config(tmp_path, split_ntuples, typo),
                              cwd=tmp_path))

    assert "pattern 'user.mock.800031.*.h5' matches no file" in line


def test_an_unknown_container_is_named(tmp_path, split_ntuples):
    line = one_line_error(cli("split", "-c", demo_config(tmp_path, split_ntuples),
                              "--container", "user.mock.999.*", cwd=tmp_path))

    assert "unknown --container 'user.mock.999.*'" in line
    assert "user.mock.601589.*.h5" in line  # what the config does have


@pytest.mark.parametrize(("drop_dataset", "drop_field", "named"), [
    ("tracks", None, "dataset 'tracks' not found"),
    (None, ("jets", "absEta_btagJes"), "dataset 'jets' has no field 'absEta_btagJes'"),
    (None, ("tracks", "d0"), "dataset 'tracks' has no field 'd0'"),
], ids=["missing-dataset", "missing-cut-field", "missing-variable"])
def test_a_missing_dataset_or_field_names_the_file_and_field(tmp_path, split_ntuples,
                                                             drop_dataset, drop_field, named):
    src = input_of(split_ntuples, "zprime")
    ntuples = tmp_path / "ntuples"
    bad = ntuples / src.relative_to(split_ntuples)
    rewrite(src, bad, drop_dataset, drop_field)
    config_path = demo_config(tmp_path, ntuples, lambda d: d["components"].pop(0))

    line = one_line_error(cli("split", "-c", config_path, cwd=tmp_path))

    assert str(bad) in line
    assert named in line


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_file_is_named(tmp_path, split_ntuples, damage):
    src = input_of(split_ntuples, "zprime")
    ntuples = tmp_path / "ntuples"
    bad = ntuples / src.relative_to(split_ntuples)
    bad.parent.mkdir(parents=True)
    if damage == "truncated":
        data = src.read_bytes()
        bad.write_bytes(data[:len(data) // 2])
    else:
        bad.write_bytes(os.urandom(100_000))
    config_path = demo_config(tmp_path, ntuples, lambda d: d["components"].pop(0))

    line = one_line_error(cli("split", "-c", config_path, cwd=tmp_path))

    assert str(bad) in line
    assert "HDF5" in line


def test_a_corrupt_file_leaves_the_other_inputs_complete(tmp_path, split_ntuples):
    good = copy_inputs(split_ntuples, tmp_path / "ntuples")
    bad = good[0].with_name("user.mock.601589._000009.output.h5")
    bad.write_bytes(good[0].read_bytes()[:1_000_000])
    config_path = demo_config(tmp_path, tmp_path / "ntuples")

    result = cli("split", "-c", config_path, "--workers", "2", cwd=tmp_path)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("upp-grid: error")]
    assert len(errors) == 1 and str(bad) in errors[0]
    components = tmp_path / "split-components"
    done = records(components)
    assert set(done) == {unit_dir(components, tmp_path / "ntuples", p) for p in good}
    assert not unit_dir(components, tmp_path / "ntuples", bad).exists()
    rerun = cli("split", "-c", config_path, "--files", ",".join(map(str, good)), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "3 of 3 inputs already split" in rerun.stderr


# ------------------------------------------------------------------------------ row-range parts
def part_dirs(components: Path) -> list[Path]:
    return sorted(d for d in records(components) if ".rows-" in d.name)


def joined_outputs(components: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every output with the parts of one input concatenated in row order, keyed by
    ``<whole-file unit dir>/<output file name>`` relative to ``components``."""
    parts: dict[str, list[tuple[int, dict[str, np.ndarray]]]] = {}
    for path in sorted(components.rglob("output_*.h5")):
        rel = path.relative_to(components)
        if any(part.startswith(".") for part in rel.parts):
            continue
        unit, _, rows = rel.parent.name.partition(".rows-")
        key = str(rel.parent.with_name(unit) / path.name)
        parts.setdefault(key, []).append((int(rows.split("-")[0]) if rows else 0,
                                          read_all(path)))
    return {key: {g: np.concatenate([arrs[g] for _, arrs in sorted(pieces, key=lambda p: p[0])])
                  for g in pieces[0][1]}
            for key, pieces in parts.items()}


def split_in_parts(tmp_path: Path, ntuples: Path, workers: int = 2):
    config = load_config(demo_config(tmp_path, ntuples))
    summary, cat = split_stage(config, workers=workers, min_part_jets=1_000)
    return config, summary, cat


def test_fewer_files_than_workers_are_cut_into_row_ranges_with_identical_content(
        tmp_path, split_ntuples):
    whole = load_config(demo_config(tmp_path / "whole", split_ntuples))
    _, whole_cat = split_stage(whole, workers=1)

    config, summary, cat = split_in_parts(tmp_path / "parts", split_ntuples)

    components = config.global_.components_dir
    parts = part_dirs(components)
    # 3 files on 2 cores: 2 whole files and the halves of the third, 1.5 files per core
    assert len(parts) == 2 and len(summary.records) == 4
    assert parts[0].name.rsplit(".rows-", 1)[0] == parts[1].name.rsplit(".rows-", 1)[0]
    assert len([d for d in records(components) if ".rows-" not in d.name]) == 2
    for rec in summary.by_input():
        with h5py.File(rec.input) as f:
            assert rec.jets_read == len(f["jets"]) == sum(rec.outputs.values()) + \
                rec.no_component
    for d in parts:
        rec = records(components)[d]
        start, stop = map(int, d.name.rsplit(".rows-", 1)[1].split("-"))
        assert rec["rows"] == [start, stop] and rec["jets_read"] == stop - start
    a, b = joined_outputs(components), joined_outputs(whole.global_.components_dir)
    assert a.keys() == b.keys() and a
    for key, groups in a.items():
        for group, arr in groups.items():
            assert arr.dtype == b[key][group].dtype
            np.testing.assert_array_equal(arr, b[key][group], err_msg=f"{key} {group}")
    assert cat.num_jets == whole_cat.num_jets
    listed = [f for split in SPLITS for files in cat.files[split].values() for f in files]
    assert len(listed) == len(set(listed)) == 4 * 3 * 4  # each unit: 3 splits x 4 flavours


def test_a_rerun_with_other_workers_keeps_the_complete_parts(tmp_path, split_ntuples):
    config, _, cat = split_in_parts(tmp_path, split_ntuples)
    components = config.global_.components_dir
    stamps = {p: p.stat().st_mtime_ns for p in components.rglob("*.h5")}

    summary, again = split_stage(config, workers=1, min_part_jets=1_000)

    assert summary.skipped == 4 and len(summary.by_input()) == 3
    catalogue = components / "organised-components.yaml"
    assert {p: p.stat().st_mtime_ns for p in components.rglob("*.h5")} == stamps
    assert catalogue.exists() and again.num_jets == cat.num_jets
    assert len(part_dirs(components)) == 2


def test_overwrite_with_one_worker_replaces_the_parts_by_whole_files(tmp_path, split_ntuples):
    config, _, cat = split_in_parts(tmp_path, split_ntuples)
    components = config.global_.components_dir

    summary, again = split_stage(config, workers=1, overwrite=True, min_part_jets=1_000)

    assert summary.skipped == 0 and len(summary.records) == 3
    assert part_dirs(components) == []  # no jet catalogued twice
    check_split_outputs(components, split_ntuples, DEMO)
    assert again.num_jets == cat.num_jets


def test_a_part_with_a_missing_record_is_redone_alone(tmp_path, split_ntuples):
    config, _, _ = split_in_parts(tmp_path, split_ntuples)
    components = config.global_.components_dir
    reference = tmp_path / "reference"
    shutil.copytree(components, reference)
    damaged = part_dirs(components)[1]
    (damaged / RECORD_NAME).unlink()
    stamps = {p: p.stat().st_mtime_ns for p in components.rglob(RECORD_NAME)}

    summary, _ = split_stage(config, workers=2, min_part_jets=1_000)

    assert summary.skipped == 3
    assert {p for p, t in stamps.items() if p.stat().st_mtime_ns != t} == set()
    assert (damaged / RECORD_NAME).exists()
    assert_same_outputs(components, reference)


@pytest.mark.parametrize(("jets", "workers", "parts"), [
    ([300, 300, 200], 2, [1, 1, 2]),  # the smallest file is halved: 1.5 files per worker
    ([300, 300], 2, [1, 1]),
    ([300], 2, [2]),
    ([500, 500, 500, 500, 500], 4, [4, 1, 1, 1, 1]),
    ([300] * 8, 2, [1] * 8),  # 4 files per worker: whole files balance well enough
    ([300, 300, 150], 2, [1, 1, 1]),  # halves would be under min_part_jets
    ([300, 300, 300], 1, [1, 1, 1]),
])
def test_parts_per_file_shares_the_files_out_evenly(jets, workers, parts):
    from upp_grid.stages.split_local import parts_per_file

    assert parts_per_file(jets, workers, min_part_jets=100) == parts


def test_parts_that_do_not_tile_their_input_are_a_bookkeeping_error():
    from upp_grid.errors import BookkeepingError
    from upp_grid.stages.split import SplitRecord
    from upp_grid.stages.split_local import check_inputs_whole

    halves = [SplitRecord("in.h5", 50, {"train_a": 50}, rows=(0, 50)),
              SplitRecord("in.h5", 50, {"train_a": 40}, 10, rows=(50, 100))]
    check_inputs_whole(halves)
    with pytest.raises(BookkeepingError, match=r"in\.h5: .*gap or overlap at row 50"):
        check_inputs_whole([halves[0], SplitRecord("in.h5", 40, {}, 40, rows=(60, 100))])
    with pytest.raises(BookkeepingError, match=r"in\.h5: split parts cover 100 rows but read 99"):
        check_inputs_whole([halves[0], SplitRecord("in.h5", 49, {}, 49, rows=(50, 100))])


def test_files_are_named_as_in_the_container_and_checked_against_it(tmp_path, split_ntuples):
    config = demo_config(tmp_path, split_ntuples)
    ttbar = input_of(split_ntuples, "ttbar")
    zprime = input_of(split_ntuples, "zprime")

    by_name = cli("split", "-c", config, "--container", "ttbar", "--files", ttbar.name,
                  cwd=tmp_path)
    assert by_name.returncode == 0, by_name.stderr
    assert unit_dir(tmp_path / "split-components", split_ntuples, ttbar).is_dir()
    line = one_line_error(cli("split", "-c", config, "--container", "ttbar", "--files",
                              zprime.name, cwd=tmp_path))
    assert zprime.name in line and "no file of that name in container ttbar" in line
    line = one_line_error(cli("split", "-c", config, "--container", "ttbar", "--files",
                              str(zprime), cwd=tmp_path))
    assert "not a file of container ttbar" in line and "wrong sample" in line
    assert not unit_dir(tmp_path / "split-components", split_ntuples, zprime).exists()
