"""Grid names (DESIGN §6) and the task specs built from a config, before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.grid_support import TTBAR, ZPRIME, make_project
from upp_grid.config import load_config
from upp_grid.errors import InputError, UppGridError
from upp_grid.grid import names
from upp_grid.grid.tasks import TaskOptions, check_extra_prun_args, group_inputs, plan_tasks

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


def test_one_task_per_container_with_one_output_per_job_on_a_pinned_platform(config):
    specs = plan_tasks(config, "v1", "jdoe", ["--memory", "3000"])

    assert [(s.container, s.samples, len(s.files)) for s in specs] == [
        (TTBAR, ("ttbar",), 2), (ZPRIME, ("zprime",), 2)]
    ttbar = specs[0]
    assert ttbar.out_ds == "user.jdoe.601589.e8547_s3797_r13144_p6859.v1_split.h5"
    assert [(o.file, o.container) for o in ttbar.outputs] == [
        ("split.tar", f"{ttbar.out_ds}_split.tar")]
    assert ttbar.command == "bash grid/split.sh --samples ttbar %IN"
    args = " ".join(ttbar.prun_args)
    for option in ("--nGBPerJob 10", "--forceStaged", "--noCompile", "--architecture @el9",
                   "--outputs split.tar", "-y", f"--inDS {TTBAR}", f"--outDS {ttbar.out_ds}"):
        assert option in args
    assert "--unlimitNumOutputs" not in args and "--nFilesPerJob" not in args
    assert ttbar.prun_args[-2:] == ("--memory", "3000")


def test_container_mode_and_job_size_options_reach_prun(config):
    options = TaskOptions(container_image="/cvmfs/unpacked.cern.ch/img:1", files_per_job=5,
                          dest_se="CERN-PROD_SCRATCHDISK")
    args = " ".join(plan_tasks(config, "v1", "jdoe", options=options)[0].prun_args)
    for option in ("--containerImage /cvmfs/unpacked.cern.ch/img:1", "--nFilesPerJob 5",
                   "--destSE CERN-PROD_SCRATCHDISK"):
        assert option in args
    assert "--noCompile" not in args and "--architecture" not in args
    assert "--nGBPerJob" not in args


def test_a_resubmission_attempt_gets_its_own_out_ds(config):
    spec = plan_tasks(config, "v1", "jdoe", attempts={TTBAR: 3})[0]
    assert spec.out_ds == "user.jdoe.601589.e8547_s3797_r13144_p6859.v1.try3_split.h5"
    assert spec.attempt == 3
    with pytest.raises(names.DatasetNameError, match=r"may not end in '\.try<N>'"):
        plan_tasks(config, "v1.try2", "jdoe")


@pytest.mark.parametrize("arg", ["--outDS=user.jdoe.x", "--nFilesPerJo=50", "--nGBPerJ=3",
                                 "--containerIm", "--architecture=@el8", "--unlimitNumOutputs",
                                 "--noBuild"])
def test_options_upp_grid_sets_cannot_be_passed_through_even_abbreviated(config, arg):
    with pytest.raises(UppGridError, match="after '--' is set by upp-grid itself") as err:
        plan_tasks(config, "v1", "jdoe", [arg, "x"] if arg == "--containerIm" else [arg])
    assert "\n" not in str(err.value)


def test_other_prun_options_pass_and_unknown_ones_are_named():
    assert check_extra_prun_args(["--memory", "3000", "--site=ANALY_X"]) == (
        "--memory", "3000", "--site=ANALY_X")
    with pytest.raises(UppGridError, match="prun has no option --nosuch"):
        check_extra_prun_args(["--nosuch"])


def test_files_are_grouped_into_jobs_by_size_or_count(tmp_path):
    files = []
    for i in range(5):
        f = tmp_path / f"f{i}.h5"
        f.write_bytes(b"x" * 10)
        files.append(f)
    assert [len(j) for j in group_inputs(files, TaskOptions(files_per_job=2))] == [2, 2, 1]
    assert [len(j) for j in group_inputs(files, TaskOptions())] == [5]
    with pytest.raises(UppGridError, match="exclude each other"):
        TaskOptions(gb_per_job=3, files_per_job=2)


def test_a_tag_too_long_for_the_output_containers_is_refused_up_front(config):
    with pytest.raises(names.DatasetNameError, match="use a shorter --tag"):
        plan_tasks(config, "t" * 64, "j" * 30)


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
