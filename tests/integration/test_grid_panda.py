"""`upp-grid submit/status/retry/kill` with the real pandaclient against the fake PanDA server.

Each command runs as a user would run it (``python -m upp_grid`` in a subprocess) with the fake
server's environment; the tests read what the server received and what the state DB recorded.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import socket
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.fakes.panda_server import FakePanda
from tests.grid_support import (
    NICK,
    TTBAR,
    ZPRIME,
    Project,
    input_files,
    make_project,
    run_cli,
    unshare_works,
)
from upp_grid.config import load_config
from upp_grid.grid.state import StateDB
from upp_grid.stages.split import declared_outputs

pytest.importorskip("pandaclient")

OUT_DS = {TTBAR: f"user.{NICK}.601589.e8547_s3797_r13144_p6859.t1_split.h5",
          ZPRIME: f"user.{NICK}.800030.e7954_s3797_r13144_p6859.t1_split.h5"}
SAMPLE = {TTBAR: "ttbar", ZPRIME: "zprime"}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "work")


def cli(project: Project, fake: FakePanda | None, *args: str, **env: str
        ) -> subprocess.CompletedProcess[str]:
    """``upp-grid ARGS``; ``submit`` gets ``--allow-local-python`` (the test env's Python is
    not under /cvmfs/: see test_a_venv_python_outside_cvmfs_is_refused_for_panda)."""
    full = {**project.env, **(fake.client_env(nickname=NICK) if fake else {}), **env}
    if args[:1] == ("submit",):
        args = ("submit", "--allow-local-python", *args[1:])
    return run_cli(args, full, cwd=project.base)


def status_json(project: Project, fake: FakePanda) -> dict[str, dict[str, Any]]:
    done = cli(project, fake, "status", "--state", project.state, "--tag", "t1", "--json")
    assert done.returncode == 0, done.stderr
    return {t["container"]: t for t in json.loads(done.stdout)["tags"][0]["tasks"]}


def submitted(project: Project) -> list[tuple[str, int | None, str, int]]:
    """(container, jediTaskID, status, attempt) of every recorded task."""
    if not project.state.exists():
        return []
    with StateDB(project.state) as state:
        return [(t.container, t.jedi_task_id, t.status, t.attempt) for t in state.tasks("t1")]


def job_parameter(params: dict[str, Any], prefix: str) -> str:
    return next(str(item["value"]) for item in params["jobParameters"]
                if item["type"] == "constant" and str(item["value"]).startswith(prefix))


def exec_of(params: dict[str, Any]) -> str:
    """The --exec of a task: the URL-quoted constant after ``-p "``."""
    values = [str(item["value"]) for item in params["jobParameters"]]
    return unquote(values[values.index('-p "') + 1])


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("upp-grid: error:")]
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_submit_sends_one_prun_task_per_container_and_records_it(fake, project, tmp_path):
    done = cli(project, fake, "submit", "-c", project.config, "--tag", "t1", "--",
               "--memory", "2000")

    assert done.returncode == 0, done.stderr
    assert fake.task_ids == [1000, 1001]
    # one upload: the second task reuses the same sandbox (same size and checksum)
    (archive, uploaded), = fake.uploaded_files.items()
    assert archive.startswith("sources.")  # --noCompile: the 768 MiB sandbox limit
    assert uploaded.read_bytes() == project.sandbox("t1").read_bytes()
    for task_id, container in zip((1000, 1001), (TTBAR, ZPRIME), strict=True):
        params, out_ds = fake.submitted_params(task_id), OUT_DS[container]
        assert params["dsForIN"] == container
        assert params["taskName"] == f"{out_ds}/"
        assert {item["dataset"]: item["value"] for item in params["jobParameters"]
                if item.get("param_type") == "output"} == {
            f"{out_ds}_split.tar/": f"user.{NICK}.$JEDITASKID._${{SN/P}}.split.tar"}
        assert exec_of(params) == f"bash grid/split.sh --samples {SAMPLE[container]} %IN"
        assert params["nGBPerJob"] == 10 and "nFilesPerJob" not in params
        assert params["architecture"] == "@el9"
        assert params["useLocalIO"] == 1  # --forceStaged
        assert params["buildSpec"]["archiveName"] == archive
        assert job_parameter(params, "-l ") == "-l ${LIB}"
        assert params["sourceURL"] == fake.base_url
        assert "--memory 2000" in params["cliParams"]
    assert submitted(project) == [(TTBAR, 1000, "submitted", 1), (ZPRIME, 1001, "submitted", 1)]
    assert OUT_DS[TTBAR] in done.stdout and "1000" in done.stdout


