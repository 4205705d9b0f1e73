"""rucio transfer: list a container's files with sizes, adler32 and replicas, fetch them.

Only the Python API of rucio-clients is used (DESIGN.md §6), and the REST calls grow with
containers, not files (measured on the local rucio test server, see the download tests):

* :meth:`RucioSource.list_files` lists a dataset or container with ``DIDClient.list_files``
  (every file with its size and adler32; a name that does not exist gives ``None``; ATLAS
  containers end in ``/``, so the other spelling is tried too), then its replicas with one
  ``ReplicaClient.list_replicas`` call (every file's PFNs and RSEs): two calls per container.
* :meth:`RucioSource.fetch` downloads by PFN (``DownloadClient.download_pfns``): no DID is
  resolved again, so a batch costs one ``list_scopes`` call (and the RSE's info, cached for the
  process) however many files it holds. Files go into one flat staging directory
  (``no_subdir``) without rucio's checksum check: the caller verifies the size and adler32 of
  every file itself (:func:`verify_file`), so each file is hashed once, and a checksum mismatch
  can be told apart from an unreadable replica. A file fetched again after a failure is read
  from its next replica. Per-file outcomes come back as :class:`FetchOutcome`.
* rucio caps one ``DownloadClient`` at 5 threads (``nlimit = 5`` in ``_download_multithreaded``);
  ``threads`` above that run ``ceil(threads / 5)`` clients side by side, each with its share of
  the batch. Clients are made once per source and reused.

The client needs a ``[client]`` rucio.cfg: ``$RUCIO_CONFIG``, else ``rucio.cfg`` in
``$RUCIO_HOME/etc``, ``$VIRTUAL_ENV/etc``, ``$CONDA_PREFIX/etc`` or ``/opt/rucio/etc`` (rucio's
own search order). :func:`find_rucio_config` finds it or says what to set up.

rucio's client logs (one INFO line per file) go to the ``upp_grid.grid.rucio.client`` logger at
DEBUG level: the download reports outcomes itself.
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upp_grid.errors import UppGridError
from upp_grid.fsutil import adler32_file

log = logging.getLogger(__name__)
client_log = logging.getLogger(__name__ + ".client")

#: Seconds a single file transfer may take before rucio gives up on it.
TRANSFER_TIMEOUT = 3600
#: rucio ``clientState`` values that mean the file is in the staging directory.
FETCHED_STATES = ("DONE", "ALREADY_DONE")
#: threads of one DownloadClient at most (rucio's ``nlimit`` in ``_download_multithreaded``)
CLIENT_THREADS = 5
_REQUIRED_CLIENT_KEYS = ("rucio_host", "auth_host", "auth_type")


class RucioConfigError(UppGridError):
    """No usable ``[client]`` rucio.cfg."""


class RucioError(UppGridError):
    """rucio refused or failed a request (authentication, permissions, server down)."""


class TransientRucioError(RucioError):
    """A failure worth retrying: connection problems, server unavailable, timeouts."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as the catalogue lists it."""

    scope: str
    name: str  #: the LFN
    size: int  #: bytes
    adler32: str  #: 8 lower-case hex digits

    @property
    def did(self) -> str:
        return f"{self.scope}:{self.name}"


@dataclass(frozen=True)
class Replica:
    """Where a file can be read: a PFN on an RSE."""

    rse: str
    pfn: str


@dataclass(frozen=True)
class FetchOutcome:
    """What a fetch did with one file: ``path`` is set when the file is in the staging dir."""

    file: RemoteFile
    state: str  #: rucio's clientState (``DONE``, ``ALREADY_DONE``, ``FAILED``, ...)
    path: Path | None


@dataclass(frozen=True)
class Verification:
    """Size and adler32 of a local file compared with the catalogue's."""

    size: int
    adler32: str
    expected: RemoteFile

    @property
    def ok(self) -> bool:
        return self.size == self.expected.size and self.adler32 == self.expected.adler32

    def problem(self) -> str:
        """One phrase saying what is wrong ('' if nothing)."""
        if self.size != self.expected.size:
            return f"size is {self.size} bytes, rucio lists {self.expected.size}"
        if self.adler32 != self.expected.adler32:
            return f"adler32 is {self.adler32}, rucio lists {self.expected.adler32}"
        return ""


