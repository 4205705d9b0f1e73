"""The grid sandbox ``submission/<tag>/sandbox.tar.gz`` (DESIGN §6).

* **Allow-list** (:mod:`.sandbox_members`): the files of the run-time distributions as their
  ``RECORD`` lists them, upp-grid's own code, ``pyvenv.cfg`` and the interpreter entries of
  ``env/bin``, the worker scripts (package data, so any installation can submit), the resolved
  config, ``runtime.sh`` and ``manifest.json``. A file not on the list is never packed.
* **Links** stay links only when they end inside the sandbox; the base interpreter is the one
  file copied from outside ``env/``, on purpose, and the manifest names it.
* **Content scan** (:mod:`.secret_scan`): every packed file, before anything is written. A
  credential stops the build with one line naming the file and the kind of secret.
* **Manifest**: version, config hash, runtime, the base interpreter, and every member with its
  sha256 (links with their target), so a worker or a reviewer can verify the content.
* **Deterministic**: members sorted, mtime/uid/gid/owner fixed, gzip header without name or
  time. The same inputs give the same bytes except ``manifest.json``'s ``created``; an
  unchanged sandbox is reused as is (so PanDA also reuses the upload). ``sandbox.json`` next to
  it records the tarball's sha256, which the local backend checks before it runs anything.
* **Size**: PanDA takes a ``sources.*`` sandbox (prun ``--noCompile``) up to 768 MiB; a
  container sandbox (``--containerImage``) goes through ``--noBuild``: at most
  :data:`NO_BUILD_LIMIT`.
* **Runtime** (:class:`Runtime`, written as ``runtime.sh`` for ``grid/split.sh``): a venv
  sandbox names the base interpreter ``env/`` was built with and the ``lsetup`` that provided it
  (``env/upp-grid-runtime.json``, written by ``scripts/setup_env.sh --lsetup``); a container
  sandbox names its image.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shlex
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import upp_grid
from upp_grid.fsutil import atomic_path, remove_stale_temps, write_json_atomic
from upp_grid.grid import sandbox_members as allow
from upp_grid.grid.safe_tar import safe_members
from upp_grid.grid.sandbox_members import Member, SandboxError
from upp_grid.grid.secret_scan import scan
from upp_grid.progress import progress_bar

log = logging.getLogger(__name__)

__all__ = [
    "Runtime",
    "SandboxError",
    "SandboxInfo",
    "SandboxInputs",
    "base_python",
    "ensure_sandbox",
    "file_sha256",
    "find_env_dir",
    "tarball_sha256",
    "unpack",
]

SANDBOX_NAME = "sandbox.tar.gz"
INFO_NAME = "sandbox.json"
MANIFEST_NAME = "manifest.json"
FORMAT = 2  # 2: allow-list, content scan, sha256 of every member in the manifest
SANDBOX_LIMIT = 768 * 2**20  # pandaclient Client.SOURCES_LIMIT == server SANDBOX_LIMIT
NO_BUILD_LIMIT = 10 * 2**20  # panda-server file_server_api.SANDBOX_NO_BUILD_LIMIT (jobO.*)
RUNTIME_FILE = "upp-grid-runtime.json"  # in env/, written by scripts/setup_env.sh
FIXED_MTIME = 946_684_800  # 2000-01-01T00:00:00Z for every member
DEFAULT_LEVEL = 6
ENTRY_FILE = "split.sh"
_READ = 1 << 20


@dataclass(frozen=True)
class Runtime:
    """What a job runs on: the venv's base Python (and its ``lsetup``) or a container image."""

    mode: str  #: ``venv`` or ``container``
    python_home: str | None = None
    lsetup: str | None = None
    image: str | None = None
    platform: str | None = None

    def shell(self) -> str:
        """``runtime.sh``: shell assignments ``grid/split.sh`` sources (values quoted)."""
        values = {"UPP_RUNTIME": self.mode, "UPP_PYTHON_HOME": self.python_home or "",
                  "UPP_LSETUP": self.lsetup or "", "UPP_IMAGE": self.image or "",
                  "UPP_PLATFORM": self.platform or ""}
        lines = ["# written by upp-grid submit: the job's runtime (see grid/README.md)"]
        lines += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict:
        return {"mode": self.mode, "python_home": self.python_home, "lsetup": self.lsetup,
                "image": self.image, "platform": self.platform}


