"""The config loader: UPP's YAML language in, typed frozen dataclasses out.

Every validation problem is one line ``file:line: key.path: what is wrong``; these tests assert
the file, the line, the key path and the did-you-mean a user would read.
"""

from __future__ import annotations

import dataclasses
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest

from upp_grid.config import Config, load_config
from upp_grid.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# A small valid config; tests change one thing in it with .replace().
MINIMAL = """\
variables:
  jets:
    inputs: [pt, eta]
    labels: [HadronConeExclTruthLabelID, eventNumber]

global_cuts:
  train: [[eventNumber, "%10<=", 7]]
  val: [[eventNumber, "%10==", 8]]
  test: [[eventNumber, "%10==", 9]]

lowpt: &lowpt
  name: lowpt
  cuts: [[pt, ">", 20e3], [pt, "<", 250e3]]

ttbar: &ttbar
  name: ttbar
  pattern: "user.*.601589.*.h5"

components:
  - region: *lowpt
    sample: *ttbar
    flavours: [bjets, cjets, ujets]
    num_jets: 1000

reweighting:
  reweights:
    - group: jets
      reweight_vars: [pt, eta]
      bins:
        pt: [[20e3, 250e3, 50]]
        eta: [[-2.5, 2.5, 20]]
      class_var: flavour_label
      class_target: mean

global:
  ntuple_dir: ntuples
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def edit(old: str, new: str, text: str = MINIMAL) -> str:
    assert old in text, f"{old!r} not in the config"
    return text.replace(old, new, 1)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    return err.value.problems


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path / "config.yaml", text))


# --------------------------------------------------------------------------- shipped configs
def test_demo_config_loads() -> None:
    config = load_config(CONFIGS / "demo.yaml")

    assert len(config.components) == 8  # 2 regions x 4 flavours
    assert config.flavour_names == ("bjets", "cjets", "ujets", "taujets")
    assert [r.name for r in config.regions] == ["lowpt", "highpt"]
    assert [s.name for s in config.samples] == ["ttbar", "zprime"]
    assert [rw.name for rw in config.reweighting.reweights] == [
        "weight_jets_pt_btagJes_eta_btagJes_target_mean_flavour_label"
    ]


def test_upp_reweighting_integration_config_loads_with_upp_weight_names() -> None:
    config = load_config(CONFIGS / "upp-rw-integration.yaml")

    assert len(config.components) == 8
    assert config.flavour_names == ("bjets", "cjets", "ujets", "taujets")
    assert [rw.name for rw in config.reweighting.reweights] == [
        "weight_jets_pt_eta_target_mean_flavour_label",
        "weight_jets_pt_eta_target_min_flavour_label",
        "weight_jets_pt_eta_target_max_flavour_label",
        "weight_jets_pt_eta_target_uniform_flavour_label",
        "weight_jets_pt_eta_target_0_1",
        "weight_jets_pt_eta_target_0_flavour_label",
        "weight_tracks_deta_target_mean_leptonID",
    ]
    jets = [rw for rw in config.reweighting.reweights if rw.group == "jets"]
    assert len(jets) == 6
    assert jets[4].class_target == (0, 1)
    assert jets[5].class_target == 0
    # the *jetbins alias gives every jets reweight the same 150 pt bins (+2 overflow)
    assert all(len(rw.edges("pt")) == 17 + 1 + 2 for rw in jets)
    assert config.reweighting.num_jets_estimate == 1_000_000
    assert config.jets_name == "jets"  # from UPP's `global_name`
    # global_cuts come from includes/simple-split.yaml
    assert [str(c) for c in config.global_cuts["train"]] == ["eventNumber %10<= 7"]


def test_gn3_config_loads_includes_from_the_parent_configs_dir() -> None:
    config = load_config(CONFIGS / "gn3" / "gn3-ghost-rw.yaml")

    assert len(config.components) == 12  # 2 regions x 6 flavours
    assert config.flavour_names == (
        "ghostbjets",
        "ghostcjets",
        "ghostsjets",
        "ghostudjets",
        "ghostgjets",
        "ghosttaujets",
    )
    # variables and global_cuts are included from configs/includes/, not configs/gn3/includes/
    assert "HadronGhostTruthLabelID" in config.variables["jets"].labels
    assert len(config.variables["tracks"].inputs) == 13
    assert [str(c) for c in config.global_cuts["test"]] == ["eventNumber %10== 9"]
    assert config.global_.num_jets_per_output_file == 25_000_000
    assert config.reweighting.num_jets_estimate == 5_000_000
    assert config.reweighting.merge_num_proc == 2


# --------------------------------------------------------------------------- includes
def test_an_include_inside_an_included_file_is_relative_to_that_file(tmp_path: Path) -> None:
    write(tmp_path / "parts" / "variables.yaml", "jets: !include groups/jets.yaml\n")
    write(tmp_path / "parts" / "groups" / "jets.yaml", "inputs: [pt]\nlabels: [eta]\n")
    text = edit(
        "variables:\n  jets:\n    inputs: [pt, eta]\n    labels: [HadronConeExclTruthLabelID, "
        "eventNumber]\n",
        "variables: !include parts/variables.yaml\n",
    )

    config = load_text(tmp_path, text)

    assert config.variables["jets"].inputs == ("pt",)
    assert config.variables["jets"].labels == ("eta",)
    assert config.raw["variables"] == {"jets": {"inputs": ["pt"], "labels": ["eta"]}}


def _split(test_cut: int) -> str:
    return (
        f'train: [[eventNumber, "%10<=", 4]]\nval: [[eventNumber, "%10==", 8]]\n'
        f'test: [[eventNumber, "%10==", {test_cut}]]\n'
    )


def test_include_is_found_next_to_the_including_file_before_parent_dirs(tmp_path: Path) -> None:
    write(tmp_path / "includes" / "split.yaml", _split(9))
    write(tmp_path / "gn3" / "includes" / "split.yaml", _split(5))
    cuts = MINIMAL[MINIMAL.index("global_cuts:") : MINIMAL.index("lowpt:")]
    config_path = write(
        tmp_path / "gn3" / "config.yaml",
        edit(cuts, "global_cuts: !include includes/split.yaml\n\n"),
    )

    assert [str(c) for c in load_config(config_path).global_cuts["test"]] == ["eventNumber %10== 5"]

    (tmp_path / "gn3" / "includes" / "split.yaml").unlink()  # UPP's layout: shared includes/
    assert [str(c) for c in load_config(config_path).global_cuts["test"]] == ["eventNumber %10== 9"]


def test_include_cycle_is_an_error_naming_the_chain(tmp_path: Path) -> None:
    cuts = MINIMAL[MINIMAL.index("global_cuts:") : MINIMAL.index("lowpt:")]
    a = write(tmp_path / "a.yaml", edit(cuts, "global_cuts: !include b.yaml\n\n"))
    write(tmp_path / "b.yaml", "train: !include a.yaml\n")

    (problem,) = problems(a)

    assert problem == (
        f"{(tmp_path / 'b.yaml').resolve()}:1: global_cuts.train: "
        "!include cycle: a.yaml -> b.yaml -> a.yaml"
    )


def test_missing_include_names_the_file_line_and_key(tmp_path: Path) -> None:
    text = edit("variables:\n  jets:", "variables: !include vars.yaml\nunused:\n  jets:")
    path = write(tmp_path / "config.yaml", text)

    (problem,) = problems(path)

    assert problem.startswith(f"{path}:1: variables: !include 'vars.yaml': file not found")


def test_problem_in_an_included_file_names_that_file_and_the_full_key_path(
    tmp_path: Path,
) -> None:
    write(tmp_path / "split.yaml", _split(9).replace('"%10<="', '"=<"'))
    cuts = MINIMAL[MINIMAL.index("global_cuts:") : MINIMAL.index("lowpt:")]

    (problem,) = problems(
        write(tmp_path / "c.yaml", edit(cuts, "global_cuts: !include split.yaml\n"))
    )

    assert problem == (
        f"{(tmp_path / 'split.yaml').resolve()}:1: global_cuts.train[0]: "
        "unknown cut operator '=<' (did you mean '<='?)"
    )


# --------------------------------------------------------------------------- anchors
def test_anchors_and_merge_keys_with_override(tmp_path: Path) -> None:
    text = edit(
        "  - region: *lowpt\n    sample: *ttbar\n",
        "  - region:\n      <<: *lowpt\n      name: lowpt_tight\n"
        "    sample:\n      <<: *ttbar\n      equal_jets: true\n",
    )

    (component, *_) = load_text(tmp_path, text).components

    assert component.region.name == "lowpt_tight"  # overriding a merged key is not a duplicate
    assert [str(c) for c in component.region.cuts] == ["pt > 20000.0", "pt < 250000.0"]
    assert component.sample.name == "ttbar"  # merged from the anchor
    assert component.sample.patterns == ("user.*.601589.*.h5",)
    assert component.sample.equal_jets is True


def test_the_same_anchor_can_serve_several_components(tmp_path: Path) -> None:
    text = edit(
        "    num_jets: 1000\n",
        "    num_jets: 1000\n  - region: *lowpt\n    sample: {<<: *ttbar, name: ttbar2}\n"
        "    flavours: [bjets]\n    num_jets: 1000\n",
    )

    config = load_text(tmp_path, text)

    assert [c.name for c in config.components] == [
        "lowpt_ttbar_bjets",
        "lowpt_ttbar_cjets",
        "lowpt_ttbar_ujets",
        "lowpt_ttbar2_bjets",
    ]


def test_a_key_written_twice_in_one_mapping_is_an_error(tmp_path: Path) -> None:
    text = edit("    num_jets: 1000\n", "    num_jets: 1000\n    num_jets: 2000\n")
    path = write(tmp_path / "config.yaml", text)

    (problem,) = problems(path)

    line = line_of(text, "num_jets: 2000")
    assert problem == (
        f"{path}:{line}: components[0].num_jets: duplicate key (first written at line {line - 1})"
    )


# --------------------------------------------------------------------------- UPP names
def test_upp_object_agnostic_names_are_aliases(tmp_path: Path) -> None:
    text = edit(
        "    flavours: [bjets, cjets, ujets]\n    num_jets: 1000\n",
        "    classes: [bjets, cjets, ujets]\n    num_global_objects: 1000\n"
        "    num_global_objects_val: 300\n    num_global_objects_test: 200\n",
    )
    text = edit("  name: ttbar\n", "  name: ttbar\n  equal_global_objects: true\n", text)
    text = edit(
        "global:\n", "global:\n  global_name: jets\n  num_global_objects_estimate: 5e6\n", text
    )

    config = load_text(tmp_path, text)

    assert config.flavour_names == ("bjets", "cjets", "ujets")
    first = config.components[0]
    assert (first.cap("train"), first.cap("val"), first.cap("test")) == (1000, 300, 200)
    assert config.samples[0].equal_jets is True
    assert config.jets_name == "jets"
    assert config.global_.num_jets_estimate == 5_000_000


def test_an_option_under_both_its_names_is_an_error(tmp_path: Path) -> None:
    text = edit("    num_jets: 1000\n", "    num_jets: 1000\n    num_global_objects: 1000\n")
    path = write(tmp_path / "config.yaml", text)

    (problem,) = problems(path)

    assert problem.startswith(
        f"{path}:{line_of(text, 'num_global_objects')}: components[0].num_global_objects: "
        "both 'num_global_objects' and 'num_jets' are given"
    )


# --------------------------------------------------------------------------- paths
def test_base_dir_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "configs" / "config.yaml",
        edit(
            "  ntuple_dir: ntuples\n",
            "  base_dir: data\n  ntuple_dir: ntuples\n  out_dir: /abs/out\n",
        ),
    )
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    g = load_config(path).global_

    assert g.base_dir == tmp_path / "work" / "data"
    assert g.ntuple_dir == tmp_path / "work" / "data" / "ntuples"
    assert g.components_dir == tmp_path / "work" / "data" / "split-components"
    assert g.out_dir == Path("/abs/out")


def test_base_dir_defaults_to_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "configs" / "config.yaml",
        edit("  ntuple_dir: ntuples\n", "  components_dir: parts\n"),
    )
    monkeypatch.chdir(tmp_path)

    g = load_config("configs/config.yaml").global_

    assert g.base_dir == tmp_path / "configs"
    assert g.ntuple_dir == tmp_path / "configs" / "ntuples"
    assert g.components_dir == tmp_path / "configs" / "parts"
    assert g.out_dir == tmp_path / "configs" / "output"


# --------------------------------------------------------------------------- values
def test_numbers_in_exponent_notation_are_numbers(tmp_path: Path) -> None:
    text = edit('cuts: [[pt, ">", 20e3], [pt, "<", 250e3]]', 'cuts: [[pt, ">", 2.5e4]]')
    text = edit("num_jets: 1000", "num_jets: 4e6", text)
    text = edit(
        "  ntuple_dir: ntuples\n", "  batch_size: 1e5\n  num_jets_estimate: 2_000_000\n", text
    )

    config = load_text(tmp_path, text)

    (cut,) = config.regions[0].cuts
    assert cut.value == 25_000.0
    assert isinstance(cut.value, float)
    assert config.components[0].num_jets == 4_000_000
    assert isinstance(config.components[0].num_jets, int)
    assert config.global_.batch_size == 100_000
    assert config.global_.num_jets_estimate == 2_000_000
    assert config.reweighting.reweights[0].bins["pt"] == ((20_000.0, 250_000.0, 50),)


def test_bin_edges_join_sub_ranges_and_add_overflow(tmp_path: Path) -> None:
    text = edit("pt: [[20e3, 250e3, 50]]", "pt: [[0, 10, 2], [10, 40, 3]]")
    text = edit(
        "      class_target: mean\n",
        "      class_target: mean\n"
        "    - group: jets\n      reweight_vars: [pt]\n      add_overflow: false\n"
        "      bins: {pt: [0, 10, 2]}\n      class_var: flavour_label\n"
        "      class_target: [0, 2]\n",
        text,
    )

    with_overflow, without_overflow = load_text(tmp_path, text).reweighting.reweights

    np.testing.assert_array_equal(
        with_overflow.edges("pt"), [-np.inf, 0, 5, 10, 20, 30, 40, np.inf]
    )
    np.testing.assert_array_equal(
        with_overflow.edges("eta"), [-np.inf, *np.linspace(-2.5, 2.5, 21), np.inf]
    )
    # a single range may be written flat: [start, stop, n]
    np.testing.assert_array_equal(without_overflow.edges("pt"), [0, 5, 10])
    assert without_overflow.name == "weight_jets_pt_target_0_2"


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ("num_jets: 1000", (1000, 100, 100)),
        ("num_jets: -1", (-1, -1, -1)),
        ("num_jets: 1000\n    num_jets_val: 50", (1000, 50, 100)),
        ("num_jets: 1000\n    num_jets_test: -1", (1000, 100, -1)),
        ("num_jets: 5", (5, 1, 1)),  # at least one jet (UPP's 5 // 10 would ask for none)
    ],
)
def test_val_and_test_caps_default_to_a_tenth_of_num_jets(
    tmp_path: Path, caps: str, expected: tuple[int, int, int]
) -> None:
    (component, *_) = load_text(tmp_path, edit("num_jets: 1000", caps)).components

    assert (component.cap("train"), component.cap("val"), component.cap("test")) == expected


def test_config_is_frozen_and_survives_pickling(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.global_ = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.components[0].num_jets = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.reweighting.reweights[0].bins["pt"] = ()  # type: ignore[index]
    with pytest.raises(TypeError):
        config.raw["global"] = {}  # type: ignore[index]
    assert isinstance(config.components, tuple)

    copy = pickle.loads(pickle.dumps(config))
    assert copy.components == config.components
    assert copy.reweighting == config.reweighting
    assert copy.config_hash == config.config_hash


# --------------------------------------------------------------------------- validation
# (what the user changes, into what, the key path and message the problem names)
CASES = {
    "unknown key": (
        "    num_jets: 1000", "    num_jets: 1000\n    numjets_val: 10",
        "components[0].numjets_val", "unknown key (did you mean 'num_jets_val'?)",
    ),
    "unknown key without a close match": (
        "  name: ttbar\n", "  name: ttbar\n  dsid: 601589\n",
        "components[0].sample.dsid", "unknown key; allowed: name, pattern, equal_jets",
    ),
    "misspelt key is not also reported missing": (
        "    num_jets: 1000", "    num_jet: 1000",
        "components[0].num_jet", "unknown key (did you mean 'num_jets'?)",
    ),
    "wrong type": (
        "num_jets: 1000", 'num_jets: "all"',
        "components[0].num_jets",
        "expected an integer, got string 'all' (-1 means all jets, auto UPP's automatic counts)",
    ),
    "wrong type: a string for a list": (
        "flavours: [bjets, cjets, ujets]", "flavours: bjets",
        "components[0].flavours", "expected a list, got string 'bjets' (write [bjets])",
    ),
    "wrong type: a float for a count": (
        "num_jets: 1000", "num_jets: 10.5",
        "components[0].num_jets", "expected an integer, got number 10.5",
    ),
    "missing section": (
        "global:\n  ntuple_dir: ntuples\n", "",
        "global", "missing required section",
    ),
    "misspelt section": (
        "global_cuts:", "globalcuts:",
        "globalcuts", "unknown section (did you mean 'global_cuts'?)",
    ),
    "missing key": (
        '  test: [[eventNumber, "%10==", 9]]\n', "",
        "global_cuts.test", "missing required key",
    ),
    "unknown flavour": (
        "flavours: [bjets, cjets, ujets]", "flavours: [bjets, cjet, ujets]",
        "components[0].flavours[1]", "unknown flavour 'cjet' (did you mean 'cjets'?)",
    ),
    "flavour of the other class_category": (
        "flavours: [bjets, cjets, ujets]", "flavours: [bbjets]",
        "components[0].flavours[0]",
        "unknown flavour 'bbjets' (it is defined for global.class_category: extended)",
    ),
    "bins: start >= stop": (
        "eta: [[-2.5, 2.5, 20]]", "eta: [[2.5, 2.5, 20]]",
        "reweighting.reweights[0].bins.eta[0]", "start must be < stop, got start=2.5, stop=2.5",
    ),
    "bins: n = 0": (
        "eta: [[-2.5, 2.5, 20]]", "eta: [[-2.5, 2.5, 0]]",
        "reweighting.reweights[0].bins.eta[0]", "the number of bins n must be > 0, got 0",
    ),
    "bins: n < 0": (
        "eta: [[-2.5, 2.5, 20]]", "eta: [[-2.5, 2.5, -4]]",
        "reweighting.reweights[0].bins.eta[0]", "the number of bins n must be > 0, got -4",
    ),
    "bins: overlapping sub-ranges": (
        "pt: [[20e3, 250e3, 50]]", "pt: [[20e3, 250e3, 50], [100e3, 1e6, 10]]",
        "reweighting.reweights[0].bins.pt[1]",
        "overlaps the previous range: it starts at 100000 but the previous range stops at 250000",
    ),
    "bins: a gap between sub-ranges": (
        "pt: [[20e3, 250e3, 50]]", "pt: [[20e3, 250e3, 50], [260e3, 1e6, 10]]",
        "reweighting.reweights[0].bins.pt[1]",
        "leaves a gap after the previous range: it starts at 260000 but the previous range "
        "stops at 250000",
    ),
    "bins: no n": (
        "pt: [[20e3, 250e3, 50]]", "pt: [20e3, 250e3]",
        "reweighting.reweights[0].bins.pt",
        "got [20000, 250000] (the number of bins n is missing)",
    ),
    "reweight variable without bins": (
        "        eta: [[-2.5, 2.5, 20]]\n", "",
        "reweighting.reweights[0].bins.eta", "reweight variable 'eta' has no bins",
    ),
    "bins for a variable that is not reweighted": (
        "        eta: [[-2.5, 2.5, 20]]\n",
        "        eta: [[-2.5, 2.5, 20]]\n        m: [[0, 1, 2]]\n",
        "reweighting.reweights[0].bins.m", "bins for 'm', which is not in reweight_vars",
    ),
    "class_target: an unknown word": (
        "class_target: mean", "class_target: maen",
        "reweighting.reweights[0].class_target", "got 'maen' (did you mean 'mean'?)",
    ),
    "class_target: an empty list": (
        "class_target: mean", "class_target: []",
        "reweighting.reweights[0].class_target",
        "a list target must be a non-empty list of class labels (integers >= 0), got []",
    ),
    "class_target: a list of names": (
        "class_target: mean", "class_target: [bjets, cjets]",
        "reweighting.reweights[0].class_target",
        "a list target must be a non-empty list of class labels (integers >= 0), "
        "got ['bjets', 'cjets']",
    ),
    "class_target: a boolean": (
        "class_target: mean", "class_target: true",
        "reweighting.reweights[0].class_target",
        "expected a string or an integer or a number or a list, got boolean True",
    ),
    "class_target: a negative label": (
        "class_target: mean", "class_target: -1",
        "reweighting.reweights[0].class_target", "a class label is an integer >= 0, got -1",
    ),
    "class_target: a label that does not exist": (
        "class_target: mean", "class_target: [0, 7]",
        "reweighting.reweights[0].class_target",
        "class label 7 does not exist: flavour_label runs from 0 to 2",
    ),
    "reweights empty": (
        MINIMAL[MINIMAL.index("reweighting:") : MINIMAL.index("global:\n")],
        "reweighting:\n  reweights: []\n\n",
        "reweighting.reweights", "needs at least one reweight",
    ),
    "cut operator that does not exist": (
        '[pt, "<", 250e3]', '[pt, "=<", 250e3]',
        "components[0].region.cuts[1]", "unknown cut operator '=<' (did you mean '<='?)",
    ),
    "cut with the operator last": (
        '[pt, "<", 250e3]', '[pt, 250e3, "<"]',
        "components[0].region.cuts[1]",
        "unknown cut operator '250000.0' (a cut is [variable, operator, value])",
    ),
    "cut operator `in` without a list": (
        '[pt, "<", 250e3]', '[HadronConeExclTruthLabelID, "in", 5]',
        "components[0].region.cuts[1]", "operator 'in' needs a list of numbers, got 5",
    ),
    "non-string key": (
        "    num_jets: 1000", "    num_jets: 1000\n    7: 10",
        "components[0].7", "key must be a name, got integer 7",
    ),
    "group not in variables": (
        "    - group: jets", "    - group: jet",
        "reweighting.reweights[0].group", "group 'jet' is not in variables (did you mean 'jets'?)",
    ),
    "a global key at the top level": (
        "global:\n  ntuple_dir: ntuples\n", "global:\n  ntuple_dir: ntuples\nout_dir: out\n",
        "out_dir", "'out_dir' belongs in the 'global' section (indent it under 'global:')",
    ),
    "an anchor name without *": (
        "  - region: *lowpt", "  - region: lowpt",
        "components[0].region",
        "expected a mapping, got string 'lowpt' (to use the block 'lowpt' defined at the top, "
        "write *lowpt)",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("old", "new", "keypath", "message"), CASES.values(), ids=CASES.keys())
def test_a_mistake_is_one_line_naming_file_line_and_key_path(
    tmp_path: Path, old: str, new: str, keypath: str, message: str | None
) -> None:
    text = edit(old, new)
    path = write(tmp_path / "config.yaml", text)

    found = problems(path)

    assert len(found) == 1, found
    (problem,) = found
    assert "\n" not in problem
    where, _, what = problem.partition(f": {keypath}: ")
    assert what, f"key path {keypath!r} not in {problem!r}"
    file, _, line = where.rpartition(":")
    assert file == str(path)
    if new.strip():  # the problem points at the line the user changed
        changed = next(ln for ln in new.splitlines() if ln.strip() and ln not in old.splitlines())
        assert int(line) == line_of(text, changed.strip()), problem
    assert message is None or message in what, problem


def test_every_problem_is_reported_earliest_line_first(tmp_path: Path) -> None:
    text = edit("class_target: mean", "class_target: avg")
    text = edit("flavours: [bjets, cjets, ujets]", "flavours: [bjet, cjets, ujets]", text)
    text = edit('  train: [[eventNumber, "%10<=", 7]]', '  train: [[eventNumber, "<==", 7]]', text)
    path = write(tmp_path / "config.yaml", text)

    with pytest.raises(ConfigError) as err:
        load_config(path)

    lines = [int(p.split(":")[1]) for p in err.value.problems]
    assert lines == sorted(lines)
    assert [p.split(": ")[1] for p in err.value.problems] == [
        "global_cuts.train[0]",
        "components[0].flavours[0]",
        "reweighting.reweights[0].class_target",
    ]
    # as an exception message (other commands than `check`): the first problem, on one line
    assert (
        str(err.value) == f"{err.value.problems[0]} (+2 more problems: run `upp-grid check -c CFG`)"
    )


def test_a_section_that_is_not_a_mapping_is_one_problem(tmp_path: Path) -> None:
    text = edit("global:\n  ntuple_dir: ntuples\n", "global:\n")
    path = write(tmp_path / "config.yaml", text)

    (problem,) = problems(path)

    assert problem == (
        f"{path}:{line_of(text, 'global:')}: global: expected a mapping, got null "
        "(is it empty, or is its content not indented under it?)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "{path}: the config is empty"),
        ("# nothing yet\n", "{path}: the config is empty"),
        ("- variables\n- components\n", "{path}:1: the config must be a mapping of sections"),
        ("variables: [pt, eta\n", "{path}:2: invalid YAML: expected ',' or ']', but got"),
        ("variables:\n\tjets: {}\n", "{path}:2: invalid YAML: found character '\\t'"),
        ("global_cuts: !include\n", "{path}:1: global_cuts: !include needs a file name"),
    ],
)  # fmt: skip
def test_files_that_are_not_a_config(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "config.yaml", text)

    (problem,) = problems(path)

    assert problem.startswith(message.format(path=path)), problem


def test_a_missing_config_file(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: config file not found"]
