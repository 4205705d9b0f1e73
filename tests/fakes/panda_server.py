"""A fake PanDA server that speaks pandaclient's JSON API, for tests.

It serves, on 127.0.0.1 over plain HTTP, the endpoints that pandaclient 2.2.0 calls to submit a
task and follow it up:

==========================================  ======  ==============================================
endpoint (under ``/api/v1/``)               method  pandaclient caller
==========================================  ======  ==============================================
``system/is_alive``                         GET     ``Client.hello``
``file_server/validate_cache_file``         POST    ``Client.putFile(..., reuseSandbox=True)``
``file_server/upload_cache_file``           POST    ``Client.putFile`` (multipart field ``file``)
``task/submit``                             POST    ``Client.insertTaskParams``
``task/get_status``                         GET     ``Client.getTaskStatus``
``task/get_details``                        GET     ``Client.getJediTaskDetails``
``task/get_tasks_detailed_info_since``      GET     ``Client.get_tasks_detailed_info_since``
``task/get_job_descriptions``               GET     ``Client.get_job_descriptions``
``task/retry``                              POST    ``Client.retryTask`` (``newParams`` too)
``task/kill``                               POST    ``Client.killTask``
==========================================  ======  ==============================================

Each behaviour follows panda-server (PanDAWMS/panda-server, ``pandaserver/api/v1/task_api.py``
and ``pandaserver/taskbuffer/db_proxy_mods/``); the function it follows is named where it is
implemented. In particular, and unlike a kind fake: a reused ``taskName`` reactivates the old
task (code 3, old parameters kept) or is refused (code 2); ``get_details`` has no file counts;
a plain retry of an aborted or exhausted task is refused; :meth:`FakePanda.scout_change_split_rule`
removes ``nFilesPerJob`` as JEDI's scouts do, and :meth:`FakePanda.split_into_jobs` cuts a
task's inputs into jobs with the task's current split rule.

It also serves uploaded files under ``/cache/<name>``, where the grid pilot (and
``Client.getFile``) downloads the sandbox from.

Every answer uses the server's envelope ``{"success": bool, "message": str, "data": ...}``.
Tests drive the state: :meth:`FakePanda.set_task_status` moves a task through the JEDI states, the
``on_submit`` hook sees each accepted task together with its uploaded sandbox, and
:meth:`FakePanda.fail_next_submit`, :meth:`FakePanda.fail_next` and
:meth:`FakePanda.fail_auth` produce the error answers.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "FINAL_STATES",
    "JEDI_STATES",
    "MESSAGE_AUTH",
    "FakePanda",
    "FakeTask",
    "RecordedRequest",
    "SubmitHook",
    "make_fake_id_token",
    "sandbox_name",
]

API_PREFIX = "/api/v1/"
CACHE_PREFIX = "/cache/"

# What the real server answers when the caller is not authenticated (no valid proxy or token).
MESSAGE_AUTH = "SSL secure connection is required"

# JEDI task states a test may set.
JEDI_STATES = frozenset(
    {
        "registered",
        "defined",
        "assigning",
        "ready",
        "pending",
        "scouting",
        "scouted",
        "running",
        "prepared",
        "throttled",
        "paused",
        "exhausted",
        "toretry",
        "aborting",
        "finishing",
        "done",
        "finished",
        "failed",
        "broken",
        "aborted",
    }
)
# States in which a task will not change by itself any more.
FINAL_STATES = frozenset({"done", "finished", "failed", "broken", "aborted"})
# sendCommandTaskPanda._check_command_allowed: kill/finish are refused in these
KILL_REFUSED = frozenset({"finished", "done", "prepared", "broken", "aborted", "toabort",
                          "aborting", "failed"})
# _check_command_allowed: a plain retry is accepted only here (exhausted: production role only)
RETRYABLE_STATES = frozenset({"finished", "failed"})
# insertTaskParamsPanda: a task with the same taskName in these is reactivated (incexec)
REACTIVATED_STATES = frozenset({"finished", "failed", "aborted", "done", "exhausted"})
# insertTaskParamsPanda(allowActiveTask=True) (retry with new parameters) and
# sendCommandTaskPanda (retry): "retry failed jobs" of a user task that is still active
ACTIVE_RETRY_STATES = frozenset({"running", "scouting", "pending"})
# insertTaskParamsPanda: the only parameters an incexec changes (task_split_rules
# .changeable_split_rule_names included; dsFor* too)
INCEXEC_PARAMS = frozenset({
    "site", "cloud", "includedSite", "excludedSite", "cliParams", "nFiles", "nEvents",
    "fixedSandbox", "currentPriority", "priority", "ramCount", "loopingCheck", "forceStaged",
    "allowIncompleteInDS", "t1Weight", "nEsConsumers", "nMaxFilesPerJob", "nGBPerJob",
    "noInputPooling", "nFilesPerJob", "nEventsPerWorker", "nJumboJobs", "avoidVP",
    "allowInputLAN", "useLocalIO",
})

# Size limits of the real file server: files whose name starts with "sources." may be larger.
SANDBOX_NO_BUILD_LIMIT = 10 * 1024 * 1024  # file_server_api.SANDBOX_NO_BUILD_LIMIT
SANDBOX_LIMIT = 768 * 1024 * 1024  # file_server_api.SANDBOX_LIMIT

SubmitHook = Callable[[int, dict[str, Any], Path | None], None]


def make_fake_id_token(
    username: str, name: str = "Test User", groups: list[str] | None = None
) -> str:
    """Return an unsigned JWT that pandaclient's OIDC mode accepts as ``PANDA_AUTH_ID_TOKEN``.

    pandaclient only base64-decodes the payload to read ``name``, ``groups`` and
    ``preferred_username`` (the nickname); it never checks the signature.
    """

    def part(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    payload = {"name": name, "preferred_username": username, "groups": groups or ["atlas"]}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}.fake-signature"


def sandbox_name(task_params: dict[str, Any]) -> str | None:
    """Return the sandbox file name a task's parameters refer to, or None.

    prun puts it in a constant job parameter ``-a <name>`` (``--noBuild``), in
    ``buildSpec["archiveName"]`` (build step, e.g. ``--noCompile``) or in ``fixedSandbox``.
    """
    for item in task_params.get("jobParameters", []):
        if item.get("type") != "constant":
            continue
        match = re.match(r"-a\s+(\S+)", str(item.get("value", "")))
        if match:
            return match.group(1)
    build_spec = task_params.get("buildSpec")
    if isinstance(build_spec, dict) and build_spec.get("archiveName"):
        return str(build_spec["archiveName"])
    fixed = task_params.get("fixedSandbox")
    return str(fixed) if fixed else None


@dataclass
class FakeTask:
    """One task as the fake server holds it."""

    task_id: int
    params: dict[str, Any]
    sandbox: Path | None
    status: str = "registered"
    nfiles: int = 0
    nfiles_finished: int = 0
    nfiles_failed: int = 0
    retries: int = 0
    status_history: list[str] = field(default_factory=list)
    error_dialog: str | None = None
    modified: float = 0.0
    jobs: list[dict[str, Any]] = field(default_factory=list)
    reactivations: int = 0


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake server received."""

    method: str
    endpoint: str
    params: dict[str, Any]
    headers: dict[str, str]


