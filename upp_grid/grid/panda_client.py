"""pandaclient 2.2.0 in-process, isolated (see docs/dev/pandaclient.md).

* ``pandaclient.Client`` reads the server URLs once, at import: :func:`import_client` sets
  ``PANDA_BEHIND_REAL_LB=1`` (no DNS lookup at import) before the first import. A process
  therefore talks to one PanDA server, the one in its environment at import.
* Every call runs inside :func:`isolated`: ``sys.argv``, the cwd and ``os.environ`` are
  restored afterwards (prun rewrites all three), stdout/stderr and the ``panda-client`` logger
  are captured and logged at debug level, and ``SystemExit`` (prun's way to fail) becomes a
  one-line :class:`PandaError` carrying prun's last error message.
* :func:`check_credentials` checks, without any network, that the auth mode pandaclient will use
  has what it needs and that it has not expired (the proxy's ``notAfter``, the OIDC token's
  ``exp``), so a missing or expired proxy or token is a one-line error instead of a password or
  device-flow prompt.
* pandaclient never waits for a keyboard: ``sys.stdin`` is an empty stream during every call
  (an ``input()`` gets end-of-file and becomes a one-line error), and prun always gets ``-y``.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import logging
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from upp_grid.errors import UppGridError

log = logging.getLogger(__name__)

DEFAULT_URL_SSL = "https://pandaserver.cern.ch/server/panda"
# variables that make prun add CMake/CMT options to the job: never wanted here
_DROPPED_VARS = ("CMAKE_PREFIX_PATH", "CMTCONFIG")
_AUTH_HINT = ("set up a grid proxy (`voms-proxy-init -voms atlas`) or a PanDA token "
              "(PANDA_AUTH=oidc with PANDA_AUTH_VO and a token)")
_AUTH_REFUSED = re.compile(r"SSL secure connection is required|limited proxy|unauthori[sz]ed|"
                           r"forbidden|invalid token|token.*expired|certificate", re.IGNORECASE)


class PandaError(UppGridError):
    """PanDA refused a request, or the client could not reach it."""


class CredentialsError(PandaError):
    """No usable grid proxy or token: says what to set up."""


class _Capture(logging.Handler):
    """Collects the ``panda-client`` log records of one call."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def last_error(self) -> str:
        for record in reversed(self.records):
            if record.levelno >= logging.ERROR:
                return one_line(record.getMessage())
        return ""


def one_line(text: object) -> str:
    """Squash a (possibly multi-line) message into one line."""
    return " ".join(str(text).split())


def server_url(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("PANDA_URL_SSL", DEFAULT_URL_SSL)


def check_credentials(environ: Mapping[str, str] | None = None) -> str:
    """Check the auth mode's prerequisites offline; returns the mode.

    Raises
    ------
    CredentialsError
        Saying what to set up.
    """
    environ = os.environ if environ is None else environ
    mode = environ.get("PANDA_AUTH", "voms")
    if mode == "x509_no_grid":
        if not environ.get("PANDA_NICKNAME"):
            raise CredentialsError("PANDA_AUTH=x509_no_grid needs PANDA_NICKNAME (your grid "
                                   "nickname)")
        return mode
    if mode == "oidc":
        if not (environ.get("PANDA_AUTH_VO") or environ.get("OIDC_AUTH_VO")):
            raise CredentialsError("PANDA_AUTH=oidc needs PANDA_AUTH_VO (e.g. atlas)")
        root = Path(environ.get("PANDA_CONFIG_ROOT", "~/.pathena")).expanduser()
        tokens = [environ.get(k) for k in ("PANDA_AUTH_ID_TOKEN", "OIDC_AUTH_ID_TOKEN")]
        token_file = environ.get("OIDC_AUTH_TOKEN_FILE")
        if not any(tokens) and not (token_file and Path(token_file).is_file()) \
                and not (root / ".token").is_file():
            raise CredentialsError(f"no PanDA token (PANDA_AUTH=oidc): set PANDA_AUTH_ID_TOKEN "
                                   f"or log in once with `pbook` to cache one in {root}")
        token = next((t for t in tokens if t), None)
        if token is not None:
            _check_token_expiry(token, "PANDA_AUTH_ID_TOKEN", refreshable=False)
        elif (root / ".token").is_file() and not token_file:
            _check_cached_token(root / ".token")
        return mode
    proxy = environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}"
    if not os.access(proxy, os.R_OK) or Path(proxy).is_dir():
        raise CredentialsError(f"no grid proxy at {proxy}: {_AUTH_HINT}")
    _check_proxy_lifetime(proxy)
    return mode