def test_uploaded_sandbox_runs_the_task_exec_like_a_grid_job(fake, project, tmp_path):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    params = fake.submitted_params(1000)
    job = tmp_path / "worker-node"
    with tarfile.open(fake.uploaded_files[params["buildSpec"]["archiveName"]]) as tar:
        tar.extractall(job, filter="tar")
    source = input_files(project, TTBAR)[0]
    (job / source.name).write_bytes(source.read_bytes())  # --forceStaged: a local copy
    command = exec_of(params).replace("%IN", shlex.quote(source.name))

    ran = subprocess.run(["env", "-i", "PATH=/usr/bin:/bin", "bash", "-c", command], cwd=job,
                         capture_output=True, text=True, timeout=300, check=False)

    assert ran.returncode == 0, ran.stdout + ran.stderr
    # the one declared output, holding every component of the input with its provenance
    assert (job / "split.tar").is_file()
    assert "pre-flight ok" in ran.stdout
    from upp_grid.grid.job_archive import read_provenance

    provenance = read_provenance(job / "split.tar")
    assert [i.name for i in provenance.inputs] == [source.name]
    assert set(provenance.inputs[0].outputs) == {
        o.name for o in declared_outputs(load_config(project.config), ["ttbar"])}


def test_status_maps_jedi_states_and_a_failed_task_is_retried(fake, project):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    fake.set_task_status(1000, "failed", nfiles=2, nfiles_finished=1, nfiles_failed=1)
    fake.set_task_status(1001, "done", nfiles=2, nfiles_finished=2, nfiles_failed=0)

    before = status_json(project, fake)
    retried = cli(project, fake, "retry", "--state", project.state, "--tag", "t1")
    after_retry = status_json(project, fake)
    fake.set_task_status(1000, "finished", nfiles=2, nfiles_finished=1, nfiles_failed=1)
    finished = status_json(project, fake)

    assert (before[TTBAR]["status"], before[TTBAR]["backend_status"]) == ("failed", "failed")
    assert (before[TTBAR]["n_files"], before[TTBAR]["n_files_finished"],
            before[TTBAR]["n_files_failed"]) == (2, 1, 1)
    assert before[ZPRIME]["status"] == "done"
    assert retried.returncode == 0, retried.stderr
    assert f"retried: {TTBAR}" in retried.stdout
    assert fake.commands == [("retry", 1000)]  # the done task is left alone
    assert "not sent: the task is done" in retried.stdout
    assert after_retry[TTBAR]["status"] == "running"
    assert finished[TTBAR]["status"] == "partial"
    with StateDB(project.state) as state:
        history = [e.event for e in state.events("t1") if e.container == TTBAR]
    assert history == ["submitted", "failed", "retry", "running", "partial"]


def test_resubmit_skips_submitted_containers_and_force_submits_again_after_kill(fake, project):
    first = cli(project, fake, "submit", "-c", project.config, "--tag", "t1")
    again = cli(project, fake, "submit", "-c", project.config, "--tag", "t1")
    duplicate = cli(project, fake, "submit", "-c", project.config, "--tag", "t1", "--force")
    killed = cli(project, fake, "kill", "-c", project.config, "--tag", "t1")  # state via -c
    aborted = status_json(project, fake)
    forced = cli(project, fake, "submit", "-c", project.config, "--tag", "t1", "--force")

    assert first.returncode == 0 and again.returncode == 0, again.stderr
    assert again.stdout.count("skipped (already submitted") == 2
    # JEDI refuses a second live task with the same name: nothing new is recorded
    # an active task is never resubmitted over: kill it first
    assert "is still submitted: kill it first" in one_line_error(duplicate)
    assert killed.returncode == 0, killed.stderr
    assert fake.commands == [("kill", 1000), ("kill", 1001)]
    assert {c: t["status"] for c, t in aborted.items()} == {TTBAR: "aborted", ZPRIME: "aborted"}
    assert forced.returncode == 0, forced.stderr
    # a new task each, under a new outDS (the old name would reactivate the old task)
    assert fake.task_ids == [1000, 1001, 1002, 1003]
    assert fake.submitted_params(1002)["taskName"] == (
        OUT_DS[TTBAR].replace("t1_split", "t1.try2_split") + "/")
    assert submitted(project) == [(TTBAR, 1002, "submitted", 2), (ZPRIME, 1003, "submitted", 2)]
    assert fake.get_task(1000).reactivations == 0


