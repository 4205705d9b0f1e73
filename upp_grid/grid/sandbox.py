"""The grid sandbox ``submission/<tag>/sandbox.tar.gz`` (DESIGN §6).

It holds ``env/`` (the virtualenv, symlinks to outside it dereferenced), ``grid/`` (the job
entry script), ``config.yaml`` (the resolved config, includes inlined) and ``manifest.json``.

* What the worker needs, nothing else: from ``env/`` only ``pyvenv.cfg``, ``bin/python*`` and
  site-packages; in site-packages only the distributions upp-grid needs at run time, without
  ``panda-client``/``rucio-clients`` (the worker talks to neither), ``tests`` directories,
  ``__pycache__`` and hdf5plugin's lossy compressors (:data:`PRUNED_HDF5_PLUGINS`). The
  ``upp_grid`` package is the one running this code, so the worker runs the same code that
  planned the task.
* Never a credential: names like ``x509up_*``, ``*.pem``, ``.globus/``, ``token`` are skipped
  wherever they are (and reported); so are hidden files and ``.git``.
* Deterministic: members sorted, mtime/uid/gid/owner fixed, gzip header without name or time.
  The same inputs give the same bytes except ``manifest.json``'s ``created``; an unchanged
  sandbox is reused as is (so PanDA also reuses the upload).
* Size: PanDA takes a sandbox named ``sources.*`` (prun ``--noCompile``) up to 768 MiB on the
  client and the server; ``--noBuild`` would allow 10 MiB, far less than numpy alone.
* Runtime (:class:`Runtime`, written as ``runtime.sh`` for ``grid/split.sh`` and recorded in
  the manifest): a venv sandbox names the base interpreter ``env/`` was built with and the
  ``lsetup`` that provided it (``env/upp-grid-runtime.json``, written by
  ``scripts/setup_env.sh --lsetup``); a container sandbox (``submit --container-image``) holds
  only ``code/upp_grid``, ``grid/``, the config and the manifest, and goes through
  ``--noBuild``: at most :data:`NO_BUILD_LIMIT`.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import shlex
import stat
import sys
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import upp_grid
from upp_grid.errors import UppGridError
from upp_grid.fsutil import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

SANDBOX_NAME = "sandbox.tar.gz"
INFO_NAME = "sandbox.json"
FORMAT = 1
SANDBOX_LIMIT = 768 * 2**20  # pandaclient Client.SOURCES_LIMIT == server SANDBOX_LIMIT
NO_BUILD_LIMIT = 10 * 2**20  # panda-server file_server_api.SANDBOX_NO_BUILD_LIMIT (jobO.*)
RUNTIME_FILE = "upp-grid-runtime.json"  # in env/, written by scripts/setup_env.sh
FIXED_MTIME = 946_684_800  # 2000-01-01T00:00:00Z for every member
DEFAULT_LEVEL = 6
ENTRY_FILE = "split.sh"

SUBMIT_ONLY_DISTS = frozenset({"panda-client", "rucio-clients"})
# lossy scientific compressors: neither TDD ntuples nor upp-grid's intermediates use them
PRUNED_HDF5_PLUGINS = frozenset({"libh5sz.so", "libh5sz3.so", "libh5sperr.so", "libh5zfp.so",
                                 "libh5fcidecomp.so", "libh5htj2k.so"})
_CREDENTIAL = re.compile(
    r"^(x509up_.*|.*\.(pem|p12|pfx|key|jwt|token)|\.?token|.*_token|\.?netrc|usercert.*|"
    r"userkey.*|\.globus|\.ssh|\.pathena|\.rucio|\.token.*)$", re.IGNORECASE)
_CA_BUNDLE = re.compile(r"^(cacert|ca-bundle|ca-certificates)\.(pem|crt)$")
_ALLOWED_HIDDEN = frozenset({".libs", ".dylibs"})
_SKIPPED_NAMES = frozenset({"__pycache__", "tests"})


class SandboxError(UppGridError):
    """The sandbox cannot be built or is too large."""


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
    grid_dir: Path
    package_dir: Path
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
class Member:
    """One tar member: a directory, a file (content from ``source`` or ``data``) or a link."""

    arcname: str
    kind: str
    source: Path | None = None
    data: bytes | None = None
    linkname: str = ""
    executable: bool = False

    def key(self) -> str:
        """What identifies this member's content, for the reuse fingerprint."""
        if self.source is not None:
            st = self.source.stat()
            what = f"{st.st_size}:{st.st_mtime_ns}"
        elif self.data is not None:
            what = hashlib.sha256(self.data).hexdigest()
        else:
            what = self.linkname
        return f"{self.arcname}\0{self.kind}\0{int(self.executable)}\0{what}"


