"""The real pandaclient 2.2.0 against the fake PanDA server of tests/fakes/panda_server.py.

pandaclient reads its server URLs from the environment when ``pandaclient.Client`` is imported,
so every client call runs in a fresh ``python -c`` subprocess with the fake server's environment
(see docs/dev/pandaclient.md).  Nothing in pandaclient is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.panda_server import MESSAGE_AUTH, FakePanda, make_fake_id_token

pytest.importorskip("pandaclient")

OUT_DS = "user.testuser.601229.e8514_s4162.tag1_split.h5"
IN_DS = "mc20_13TeV.601229.PhPy8EG_ttbar.deriv.DAOD_FTAG1.e8514_s4162"
COMPONENTS = ("ttbar_jets", "zprime_jets")

# Variables that would leak the developer's grid setup (or a proxy) into the client.
_SCRUBBED_PREFIXES = ("PANDA", "X509", "OIDC", "RUCIO", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
_SCRUBBED_NAMES = {"CMAKE_PREFIX_PATH", "CMTCONFIG", "PATHENA_GRID_SETUP_SH"}

# Runs after the test's code in the subprocess: the code leaves its answer in ``result``.
_EPILOGUE = """
with open(sys.argv[1], "w") as _result_file:
    json.dump(result, _result_file, default=str)
"""

# Makes any network connection in the subprocess fail and records that it was tried.
_NO_NETWORK = """
import socket
network_attempts = []

def _refuse(*args, **kwargs):
    network_attempts.append(repr(args[:2]))
    raise OSError("networking is disabled in this test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(_SCRUBBED_PREFIXES)
        and key.upper() != "NO_PROXY"
        and key not in _SCRUBBED_NAMES
    }
    env["PANDA_CONFIG_ROOT"] = str(tmp_path / "panda-config")
    return env