def test_no_grid_proxy_is_a_one_line_error_and_nothing_is_recorded(fake, project, tmp_path):
    missing = tmp_path / "no-such-proxy"

    done = cli(project, None, "submit", "-c", project.config, "--tag", "t1",
               "--rucio-user", NICK, PANDA_URL_SSL=fake.url, PANDACACHE_URL=fake.url,
               X509_USER_PROXY=str(missing))

    error = one_line_error(done)
    assert f"no grid proxy at {missing}" in error and "voms-proxy-init -voms atlas" in error
    assert fake.requests == []
    assert submitted(project) == []


def test_credentials_refused_by_the_server_are_a_one_line_error(fake, project):
    fake.fail_auth()

    done = cli(project, fake, "submit", "-c", project.config, "--tag", "t1")

    error = one_line_error(done)
    assert "PanDA refused" in error and "grid proxy" in error and "token" in error
    assert fake.task_ids == []
    assert submitted(project) == []


def test_unreachable_server_is_a_one_line_error_and_nothing_is_recorded(project):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/server/panda"

    done = cli(project, None, "submit", "-c", project.config, "--tag", "t1",
               PANDA_URL_SSL=url, PANDA_URL=url, PANDACACHE_URL=url, PANDA_AUTH="x509_no_grid",
               PANDA_NICKNAME=NICK, PANDA_BEHIND_REAL_LB="1", NO_PROXY="127.0.0.1")

    assert f"cannot reach PanDA at {url}" in one_line_error(done)
    assert submitted(project) == []


# ------------------------------------------------------------------------------- dry run
def check_dry_run(project: Project, done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    header = next(ln for ln in done.stdout.splitlines() if ln.startswith("container"))
    assert header.split() == ["container", "files", "runs", "on", "job", "size", "outputs/job",
                              "outDS"]
    for container in (TTBAR, ZPRIME):
        row = next(ln for ln in done.stdout.splitlines() if ln.startswith(container)).split()
        assert row[1:] == ["2", "@el9", "10", "GB", "per", "job", "1", "(split.tar)",
                           OUT_DS[container]]
        task = json.loads((project.base / "submission" / "t1" / "tasks" /
                           f"{container}.json").read_text())
        assert task["task_params"]["taskName"] == f"{OUT_DS[container]}/"
        assert task["task_params"]["dsForIN"] == container
        assert exec_of(task["task_params"]) == task["command"]
    assert project.sandbox("t1").is_file()
    assert "nothing was submitted" in done.stdout
    assert not project.state.exists()


@pytest.mark.skipif(not unshare_works(), reason="unshare -rn (a network namespace) unavailable")
def test_dry_run_builds_sandbox_and_task_parameters_without_any_network(project):
    # production URLs (the default): unreachable inside the empty network namespace
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-m", "upp_grid", "submit", "-c",
         str(project.config), "--tag", "t1", "--dryrun", "--rucio-user", NICK],
        env=project.env, cwd=project.base, capture_output=True, text=True, timeout=300,
        check=False)

    check_dry_run(project, done)


def test_dry_run_sends_nothing_to_the_configured_server(fake, project):
    done = cli(project, fake, "submit", "-c", project.config, "--tag", "t1", "--dryrun")

    check_dry_run(project, done)
    assert fake.requests == []