# --------------------------------------------------------------------------- checksums
def verify_file(path: Path, expected: RemoteFile) -> Verification:
    """Compare ``path`` with the catalogue entry (the size first: no hashing if it differs)."""
    size = path.stat().st_size
    if size != expected.size:
        return Verification(size, "", expected)
    return Verification(size, adler32_file(path), expected)


# --------------------------------------------------------------------------- names
def _spellings(name: str) -> list[str]:
    """``name`` and, for a container, the other spelling (ATLAS containers end in ``/``)."""
    other = name[:-1] if name.endswith("/") else name + "/"
    return [name, other]


# --------------------------------------------------------------------------- configuration
def find_rucio_config(environ: Mapping[str, str] | None = None) -> Path:
    """The rucio.cfg the client will read, checked to have a usable ``[client]`` section.

    Raises
    ------
    RucioConfigError
        Naming the places searched and what to set up.
    """
    env = os.environ if environ is None else environ
    if env.get("RUCIO_CONFIG"):
        path = Path(env["RUCIO_CONFIG"])
        if not path.is_file():
            raise RucioConfigError(f"RUCIO_CONFIG={path}: file not found; point it at a rucio.cfg "
                                   "with a [client] section")
    else:
        dirs = [Path(env[v]) / "etc" for v in ("RUCIO_HOME", "VIRTUAL_ENV", "CONDA_PREFIX")
                if env.get(v)] + [Path("/opt/rucio/etc")]
        found = [d / "rucio.cfg" for d in dirs if (d / "rucio.cfg").is_file()]
        if not found:
            raise RucioConfigError(
                "no rucio client config: set RUCIO_CONFIG to a rucio.cfg with a [client] "
                "section (rucio_host, auth_host, auth_type, account), or run "
                "`setupATLAS; lsetup rucio` (sets RUCIO_HOME); searched "
                + ", ".join(str(d / "rucio.cfg") for d in dirs))
        path = found[0]
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as err:
        raise RucioConfigError(f"{path}: unreadable rucio config: "
                               f"{str(err).splitlines()[0]}") from None
    if not parser.has_section("client"):
        raise RucioConfigError(f"{path}: no [client] section (needs rucio_host, auth_host, "
                               "auth_type, account)")
    missing = [k for k in _REQUIRED_CLIENT_KEYS if not parser.has_option("client", k)]
    if missing:
        raise RucioConfigError(f"{path}: [client] has no {', '.join(missing)}")
    return path


def rucio_account(environ: Mapping[str, str] | None = None) -> str | None:
    """The rucio account: ``$RUCIO_ACCOUNT``, else ``[client] account`` of the rucio.cfg."""
    env = os.environ if environ is None else environ
    if env.get("RUCIO_ACCOUNT"):
        return env["RUCIO_ACCOUNT"]
    try:
        path = find_rucio_config(env)
    except RucioConfigError:
        return None
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return parser.get("client", "account", fallback=None) or None


# --------------------------------------------------------------------------- the source
def _client_logger(level: int, msg: str, *args: Any, **kwargs: Any) -> None:
    """rucio's DownloadClient logger function: everything at DEBUG (we report outcomes)."""
    kwargs.pop("exc_info", None)
    client_log.debug(msg, *args)