MIN_LIFETIME = timedelta(minutes=10)


def _check_proxy_lifetime(proxy: str) -> None:
    """The proxy must be valid for :data:`MIN_LIFETIME` more (``voms-proxy-info``, else the
    ``notAfter`` of the proxy certificate, read with the ssl module)."""
    expired = (f"the grid proxy {proxy} has expired (or has < 10 minutes left): renew it with "
               "`voms-proxy-init -voms atlas`")
    tool = shutil.which("voms-proxy-info")
    if tool is not None:
        done = subprocess.run([tool, "--exists", "--valid", "0:10", "--file", proxy],
                              capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise CredentialsError(expired)
        return
    try:  # the first certificate of the file is the proxy itself
        decoded = ssl._ssl._test_decode_cert(proxy)  # type: ignore[attr-defined]
        not_after = datetime.fromtimestamp(ssl.cert_time_to_seconds(decoded["notAfter"]),
                                           timezone.utc)
    except (OSError, ValueError, KeyError, AttributeError, ssl.SSLError):
        return  # not a PEM certificate we can read: the server decides
    if not_after - datetime.now(timezone.utc) < MIN_LIFETIME:
        raise CredentialsError(f"{expired} (it expires {not_after:%Y-%m-%d %H:%M} UTC)")


def token_expiry(token: str) -> datetime | None:
    """The ``exp`` of a JWT (unverified: only the client-side expiry matters here)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return datetime.fromtimestamp(int(data["exp"]), timezone.utc)
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _check_token_expiry(token: str, where: str, refreshable: bool) -> None:
    exp = token_expiry(token)
    if exp is not None and exp - datetime.now(timezone.utc) < MIN_LIFETIME and not refreshable:
        raise CredentialsError(f"the PanDA token in {where} has expired ({exp:%Y-%m-%d %H:%M} "
                               "UTC, or expires within 10 minutes): get a new one (log in with "
                               "`pbook`)")


def _check_cached_token(path: Path) -> None:
    """pandaclient refreshes an expired cached token with its refresh token, without asking;
    without one it would start the device login flow and wait: refuse that here."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise CredentialsError(f"{path}: unreadable PanDA token cache: log in again with "
                               "`pbook`") from None
    token = data.get("id_token", "") if isinstance(data, dict) else ""
    _check_token_expiry(token, str(path), refreshable=bool(data.get("refresh_token")))


def import_client() -> ModuleType:
    """``pandaclient.Client``, imported with ``PANDA_BEHIND_REAL_LB=1`` unless already set."""
    if "pandaclient.Client" not in sys.modules:
        os.environ.setdefault("PANDA_BEHIND_REAL_LB", "1")
    try:
        with isolated(check_exit=False):
            return importlib.import_module("pandaclient.Client")
    except ImportError as err:
        raise PandaError(f"pandaclient is not installed ({err}): rerun scripts/setup_env.sh"
                         ) from None
    except OSError as err:  # e.g. DNS lookup of the cache server at import
        raise PandaError(f"cannot set up pandaclient for {server_url()}: {one_line(err)}"
                         ) from None