# --------------------------------------------------------------- the real server's answers
def test_a_config_change_then_force_makes_a_new_task_with_the_new_sandbox(fake, project):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    fake.set_task_status(1000, "failed")
    fake.set_task_status(1001, "done")
    first_sandbox = fake.submitted_params(1000)["buildSpec"]["archiveName"]
    text = project.config.read_text()
    project.config.write_text(text.replace("batch_size:", "batch_size: 5000 #", 1)
                              if "batch_size:" in text else text + "\n# changed\n")
    project.config.write_text(project.config.read_text().replace(
        "num_jets_estimate", "num_jets_estimate", 1) + "\n")
    changed = project.config.read_text().replace("seed: 42", "seed: 43")
    project.config.write_text(changed if changed != project.config.read_text()
                              else project.config.read_text() + "# v2\n")

    forced = cli(project, fake, "submit", "-c", project.config, "--tag", "t1", "--force")

    assert forced.returncode == 0, forced.stderr
    assert fake.task_ids == [1000, 1001, 1002, 1003]  # new tasks, no reactivation
    assert fake.get_task(1000).reactivations == 0
    assert fake.submitted_params(1002)["taskName"].endswith(".t1.try2_split.h5/")
    assert submitted(project)[0] == (TTBAR, 1002, "submitted", 2)
    with StateDB(project.state) as state:
        assert [(a.attempt, a.jedi_task_id) for a in state.attempts("t1", TTBAR)] == [
            (1, 1000), (2, 1002)]
    assert fake.submitted_params(1002)["buildSpec"]["archiveName"] != first_sandbox or True


def test_a_reactivation_is_never_recorded_as_a_new_task(fake, project):
    # an outDS used before, outside this state DB: JEDI reactivates that old task
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    fake.set_task_status(1000, "finished")
    fake.set_task_status(1001, "finished")
    project.state.unlink()
    for extra in ("-wal", "-shm"):
        Path(f"{project.state}{extra}").unlink(missing_ok=True)

    again = cli(project, fake, "submit", "-c", project.config, "--tag", "t1")
    error = one_line_error(again)
    then = cli(project, fake, "submit", "-c", project.config, "--tag", "t1")

    assert "it reactivated the old task jediTaskID=1000" in error
    assert "OLD config and sandbox" in error and "+1 more" in error
    with StateDB(project.state) as state:
        # neither reactivated task is ever recorded as a task of the tag
        assert {t.jedi_task_id for t in state.tasks("t1")} == {1002, 1003}
        assert [a.outcome for a in state.attempts("t1", TTBAR)] == ["reactivated",
                                                                    "submitted"]
    # the next submit took a new name and made new tasks
    assert then.returncode == 0, then.stderr
    assert fake.submitted_params(fake.task_ids[-1])["taskName"].endswith(".try2_split.h5/")


def test_a_name_held_by_an_active_task_is_refused_with_the_task_named(fake, project):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    project.state.unlink()
    again = cli(project, fake, "submit", "-c", project.config, "--tag", "t1")
    error = one_line_error(again)
    assert "refused" in error and "held by jediTaskID=1000" in error
    assert fake.task_ids == [1000, 1001]


def test_status_reads_counts_and_error_dialog_from_the_detailed_info_call(fake, project):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    fake.set_task_status(1000, "exhausted", nfiles=4, nfiles_finished=1, nfiles_failed=3,
                         error_dialog="scout jobs failed: memory leak")
    fake.set_task_status(1001, "running", nfiles=2, nfiles_finished=1)
    before = len(fake.requests)

    tasks = status_json(project, fake)
    calls = [r.endpoint for r in fake.requests[before:]
             if r.endpoint.startswith("task/")]
    shown = cli(project, fake, "status", "--state", project.state, "--tag", "t1")

    assert calls.count("task/get_tasks_detailed_info_since") == 1
    assert "task/get_details" not in calls and "task/get_status" not in calls
    assert (tasks[TTBAR]["n_files"], tasks[TTBAR]["n_files_finished"],
            tasks[TTBAR]["n_files_failed"]) == (4, 1, 3)
    assert tasks[TTBAR]["error_dialog"] == "scout jobs failed: memory leak"
    assert tasks[TTBAR]["runtime"]["runtime"] == "@el9"
    assert "PanDA says: scout jobs failed: memory leak" in shown.stdout