def run_client(code: str, env: dict[str, str], cwd: Path, prelude: str = "") -> Any:
    """Run ``code`` with the real pandaclient in a fresh interpreter; return its ``result``.

    ``pandaclient.Client`` is imported (as ``Client``) after ``prelude`` and before ``code``.
    """
    result_path = cwd / "client-result.json"
    script = "\n".join(
        [
            "import json",
            "import sys",
            textwrap.dedent(prelude),
            "from pandaclient import Client",
            textwrap.dedent(code),
            _EPILOGUE,
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(result_path)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(result_path.read_text())


def make_sandbox(path: Path, files: dict[str, bytes]) -> Path:
    """A gzipped tarball holding ``files``, like the upp-grid sandbox."""
    src = path.parent / f"{path.name}.src"
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            member = src / name
            member.parent.mkdir(parents=True, exist_ok=True)
            member.write_bytes(content)
            tar.add(member, arcname=name)
    return path


def task_params(sandbox: str | None = None) -> dict[str, Any]:
    """Hand-written task parameters in prun's shape, one output per component."""
    job_parameters: list[dict[str, Any]] = [
        {"type": "constant", "value": '-j "" --sourceURL ${SURL}'},
        {"type": "constant", "value": "-r ."},
    ]
    if sandbox is not None:
        job_parameters.append({"type": "constant", "value": f"-a {sandbox}"})
    for component in COMPONENTS:
        job_parameters.append(
            {
                "type": "template",
                "param_type": "output",
                "value": f"user.testuser.$JEDITASKID._${{SN/P}}.output_{component}.h5",
                "dataset": f"{OUT_DS}_output_{component}.h5/",
                "container": f"{OUT_DS}_output_{component}.h5/",
                "hidden": True,
            }
        )
    job_parameters.append(
        {
            "type": "template",
            "param_type": "input",
            "value": '-i "${IN/T}"',
            "dataset": IN_DS,
            "expand": True,
        }
    )
    return {
        "taskName": f"{OUT_DS}/",
        "uniqueTaskName": True,
        "vo": "atlas",
        "prodSourceLabel": "user",
        "nFilesPerJob": 1,
        "dsForIN": IN_DS,
        "log": {
            "type": "template",
            "param_type": "log",
            "value": f"{OUT_DS}.log.$JEDITASKID.${{SN}}.log.tgz",
            "dataset": f"{OUT_DS}.log/",
            "container": f"{OUT_DS}.log/",
        },
        "jobParameters": job_parameters,
    }


# Submits ``params`` and keeps the jediTaskID parsed from the answer, as prun does.
_SUBMIT = """
import re

def submit(params):
    status, answer = Client.insertTaskParams(params, properErrorCode=True)
    assert status == 0 and answer[0] == 0, (status, answer)
    return int(re.search(r"jediTaskID=(\\d+)", answer[1]).group(1))

def wait_for_status(task_id, wanted):
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, task_status = Client.getTaskStatus(task_id)
        if task_status == wanted:
            return task_status
        time.sleep(0.02)
    return task_status
"""


@pytest.fixture
def client_env(fake: FakePanda, tmp_path: Path) -> Callable[..., dict[str, str]]:
    def build(**kwargs: Any) -> dict[str, str]:
        return {**_base_env(tmp_path), **fake.client_env(**kwargs)}

    return build


def test_is_alive_sandbox_upload_reuse_and_download(fake, client_env, tmp_path):
    sandbox = make_sandbox(
        tmp_path / "sources.7c1f.tar.gz", {"grid/run.sh": b"#!/bin/bash\necho split $1\n"}
    )
    result = run_client(
        """
        result = {
            "hello": Client.hello(),
            "upload": Client.putFile("sources.7c1f.tar.gz", useCacheSrv=True, reuseSandbox=True),
            "again": Client.putFile("sources.7c1f.tar.gz", useCacheSrv=True, reuseSandbox=True),
            "download": Client.getFile("sources.7c1f.tar.gz", output_path="downloaded.tar.gz"),
        }
        """,
        client_env(),
        cwd=tmp_path,
    )

    assert result["hello"] == [0, ""]
    assert result["upload"] == [0, "True"]
    # same size and CRC as a file already in the cache: the client is told to reuse it
    assert result["again"] == [0, "NewFileName:sources.7c1f.tar.gz"]
    assert result["download"] == [0, True]
    assert fake.uploaded_files["sources.7c1f.tar.gz"].read_bytes() == sandbox.read_bytes()
    assert (tmp_path / "downloaded.tar.gz").read_bytes() == sandbox.read_bytes()
    endpoints = [req.endpoint for req in fake.requests]
    assert endpoints == [
        "system/is_alive",
        "file_server/validate_cache_file",
        "file_server/upload_cache_file",
        "file_server/validate_cache_file",
    ]
    assert fake.requests_to("file_server/validate_cache_file")[0].params["file_size"] == (
        sandbox.stat().st_size
    )


def test_insert_task_params_reaches_server_and_hook_gets_sandbox(fake, client_env, tmp_path):
    sandbox = make_sandbox(tmp_path / "sources.a1.tar.gz", {"grid/run.sh": b"echo $1\n"})
    seen: list[tuple[int, dict[str, Any], Path | None]] = []
    fake.on_submit = lambda task_id, params, path: seen.append((task_id, params, path))
    params = task_params(sandbox="sources.a1.tar.gz")

    result = run_client(
        f"""
        Client.putFile("sources.a1.tar.gz", useCacheSrv=True, reuseSandbox=True)
        first = Client.insertTaskParams({params!r}, properErrorCode=True)
        again = Client.insertTaskParams({params!r}, properErrorCode=True)
        result = {{"first": first, "again": again}}
        """,
        client_env(),
        cwd=tmp_path,
        prelude=_SUBMIT,
    )

    assert result["first"] == [0, [0, "succeeded. new jediTaskID=1000"]]
    # uniqueTaskName: the same outDS cannot be submitted twice
    code, message = result["again"][1]
    assert result["again"][0] == 0 and code == 2 and "jediTaskID=1000" in message
    assert fake.task_ids == [1000]
    assert fake.submitted_params(1000) == params
    assert fake.get_task(1000).status == "registered"
    fake.wait_for_hooks()
    assert [(task_id, got) for task_id, got, _ in seen] == [(1000, params)]
    assert seen[0][2] is not None and seen[0][2].read_bytes() == sandbox.read_bytes()


def test_status_and_details_follow_the_server(fake, client_env, tmp_path):
    # the "grid" picks the task up as soon as it is accepted
    fake.on_submit = lambda task_id, _params, _sandbox: fake.set_task_status(
        task_id, "running", nfiles=3, nfiles_finished=1
    )

    result = run_client(
        f"""
        task_id = submit({task_params()!r})
        running = wait_for_status(task_id, "running")
        details = Client.getJediTaskDetails({{"jediTaskID": task_id}}, False, True)
        missing = Client.getJediTaskDetails({{"jediTaskID": 4242}}, False, True)
        result = {{"task_id": task_id, "running": running, "details": details,
                   "missing_status": Client.getTaskStatus(4242), "missing_details": missing}}
        """,
        client_env(),
        cwd=tmp_path,
        prelude=_SUBMIT,
    )

    assert result["task_id"] == 1000
    assert result["running"] == "running"
    status, details = result["details"]
    assert status == 0
    # the answer is merged into the dict the caller passed in
    assert details["jediTaskID"] == 1000
    assert details["status"] == "running"
    # like TaskBuffer.getJediTaskDetails: statistics, but no file counts
    assert not {"nFiles", "nFilesFinished", "nFilesFailed"} & set(details)
    assert details["statistics"] == "finished*1"
    assert details["inDS"] == IN_DS
    assert set(details["outDS"].split(",")) == {
        f"{OUT_DS}_output_ttbar_jets.h5/",
        f"{OUT_DS}_output_zprime_jets.h5/",
        f"{OUT_DS}.log/",
    }
    assert result["missing_status"] == [255, None]
    assert result["missing_details"] == [255, None]
    get_details = fake.requests_to("task/get_details")[0]
    assert get_details.method == "GET"
    assert get_details.params == {
        "task_id": "1000",
        "include_parameters": "False",
        "include_status": "True",
    }


def test_failed_task_is_retried(fake, client_env, tmp_path):
    fake.on_submit = lambda task_id, _params, _sandbox: fake.set_task_status(
        task_id, "failed", nfiles=3, nfiles_finished=2, nfiles_failed=1
    )
    retried: list[int] = []
    fake.on_retry = lambda task_id, _params, _sandbox: retried.append(task_id)

    result = run_client(
        f"""
        task_id = submit({task_params()!r})
        failed = wait_for_status(task_id, "failed")
        details = Client.get_tasks_detailed_info_since(filters={{"jediTaskID": str(task_id)}})[1][0]
        retry = Client.retryTask(task_id)
        after = Client.getTaskStatus(task_id)
        retry_running = Client.retryTask(task_id)
        result = {{"failed": failed, "n_failed": details["nFilesFailed"], "retry": retry,
                   "after": after, "retry_running": retry_running}}
        """,
        client_env(),
        cwd=tmp_path,
        prelude=_SUBMIT,
    )

    assert result["failed"] == "failed"
    assert result["n_failed"] == 1
    status, (code, message) = result["retry"]
    assert (status, code) == (0, 0) and "retry" in message
    assert result["after"] == [0, "running"]
    # a running user task: sendCommandTaskPanda's code 5, which task_api.retry turns into 0
    assert result["retry_running"][0] == 0 and result["retry_running"][1][0] == 0
    assert "retry has been triggered for failed jobs" in result["retry_running"][1][1]
    assert fake.commands == [("retry", 1000), ("retry", 1000)]
    task = fake.get_task(1000)
    assert task.retries == 2
    assert task.status_history == ["registered", "failed", "running"]
    assert task.nfiles_failed == 0
    fake.wait_for_hooks()
    assert retried == [1000, 1000]


def test_a_reused_task_name_reactivates_the_old_task_or_is_refused(fake, client_env, tmp_path):
    result = run_client(
        f"""
        first = Client.insertTaskParams({task_params()!r}, properErrorCode=True)
        active = Client.insertTaskParams({task_params()!r}, properErrorCode=True)
        result = {{"first": first, "active": active}}
        """,
        client_env(), cwd=tmp_path, prelude=_SUBMIT)
    fake.set_task_status(1000, "finished")
    again = run_client(
        f"""
        new = {task_params()!r}
        new["jobParameters"] = []
        new["ramCount"] = 6000
        result = Client.insertTaskParams(new, properErrorCode=True)
        """,
        client_env(), cwd=tmp_path, prelude=_SUBMIT)

    assert result["first"] == [0, [0, "succeeded. new jediTaskID=1000"]]
    assert result["active"][1][0] == 2 and "jediTaskID=1000 is in the registered state" in (
        result["active"][1][1])
    # pandaclient 2.2.0 reports the reactivation as code 0: only the message tells
    assert again[0] == 0 and again[1][0] == 0
    assert again[1][1].startswith("reactivation accepted. jediTaskID=1000")
    assert fake.task_ids == [1000]
    task = fake.get_task(1000)
    assert task.reactivations == 1 and task.status == "running"
    assert task.params["ramCount"] == 6000  # whitelisted
    assert task.params["jobParameters"] != []  # the old exec and outputs stay


def test_detailed_info_gives_counts_and_a_multi_id_filter_applies_after_the_cut(
        fake, client_env, tmp_path):
    result = run_client(
        f"""
        ids = [submit({{**{task_params()!r}, "taskName": f"user.t.{{i}}/"}}) for i in range(3)]
        result = {{
            "all": Client.get_tasks_detailed_info_since(filters={{"jediTaskID": "^(1000|1002)$"}}),
            "cut": Client.get_tasks_detailed_info_since(filters={{"jediTaskID": "^(1000|1002)$"}},
                                                        n_tasks=1),
            "plain": Client.get_tasks_detailed_info_since(filters={{"jediTaskID": "1000"}},
                                                          n_tasks=1)}}
        """,
        client_env(), cwd=tmp_path, prelude=_SUBMIT)
    fake.set_task_status(1000, "exhausted", nfiles=4, nfiles_finished=1, nfiles_failed=3,
                         error_dialog="scouts failed")

    status, tasks = result["all"]
    assert status == 0 and sorted(t["jediTaskID"] for t in tasks) == [1000, 1002]
    assert {"nFiles", "nFilesFinished", "nFilesFailed", "errorDialog", "status"} <= set(tasks[0])
    assert [t["jediTaskID"] for t in result["cut"][1]] == [1002]  # 1000 fell off the cut
    assert [t["jediTaskID"] for t in result["plain"][1]] == [1000]  # SQL equality: exact


def test_kill_aborts_a_task(fake, client_env, tmp_path):
    fake.on_submit = lambda task_id, _params, _sandbox: fake.set_task_status(task_id, "running")

    result = run_client(
        f"""
        task_id = submit({task_params()!r})
        wait_for_status(task_id, "running")
        result = {{"kill": Client.killTask(task_id), "status": Client.getTaskStatus(task_id),
                   "kill_again": Client.killTask(task_id), "kill_missing": Client.killTask(4242)}}
        """,
        client_env(),
        cwd=tmp_path,
        prelude=_SUBMIT,
    )

    # killTask answers (status, (True, 0)) on success but (status, (False, message)) on refusal
    assert result["kill"] == [0, [True, 0]]
    assert result["status"] == [0, "aborted"]
    assert result["kill_again"][0] == 0 and result["kill_again"][1][0] is False
    assert "aborted" in result["kill_again"][1][1]
    assert result["kill_missing"][0] == 0 and result["kill_missing"][1][0] is False
    assert fake.commands == [("kill", 1000)]


def test_server_errors_reach_the_caller(fake, client_env, tmp_path):
    fake.fail_next_submit("JEDI is down for maintenance", code=4)
    fake.fail_next("task/get_status", "Internal Server Error", http_status=500)

    result = run_client(
        f"""
        refused = Client.insertTaskParams({task_params()!r}, properErrorCode=True)
        accepted = Client.insertTaskParams({task_params()!r}, properErrorCode=True)
        broken_status = Client.getTaskStatus(1000)
        status = Client.getTaskStatus(1000)
        result = {{"refused": refused, "accepted": accepted, "broken_status": broken_status,
                   "status": status}}
        """,
        client_env(),
        cwd=tmp_path,
    )

    assert result["refused"] == [0, [4, "JEDI is down for maintenance"]]
    assert result["accepted"] == [0, [0, "succeeded. new jediTaskID=1000"]]
    # an HTTP error is flattened to EC_Failed=255 by the client
    assert result["broken_status"] == [255, None]
    assert result["status"] == [0, "registered"]
    assert fake.task_ids == [1000]


def test_oidc_token_is_sent_and_checked(tmp_path):
    token = make_fake_id_token("testuser")
    with FakePanda(tmp_path / "cache", require_token=token) as server:
        base = _base_env(tmp_path)
        code = f"""
        result = {{"hello": Client.hello(),
                   "submit": Client.insertTaskParams({task_params()!r}, properErrorCode=True),
                   "status": Client.getTaskStatus(1000)}}
        """
        good = run_client(code, {**base, **server.client_env(auth="oidc")}, cwd=tmp_path)
        bad_env = {**base, **server.client_env(auth="oidc", token=make_fake_id_token("intruder"))}
        bad = run_client(code, bad_env, cwd=tmp_path)
        server.fail_auth()
        expired = run_client(code, {**base, **server.client_env(auth="oidc")}, cwd=tmp_path)

        assert good["submit"] == [0, [0, "succeeded. new jediTaskID=1000"]]
        assert good["status"] == [0, "registered"]
        submit = server.requests_to("task/submit")[0]
        assert submit.headers["authorization"] == f"Bearer {token}"
        assert submit.headers["origin"] == "atlas"
        for refused in (bad, expired):
            assert refused["hello"] == [0, ""]  # is_alive needs no credentials
            # insertTaskParams hands back (data, message): data is None here
            assert refused["submit"] == [0, [None, MESSAGE_AUTH]]
            assert refused["status"] == [255, None]
        assert server.task_ids == [1000]


PRUN_ARGS = [
    "--exec",
    "bash grid/split.sh %IN",
    "--inDS",
    IN_DS,
    "--outDS",
    OUT_DS,
    "--outputs",
    ",".join(f"output_{component}.h5" for component in COMPONENTS),
    "--nFilesPerJob",
    "1",
    "--noBuild",
    "--forceStaged",
]

# prun in-process: PrunScript.main reads sys.argv for cliParams and returns the task parameters
# when get_taskparams=True; it exits (SystemExit) on any error.
_PRUN = """
import os
from pandaclient import PrunScript

def prun_task_params(args, dry_mode):
    saved_argv, saved_cwd = sys.argv[:], os.getcwd()
    sys.argv = ["prun", *args]
    try:
        return PrunScript.main(get_taskparams=True, ext_args=args, dry_mode=dry_mode)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
"""


def test_prun_uploads_sandbox_and_builds_params_for_submission(fake, client_env, tmp_path):
    sandbox = make_sandbox(tmp_path / "sandbox.tar.gz", {"grid/split.sh": b"echo $1\n"})
    seen: list[Path | None] = []
    fake.on_submit = lambda _task_id, _params, path: seen.append(path)
    args = [*PRUN_ARGS, "--inTarBall", str(sandbox), "--tmpDir", str(tmp_path / "prun-tmp")]
    bad_args = [*args]
    bad_args[bad_args.index("--outDS") + 1] = "user.someoneelse.601229.tag1_split.h5"

    result = run_client(
        f"""
        params = prun_task_params({args!r}, dry_mode=False)
        submitted = Client.insertTaskParams(params, properErrorCode=True)
        try:
            prun_task_params({bad_args!r}, dry_mode=False)
            bad_outds = None
        except SystemExit as exc:
            bad_outds = exc.code
        result = {{"params": params, "submitted": submitted, "bad_outds": bad_outds,
                   "rucio_account": os.environ.get("RUCIO_ACCOUNT")}}
        """,
        client_env(nickname="testuser"),
        cwd=tmp_path,
        prelude=_SUBMIT + _PRUN,
    )

    params = result["params"]
    archive = next(
        item["value"].split()[1]
        for item in params["jobParameters"]
        if item["type"] == "constant" and item["value"].startswith("-a ")
    )
    # --noBuild names the uploaded copy jobO.<uuid>.tar, whatever the tarball was called
    assert archive.startswith("jobO.") and archive.endswith(".tar")
    assert fake.uploaded_files[archive].read_bytes() == sandbox.read_bytes()
    assert params["sourceURL"] == fake.base_url
    assert result["submitted"] == [0, [0, "succeeded. new jediTaskID=1000"]]
    assert fake.submitted_params(1000) == params
    fake.wait_for_hooks()
    assert seen == [fake.uploaded_files[archive]]
    # outDS must start with user.<nickname>.: prun exits with EC_Config (10) before submitting
    assert result["bad_outds"] == 10
    assert fake.task_ids == [1000]
    # side effect of PrunScript.main on the calling process
    assert result["rucio_account"] == "testuser"


def test_prun_refuses_a_nobuild_sandbox_over_the_client_limit(fake, client_env, tmp_path):
    big = tmp_path / "big.tar.gz"
    big.write_bytes(os.urandom(10 * 1024 * 1024 + 1))  # Client.NO_BUILD_LIMIT + 1
    args = [*PRUN_ARGS, "--inTarBall", str(big), "--tmpDir", str(tmp_path / "prun-tmp")]

    result = run_client(
        f"""
        try:
            prun_task_params({args!r}, dry_mode=False)
            exit_code = None
        except SystemExit as exc:
            exit_code = exc.code
        result = {{"exit_code": exit_code, "no_build_limit": Client.NO_BUILD_LIMIT,
                   "sources_limit": Client.SOURCES_LIMIT}}
        """,
        client_env(),
        cwd=tmp_path,
        prelude=_SUBMIT + _PRUN,
    )

    assert result["exit_code"] == 50  # MiscUtils.EC_Post: the upload failed
    assert (result["no_build_limit"], result["sources_limit"]) == (10 * 1024**2, 768 * 1024**2)
    assert fake.requests_to("file_server/upload_cache_file") == []
    assert fake.task_ids == []


def test_dry_run_builds_task_params_offline(tmp_path):
    env = {
        **_base_env(tmp_path),
        # nothing listens on the discard port; the network guard refuses connections anyway
        "PANDA_URL": "http://127.0.0.1:9/server/panda",
        "PANDA_URL_SSL": "http://127.0.0.1:9/server/panda",
        "PANDACACHE_URL": "http://127.0.0.1:9/server/panda",
        "PANDA_BEHIND_REAL_LB": "1",
        "PANDA_AUTH": "x509_no_grid",
        "PANDA_NICKNAME": "testuser",
        "X509_USER_PROXY": os.devnull,
    }

    result = run_client(
        f"""
        params = prun_task_params({PRUN_ARGS!r}, dry_mode=True)
        result = {{"params": params, "network_attempts": network_attempts,
                   "leftovers": sorted(os.listdir("."))}}
        """,
        env,
        cwd=tmp_path,
        prelude=_NO_NETWORK + _PRUN,
    )

    assert result["network_attempts"] == []
    params = result["params"]
    assert params["taskName"] == f"{OUT_DS}/"
    assert params["nFilesPerJob"] == 1
    assert params["useLocalIO"] == 1  # --forceStaged
    assert params["dsForIN"] == IN_DS
    assert params["sourceURL"] == "http://127.0.0.1:9"
    assert params["log"]["dataset"] == f"{OUT_DS}.log/"
    assert params["cliParams"].startswith("prun --exec ")
    values = [item["value"] for item in params["jobParameters"]]
    assert "-a None" in values  # no sandbox in a dry run
    assert "bash%20grid/split.sh%20%25IN" in values  # --exec, URL-quoted
    outputs = {
        item["dataset"]: item["value"]
        for item in params["jobParameters"]
        if item.get("param_type") == "output"
    }
    assert outputs == {
        f"{OUT_DS}_output_{component}.h5/": (
            f"user.testuser.$JEDITASKID._${{SN/P}}.output_{component}.h5"
        )
        for component in COMPONENTS
    }
    inputs = [item for item in params["jobParameters"] if item.get("param_type") == "input"]
    assert [(item["dataset"], item["value"]) for item in inputs] == [(IN_DS, '-i "${IN/T}"')]
    assert "client-result.json" not in result["leftovers"]
    assert [name for name in result["leftovers"] if name != "panda-config"] == []