def venv_runtime(env_dir: Path, platform: str | None = None) -> Runtime:
    """The runtime of a venv sandbox: its base Python, and the ``lsetup`` that built it."""
    lsetup = None
    try:
        recorded = json.loads((env_dir / RUNTIME_FILE).read_text())
        lsetup = recorded.get("lsetup") or None
    except (OSError, ValueError, AttributeError):
        pass
    return Runtime("venv", base_python(env_dir), lsetup, None, platform)


def container_runtime(image: str) -> Runtime:
    return Runtime("container", image=image)


@dataclass(frozen=True)
class SandboxInputs:
    """What goes into a sandbox."""

    env_dir: Path
    package_dir: Path  #: the upp_grid package that plans the task (its code is shipped)
    config_yaml: str
    config_hash: str
    runtime: Runtime | None = None  #: None: the venv runtime of ``env_dir``

    def resolved_runtime(self) -> Runtime:
        return self.runtime or venv_runtime(self.env_dir)

    @property
    def limit(self) -> int:
        """PanDA's size limit for this kind of sandbox."""
        return NO_BUILD_LIMIT if self.resolved_runtime().mode == "container" else SANDBOX_LIMIT


@dataclass(frozen=True)
class SandboxInfo:
    """A built (or reused) sandbox."""

    path: Path
    size: int
    members: tuple[str, ...]
    reused: bool
    fingerprint: str
    sha256: str  #: of the tarball
    build_s: float = 0.0  #: wall time of the build (0 when reused)
    scan_s: float = 0.0  #: of which reading, hashing and scanning the members

    @property
    def size_mib(self) -> float:
        return self.size / 2**20