@dataclass(frozen=True)
class SandboxInfo:
    """A built (or reused) sandbox."""

    path: Path
    size: int
    members: tuple[str, ...]
    reused: bool
    fingerprint: str
    skipped_credentials: tuple[str, ...] = field(default=())

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


def find_grid_dir(env_dir: Path) -> Path:
    """The worker-side ``grid/`` directory of the checkout (next to the package or the env)."""
    candidates = [Path(upp_grid.__file__).resolve().parents[1] / "grid",
                  env_dir.resolve().parent / "grid"]
    for candidate in candidates:
        if (candidate / ENTRY_FILE).is_file():
            return candidate
    raise SandboxError(f"grid/{ENTRY_FILE} not found in {' or '.join(map(str, candidates))}: "
                       "run upp-grid from the repository checkout")


def base_python(env_dir: Path) -> str:
    """The base interpreter directory a venv needs (``home`` in its ``pyvenv.cfg``)."""
    for line in (env_dir / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return value.strip()
    raise SandboxError(f"{env_dir / 'pyvenv.cfg'}: no 'home' line")


# ------------------------------------------------------------------------------ member list
def is_credential(name: str) -> bool:
    """Whether a file or directory name looks like a credential (proxy, key, token, …)."""
    return bool(_CREDENTIAL.match(name))


@dataclass
class _Collector:
    """Accumulates members, remembering which credential-like names it skipped."""

    members: dict[str, Member] = field(default_factory=dict)
    credentials: list[str] = field(default_factory=list)

    def keep(self, name: str, arc_dir: str, *, prune_tests: bool) -> bool:
        if is_credential(name):
            if not _CA_BUNDLE.match(name):  # public CA certificates: left out, not reported
                self.credentials.append(f"{arc_dir}/{name}")
            return False
        if name.startswith(".") and name not in _ALLOWED_HIDDEN:
            return False
        if name.endswith((".pyc", ".pyo")):
            return False
        return not (name in _SKIPPED_NAMES and (prune_tests or name == "__pycache__"))

    def add(self, member: Member) -> None:
        parts = member.arcname.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self.members.setdefault(parent, Member(parent, "dir"))
        self.members[member.arcname] = member


def collect_members(inputs: SandboxInputs) -> tuple[list[Member], list[str]]:
    """Every member but ``manifest.json``, sorted; and the credential-like paths skipped."""
    col = _Collector()
    runtime = inputs.resolved_runtime()
    col.add(Member("runtime.sh", "file", data=runtime.shell().encode()))
    if runtime.mode == "container":  # the image has the run-time: our code only
        _add_tree(col, inputs.package_dir, "code/upp_grid", prune_tests=True)
        _add_tree(col, inputs.grid_dir, "grid", prune_tests=True)
        col.add(Member("config.yaml", "file", data=inputs.config_yaml.encode()))
        return sorted(col.members.values(), key=lambda m: m.arcname), col.credentials
    env = inputs.env_dir
    col.add(Member("env/pyvenv.cfg", "file", source=env / "pyvenv.cfg"))
    for path in sorted((env / "bin").glob("python*")):
        _add_path(col, path, "env/bin", env, prune_tests=False)
    site = _site_packages(env)
    site_arc = "env/" + site.relative_to(env).as_posix()
    wanted = _worker_files(site)
    for root, dirs, files in os.walk(site):
        rel_root = Path(root).relative_to(site)
        arc_root = site_arc if rel_root == Path(".") else f"{site_arc}/{rel_root.as_posix()}"
        if rel_root.parts[:1] == ("upp_grid",):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if col.keep(d, arc_root, prune_tests=True))
        for name in sorted(files):
            if wanted is not None and (rel_root / name).as_posix() not in wanted:
                continue
            if col.keep(name, arc_root, prune_tests=True) and name not in PRUNED_HDF5_PLUGINS:
                _add_path(col, Path(root) / name, arc_root, env, prune_tests=True)
    _add_tree(col, inputs.package_dir, f"{site_arc}/upp_grid", prune_tests=True)
    _add_tree(col, inputs.grid_dir, "grid", prune_tests=True)
    col.add(Member("config.yaml", "file", data=inputs.config_yaml.encode()))
    if col.credentials:
        log.warning("not packing %d credential-like file(s): %s", len(col.credentials),
                    ", ".join(col.credentials[:5]))
    return sorted(col.members.values(), key=lambda m: m.arcname), col.credentials


