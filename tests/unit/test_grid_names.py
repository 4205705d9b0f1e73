"""Grid names (DESIGN §6) and the task specs built from a config, before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.grid_support import TTBAR, ZPRIME, make_project
from upp_grid.config import load_config
from upp_grid.errors import InputError, UppGridError
from upp_grid.grid import names
from upp_grid.grid.tasks import plan_tasks
from upp_grid.stages.split import declared_outputs

MC = ("mc20_13TeV.601589.PhPy8EG_A14_ttbar_hdamp258p75_nonallhad.deriv.DAOD_FTAG1."
      "e8547_s3797_r13144_p6859")


@pytest.mark.parametrize(("container", "dsid", "tags"), [
    (TTBAR, "601589", "e8547_s3797_r13144_p6859"),
    (MC, "601589", "e8547_s3797_r13144_p6859"),
    (f"mc20_13TeV:{MC}/", "601589", "e8547_s3797_r13144_p6859"),
    ("data18_13TeV.00348885.physics_Main.deriv.DAOD_FTAG1.r13286_p4910_p5855", "00348885",
     "r13286_p4910_p5855"),
])
def test_dsid_and_tags_are_found_in_user_and_central_container_names(container, dsid, tags):
    parsed = names.parse_container(container)
    assert (parsed.dsid, parsed.tags) == (dsid, tags)


def test_out_ds_and_output_containers_follow_upps_scheme():
    out_ds = names.out_ds_name("jdoe", names.parse_container(MC), "v1")
    assert out_ds == "user.jdoe.601589.e8547_s3797_r13144_p6859.v1_split.h5"
    assert names.output_container(out_ds, "output_train_lowpt_ttbar_bjets.h5") == (
        f"{out_ds}_output_train_lowpt_ttbar_bjets.h5")


@pytest.mark.parametrize(("name", "message"), [
    ("user.other.601589.e1.v1_split.h5", "must start with 'user.jdoe.'"),
    ("user.jdoe.601589.e1.v1 split.h5", "contains ' '"),
    ("user.jdoe." + "x" * 122, "133 characters with the trailing '/', PanDA allows 132"),
])
def test_dataset_name_rules_are_one_line_errors(name, message):
    with pytest.raises(names.DatasetNameError, match=message) as err:
        names.check_dataset_name(name, "jdoe", "outDS")
    assert "\n" not in str(err.value)


def test_a_name_of_exactly_131_characters_is_allowed():
    names.check_dataset_name("user.jdoe." + "x" * 121, "jdoe", "outDS")


def test_container_without_dsid_or_tags_is_refused():
    with pytest.raises(names.DatasetNameError, match="cannot find a DSID and AMI tags"):
        names.parse_container("user.jdoe.my_ntuples.h5")


def test_user_comes_from_option_then_rucio_account_then_panda_nickname():
    env = {"RUCIO_ACCOUNT": "racc", "PANDA_NICKNAME": "pnick"}
    assert names.resolve_user("cli", env) == "cli"
    assert names.resolve_user(None, env) == "racc"
    assert names.resolve_user(None, {"PANDA_NICKNAME": "pnick"}) == "pnick"
    with pytest.raises(names.DatasetNameError, match="pass --rucio-user NICK or set "
                                                     "RUCIO_ACCOUNT"):
        names.resolve_user(None, {})
    with pytest.raises(names.DatasetNameError, match="not a grid nickname"):
        names.resolve_user("J Doe", {})


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory):
    project = make_project(tmp_path_factory.mktemp("names"), jets=2000, files=4,
                           env_dir=Path("/unused"))
    return load_config(project.config)


def test_one_task_per_container_with_every_declared_output(config):
    specs = plan_tasks(config, "v1", "jdoe", ["--memory", "3000"])

    assert [(s.container, s.samples, len(s.files)) for s in specs] == [
        (TTBAR, ("ttbar",), 2), (ZPRIME, ("zprime",), 2)]
    ttbar = specs[0]
    assert ttbar.out_ds == "user.jdoe.601589.e8547_s3797_r13144_p6859.v1_split.h5"
    assert [o.file for o in ttbar.outputs] == [o.filename for o in
                                              declared_outputs(config, ["ttbar"])]
    assert all(o.container == f"{ttbar.out_ds}_{o.file}" for o in ttbar.outputs)
    assert ttbar.command == "bash grid/split.sh --samples ttbar %IN"
    args = " ".join(ttbar.prun_args)
    for option in ("--nFilesPerJob 1", "--forceStaged", "--noCompile",
                   "--unlimitNumOutputs", f"--inDS {TTBAR}", f"--outDS {ttbar.out_ds}"):
        assert option in args
    assert ttbar.prun_args[-2:] == ("--memory", "3000")


def test_options_upp_grid_sets_cannot_be_passed_through(config):
    with pytest.raises(UppGridError, match="--outDS after '--' is set by upp-grid"):
        plan_tasks(config, "v1", "jdoe", ["--outDS=user.jdoe.x"])


def test_a_tag_too_long_for_the_output_containers_is_refused_up_front(config):
    with pytest.raises(names.DatasetNameError, match="use a shorter --tag"):
        plan_tasks(config, "t" * 60, "jdoe")


def test_a_glob_pattern_must_name_exactly_one_container(config, tmp_path):
    (config.global_.ntuple_dir / "user.mock.601589.other.h5").mkdir()
    try:
        with pytest.raises(InputError, match="must name one grid container, but matches 2"):
            plan_tasks(config, "v1", "jdoe")
    finally:
        (config.global_.ntuple_dir / "user.mock.601589.other.h5").rmdir()


def test_local_backend_needs_the_input_files(tmp_path):
    project = make_project(tmp_path, jets=1000, files=2, env_dir=Path("/unused"))
    config = load_config(project.config)
    for f in (project.base / "ntuples" / TTBAR).glob("*.h5"):
        f.unlink()
    (project.base / "ntuples" / TTBAR).rmdir()
    with pytest.raises(InputError):
        plan_tasks(config, "v1", "jdoe", need_files=True)