# ------------------------------------------------------------------------ locating the inputs
def find_env_dir(environ: dict[str, str] | None = None) -> Path:
    """The virtualenv to ship: ``UPP_GRID_ENV``, else the one running upp-grid."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get("UPP_GRID_ENV"):
        env_dir = Path(environ["UPP_GRID_ENV"]).absolute()
    elif sys.prefix != sys.base_prefix:
        env_dir = Path(sys.prefix)
    else:
        raise SandboxError("upp-grid is not running from a virtualenv: build ./env with "
                           "`bash scripts/setup_env.sh` and run env/bin/upp-grid "
                           "(or set UPP_GRID_ENV)")
    if not (env_dir / "pyvenv.cfg").is_file():
        raise SandboxError(f"{env_dir}: not a virtualenv (no pyvenv.cfg); set UPP_GRID_ENV to "
                           "the env built by scripts/setup_env.sh")
    return env_dir


def base_python(env_dir: Path) -> str:
    """The base interpreter directory a venv needs (``home`` in its ``pyvenv.cfg``)."""
    for line in (env_dir / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return value.strip()
    raise SandboxError(f"{env_dir / 'pyvenv.cfg'}: no 'home' line")


# ------------------------------------------------------------------------------ member list
def collect_members(inputs: SandboxInputs) -> allow.SandboxContent:
    """Every member but ``manifest.json``, sorted (see :mod:`.sandbox_members`)."""
    runtime = inputs.resolved_runtime()
    if runtime.mode == "container":
        content = allow.container_members(inputs.package_dir)
    else:
        content = allow.venv_members(inputs.env_dir, inputs.package_dir,
                                     runtime.python_home or base_python(inputs.env_dir))
    extra = (Member("runtime.sh", "file", data=runtime.shell().encode()),
             Member("config.yaml", "file", data=inputs.config_yaml.encode()))
    members = sorted((*content.members, *extra), key=lambda m: m.arcname)
    return allow.SandboxContent(tuple(members), content.base_interpreter)


# --------------------------------------------------------------------------------- building
def fingerprint(members: tuple[Member, ...], manifest: dict, level: int) -> str:
    """What decides the sandbox content: members (by size and mtime) and the manifest."""
    digest = hashlib.sha256(f"{FORMAT}:{level}\n".encode())
    for member in members:
        digest.update(member.key().encode())
        digest.update(b"\n")
    digest.update(json.dumps(manifest, sort_keys=True).encode())
    return digest.hexdigest()


def make_manifest(inputs: SandboxInputs, content: allow.SandboxContent) -> dict:
    """``manifest.json`` without its creation time and member hashes."""
    runtime = inputs.resolved_runtime()
    base = content.base_interpreter
    return {"format": FORMAT, "upp_grid_version": upp_grid.__version__,
            "config_hash": inputs.config_hash, "entry": f"grid/{ENTRY_FILE}",
            "python": runtime.python_home, "runtime": runtime.as_dict(),
            "base_interpreter": None if base is None else {"member": base.arcname,
                                                           "copied_from": base.source},
            "members": len(content.members) + 1}


def scan_members(members: tuple[Member, ...],
                 progress: Callable[[int], None] | None = None) -> dict[str, str]:
    """sha256 of every file member, after scanning its content for credentials.

    Raises
    ------
    SandboxError
        On the first credential, naming the file (its source path) and the kind of secret.
    """
    hashes = {}
    for member in members:
        if member.kind != "file":
            continue
        data = member.data if member.data is not None else _read(member)
        found = scan(member.arcname, data)
        if found is not None:
            where = member.source or member.arcname
            raise SandboxError(f"{where}:{found.line}: {found.kind} found: it would be packed "
                               f"into the sandbox as {member.arcname}; nothing was built or "
                               "uploaded (remove the secret from that file)")
        hashes[member.arcname] = hashlib.sha256(data).hexdigest()
        if progress:
            progress(1)
    return hashes


def _read(member: Member) -> bytes:
    assert member.source is not None
    try:
        return member.source.read_bytes()
    except OSError as err:
        raise SandboxError(f"{member.source}: unreadable ({err.strerror})") from None


def write_tarball(members: list[Member], out: Path, level: int = DEFAULT_LEVEL,
                  hashes: dict[str, str] | None = None,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write a deterministic ``.tar.gz`` atomically; returns its size in bytes. With
    ``hashes``, a file whose content differs from its scanned hash is an error;
    ``progress(n)``: n more members packed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)  # a killed build's partial tarball
    with atomic_path(out) as tmp, tmp.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level,
                          mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            _add_member(tar, member, hashes)
            if progress:
                progress(1)
    return out.stat().st_size


def _add_member(tar: tarfile.TarFile, member: Member, hashes: dict[str, str] | None) -> None:
    info = tarfile.TarInfo(member.arcname)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if member.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    elif member.kind == "symlink":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, member.linkname
        tar.addfile(info)
    else:
        data = member.data if member.data is not None else _read(member)
        if hashes is not None and member.arcname in hashes \
                and hashlib.sha256(data).hexdigest() != hashes[member.arcname]:
            raise SandboxError(f"{member.source}: changed while the sandbox was packed: "
                               "submit again")
        info.mode = 0o755 if member.executable else 0o644
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def ensure_sandbox(inputs: SandboxInputs, out_dir: Path, *, limit: int | None = SANDBOX_LIMIT,
                   level: int = DEFAULT_LEVEL, created: str | None = None) -> SandboxInfo:
    """Build ``out_dir/sandbox.tar.gz``, or reuse it if its inputs did not change.

    Raises
    ------
    SandboxError
        If the inputs are unusable, a file holds a credential, or the sandbox is larger than
        ``limit`` bytes. Nothing is written then.
    """
    import time

    start = time.perf_counter()
    content = collect_members(inputs)
    members = content.members
    manifest = make_manifest(inputs, content)
    digest = fingerprint(members, manifest, level)
    out = out_dir / SANDBOX_NAME
    info_path = out_dir / INFO_NAME
    names = tuple(sorted((*(m.arcname for m in members), MANIFEST_NAME)))
    previous = _read_info(info_path)
    if previous.get("fingerprint") == digest and out.is_file() \
            and out.stat().st_size == previous.get("size") and previous.get("sha256"):
        log.info("reusing %s (%.1f MiB, unchanged)", out, out.stat().st_size / 2**20)
        info = SandboxInfo(out, out.stat().st_size, names, True, digest, previous["sha256"])
    else:
        log.info("scanning %d members for credentials", len(members))
        files = sum(m.kind == "file" for m in members)
        with progress_bar(files, "sandbox scan", unit="files") as advance:
            hashes = scan_members(members, advance)
        scanned = time.perf_counter()
        manifest["created"] = created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest["files"] = hashes
        manifest["links"] = {m.arcname: m.linkname for m in members if m.kind == "symlink"}
        manifest_member = Member(MANIFEST_NAME, "file",
                                 data=json.dumps(manifest, indent=1, sort_keys=True).encode())
        ordered = sorted([*members, manifest_member], key=lambda m: m.arcname)
        log.info("packing %d files into %s", len(ordered), out)
        with progress_bar(len(ordered), "sandbox", unit="files") as advance:
            size = write_tarball(ordered, out, level, hashes, advance)
        sha = file_sha256(out)
        write_json_atomic(info_path, {"fingerprint": digest, "size": size, "sha256": sha,
                                      "created": manifest["created"], "members": len(ordered)})
        info = SandboxInfo(out, size, names, False, digest, sha,
                           time.perf_counter() - start, scanned - start)
    if limit is not None and info.size > limit:
        raise SandboxError(
            f"{out}: {info.size_mib:.1f} MiB is above PanDA's {limit / 2**20:.0f} MiB sandbox "
            "limit: remove packages the job does not need from env/ (see grid/README.md)"
            if inputs.resolved_runtime().mode != "container" else
            f"{out}: {info.size_mib:.1f} MiB is above PanDA's {limit / 2**20:.0f} MiB limit for "
            "a --noBuild (container) sandbox: files that are not code reached the package "
            "directory?")
    return info


def _read_info(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def tarball_sha256(sandbox: Path) -> str:
    """The sandbox's sha256 as ``sandbox.json`` recorded it when :func:`ensure_sandbox` built
    it (no second pass over the tarball); hashed now if there is no record."""
    value = _read_info(sandbox.parent / INFO_NAME).get("sha256")
    return value if isinstance(value, str) else file_sha256(sandbox)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


# -------------------------------------------------------------------------------- unpacking
def unpack(sandbox: Path, dest: Path) -> dict:
    """Unpack a sandbox into ``dest`` (created), as the grid does in a job's work directory,
    and verify every file against the manifest; returns the manifest.

    Raises
    ------
    UnsafeArchiveError
        A member with an absolute name or ``..``, a hard link, a link out of ``dest``, a
        device: nothing of the archive is extracted then.
    SandboxError
        An unpacked file whose sha256 is not the manifest's, or a member the manifest lacks.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(sandbox, "r:gz") as tar:
            members = safe_members(tar, sandbox, allow_links=True)
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(dest, members=members, filter="tar")
            else:  # pragma: no cover - Python without extraction filters; checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SandboxError(f"{sandbox}: unreadable sandbox ({err})") from None
    return verify_unpacked(sandbox, dest, members)


def verify_unpacked(sandbox: Path, dest: Path, members: list[tarfile.TarInfo]) -> dict:
    try:
        manifest = json.loads((dest / MANIFEST_NAME).read_text())
        files, links = dict(manifest["files"]), dict(manifest["links"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SandboxError(f"{sandbox}: no readable {MANIFEST_NAME} with member hashes") from None
    for member in members:
        name = member.name
        if member.isfile() and name != MANIFEST_NAME:
            if files.get(name) != file_sha256(dest / name):
                raise SandboxError(f"{sandbox}: member {name} does not match the manifest's "
                                   "sha256")
        elif member.issym() and links.get(name) != member.linkname:
            raise SandboxError(f"{sandbox}: link {name} is not in the manifest")
    return manifest