@dataclass
class _Upload:
    path: Path
    size: int
    checksum: int | None


@dataclass
class _Failure:
    message: str
    data: Any = None
    http_status: int | None = None


def _envelope(success: bool, message: str = "", data: Any = None) -> dict[str, Any]:
    return {"success": success, "message": message, "data": data}


def _gzip_crc(content: bytes) -> int | None:
    """CRC32 from a gzip footer, read the way client and server both read it."""
    if len(content) < 8:
        return None
    checksum, _size = struct.unpack("II", content[-8:])
    return int(checksum)


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Split a multipart/form-data body into ``{field: (filename, content)}``."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError("multipart body without boundary")
    # every delimiter but the first is preceded by CRLF, which belongs to the delimiter
    delimiter = b"\r\n--" + match.group(1).encode()
    fields: dict[str, tuple[str | None, bytes]] = {}
    for chunk in (b"\r\n" + body).split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = ""
        for line in head.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-disposition":
                disposition = value
        name_match = re.search(r'\bname="([^"]*)"', disposition)
        file_match = re.search(r'\bfilename="([^"]*)"', disposition)
        if name_match:
            filename = file_match.group(1) if file_match else None
            fields[name_match.group(1)] = (filename, content)
    return fields


class FakePanda:
    """A fake PanDA server on 127.0.0.1 for pandaclient, usable as a context manager.

    Args:
        cache_dir: where uploaded files are written; a temporary directory (removed by
            :meth:`stop`) when not given.
        first_task_id: jediTaskID of the first accepted task; later tasks count up from it.
        on_submit: called in a background thread for each accepted task with its jediTaskID,
            a copy of its task parameters and the path of its uploaded sandbox (None if the
            parameters name no sandbox or it was never uploaded).
        on_retry: like ``on_submit``, called for each accepted retry.
        require_token: if set, every endpoint except ``system/is_alive`` and ``/cache/`` wants
            the header ``Authorization: Bearer <require_token>`` (pandaclient's OIDC mode) and
            answers like the real server without credentials otherwise.
        unique_task_names: refuse a task whose ``uniqueTaskName`` is set and whose ``taskName``
            is used by a task that is not aborted or broken (code 2), as JEDI does.

    Exceptions raised by hooks are collected in ``hook_errors``, crashes of the request handler
    in ``server_errors``; a test should assert both are empty.
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        first_task_id: int = 1000,
        on_submit: SubmitHook | None = None,
        on_retry: SubmitHook | None = None,
        require_token: str | None = None,
        unique_task_names: bool = True,
    ) -> None:
        self._own_cache_dir = cache_dir is None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.on_submit = on_submit
        self.on_retry = on_retry
        self.require_token = require_token
        self.unique_task_names = unique_task_names
        self.hook_errors: list[BaseException] = []
        self.server_errors: list[BaseException] = []
        self._next_task_id = first_task_id
        self._tasks: dict[int, FakeTask] = {}
        self._uploads: dict[str, _Upload] = {}
        self._requests: list[RecordedRequest] = []
        self._commands: list[tuple[str, int]] = []
        self._failures: dict[str, list[_Failure]] = {}
        self._auth_failing = False
        self._lock = threading.RLock()
        self._hook_threads: list[threading.Thread] = []
        self._httpd: _Server | None = None
        self._serve_thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakePanda:
        """Start serving on an OS-chosen port of 127.0.0.1; returns self."""
        if self._httpd is not None:
            raise RuntimeError("FakePanda is already running")
        if self.cache_dir is None:
            self.cache_dir = Path(tempfile.mkdtemp(prefix="fake-panda-cache-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        httpd = _Server(("127.0.0.1", 0), handler)
        httpd.fake = self
        self._httpd = httpd
        self._serve_thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serve_thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wait for running hooks and remove a temporary cache directory."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._serve_thread is not None:
            self._serve_thread.join()
            self._serve_thread = None
        self.wait_for_hooks()
        if self._own_cache_dir and self.cache_dir is not None:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
            self.cache_dir = None

    def __enter__(self) -> FakePanda:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses and client environment ------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._httpd is None:
            raise RuntimeError("FakePanda is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The server URL in the form pandaclient expects in ``PANDA_URL_SSL``.

        The ``/server/panda`` path matters: prun derives the task's ``sourceURL`` from the
        cache URL with a regex that needs a path after the host.
        """
        return f"{self.base_url}/server/panda"

    def client_env(
        self,
        *,
        auth: str = "x509_no_grid",
        nickname: str = "testuser",
        token: str | None = None,
        vo: str = "atlas",
    ) -> dict[str, str]:
        """Environment variables that point pandaclient at this server without credentials.

        They must be in the environment before ``pandaclient.Client`` is imported.

        Args:
            auth: ``"x509_no_grid"`` (nickname from ``PANDA_NICKNAME``, no proxy read over
                http) or ``"oidc"`` (bearer token from ``PANDA_AUTH_ID_TOKEN``).
            nickname: grid nickname; in OIDC mode it goes into the fake token.
            token: OIDC token; defaults to ``require_token`` or a fake token for ``nickname``.
            vo: OIDC virtual organisation (``PANDA_AUTH_VO``).
        """
        env = {
            "PANDA_URL": self.url,
            "PANDA_URL_SSL": self.url,
            "PANDACACHE_URL": self.url,
            "PANDA_BEHIND_REAL_LB": "1",
            "PANDA_AUTH": auth,
            "PANDA_NICKNAME": nickname,
            # never read over http, but stops the "No valid grid proxy" print
            "X509_USER_PROXY": os.devnull,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        if auth == "oidc":
            env["PANDA_AUTH_VO"] = vo
            env["PANDA_AUTH_ID_TOKEN"] = token or self.require_token or make_fake_id_token(nickname)
        return env

    # -- state a test reads --------------------------------------------------------------------

    @property
    def task_ids(self) -> list[int]:
        """jediTaskIDs of the accepted tasks, in submission order."""
        with self._lock:
            return list(self._tasks)

    def get_task(self, task_id: int) -> FakeTask:
        """A copy of an accepted task."""
        with self._lock:
            return copy.deepcopy(self._tasks[task_id])

    def submitted_params(self, task_id: int) -> dict[str, Any]:
        """The decoded task parameters a task was submitted with (retries may update them)."""
        return self.get_task(task_id).params

    @property
    def uploaded_files(self) -> dict[str, Path]:
        """Uploaded cache files, by file name."""
        with self._lock:
            return {name: upload.path for name, upload in self._uploads.items()}

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, endpoint: str) -> list[RecordedRequest]:
        """The requests received for one endpoint, e.g. ``"task/submit"``."""
        return [req for req in self.requests if req.endpoint == endpoint]

    @property
    def commands(self) -> list[tuple[str, int]]:
        """Accepted task commands as ``(command, jediTaskID)``, e.g. ``("retry", 1000)``."""
        with self._lock:
            return list(self._commands)

    # -- state a test sets ---------------------------------------------------------------------

    def set_task_status(
        self,
        task_id: int,
        status: str,
        *,
        nfiles: int | None = None,
        nfiles_finished: int | None = None,
        nfiles_failed: int | None = None,
        error_dialog: str | None = None,
    ) -> None:
        """Move a task to a JEDI state and optionally set its input file counts and
        ``errorDialog``."""
        if status not in JEDI_STATES:
            raise ValueError(f"unknown JEDI task state {status!r}")
        with self._lock:
            task = self._tasks[task_id]
            self._set_status(task, status)
            if nfiles is not None:
                task.nfiles = nfiles
            if nfiles_finished is not None:
                task.nfiles_finished = nfiles_finished
            if nfiles_failed is not None:
                task.nfiles_failed = nfiles_failed
            if error_dialog is not None:
                task.error_dialog = error_dialog

    def add_job(self, task_id: int, status: str, inputs: list[str], **attributes: Any) -> int:
        """Add a job to a task (as the server's JobSpec.to_dict_advanced lists it); returns its
        PandaID. ``attributes``: e.g. ``transExitCode=3, pilotErrorDiag="..."``."""
        with self._lock:
            task = self._tasks[task_id]
            panda_id = 5_000_000 + sum(len(t.jobs) for t in self._tasks.values()) + 1
            files = [{"type": "input", "lfn": name, "scope": "user.test", "dataset": "in"}
                     for name in inputs]
            files.append({"type": "log", "lfn": f"log.{panda_id}.tgz", "scope": "user.test",
                          "dataset": str((task.params.get("log") or {}).get("dataset", ""))})
            task.jobs.append({"PandaID": panda_id, "jediTaskID": task_id, "jobStatus": status,
                              "Files": files, **attributes})
            return panda_id

    def scout_change_split_rule(self, task_id: int) -> None:
        """What JEDI's scouts do with ``SCOUT_CHANGE_SR_user`` (``task_utils_module``: the
        scout checks of a task with short jobs): remove ``nFilesPerJob``, so later jobs take
        as many files as the other rules allow."""
        with self._lock:
            self._tasks[task_id].params.pop("nFilesPerJob", None)

    def split_into_jobs(self, task_id: int, files: list[tuple[str, int]]) -> list[list[str]]:
        """Cut ``(name, bytes)`` inputs into jobs with the task's current split rule, as
        JEDI's job generation does (simplified from ``JobSplitter``): ``nFilesPerJob`` files,
        else as many as fit ``nGBPerJob`` GB, at most ``nMaxFilesPerJob`` (200)."""
        with self._lock:
            params = dict(self._tasks[task_id].params)
        max_files = int(params.get("nMaxFilesPerJob") or 200)
        per_job = params.get("nFilesPerJob")
        if per_job:
            n = int(per_job)
            return [[f for f, _ in files[i:i + n]] for i in range(0, len(files), n)]
        limit = int(params.get("nGBPerJob") or 0) * 1024**3 or None
        jobs: list[list[str]] = []
        current: list[str] = []
        size = 0
        for name, nbytes in files:
            if current and (len(current) >= max_files or (limit and size + nbytes > limit)):
                jobs.append(current)
                current, size = [], 0
            current.append(name)
            size += nbytes
        if current:
            jobs.append(current)
        return jobs

    def fail_next_submit(self, message: str = "server error", code: int = 4) -> None:
        """Refuse the next task submission with this message and JEDI return code."""
        self.fail_next("task/submit", message, data=code)

    def fail_next(
        self,
        endpoint: str,
        message: str = "server error",
        *,
        data: Any = None,
        http_status: int | None = None,
    ) -> None:
        """Make the next call of an endpoint fail.

        With ``http_status`` the answer is that HTTP status with ``message`` as a plain-text
        body; otherwise it is HTTP 200 with ``{"success": false, "message": message,
        "data": data}``.
        """
        with self._lock:
            self._failures.setdefault(endpoint, []).append(_Failure(message, data, http_status))

    def fail_auth(self, enabled: bool = True) -> None:
        """Answer every call except is_alive as if the caller had no valid credentials."""
        with self._lock:
            self._auth_failing = enabled

    def wait_for_hooks(self, timeout: float = 30.0) -> None:
        """Wait until every ``on_submit``/``on_retry`` call started so far has returned."""
        with self._lock:
            threads = list(self._hook_threads)
        for thread in threads:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError("a FakePanda hook is still running")

    # -- request handling (called from the handler threads) ------------------------------------

    def _handle(
        self, method: str, endpoint: str, params: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, dict[str, Any] | str]:
        shown = {k: v for k, v in params.items() if k != "_file"}
        with self._lock:
            self._requests.append(RecordedRequest(method, endpoint, shown, headers))
        route = self._routes().get(endpoint)
        if route is None or route[0] != method:
            return 404, f"no {method} {API_PREFIX}{endpoint} on the fake PanDA server"
        if endpoint != "system/is_alive" and not self._authorised(headers):
            return 200, _envelope(False, MESSAGE_AUTH)
        failure = self._pop_failure(endpoint)
        if failure is not None:
            if failure.http_status is not None:
                return failure.http_status, failure.message
            return 200, _envelope(False, failure.message, failure.data)
        return 200, route[1](params)

    def _routes(self) -> dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]]:
        return {
            "system/is_alive": ("GET", lambda _params: _envelope(True)),
            "file_server/validate_cache_file": ("POST", self._validate_cache_file),
            "file_server/upload_cache_file": ("POST", self._upload_cache_file),
            "task/submit": ("POST", self._submit),
            "task/get_status": ("GET", self._get_status),
            "task/get_details": ("GET", self._get_details),
            "task/get_tasks_detailed_info_since": ("GET", self._detailed_info_since),
            "task/get_job_descriptions": ("GET", self._job_descriptions),
            "task/retry": ("POST", self._retry),
            "task/kill": ("POST", self._kill),
        }

    def _authorised(self, headers: dict[str, str]) -> bool:
        with self._lock:
            if self._auth_failing:
                return False
        if self.require_token is None:
            return True
        return headers.get("authorization") == f"Bearer {self.require_token}"

    def _pop_failure(self, endpoint: str) -> _Failure | None:
        with self._lock:
            queue = self._failures.get(endpoint)
            return queue.pop(0) if queue else None

    def cached_file(self, name: str) -> Path | None:
        """Path of an uploaded file, or None."""
        with self._lock:
            upload = self._uploads.get(name)
        return upload.path if upload is not None else None

    def _validate_cache_file(self, params: dict[str, Any]) -> dict[str, Any]:
        """Follows ``file_server_api.validate_cache_file``: ``FOUND:<host>:<name>`` for an
        upload of the same size and checksum, else ``NOTFOUND``."""
        try:
            size, checksum = int(params["file_size"]), int(params["checksum"])
        except (KeyError, TypeError, ValueError):
            return _envelope(False, "file_size and checksum must be integers")
        with self._lock:
            for name, upload in self._uploads.items():
                if upload.size == size and upload.checksum == checksum:
                    host = urlsplit(self.base_url).hostname
                    return _envelope(True, f"FOUND:{host}:{name}")
        return _envelope(False, "NOTFOUND")

    def _upload_cache_file(self, params: dict[str, Any]) -> dict[str, Any]:
        """Follows ``file_server_api.upload_cache_file``: the size limit is decided on the name
        as sent (``sources.*``: SANDBOX_LIMIT, else SANDBOX_NO_BUILD_LIMIT); no overwrite."""
        upload = params.get("_file")
        if upload is None:
            return _envelope(False, "no file in the request")
        sent_name, content = upload
        # the server decides the size limit on the name as sent, then keeps only its basename
        limit = SANDBOX_LIMIT if sent_name.startswith("sources.") else SANDBOX_NO_BUILD_LIMIT
        if len(content) > limit:
            return _envelope(
                False, f"ERROR: upload failure. Exceeded size limit {len(content)}>{limit}."
            )
        name = sent_name.split("/")[-1]
        if not name or name in {".", ".."}:
            return _envelope(False, "ERROR: cannot write file")
        if self.cache_dir is None:
            return _envelope(False, "ERROR: cannot write file")
        path = self.cache_dir / name
        with self._lock:
            if path.exists() and not name.endswith(".__ow__"):
                return _envelope(False, "ERROR: cannot overwrite file")
            path.write_bytes(content)
            self._uploads[name] = _Upload(path, len(content), _gzip_crc(content))
        return _envelope(True)

    def _submit(self, params: dict[str, Any]) -> dict[str, Any]:
        """Follows ``task_api.submit`` and ``task_event_module.insertTaskParamsPanda``: a new
        task (code 0), a reactivation (code 3, success) or a refusal (code 2)."""
        task_params = params.get("task_parameters")
        if not isinstance(task_params, dict):
            kind = type(task_params).__name__
            message = f"Type error: 'task_parameters' must be of type dict, got {kind}."
            return _envelope(False, message)
        task_name = task_params.get("taskName")
        with self._lock:
            if self.unique_task_names and task_params.get("uniqueTaskName"):
                # task_event_module.insertTaskParamsPanda: the latest task of this user with
                # the same taskName decides
                same = [t for t in self._tasks.values() if t.params.get("taskName") == task_name]
                if same:
                    old = same[-1]
                    code, message = self._reuse_name(old, task_params, allow_active=False)
                    # task_api.submit: success for codes 0 and 3, data = the task id
                    if code == 3:
                        return _envelope(True, message, old.task_id)
                    return _envelope(False, message, code)
            task_id = self._next_task_id
            self._next_task_id += 1
            name = sandbox_name(task_params)
            sandbox = self.cached_file(name) if name else None
            task = FakeTask(task_id, copy.deepcopy(task_params), sandbox)
            task.status_history.append(task.status)
            task.modified = time.time()
            self._tasks[task_id] = task
        self._run_hook(self.on_submit, task)
        return _envelope(True, f"succeeded. new jediTaskID={task_id}", task_id)

    def _reuse_name(self, old: FakeTask, new_params: dict[str, Any], allow_active: bool
                    ) -> tuple[int, str]:
        """``task_event_module.insertTaskParamsPanda`` for a taskName held by ``old``:
        reactivation (incexec, code 3) of a finished/failed/aborted/done/exhausted task, with
        only :data:`INCEXEC_PARAMS` taken from the new parameters (the old exec, outputs and
        sandbox stay); with ``allow_active`` (a retry with new parameters) an active user task
        gets the new parameters (code 5); anything else is refused (code 2)."""
        taken = {k: v for k, v in new_params.items()
                 if k in INCEXEC_PARAMS or k.startswith("dsFor")}
        name = new_params.get("taskName")
        if old.status in REACTIVATED_STATES:
            previous = old.status
            old.params.update(taken)
            old.reactivations += 1
            old.nfiles_failed = 0
            self._set_status(old, "running")
            return 3, (f"reactivation accepted. jediTaskID={old.task_id} (currently in "
                       f"{previous} state) will be re-executed with old and/or new input")
        if allow_active and old.status in ACTIVE_RETRY_STATES:
            old.params.update(taken)
            return 5, f"{old.status}. new tasks params have been set to jediTaskID={old.task_id}. "
        return 2, (f"jediTaskID={old.task_id} is in the {old.status} state for outDS={name}. "
                   "You can re-submit the task with new parameters for the same or another "
                   "input once it goes into finished/failed/done. Or you can retry the task "
                   "once it goes into running/finished/failed/done. ")

    def _lookup(self, params: dict[str, Any]) -> tuple[int | None, FakeTask | None]:
        """The ``task_id`` argument as the ``task_api`` handlers read it (``int(task_id)``)."""
        try:
            task_id = int(params["task_id"])
        except (KeyError, TypeError, ValueError):
            return None, None
        with self._lock:
            return task_id, self._tasks.get(task_id)

    def _get_status(self, params: dict[str, Any]) -> dict[str, Any]:
        """Follows ``task_api.get_status``: the JEDI state in ``data``."""
        task_id, task = self._lookup(params)
        if task_id is None:
            return _envelope(False, "jediTaskID must be an integer")
        if task is None:
            return _envelope(False, "Task not found")
        return _envelope(True, data=task.status)

    def _get_details(self, params: dict[str, Any]) -> dict[str, Any]:
        """Follows ``task_api.get_details`` (``TaskBuffer.getJediTaskDetails``): inDS, outDS,
        statistics, PandaID, status; no file counts."""
        _task_id, task = self._lookup(params)
        if task is None:
            return _envelope(False, "Task not found or error retrieving the details")
        with self._lock:
            out_datasets = [
                str(item["dataset"])
                for item in [*task.params.get("jobParameters", []), task.params.get("log") or {}]
                if item.get("param_type") in {"output", "log"} and item.get("dataset")
            ]
            details: dict[str, Any] = {
                "jediTaskID": task.task_id,
                "taskName": task.params.get("taskName"),
                "status": task.status,
                "inDS": task.params.get("dsForIN", ""),
                "outDS": ",".join(out_datasets),
                "statistics": "",
                "PandaID": [],
                "mergeStatus": None,
                "mergePandaID": [],
            }
            # TaskBuffer.getJediTaskDetails: statistics "finished*N,failed*M"; no nFiles
            counts = {"finished": task.nfiles_finished, "failed": task.nfiles_failed}
            details["statistics"] = ",".join(f"{k}*{v}" for k, v in counts.items() if v)
            details["PandaID"] = [j["PandaID"] for j in task.jobs]
            if _parse_bool(params.get("include_parameters", False)):
                details["taskParams"] = copy.deepcopy(task.params)
        return _envelope(True, data=details)

    def _detailed_info_since(self, params: dict[str, Any]) -> dict[str, Any]:
        """Follows ``task_api.get_tasks_detailed_info_since``: equality filters and ``since``
        select up to ``n_tasks`` of the user's tasks first (``getTaskIDsWithCriteria_JEDI``, in
        no set order: here the newest first), and only then are regex-looking filters applied, so a
        ``"id|id"`` filter can miss tasks when the user has more than ``n_tasks``."""
        try:
            n_tasks = int(params.get("n_tasks", 500))
            filters = json.loads(params["filters"]) if params.get("filters") else {}
        except (TypeError, ValueError):
            return _envelope(False, "filters is not valid JSON")
        since = params.get("since")
        floor = 0.0
        if since:
            try:
                floor = time.mktime(time.strptime(since, "%Y-%m-%d %H:%M:%S")) - time.timezone
            except ValueError:
                return _envelope(False, "Failed to retrieve task IDs")
        meta = r"^$*+?\|()"
        with self._lock:
            details = [self._task_details(t) for t in reversed(list(self._tasks.values()))
                       if t.modified >= floor]
        plain = {k: v for k, v in filters.items() if not any(c in str(v) for c in meta)}
        regex = {k: v for k, v in filters.items() if k not in plain}
        selected = [d for d in details
                    if all(str(d.get(k)) == str(v) for k, v in plain.items())][:n_tasks]
        out = [d for d in selected
               if all(re.search(v, str(d[k])) for k, v in regex.items() if k in d)]
        return _envelope(True, data=out)

    def _task_details(self, task: FakeTask) -> dict[str, Any]:
        """``task_utils_module.get_task_details_json``: the task's attributes plus the input
        file progress (nFiles, nFilesFinished, nFilesFailed, ...)."""
        n = task.nfiles
        return {
            "jediTaskID": task.task_id, "taskName": task.params.get("taskName"),
            "status": task.status, "errorDialog": task.error_dialog,
            "ramCount": task.params.get("ramCount"), "site": task.params.get("site"),
            "architecture": task.params.get("architecture"),
            "container_name": task.params.get("container_name"),
            "nFiles": n, "nFilesFinished": task.nfiles_finished,
            "nFilesFailed": task.nfiles_failed, "nFilesMissing": 0,
            "pctFinished": round(100 * task.nfiles_finished / n) if n else 0,
            "pctFailed": round(100 * task.nfiles_failed / n) if n else 0,
            "raw_task_params": copy.deepcopy(task.params),
        }

    def _job_descriptions(self, params: dict[str, Any]) -> dict[str, Any]:
        """Follows ``task_api.get_job_descriptions``: the task's jobs, only failed, cancelled or
        closed ones with ``unsuccessful_only``; success with an empty list for none."""
        task_id, task = self._lookup(params)
        if task_id is None:
            return _envelope(False, "jediTaskID must be an integer")
        only_bad = _parse_bool(params.get("unsuccessful_only", False))
        with self._lock:
            jobs = [] if task is None else copy.deepcopy(task.jobs)
        if only_bad:
            jobs = [j for j in jobs if j.get("jobStatus") in {"failed", "cancelled", "closed"}]
        return _envelope(True, data=jobs)

    def _retry(self, params: dict[str, Any]) -> dict[str, Any]:
        """``task_api.retry``: with ``new_parameters``, the old parameters updated with them go
        through ``insertTaskParamsPanda(allowActiveTask=True)`` (:meth:`_reuse_name`); else
        ``sendCommandTaskPanda("retry")``. Code 5 (an active user task) becomes "retry has been
        triggered for failed jobs": 0, or 3 with new parameters. The answer is always
        ``success: true`` with the code in ``data``."""
        task_id, task = self._lookup(params)
        if task_id is None:
            return _envelope(False, "jediTaskID must be an integer")
        if task is None:
            return _envelope(True, f"jediTaskID={task_id} not found", 2)
        new_params = params.get("new_parameters")
        if isinstance(new_params, str):
            new_params = json.loads(new_params)
        with self._lock:
            if new_params:
                merged = {**copy.deepcopy(task.params), **new_params}
                code, message = self._reuse_name(task, merged, allow_active=True)
            elif task.status in RETRYABLE_STATES:
                task.nfiles_failed = 0
                self._set_status(task, "running")
                code, message = 0, (f"command=retry is registered for task ID {task_id}. will "
                                    "be executed in a few minutes")
            elif task.status in ACTIVE_RETRY_STATES:
                code, message = 5, task.status
            else:
                extra = " and production role is missing" if task.status == "exhausted" else ""
                code, message = 4, (f"Command rejected: the retry command is not accepted if "
                                    f"the task is in {task.status} status{extra}")
            if code == 5:
                message = (f"retry has been triggered for failed jobs while the task is still "
                           f"{task.status}")
                code = 3 if new_params else 0
            if code in (0, 3):
                task.retries += 1
                task.modified = time.time()
                self._commands.append(("retry", task.task_id))
        if code in (0, 3):
            self._run_hook(self.on_retry, task)
        return _envelope(True, message, code)

    def _kill(self, params: dict[str, Any]) -> dict[str, Any]:
        """``task_api.kill`` / ``sendCommandTaskPanda("kill")``: refused (4) in the states of
        :data:`KILL_REFUSED`; ``success`` is ``data == 0``."""
        task_id, task = self._lookup(params)
        if task_id is None:
            return _envelope(False, "jediTaskID must be an integer")
        if task is None:
            return _envelope(False, f"jediTaskID={task_id} not found", 2)
        with self._lock:
            if task.status in KILL_REFUSED:
                return _envelope(False, f"Command rejected: the kill command is not accepted "
                                        f"if the task is in {task.status} status", 4)
            self._set_status(task, "aborted")
            task.modified = time.time()
            self._commands.append(("kill", task.task_id))
        return _envelope(True, f"command=kill is registered for task ID {task_id}. will be "
                               "executed in a few minutes", 0)

    @staticmethod
    def _set_status(task: FakeTask, status: str) -> None:
        task.status = status
        task.status_history.append(status)
        task.modified = time.time()

    def _run_hook(self, hook: SubmitHook | None, task: FakeTask) -> None:
        if hook is None:
            return
        with self._lock:
            task_id, params, sandbox = task.task_id, copy.deepcopy(task.params), task.sandbox

        def call() -> None:
            try:
                hook(task_id, params, sandbox)
            except BaseException as exc:  # reported through hook_errors, not lost in a thread
                with self._lock:
                    self.hook_errors.append(exc)

        thread = threading.Thread(target=call, name=f"fake-panda-hook-{task_id}", daemon=True)
        with self._lock:
            self._hook_threads.append(thread)
        thread.start()