@contextlib.contextmanager
def isolated(argv: Sequence[str] | None = None, cwd: Path | None = None,
             env: Mapping[str, str | None] | None = None,
             check_exit: bool = True) -> Iterator[_Capture]:
    """Run a pandaclient call without letting it change this process.

    ``env`` values of None remove a variable for the duration of the call.
    """
    saved_argv, saved_cwd, saved_env = sys.argv[:], os.getcwd(), dict(os.environ)
    capture = _Capture()
    logger = logging.getLogger("panda-client")
    saved_handlers, saved_propagate = logger.handlers[:], logger.propagate
    logger.handlers[:] = [capture]
    logger.propagate = False
    out = io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.StringIO("")  # an input() prompt gets end-of-file, never waits
    try:
        for key in _DROPPED_VARS:
            os.environ.pop(key, None)
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if argv is not None:
            sys.argv = list(argv)
        if cwd is not None:
            cwd.mkdir(parents=True, exist_ok=True)
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield capture
    except EOFError:
        raise PandaError("pandaclient asked a question on the terminal (it never gets an "
                         f"answer here): {one_line(out.getvalue())[-300:] or 'no message'}"
                         ) from None
    except SystemExit as exc:
        if not check_exit:
            raise
        output = one_line(out.getvalue())
        refused = _AUTH_REFUSED.search(f"{capture.last_error()} {output}")
        if refused:
            raise CredentialsError(f"PanDA refused the request ({refused.group(0)}; prun exit "
                                   f"code {exc.code}): {_AUTH_HINT}") from None
        reason = capture.last_error() or output[-300:] or "no message"
        raise PandaError(f"prun stopped (exit code {exc.code}): {reason}") from None
    finally:
        sys.stdin = saved_stdin
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        logger.handlers[:] = saved_handlers
        logger.propagate = saved_propagate
        for record in capture.records:
            log.debug("pandaclient: %s", record.getMessage())
        if out.getvalue().strip():
            log.debug("pandaclient output:\n%s", out.getvalue().rstrip())


