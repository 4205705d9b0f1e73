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
``task/retry``                              POST    ``Client.retryTask``
``task/kill``                               POST    ``Client.killTask``
==========================================  ======  ==============================================

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
# States in which a task will not change by itself any more; a kill is refused in them.
FINAL_STATES = frozenset({"done", "finished", "failed", "broken", "aborted"})
# States a retry is accepted in.
RETRYABLE_STATES = frozenset({"finished", "failed", "exhausted"})

# Size limits of the real file server: files whose name starts with "sources." may be larger.
SANDBOX_NO_BUILD_LIMIT = 100 * 1024 * 1024
SANDBOX_LIMIT = 768 * 1024 * 1024

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
    ) -> None:
        """Move a task to a JEDI state and optionally set its input file counts."""
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
        task_params = params.get("task_parameters")
        if not isinstance(task_params, dict):
            kind = type(task_params).__name__
            message = f"Type error: 'task_parameters' must be of type dict, got {kind}."
            return _envelope(False, message)
        task_name = task_params.get("taskName")
        with self._lock:
            if self.unique_task_names and task_params.get("uniqueTaskName"):
                for other in self._tasks.values():
                    if other.params.get("taskName") == task_name and other.status not in {
                        "aborted",
                        "broken",
                    }:
                        return _envelope(
                            False,
                            f"taskName={task_name} is already used by jediTaskID={other.task_id}",
                            2,
                        )
            task_id = self._next_task_id
            self._next_task_id += 1
            name = sandbox_name(task_params)
            sandbox = self.cached_file(name) if name else None
            task = FakeTask(task_id, copy.deepcopy(task_params), sandbox)
            task.status_history.append(task.status)
            self._tasks[task_id] = task
        self._run_hook(self.on_submit, task)
        return _envelope(True, f"succeeded. new jediTaskID={task_id}", task_id)

    def _lookup(self, params: dict[str, Any]) -> tuple[int | None, FakeTask | None]:
        try:
            task_id = int(params["task_id"])
        except (KeyError, TypeError, ValueError):
            return None, None
        with self._lock:
            return task_id, self._tasks.get(task_id)

    def _get_status(self, params: dict[str, Any]) -> dict[str, Any]:
        task_id, task = self._lookup(params)
        if task_id is None:
            return _envelope(False, "jediTaskID must be an integer")
        if task is None:
            return _envelope(False, "Task not found")
        return _envelope(True, data=task.status)

    def _get_details(self, params: dict[str, Any]) -> dict[str, Any]:
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
                "nFiles": task.nfiles,
                "nFilesFinished": task.nfiles_finished,
                "nFilesFailed": task.nfiles_failed,
            }
            if _parse_bool(params.get("include_parameters", False)):
                details["taskParams"] = copy.deepcopy(task.params)
        return _envelope(True, data=details)

    def _command(self, command: str, params: dict[str, Any]) -> tuple[int, str, FakeTask | None]:
        """Apply a task command; returns (JEDI return code, message, task)."""
        task_id, task = self._lookup(params)
        if task_id is None:
            return 101, "jediTaskID must be an integer", None
        if task is None:
            return 2, f"jediTaskID={task_id} not found", None
        with self._lock:
            if command == "retry":
                if task.status not in RETRYABLE_STATES:
                    return 4, f"retry is not accepted when the task is {task.status}", task
                new_params = params.get("new_parameters")
                if isinstance(new_params, str):
                    new_params = json.loads(new_params)
                if isinstance(new_params, dict):
                    task.params.update(new_params)
                task.retries += 1
                task.nfiles_failed = 0
                self._set_status(task, "running")
            else:
                if task.status in FINAL_STATES:
                    return 4, f"kill is not accepted when the task is {task.status}", task
                self._set_status(task, "aborted")
            self._commands.append((command, task.task_id))
        return 0, f"command={command} is registered for jediTaskID={task.task_id}", task

    def _retry(self, params: dict[str, Any]) -> dict[str, Any]:
        code, message, task = self._command("retry", params)
        if code == 0 and task is not None:
            self._run_hook(self.on_retry, task)
        return _envelope(code == 0, message, code)

    def _kill(self, params: dict[str, Any]) -> dict[str, Any]:
        code, message, _task = self._command("kill", params)
        return _envelope(code == 0, message, code)

    @staticmethod
    def _set_status(task: FakeTask, status: str) -> None:
        task.status = status
        task.status_history.append(status)

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