class _Server(ThreadingHTTPServer):
    """Threading HTTP server that records handler crashes instead of printing them."""

    daemon_threads = True
    fake: FakePanda

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None:
            with self.fake._lock:
                self.fake.server_errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    """HTTP front end of :class:`FakePanda`; ``fake`` is set on a per-server subclass."""

    fake: FakePanda
    server_version = "FakePanDA/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith(CACHE_PREFIX):
            self._send_cached(parts.path.removeprefix(CACHE_PREFIX))
            return
        params: dict[str, Any] = {
            key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()
        }
        self._dispatch("GET", parts.path, params)

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        body = self._read_body()
        content_type = self.headers.get("Content-Type", "")
        params: dict[str, Any]
        try:
            if content_type.startswith("multipart/form-data"):
                fields = _parse_multipart(body, content_type)
                params = {}
                if "file" in fields:
                    filename, content = fields["file"]
                    params = {"filename": filename, "size": len(content)}
                    params["_file"] = (filename or "", content)
            elif content_type.startswith("application/json"):
                params = json.loads(body or b"{}")
            else:
                query = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
                params = {key: values[-1] for key, values in query.items()}
        except ValueError as exc:
            self._send(400, f"cannot decode the request body: {exc}")
            return
        self._dispatch("POST", parts.path, params)

    def _dispatch(self, method: str, path: str, params: dict[str, Any]) -> None:
        if not path.startswith(API_PREFIX):
            self._send(404, f"unknown path {path}")
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        status, answer = self.fake._handle(method, path.removeprefix(API_PREFIX), params, headers)
        self._send(status, answer)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_cached(self, name: str) -> None:
        path = self.fake.cached_file(name)
        if path is None:
            self._send(404, f"{name} is not in the cache")
            return
        content = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def _send(self, status: int, answer: dict[str, Any] | str) -> None:
        if isinstance(answer, str):
            payload, content_type = answer.encode(), "text/plain; charset=utf-8"
        else:
            payload, content_type = json.dumps(answer).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(payload)