def _site_packages(env: Path) -> Path:
    found = sorted(env.glob("lib/python3*/site-packages"))
    if not found:
        raise SandboxError(f"{env}: no lib/python3*/site-packages")
    return found[-1]


def _add_tree(col: _Collector, top: Path, arc_top: str, *, prune_tests: bool) -> None:
    for root, dirs, files in os.walk(top):
        rel = Path(root).relative_to(top)
        arc_root = arc_top if rel == Path(".") else f"{arc_top}/{rel.as_posix()}"
        dirs[:] = sorted(d for d in dirs if col.keep(d, arc_root, prune_tests=prune_tests))
        for name in sorted(files):
            if col.keep(name, arc_root, prune_tests=prune_tests):
                _add_path(col, Path(root) / name, arc_root, top, prune_tests=prune_tests)


def _add_path(col: _Collector, path: Path, arc_dir: str, tree: Path, *,
              prune_tests: bool) -> None:
    """Add a file or symlink; a link into ``tree`` stays a link, others are dereferenced."""
    arcname = f"{arc_dir}/{path.name}"
    if not path.is_symlink():
        if path.is_file():
            col.add(Member(arcname, "file", source=path, executable=_is_exec(path)))
        return
    target = path.resolve()
    if not target.exists():
        log.warning("skipping broken symlink %s", path)
        return
    first_hop = Path(os.path.normpath(path.parent / os.readlink(path)))
    if first_hop.is_relative_to(tree.absolute()):  # e.g. bin/python -> python3: stays a link
        link = os.path.relpath(first_hop, path.parent)
        col.add(Member(arcname, "symlink", linkname=link))
    elif target.is_dir():
        _add_tree(col, target, arcname, prune_tests=prune_tests)
    else:
        col.add(Member(arcname, "file", source=target, executable=_is_exec(target)))