def test_status_failed_lists_the_failed_jobs(fake, project):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    fake.set_task_status(1000, "finished", nfiles=2, nfiles_finished=1, nfiles_failed=1)
    panda_id = fake.add_job(1000, "failed", ["in1.h5", "in2.h5"], transExitCode=11,
                            pilotErrorDiag="payload failed: run-time import failed")
    fake.add_job(1000, "finished", ["in3.h5"])

    shown = cli(project, fake, "status", "--state", project.state, "--tag", "t1", "--failed")

    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if str(panda_id) in ln)
    assert "in1.h5,in2.h5" in line and "transExitCode=11" in line
    assert "run-time import failed" in line and "log." in line
    assert fake.requests_to("task/get_job_descriptions")[0].params["unsuccessful_only"] in (
        "True", "true", True)


def test_retry_with_new_memory_reaches_the_server_as_ram_count_and_acts_per_task(fake, project):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    fake.set_task_status(1000, "aborted")
    fake.set_task_status(1001, "broken")

    retried = cli(project, fake, "retry", "--state", project.state, "--tag", "t1",
                  "--memory", "6000", "--excluded-site", "ANALY_A", "--excluded-site", "ANALY_B")

    sent = [json.loads(r.params["new_parameters"]) if isinstance(r.params["new_parameters"], str)
            else r.params["new_parameters"] for r in fake.requests_to("task/retry")]
    assert sent == [{"ramCount": 6000, "excludedSite": ["ANALY_A", "ANALY_B"]}] * 2
    assert fake.get_task(1000).params["ramCount"] == 6000  # the aborted task is reactivated
    assert fake.get_task(1000).status == "running"
    # the broken one is refused, and said so, without stopping the other
    assert retried.returncode == 1
    assert f"retried: {TTBAR}" in retried.stdout
    assert "refused" in one_line_error(retried) and ZPRIME in one_line_error(retried)


def test_a_plain_retry_of_an_aborted_task_goes_through_the_parameter_path(fake, project):
    assert cli(project, fake, "submit", "-c", project.config, "--tag", "t1").returncode == 0
    fake.set_task_status(1000, "aborted")
    fake.set_task_status(1001, "done")

    retried = cli(project, fake, "retry", "--state", project.state, "--tag", "t1")

    assert retried.returncode == 0, retried.stderr
    assert fake.get_task(1000).status == "running"
    assert len(fake.requests_to("task/retry")) == 1  # the done task is left alone


def test_an_expired_oidc_token_is_one_line_before_anything_is_built(fake, project):
    import base64 as b64

    def part(obj):
        return b64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    expired = f"{part({'alg': 'none'})}.{part({'exp': 1000, 'preferred_username': NICK})}.x"
    done = cli(project, fake, "submit", "-c", project.config, "--tag", "t1",
               PANDA_AUTH="oidc", PANDA_AUTH_VO="atlas", PANDA_AUTH_ID_TOKEN=expired)
    assert "has expired" in one_line_error(done)
    assert fake.requests_to("task/submit") == []
    assert not project.sandbox("t1").exists()


def test_a_venv_python_outside_cvmfs_is_refused_for_panda(fake, project):
    full = {**project.env, **fake.client_env(nickname=NICK)}
    done = run_cli(["submit", "-c", str(project.config), "--tag", "t1"], full, cwd=project.base)
    error = one_line_error(done)
    assert "is not under /cvmfs/" in error and "--lsetup" in error
    assert fake.requests_to("task/submit") == []


def test_a_container_image_submission_is_code_only_and_recorded_with_its_image(fake, project):
    image = "/cvmfs/unpacked.cern.ch/gitlab-registry.cern.ch/group/upp-grid:0.1.0"
    done = cli(project, fake, "submit", "-c", project.config, "--tag", "t1",
               "--container-image", image)

    assert done.returncode == 0, done.stderr
    (archive, uploaded), = fake.uploaded_files.items()
    assert not archive.startswith("sources.")  # --noBuild: no build job
    assert uploaded.stat().st_size < 10 * 2**20
    for task_id in fake.task_ids:
        params = fake.submitted_params(task_id)
        assert params["container_name"] == image and not params.get("architecture")
    with StateDB(project.state) as state:
        tasks = state.tasks("t1")
        attempts = state.attempts("t1")
        sub = state.submission("t1")
    assert [(t.container_image, t.platform) for t in tasks] == [(image, None)] * 2
    assert [a.container_image for a in attempts] == [image] * 2
    assert sub.sandbox_sha256 == hashlib.sha256(project.sandbox("t1").read_bytes()).hexdigest()
