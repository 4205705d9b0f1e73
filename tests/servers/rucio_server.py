"""A real, throw-away rucio server for the test suite.

The ``rucio`` server package from PyPI ships the same top-level ``rucio`` package as
``rucio-clients``, so it cannot live in the test venv.  It is installed into its own venv under a
cache directory (``$UPP_GRID_TEST_CACHE`` or ``~/.cache/upp-grid-tests``) and every server-side
step runs with that venv's python:

* ``ensure_server_venv()`` creates ``<cache>/rucio-server-venv`` and pip-installs ``rucio==X``
  (X = the installed rucio-clients version, see ``server_version()``).  Idempotent: a marker file
  records the version; a file lock makes concurrent callers wait instead of racing.
* ``RucioTestServer`` builds an SQLite DB (``build_database``, ``create_base_vo``,
  ``create_root_account``), bootstraps a user account, scope, posix RSE and account limit through
  ``rucio.gateway`` as root, then serves rucio's flask app with werkzeug, single-threaded, on
  127.0.0.1 and a free port.  It writes a ``[client]`` rucio.cfg for the tests.

CLI (used by CI to pre-install the venv)::

    python -m tests.servers.rucio_server install     # prints the venv path
    python -m tests.servers.rucio_server serve       # start a server until Ctrl-C (debugging)

This module must import only the standard library at module level: the server venv's python
runs this very file (``_serve`` sub-command) to host the server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

#: Used when rucio-clients is not installed in the calling interpreter.
DEFAULT_RUCIO_VERSION = "41.5.1"
VENV_DIRNAME = "rucio-server-venv"
MARKER_NAME = ".upp-grid-rucio-server-installed"

DEFAULT_ACCOUNT = "upptest"
DEFAULT_SCOPE = "user.upptest"
#: Name ends in SCRATCHDISK: rucio's generic permission policy lets non-admin accounts add
#: replicas on *SCRATCHDISK RSEs (as ATLAS users do on the grid).
DEFAULT_RSE = "UPPTEST_SCRATCHDISK"
#: a second, non-scratch RSE: where `upp-grid replicate` keeps outputs
KEEP_RSE = "UPPTEST_LOCALGROUPDISK"
ACCOUNT_LIMIT_BYTES = 10 * 1024**3


# --------------------------------------------------------------------------------------------
# Server venv
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    env = os.environ.get("UPP_GRID_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "upp-grid-tests"


def server_version() -> str:
    """The rucio server version to install.

    ``$UPP_GRID_RUCIO_SERVER_VERSION`` wins; otherwise the version of rucio-clients installed in
    the calling interpreter (server and client are released together with the same number);
    otherwise ``DEFAULT_RUCIO_VERSION``.
    """
    env = os.environ.get("UPP_GRID_RUCIO_SERVER_VERSION")
    if env:
        return env
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("rucio-clients")
    except PackageNotFoundError:
        return DEFAULT_RUCIO_VERSION


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _marker_text(version: str) -> str:
    return f"rucio=={version}\npython={sys.version_info.major}.{sys.version_info.minor}\n"


def ensure_server_venv(version: str | None = None, *, quiet: bool = True) -> Path:
    """Return ``<cache>/rucio-server-venv`` with ``rucio==version`` installed (installs if needed).

    Raises ``RuntimeError`` (with pip's output) when the installation fails.
    """
    import fcntl

    version = version or server_version()
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / VENV_DIRNAME
    marker = venv / MARKER_NAME
    want = _marker_text(version)

    def ready() -> bool:
        try:
            return marker.read_text() == want and _venv_python(venv).exists()
        except OSError:
            return False

    if ready():
        return venv
    with open(root / (VENV_DIRNAME + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing right now
        if ready():
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        log = root / (VENV_DIRNAME + "-install.log")
        # Create the venv from the base interpreter so it does not inherit the test venv.
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        steps = [
            [base_python, "-m", "venv", str(venv)],
            [str(_venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check",
             "--no-input", *(["-q"] if quiet else []), f"rucio=={version}"],
        ]
        with open(log, "w") as out:
            for cmd in steps:
                out.write("$ " + " ".join(cmd) + "\n")
                out.flush()
                rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PIP_NO_INPUT": "1"})
                if rc != 0:
                    break
        if rc != 0:
            tail = _tail(log, 60)
            shutil.rmtree(venv, ignore_errors=True)
            raise RuntimeError(
                f"installing the rucio server (rucio=={version}) into {venv} failed "
                f"(exit {rc}); full log: {log}\n{tail}")
        marker.write_text(want)  # last: an interrupted install is redone next time
    return venv


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
        # pip's noise about unusable extra index locations hides the real error
        text = [line for line in text if not line.startswith("WARNING: Location ")]
        return "\n".join(text[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# Test-side controller
# --------------------------------------------------------------------------------------------


class RucioTestServer:
    """A real rucio server on 127.0.0.1 with a posix RSE in a temporary directory.

    Use as a context manager or call ``start()`` / ``stop()``.  After ``start()``:

    ``url``                 http://127.0.0.1:<port>
    ``client_config_path``  a ``[client]`` rucio.cfg for ``RUCIO_CONFIG`` (userpass as ``account``)
    ``rse`` / ``rse_dir``   the posix RSE name and the directory holding its files
    ``keep_rse``            a second posix RSE that is not a scratch disk (``keep_rse_dir``)
    ``scope`` / ``account`` the user scope and the account that owns it
    ``log_path``            the server's stdout/stderr, with one werkzeug line per request
                            (:meth:`rest_calls` reads them)
    """

    def __init__(self, *, account: str = DEFAULT_ACCOUNT, scope: str = DEFAULT_SCOPE,
                 rse: str = DEFAULT_RSE, startup_timeout: float = 120.0,
                 workdir: str | os.PathLike | None = None):
        self.account = account
        self.scope = scope
        self.rse = rse
        self.startup_timeout = startup_timeout
        self._workdir_arg = workdir
        self.workdir: Path | None = None
        self.url: str | None = None
        self.port: int | None = None
        self.client_config_path: Path | None = None
        self.server_config_path: Path | None = None
        self.rse_dir: Path | None = None
        self.keep_rse = KEEP_RSE
        self.keep_rse_dir: Path | None = None
        self.log_path: Path | None = None
        self.password = secrets.token_hex(12)  # throw-away credential for this server only
        self._root_password = secrets.token_hex(12)
        self._proc: subprocess.Popen | None = None
        self._own_workdir = False
        self._log_file = None
        self.timings: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> RucioTestServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> RucioTestServer:
        if self._proc is not None:
            raise RuntimeError("server already started")
        t0 = time.monotonic()
        venv = ensure_server_venv()
        self.timings["venv"] = time.monotonic() - t0

        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="upp-rucio-server-"))
            self._own_workdir = True
        else:
            self.workdir = Path(self._workdir_arg)
            self.workdir.mkdir(parents=True, exist_ok=True)
        self.rse_dir = self.workdir / "rse"
        self.rse_dir.mkdir()
        self.keep_rse_dir = self.workdir / "rse-keep"
        self.keep_rse_dir.mkdir()
        (self.workdir / "log").mkdir()
        self.server_config_path = self.workdir / "server" / "rucio.cfg"
        self.server_config_path.parent.mkdir()
        self._write_server_config()
        port_file = self.workdir / "server" / "port"
        bootstrap = {
            "account": self.account, "password": self.password, "scope": self.scope,
            "rse": self.rse, "rse_dir": str(self.rse_dir), "limit": ACCOUNT_LIMIT_BYTES,
            "keep_rse": self.keep_rse, "keep_rse_dir": str(self.keep_rse_dir),
        }
        bootstrap_file = self.workdir / "server" / "bootstrap.json"
        bootstrap_file.write_text(json.dumps(bootstrap))

        self.log_path = self.workdir / "server.log"
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RUCIO_", "X509_", "PYTHON"))}
        env["RUCIO_CONFIG"] = str(self.server_config_path)
        self._proc = subprocess.Popen(
            [str(_venv_python(venv)), str(Path(__file__).resolve()), "_serve",
             "--bootstrap", str(bootstrap_file), "--port-file", str(port_file),
             "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, cwd=str(self.workdir), start_new_session=True)
        try:
            self._wait_until_up(port_file)
        except BaseException:
            self.stop(keep_workdir=True)  # keep server.log for the post-mortem
            raise
        self.timings["start"] = time.monotonic() - t0
        self._write_client_config()
        return self

    def _wait_until_up(self, port_file: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no port file yet"
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"rucio test server exited with code {self._proc.returncode} during start-up; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}")
            if self.port is None and port_file.exists():
                self.port = int(port_file.read_text())
                self.url = f"http://127.0.0.1:{self.port}"
            if self.url:
                try:
                    with no_proxy.open(self.url + "/ping", timeout=2) as resp:
                        if resp.status == 200:
                            return
                        last_error = f"/ping answered {resp.status}"
                except (urllib.error.URLError, OSError) as exc:
                    last_error = f"/ping: {exc}"
            time.sleep(0.1)
        raise RuntimeError(
            f"rucio test server did not answer within {self.startup_timeout:.0f} s ({last_error}); "
            f"log {self.log_path}:\n{_tail(self.log_path)}")

    def stop(self, *, keep_workdir: bool = False) -> None:
        """Stop the server (SIGTERM, then SIGKILL, to its own process group) and clean up."""
        proc, self._proc = self._proc, None
        if proc is not None:
            # The server runs in its own session/process group (start_new_session), so the
            # group id is its pid: signal the group while the leader is not yet reaped.
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                if proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(wait)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_workdir and self.workdir is not None and self.workdir.exists():
            if keep_workdir or os.environ.get("UPP_GRID_KEEP_RUCIO_SERVER_DIR"):
                sys.stderr.write(f"keeping rucio test server dir {self.workdir}\n")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- configs ---------------------------------------------------------------------------

    def _write_server_config(self) -> None:
        w = self.workdir
        # build_database() stamps the schema with alembic; the server process writes this ini
        # (it knows where the migrations of the installed rucio package are).
        alembic_ini = w / "server" / "alembic.ini"
        self.server_config_path.write_text(f"""\
[common]
logdir = {w / 'log'}
loglevel = INFO
multi_vo = False

[database]
default = sqlite:///{w / 'rucio.db'}

[bootstrap]
userpass_identity = root
userpass_pwd = {self._root_password}
userpass_email = root@example.invalid

[alembic]
cfg = {alembic_ini}

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash

[cache]
# a closed port: no sharing of a memcached that may run on the machine
url = 127.0.0.1:{_free_port()}

[monitor]
enable_metrics = False
""")

    def _write_client_config(self) -> None:
        cdir = self.workdir / "client"
        cdir.mkdir(exist_ok=True)
        self.client_config_path = cdir / "rucio.cfg"
        self.client_config_path.write_text(f"""\
[common]
logdir = {cdir}
loglevel = INFO

[client]
rucio_host = {self.url}
auth_host = {self.url}
auth_type = userpass
username = {self.account}
password = {self.password}
account = {self.account}
# only used for https hosts; the test server speaks plain http
ca_cert = {cdir / 'ca.pem'}
request_retries = 2
# keep the token with this server, not in a per-user dir shared with other servers
auth_token_file_path = {cdir / 'auth_token'}

[trace]
trace_host = {self.url}
""")

    def client_env(self) -> dict[str, str]:
        """Environment variables a client subprocess needs (merge into ``os.environ``)."""
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY") or os.environ.get("no_proxy"),
                                          "127.0.0.1", "localhost"]))
        return {"RUCIO_CONFIG": str(self.client_config_path), "RUCIO_ACCOUNT": self.account,
                "NO_PROXY": no_proxy, "no_proxy": no_proxy}

    # -- requests --------------------------------------------------------------------------

    def rest_calls(self) -> list[str]:
        """Every request the server answered so far, ``"GET /path"``, from its log (werkzeug
        writes one line per request, flushed line by line)."""
        import re

        text = self.log_path.read_text(errors="replace") if self.log_path else ""
        return re.findall(r'"(?:\x1b\[[0-9;]*m)?((?:GET|POST|PUT|DELETE|HEAD) \S+) HTTP', text)

    # -- replicas on disk ------------------------------------------------------------------

    def pfn_path(self, scope: str, name: str) -> Path:
        """Path of the replica of ``scope:name`` on the RSE disk (rucio's ``hash`` lfn2pfn)."""
        h = hashlib.md5(f"{scope}:{name}".encode()).hexdigest()
        scope_dir = scope.replace(".", "/") if scope.startswith(("user", "group")) else scope
        return self.rse_dir / scope_dir / h[0:2] / h[2:4] / name

    def corrupt_file(self, scope: str, name: str) -> Path:
        """Flip the bytes of the replica in place: same size, different adler32."""
        path = self.pfn_path(scope, name)
        data = bytearray(path.read_bytes())
        if not data:
            path.write_bytes(b"\0")
            return path
        mid = len(data) // 2
        for i in range(mid, min(mid + 16, len(data))):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))
        return path

    def delete_file_on_disk(self, scope: str, name: str) -> Path:
        path = self.pfn_path(scope, name)
        path.unlink()
        return path