def prun_task_params(args: Sequence[str], workdir: Path, *, dry_run: bool,
                     env: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """Task parameters built by prun's own logic (``PrunScript.main(get_taskparams=True)``).

    Without ``dry_run`` prun also uploads the sandbox given with ``--inTarBall``.
    """
    import_client()
    with isolated(env=env):
        from pandaclient import PrunScript
    with isolated(["prun", *args], cwd=workdir, env=env):
        params = PrunScript.main(get_taskparams=True, ext_args=list(args), dry_mode=dry_run)
    if not isinstance(params, dict):
        raise PandaError(f"prun returned no task parameters for {args}")
    return params


def dry_run_env(user: str) -> dict[str, str | None]:
    """Environment of an offline dry run: no credentials, no DNS, nickname ``user``."""
    return {"PANDA_AUTH": "x509_no_grid", "PANDA_NICKNAME": user, "PANDA_BEHIND_REAL_LB": "1",
            "X509_USER_PROXY": os.devnull}


def auth_error(message: str, action: str) -> PandaError:
    """A one-line error for a refused request; says what to set up if it looks like auth."""
    text = one_line(message) or "no answer"
    if _AUTH_REFUSED.search(text):
        return CredentialsError(f"PanDA refused to {action}: {text}: {_AUTH_HINT}")
    return PandaError(f"PanDA refused to {action}: {text}")


class PandaClient:
    """The few pandaclient calls upp-grid makes, each isolated, each failing in one line."""

    def __init__(self) -> None:
        self.url = server_url()
        self._client = import_client()

    def hello(self) -> None:
        """Check the server answers (no credentials needed)."""
        with isolated():
            status, message = self._client.hello()
        if status != 0:
            raise PandaError(f"cannot reach PanDA at {self.url}: {one_line(message)[:200]} "
                             "(check your network and PANDA_URL_SSL/PANDACACHE_URL)")

    def submit(self, params: dict[str, Any]) -> SubmitAnswer:
        """Insert a task. The answer tells a new task (code 0) from a refusal (codes 1, 2, 4)
        and from a reactivation of an old task of the same name (code 3: the server's
        ``insertTaskParamsPanda`` answers "reactivation accepted", and pandaclient 2.2.0
        reports it as code 0 because the REST answer has ``success: true``)."""
        with isolated():
            status, answer = self._client.insertTaskParams(params, properErrorCode=True)
        name = params.get("taskName")
        if status != 0 or not isinstance(answer, list | tuple) or len(answer) < 2:
            raise PandaError(f"cannot reach PanDA at {self.url} to submit {name}")
        code, message = answer[0], one_line(answer[1])
        match = re.search(r"jediTaskID=(\d+)", message)
        task_id = int(match.group(1)) if match else None
        if code in (0, 3) and "reactivation accepted" in message:
            code = 3
        if code not in (0, 1, 2, 3) and _AUTH_REFUSED.search(message):
            raise auth_error(message, f"submit {name}")
        if code in (0, 3) and task_id is None:
            raise PandaError(f"PanDA accepted {name} without a jediTaskID: {message}")
        return SubmitAnswer(int(code) if isinstance(code, int) else 4, task_id, message)

    def tasks_info(self, task_ids: Sequence[int], since: datetime | None = None
                   ) -> dict[int, dict[str, Any]]:
        """``get_tasks_detailed_info_since`` for ``task_ids``: ``{jediTaskID: details}`` with
        ``status``, ``nFiles``, ``nFilesFinished``, ``nFilesFailed`` and ``errorDialog``.

        One call per :data:`TASKS_PER_CALL` tasks, filtered by a ``^(id|id|...)$`` pattern.
        The server (``task_api.get_tasks_detailed_info_since``) first takes up to ``n_tasks``
        of the user's tasks modified since ``since`` and only then applies a pattern filter,
        so a user with many recent tasks may not get all of them back: each one missing is
        asked for alone, with a plain ID (an exact SQL match on the server).
        """
        found: dict[int, dict[str, Any]] = {}
        ids = sorted(set(task_ids))
        stamp = None
        if since is not None:
            stamp = (since - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
        for i in range(0, len(ids), TASKS_PER_CALL):
            batch = ids[i:i + TASKS_PER_CALL]
            pattern = "^(" + "|".join(map(str, batch)) + ")$" if len(batch) > 1 else str(batch[0])
            found.update(self._detailed_info({"jediTaskID": pattern}, stamp, len(batch)))
        for task_id in [t for t in ids if t not in found]:
            found.update(self._detailed_info({"jediTaskID": str(task_id)}, None, 1))
        return {t: found[t] for t in ids if t in found}

    def _detailed_info(self, filters: dict[str, str], since: str | None, n: int
                       ) -> dict[int, dict[str, Any]]:
        with isolated():
            status, answer = self._client.get_tasks_detailed_info_since(
                since=since, filters=filters, n_tasks=max(n, TASKS_PER_CALL))
        if status != 0 or not isinstance(answer, list):
            raise PandaError(f"PanDA did not give the state of tasks {filters['jediTaskID']} at "
                             f"{self.url} (unreachable, or credentials refused): "
                             f"{one_line(answer)[:200]}")
        out = {}
        for item in answer:
            if isinstance(item, dict) and str(item.get("jediTaskID", "")).isdigit():
                out[int(item["jediTaskID"])] = item
        return out

    def failed_jobs(self, task_id: int) -> list[dict[str, Any]]:
        """The task's unsuccessful jobs (``get_job_descriptions(unsuccessful_only=True)``)."""
        with isolated():
            status, answer = self._client.get_job_descriptions(task_id, unsuccessful_only=True)
        if status != 0 or not isinstance(answer, list):
            raise PandaError(f"PanDA did not list the failed jobs of task {task_id} at "
                             f"{self.url}: {one_line(answer)[:200]}")
        return [j for j in answer if isinstance(j, dict)]

    def retry(self, task_id: int, new_params: dict[str, Any] | None = None) -> tuple[int, str]:
        """Retry a task (``retryTask``, with ``newParams`` merged into the task by JEDI);
        returns the server's code and message (0 or 3: accepted)."""
        with isolated():
            status, answer = self._client.retryTask(task_id, properErrorCode=True,
                                                    newParams=new_params or None)
        if status != 0 or not isinstance(answer, list | tuple):
            raise PandaError(f"cannot reach PanDA at {self.url} to retry task {task_id}")
        code, message = answer
        return (int(code) if isinstance(code, int) else 1), one_line(message)

    def kill(self, task_id: int) -> tuple[int, str]:
        """Kill a task; returns the server's code and message (0: accepted)."""
        with isolated():
            status, answer = self._client.killTask(task_id)
        if status != 0 or not isinstance(answer, list | tuple):
            raise PandaError(f"cannot reach PanDA at {self.url} to kill task {task_id}")
        # output_mode="extended": (True, data) when the server accepted it (task_api.kill:
        # success is data == 0), else (False, message)
        accepted, detail = answer[0], answer[1] if len(answer) > 1 else ""
        if accepted is True:
            return 0, "kill registered"
        return 4, one_line(detail)


TASKS_PER_CALL = 500


@dataclass(frozen=True)
class SubmitAnswer:
    """What PanDA said to a submission."""

    code: int  #: 0 new task, 1 duplicate in DEFT, 2 name held by an active task, 3 reactivated
    task_id: int | None
    message: str

    @property
    def new_task(self) -> bool:
        return self.code == 0