def _is_exec(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


# ----------------------------------------------------------------- runtime distributions only
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(req: str) -> tuple[str, bool]:
    """(canonical name, needed at run time without extras)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with every env built here
        name = re.match(r"[A-Za-z0-9._-]+", req)
        marker = req.partition(";")[2]
        return _canonical(name.group(0) if name else req), "extra" not in marker
    parsed = Requirement(req)
    needed = parsed.marker is None or parsed.marker.evaluate({"extra": ""})
    return _canonical(parsed.name), needed


def _worker_files(site: Path) -> set[str] | None:
    """Site-packages files of upp-grid's run-time dependency closure, minus the distributions
    only the submitting side needs. None (= keep all) if upp-grid is not installed there."""
    dists = {}
    for dist in importlib.metadata.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        if name:
            dists.setdefault(_canonical(name), dist)
    root = dists.get("upp-grid")
    if root is None:
        log.warning("upp-grid is not installed in %s: packing all of its site-packages", site)
        return None
    keep, todo = {"upp-grid"}, [root]
    while todo:
        dist = todo.pop()
        for req in dist.requires or []:
            name, needed = _requirement(req)
            if not needed or name in keep or name not in dists:
                continue
            if dist is root and name in SUBMIT_ONLY_DISTS:
                continue
            keep.add(name)
            todo.append(dists[name])
    wanted: set[str] = set()
    for name in keep:
        files = dists[name].files
        if files is None:
            log.warning("%s has no RECORD: packing all of %s", name, site)
            return None
        wanted.update(f.as_posix() for f in files if not f.as_posix().startswith(".."))
    return wanted


# --------------------------------------------------------------------------------- building
def fingerprint(members: list[Member], manifest: dict, level: int) -> str:
    """What decides the sandbox content: members (by size and mtime) and the manifest."""
    digest = hashlib.sha256(f"{FORMAT}:{level}\n".encode())
    for member in members:
        digest.update(member.key().encode())
        digest.update(b"\n")
    digest.update(json.dumps(manifest, sort_keys=True).encode())
    return digest.hexdigest()


def make_manifest(inputs: SandboxInputs, members: list[Member]) -> dict:
    """``manifest.json`` without its creation time."""
    runtime = inputs.resolved_runtime()
    return {"format": FORMAT, "upp_grid_version": upp_grid.__version__,
            "config_hash": inputs.config_hash, "entry": f"grid/{ENTRY_FILE}",
            "python": runtime.python_home, "runtime": runtime.as_dict(),
            "members": len(members) + 1}


def write_tarball(members: list[Member], out: Path, level: int = DEFAULT_LEVEL) -> int:
    """Write a deterministic ``.tar.gz`` atomically; returns its size in bytes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, tmp.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level,
                          mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            _add_member(tar, member)
    return out.stat().st_size


def _add_member(tar: tarfile.TarFile, member: Member) -> None:
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
    elif member.data is not None:
        info.mode, info.size = 0o644, len(member.data)
        tar.addfile(info, io.BytesIO(member.data))
    else:
        assert member.source is not None
        info.mode = 0o755 if member.executable else 0o644
        with member.source.open("rb") as f:
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)


def ensure_sandbox(inputs: SandboxInputs, out_dir: Path, *, limit: int | None = SANDBOX_LIMIT,
                   level: int = DEFAULT_LEVEL, created: str | None = None) -> SandboxInfo:
    """Build ``out_dir/sandbox.tar.gz``, or reuse it if its inputs did not change.

    Raises
    ------
    SandboxError
        If the inputs are unusable, or the sandbox is larger than ``limit`` bytes.
    """
    members, credentials = collect_members(inputs)
    manifest = make_manifest(inputs, members)
    digest = fingerprint(members, manifest, level)
    out = out_dir / SANDBOX_NAME
    info_path = out_dir / INFO_NAME
    names = (*(m.arcname for m in members), "manifest.json")
    previous = _read_info(info_path)
    if previous.get("fingerprint") == digest and out.is_file() \
            and out.stat().st_size == previous.get("size"):
        log.info("reusing %s (%.1f MiB, unchanged)", out, out.stat().st_size / 2**20)
        info = SandboxInfo(out, out.stat().st_size, tuple(sorted(names)), True, digest,
                           tuple(credentials))
    else:
        manifest["created"] = created or datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest_member = Member("manifest.json", "file",
                                 data=json.dumps(manifest, indent=1, sort_keys=True).encode())
        members = sorted([*members, manifest_member], key=lambda m: m.arcname)
        log.info("packing %d files into %s", len(members), out)
        size = write_tarball(members, out, level)
        write_json_atomic(info_path, {"fingerprint": digest, "size": size,
                                      "created": manifest["created"], "members": len(members)})
        info = SandboxInfo(out, size, tuple(m.arcname for m in members), False, digest,
                           tuple(credentials))
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


# -------------------------------------------------------------------------------- unpacking
def unpack(sandbox: Path, dest: Path) -> None:
    """Unpack a sandbox into ``dest`` (created), as the grid does in a job's work directory."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sandbox, "r:gz") as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dest, filter="tar")
        else:  # pragma: no cover - Python without extraction filters
            tar.extractall(dest)  # our own archive