# --------------------------------------------------------------------------------------------
# Server-side code: runs with the server venv's python (``_serve`` sub-command)
# --------------------------------------------------------------------------------------------


def _exit_with_parent(parent_pid: int) -> None:
    """Exit when the test process dies without calling stop() (e.g. pytest SIGKILLed)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(0)

    if parent_pid:
        threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _server_main(bootstrap_file: str, port_file: str,
                 parent_pid: int = 0) -> None:  # pragma: no cover - other venv
    import importlib.util
    import logging

    _exit_with_parent(parent_pid)

    cfg = json.loads(Path(bootstrap_file).read_text())

    from rucio.common.config import config_get

    # build_database() stamps the new schema as alembic "head": it needs an alembic ini with the
    # DB URL, the migrations shipped in the rucio package, and logging sections (env.py calls
    # logging.config.fileConfig on it).
    migrate_repo = Path(importlib.util.find_spec("rucio.db.sqla.migrate_repo").origin).parent
    Path(config_get("alembic", "cfg")).write_text(
        "[alembic]\n"
        f"sqlalchemy.url = {config_get('database', 'default')}\n"
        f"script_location = {migrate_repo}\n"
        "[loggers]\nkeys = root\n[handlers]\nkeys = console\n[formatters]\nkeys = generic\n"
        "[logger_root]\nlevel = WARN\nhandlers = console\n"
        "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\nformatter = generic\n"
        "[formatter_generic]\nformat = %(levelname)s [%(name)s] %(message)s\n")

    from rucio.db.sqla.util import build_database, create_base_vo, create_root_account

    t0 = time.monotonic()
    build_database()
    create_base_vo()
    create_root_account()

    from rucio.gateway import account as gw_account
    from rucio.gateway import account_limit as gw_limit
    from rucio.gateway import identity as gw_identity
    from rucio.gateway import rse as gw_rse
    from rucio.gateway import scope as gw_scope

    root, acc, rse = "root", cfg["account"], cfg["rse"]
    gw_account.add_account(acc, "USER", f"{acc}@example.invalid", issuer=root)
    gw_identity.add_account_identity(acc, "USERPASS", acc, f"{acc}@example.invalid", issuer=root,
                                     default=True, password=cfg["password"])
    # The generic permission policy lets only root/admin accounts set replica states, which
    # UploadClient does after copying (PUT /replicas); ATLAS's policy allows it on SCRATCHDISK.
    gw_account.add_account_attribute("admin", "True", acc, issuer=root)
    gw_scope.add_scope(cfg["scope"], acc, issuer=root)
    for name, rse_dir in ((rse, cfg["rse_dir"]), (cfg["keep_rse"], cfg["keep_rse_dir"])):
        gw_rse.add_rse(name, issuer=root, deterministic=True, volatile=False, rse_type="DISK")
        gw_rse.add_protocol(name, issuer=root, data={
            "scheme": "file", "hostname": "localhost", "port": 0,
            "prefix": rse_dir.rstrip("/") + "/",
            "impl": "rucio.rse.protocols.posix.Default",
            "domains": {"lan": {"read": 1, "write": 1, "delete": 1},
                        "wan": {"read": 1, "write": 1, "delete": 1,
                                "third_party_copy_read": 1, "third_party_copy_write": 1}}})
        for key, value in (("istape", False), ("lfn2pfn_algorithm", "hash"),
                           ("verify_checksum", True), ("skip_upload_stat", False)):
            gw_rse.add_rse_attribute(name, key, value, issuer=root)
        gw_rse.update_rse(name, {"availability_read": True, "availability_write": True,
                                 "availability_delete": True}, issuer=root)
        gw_limit.set_local_account_limit(acc, name, int(cfg["limit"]), issuer=root)
    print(f"[upp-grid] DB built and bootstrapped in {time.monotonic() - t0:.2f} s", flush=True)

    from rucio.web.rest.flaskapi.v1.main import application
    from werkzeug.serving import make_server

    # make_server is what werkzeug.serving.run_simple uses; binding port 0 here avoids a race
    # on the port.  Single-threaded, single-process: SQLite cannot take concurrent writers.
    server = make_server("127.0.0.1", 0, application, threaded=False, processes=1)
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(server.server_port))
    tmp.rename(port_file)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    print(f"[upp-grid] rucio server on http://127.0.0.1:{server.server_port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers.rucio_server",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="install the rucio server venv (idempotent)")
    p_install.add_argument("--version", default=None, help="rucio version (default: match "
                           f"rucio-clients, else {DEFAULT_RUCIO_VERSION})")
    p_install.add_argument("--verbose", action="store_true")
    sub.add_parser("serve", help="start a test server and wait for Ctrl-C")
    p_serve = sub.add_parser("_serve", help=argparse.SUPPRESS)
    p_serve.add_argument("--bootstrap", required=True)
    p_serve.add_argument("--port-file", required=True)
    p_serve.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)

    if args.cmd == "install":
        t0 = time.monotonic()
        venv = ensure_server_venv(args.version, quiet=not args.verbose)
        print(venv, flush=True)
        sys.stderr.write(f"rucio server venv ready in {time.monotonic() - t0:.1f} s\n")
        return 0
    if args.cmd == "serve":
        with RucioTestServer() as srv:
            print(f"url={srv.url}\nRUCIO_CONFIG={srv.client_config_path}\nrse={srv.rse} "
                  f"rse_dir={srv.rse_dir}\nscope={srv.scope} account={srv.account}\n"
                  f"log={srv.log_path}\nstarted in {srv.timings['start']:.1f} s; Ctrl-C to stop",
                  flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while srv.running:
                    time.sleep(0.5)
        return 0
    _server_main(args.bootstrap, args.port_file, args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