def _translate(err: Exception, what: str) -> RucioError:
    """A rucio or transport exception as a one-line :class:`RucioError` about ``what``."""
    from rucio.common import exception as rex

    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, rex.CannotAuthenticate | rex.NoAuthInformation | rex.MissingClientParameter
                  | rex.AccessDenied | rex.CannotAuthorize):
        return RucioError(f"{what}: rucio refused the request ({type(err).__name__}: {text}); "
                          "check the account and credentials in your rucio.cfg or grid proxy")
    if isinstance(err, rex.ConfigNotFound | rex.ConfigLoadingError):
        return RucioConfigError(f"{what}: {text}")
    transient = (rex.ServerConnectionException, rex.ServiceUnavailable,
                 rex.ResourceTemporaryUnavailable, rex.DatabaseException, ConnectionError,
                 TimeoutError, OSError)
    if isinstance(err, transient) or type(err).__module__.startswith(("requests", "urllib3")):
        return TransientRucioError(f"{what}: {type(err).__name__}: {text}")
    return RucioError(f"{what}: {type(err).__name__}: {text}")


class RucioSource:
    """Files of rucio datasets/containers: list with checksums and replicas, fetch by PFN.

    Parameters
    ----------
    transfer_timeout
        Seconds per file transfer.
    """

    description = "rucio"

    def __init__(self, transfer_timeout: int = TRANSFER_TIMEOUT) -> None:
        self.config_path = find_rucio_config()
        from rucio.common.config import clean_cached_config

        # rucio-clients caches its config per process; read the one found above.
        clean_cached_config()
        self.transfer_timeout = transfer_timeout
        self._dids: Any = None
        self._replica_client: Any = None
        self._rules: Any = None
        self._downloaders: list[Any] = []
        self.replicas: dict[str, tuple[Replica, ...]] = {}  #: DID -> replicas, from listing
        self._tries: dict[str, int] = {}  #: DID -> fetches so far (the next one: next replica)
        self._listed: dict[tuple[str, str], tuple[str, list[RemoteFile]] | None] = {}

    def _client(self, attr: str, module: str, name: str) -> Any:
        if getattr(self, attr) is None:
            import importlib

            try:
                setattr(self, attr, getattr(importlib.import_module(module), name)())
            except Exception as err:  # rucio raises many kinds: one line out
                raise _translate(err, f"rucio ({self.config_path})") from None
        return getattr(self, attr)

    def did_client(self) -> Any:
        """The process's ``DIDClient`` (made once)."""
        return self._client("_dids", "rucio.client.didclient", "DIDClient")

    def _replica_client_(self) -> Any:
        return self._client("_replica_client", "rucio.client.replicaclient", "ReplicaClient")

    def rule_client(self) -> Any:
        """The process's ``RuleClient`` (made once)."""
        return self._client("_rules", "rucio.client.ruleclient", "RuleClient")

    def list_files(self, scope: str, name: str) -> list[RemoteFile] | None:
        """Every file of the dataset or container ``scope:name`` (its replicas remembered for
        :meth:`fetch`); ``None`` if it does not exist.

        Raises
        ------
        RucioError
            Authentication/permission problems; :class:`TransientRucioError` for connection
            problems (worth a retry).
        """
        found = self.list_names(scope, name)
        if found is None:
            return None
        spelling, listed = found
        self._list_replicas(scope, spelling)
        return listed

    def list_names(self, scope: str, name: str) -> tuple[str, list[RemoteFile]] | None:
        """``(the spelling that exists, its files)`` without replicas; None if it does not.
        Asked once per source: the download, the completeness and the lifetime checks share
        the answer."""
        key = (scope, name)
        if key not in self._listed:
            self._listed[key] = self._ask_names(scope, name)
        return self._listed[key]

    def _ask_names(self, scope: str, name: str) -> tuple[str, list[RemoteFile]] | None:
        from rucio.common.exception import DataIdentifierNotFound, ScopeNotFound

        dids = self.did_client()
        for spelling in _spellings(name):
            try:
                listed = list(dids.list_files(scope, spelling))
            except (DataIdentifierNotFound, ScopeNotFound):
                continue
            except Exception as err:
                raise _translate(err, f"{scope}:{name}") from None
            return spelling, [RemoteFile(f["scope"], f["name"], int(f["bytes"]),
                                         str(f["adler32"]).lower().zfill(8)) for f in listed]
        return None

    def _list_replicas(self, scope: str, name: str) -> None:
        try:
            listed = list(self._replica_client_().list_replicas([{"scope": scope, "name": name}]))
        except Exception as err:
            raise _translate(err, f"replicas of {scope}:{name}") from None
        for entry in listed:
            pfns = entry.get("pfns") or {}
            replicas = [Replica(str(info.get("rse")), str(pfn)) for pfn, info in
                        sorted(pfns.items(), key=lambda kv: (kv[1].get("priority") or 0, kv[0]))
                        if str(info.get("type", "DISK")).upper() != "TAPE"]
            self.replicas[f"{entry['scope']}:{entry['name']}"] = tuple(replicas)

    def rses(self, did: str) -> tuple[str, ...]:
        """The RSEs holding a listed file."""
        return tuple(sorted({r.rse for r in self.replicas.get(did, ())}))

    def fetch(self, files: Sequence[RemoteFile], staging: Path, threads: int = 2
              ) -> list[FetchOutcome]:
        """Download ``files`` (listed before) into ``staging/<name>`` by PFN, with ``threads``
        parallel transfers (several clients above :data:`CLIENT_THREADS`).

        A file without a replica, or that rucio could not read, comes back with its state and
        ``path=None``.

        Raises
        ------
        TransientRucioError
            The whole batch failed for a reason worth retrying (server unreachable, ...).
        RucioError
            Authentication or permission problems.
        """
        if not files:
            return []
        staging.mkdir(parents=True, exist_ok=True)
        items, outcomes = [], []
        for f in files:
            replica = self._next_replica(f.did)
            if replica is None:
                outcomes.append(FetchOutcome(f, "FILE_NOT_FOUND", None))
                continue
            items.append({"did": f.did, "pfn": replica.pfn, "rse": replica.rse,
                          "base_dir": str(staging), "no_subdir": True,
                          "transfer_timeout": self.transfer_timeout})
        lanes = min(len(items), -(-max(1, threads) // CLIENT_THREADS)) if items else 0
        shares = [items[k::lanes] for k in range(lanes)]
        per_lane = max(1, min(CLIENT_THREADS, -(-max(1, threads) // max(1, lanes))))
        results: list[dict[str, Any]] = []
        if lanes:
            self._downloader(lanes - 1)  # every lane's client, made here, not in the threads
        if lanes == 1:
            results = self._download(0, shares[0], per_lane)
        elif lanes > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=lanes) as pool:
                for part in pool.map(lambda k: self._download(k, shares[k], per_lane),
                                     range(lanes)):
                    results.extend(part)
        fetched = _outcomes([f for f in files if self.replicas.get(f.did)], results, staging)
        return outcomes + fetched

    def _next_replica(self, did: str) -> Replica | None:
        replicas = self.replicas.get(did, ())
        if not replicas:
            return None
        n = self._tries.get(did, 0)
        self._tries[did] = n + 1
        return replicas[n % len(replicas)]

    def _downloader(self, lane: int) -> Any:
        while len(self._downloaders) <= lane:
            from rucio.client.downloadclient import DownloadClient

            self._downloaders.append(DownloadClient(logger=_client_logger, tracing=False))
        return self._downloaders[lane]

    def _download(self, lane: int, items: list[dict[str, Any]], threads: int
                  ) -> list[dict[str, Any]]:
        try:
            return self._downloader(lane).download_pfns(
                items, num_threads=threads, deactivate_file_download_exceptions=True)
        except Exception as err:
            raise _translate(err, f"download of {len(items)} file(s) from rucio") from None


def _outcomes(files: Iterable[RemoteFile], result: list[dict[str, Any]], staging: Path
              ) -> list[FetchOutcome]:
    by_did = {f"{r.get('scope')}:{r.get('name')}": r for r in result}
    out = []
    for f in files:
        r = by_did.get(f.did)
        state = str(r.get("clientState", "FAILED")) if r else "NOT_RETURNED"
        state = state.rsplit(".", 1)[-1]  # a str enum prints as its value or Class.VALUE
        path = staging / f.name
        fetched = state in FETCHED_STATES and path.is_file()
        out.append(FetchOutcome(f, state, path if fetched else None))
    return out
