"""pandaclient 2.2.0 in-process, isolated (see docs/dev/pandaclient.md).

* ``pandaclient.Client`` reads the server URLs once, at import: :func:`import_client` sets
  ``PANDA_BEHIND_REAL_LB=1`` (no DNS lookup at import) before the first import. A process
  therefore talks to one PanDA server, the one in its environment at import.
* Every call runs inside :func:`isolated`: ``sys.argv``, the cwd and ``os.environ`` are
  restored afterwards (prun rewrites all three), stdout/stderr and the ``panda-client`` logger
  are captured and logged at debug level, and ``SystemExit`` (prun's way to fail) becomes a
  one-line :class:`PandaError` carrying prun's last error message.
* :func:`check_credentials` checks, without any network, that the auth mode pandaclient will use
  has what it needs, so a missing proxy or token is a one-line error instead of a password or
  device-flow prompt.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
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
        return mode
    proxy = environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}"
    if not os.access(proxy, os.R_OK) or Path(proxy).is_dir():
        raise CredentialsError(f"no grid proxy at {proxy}: {_AUTH_HINT}")
    _check_proxy_lifetime(proxy)
    return mode


def _check_proxy_lifetime(proxy: str) -> None:
    tool = shutil.which("voms-proxy-info")
    if tool is None:
        return
    done = subprocess.run([tool, "--exists", "--valid", "0:10", "--file", proxy],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise CredentialsError(f"the grid proxy {proxy} has expired (or has < 10 minutes left): "
                               "renew it with `voms-proxy-init -voms atlas`")


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

    def submit(self, params: dict[str, Any]) -> int:
        """Insert a task; returns its jediTaskID."""
        with isolated():
            status, answer = self._client.insertTaskParams(params, properErrorCode=True)
        if status != 0 or not isinstance(answer, list | tuple):
            raise PandaError(f"cannot reach PanDA at {self.url} to submit {params.get('taskName')}")
        code, message = answer[0], str(answer[1])
        if code not in (0, 3):
            raise auth_error(message, f"submit {params.get('taskName')}")
        match = re.search(r"jediTaskID=(\d+)", message)
        if match is None:
            raise PandaError(f"PanDA accepted {params.get('taskName')} without a jediTaskID: "
                             f"{one_line(message)}")
        return int(match.group(1))

    def status(self, task_id: int) -> str:
        """The JEDI state of a task."""
        with isolated():
            status, answer = self._client.getTaskStatus(task_id)
        if status != 0 or not answer:
            raise PandaError(f"PanDA did not give the status of task {task_id} at {self.url} "
                             "(unreachable, unknown task or credentials refused)")
        return str(answer)

    def details(self, task_id: int) -> dict[str, Any]:
        """Task details (file counts); empty if PanDA does not give them."""
        with isolated():
            status, answer = self._client.getJediTaskDetails({"jediTaskID": task_id}, False,
                                                             True)
        return answer if status == 0 and isinstance(answer, dict) else {}

    def retry(self, task_id: int) -> None:
        with isolated():
            status, answer = self._client.retryTask(task_id, properErrorCode=True)
        if status != 0:
            raise PandaError(f"cannot reach PanDA at {self.url} to retry task {task_id}")
        code, message = answer
        if code != 0:
            raise auth_error(str(message), f"retry task {task_id}")

    def kill(self, task_id: int) -> None:
        with isolated():
            status, answer = self._client.killTask(task_id)
        if status != 0:
            raise PandaError(f"cannot reach PanDA at {self.url} to kill task {task_id}")
        accepted, detail = answer
        if accepted is not True:
            raise auth_error(str(detail), f"kill task {task_id}")
