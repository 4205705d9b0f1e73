"""What goes into a sandbox: an allow-list, never a walk of a directory.

A venv sandbox holds exactly:

* ``env/pyvenv.cfg`` and the interpreter entries of ``env/bin`` (``python``, ``python3``,
  ``python3.X``, nothing else of that directory). A link to another of them stays a link; the
  one that leads out of ``env/`` to the base interpreter (under ``home`` of ``pyvenv.cfg``) is
  copied on purpose and named in the manifest (:class:`BaseInterpreter`);
* in site-packages, the files of upp-grid's run-time distributions (its ``Requires-Dist``
  closure without the submit-side :data:`LOCAL_ONLY_DISTS`) as their installed ``RECORD``
  lists them, without byte code, ``tests`` directories, hdf5plugin's lossy compressors
  (:data:`PRUNED_HDF5_PLUGINS`) and ``direct_url.json`` (it names the build machine's path);
* upp-grid's own package: the installed ``RECORD`` when the running code is the installed
  copy; when upp-grid runs from a source tree, that tree's modules (``*.py`` of its packages)
  and its declared package data (:data:`PACKAGE_DATA`, as in ``setup.cfg``), so the worker
  runs the code that planned the task;
* the worker scripts (:data:`WORKER_SCRIPTS`, package data of ``upp_grid/grid/worker_scripts``)
  as ``grid/<script>``;
* ``runtime.sh``, ``config.yaml`` and ``manifest.json`` (written by :mod:`.sandbox`).

A container sandbox holds only ``code/upp_grid`` (as above), the worker scripts, the config,
``runtime.sh`` and the manifest. A file not on these lists is never packed, whatever its name.

Links: a symbolic link is packed as a link only when its target is a member of the sandbox; a
link anywhere else that leads out is an error (never dereferenced), except the base
interpreter. Every packed file is then scanned for credentials (:mod:`.secret_scan`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from upp_grid.errors import UppGridError

log = logging.getLogger(__name__)

# run-time dependencies a grid job never imports: the grid clients (submit and download run
# on the user's machine), matplotlib (the worker never plots) and isal (it never merges)
LOCAL_ONLY_DISTS = frozenset({"panda-client", "rucio-clients", "matplotlib", "isal"})
# lossy scientific compressors: neither TDD ntuples nor upp-grid's intermediates use them
PRUNED_HDF5_PLUGINS = frozenset({"libh5sz.so", "libh5sz3.so", "libh5sperr.so", "libh5zfp.so",
                                 "libh5fcidecomp.so", "libh5htj2k.so"})
#: package data of upp_grid, as ``[options.package_data]`` in setup.cfg declares it
PACKAGE_DATA = ("resources/*.yaml", "grid/worker_scripts/*.sh")
WORKER_SCRIPTS_DIR = "grid/worker_scripts"  #: inside the upp_grid package
WORKER_SCRIPTS = ("split.sh",)
_INTERPRETER = re.compile(r"python(3(\.[0-9]+)?)?")
_SKIPPED_PARTS = frozenset({"__pycache__", "tests"})
_SKIPPED_NAMES = frozenset({"direct_url.json"})


class SandboxError(UppGridError):
    """The sandbox cannot be built (missing inputs, a link out, a credential) or is too large."""


@dataclass(frozen=True)
class Member:
    """One tar member: a directory, a file (content from ``source`` or ``data``) or a link."""

    arcname: str
    kind: str  #: ``dir``, ``file`` or ``symlink``
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
class BaseInterpreter:
    """The base interpreter, copied into the sandbox on purpose (the one dereferenced link)."""

    arcname: str
    source: str


@dataclass(frozen=True)
class SandboxContent:
    """The allow-listed members (sorted, ``manifest.json`` not yet among them)."""

    members: tuple[Member, ...]
    base_interpreter: BaseInterpreter | None = None


@dataclass
class _Members:
    members: dict[str, Member] = field(default_factory=dict)

    def add(self, member: Member) -> None:
        parts = member.arcname.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self.members.setdefault(parent, Member(parent, "dir"))
        self.members[member.arcname] = member

    def add_path(self, path: Path, arcname: str) -> None:
        """A regular file, or a link that :meth:`check_links` later checks; others skipped."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            log.debug("not packing %s: listed but not installed", path)
            return
        if stat.S_ISLNK(st.st_mode):
            self.add(Member(arcname, "symlink", source=path, linkname=os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            self.add(Member(arcname, "file", source=path,
                            executable=bool(st.st_mode & stat.S_IXUSR)))
        else:
            raise SandboxError(f"{path}: not a regular file (for {arcname})")

    def check_links(self) -> None:
        """Every link must end at a member of the sandbox, inside it."""
        for member in self.members.values():
            if member.kind != "symlink":
                continue
            target = os.path.normpath(os.path.join(os.path.dirname(member.arcname),
                                                   member.linkname))
            if member.linkname.startswith("/") or target not in self.members:
                raise SandboxError(
                    f"{member.source}: a symbolic link to {member.linkname} outside the "
                    f"sandbox ({member.arcname}): links are never followed out of it; replace "
                    "it with the file or reinstall the package")

    def sorted(self) -> tuple[Member, ...]:
        return tuple(sorted(self.members.values(), key=lambda m: m.arcname))


# ------------------------------------------------------------------------------ the package
def package_files(package_dir: Path, site: Path | None) -> list[tuple[Path, str]]:
    """``(file, path relative to the package's parent)`` of upp_grid's own files.

    The installed ``RECORD`` if ``package_dir`` is the copy installed in ``site``; otherwise
    the source tree's modules and declared package data."""
    if site is not None and _same_dir(package_dir, site / "upp_grid"):
        dist = _distributions(site).get("upp-grid")
        if dist is not None and dist.files is not None:
            return [(site / rel, rel) for rel in _record(dist)
                    if rel.startswith("upp_grid/")]
    out = []
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_PARTS and not d.startswith("."))
        rel_root = Path(root).relative_to(package_dir)
        is_package = "__init__.py" in files
        for name in sorted(files):
            rel = (rel_root / name).as_posix()
            if (is_package and name.endswith(".py")) or any(fnmatch(rel, p)
                                                            for p in PACKAGE_DATA):
                out.append((Path(root) / name, f"upp_grid/{rel}"))
    return out


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def worker_scripts(package_dir: Path) -> list[tuple[Path, str]]:
    """``(file, arcname)`` of the worker scripts, shipped as ``grid/<name>``."""
    scripts = package_dir / WORKER_SCRIPTS_DIR
    out = []
    for name in WORKER_SCRIPTS:
        path = scripts / name
        if not path.is_file() or path.is_symlink():
            raise SandboxError(f"{path}: the worker script is missing (or a link): reinstall "
                               "upp-grid")
        out.append((path, f"grid/{name}"))
    return out


# ---------------------------------------------------------------------- runtime distributions
def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(site: Path) -> dict[str, importlib.metadata.Distribution]:
    dists: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions(path=[str(site)]):
        name = dist.metadata["Name"]
        if name:
            dists.setdefault(_canonical(name), dist)
    return dists


def _requirement(req: str) -> tuple[str, bool]:
    """(canonical name, needed at run time without extras)."""
    from packaging.requirements import Requirement

    parsed = Requirement(req)
    needed = parsed.marker is None or parsed.marker.evaluate({"extra": ""})
    return _canonical(parsed.name), needed


def runtime_distributions(site: Path) -> list[importlib.metadata.Distribution]:
    """upp-grid and its run-time ``Requires-Dist`` closure in ``site``, without the
    submit-side distributions. A missing one is an error naming it."""
    dists = _distributions(site)
    root = dists.get("upp-grid")
    if root is None:
        raise SandboxError(f"{site}: upp-grid is not installed in this env: build it with "
                           "`bash scripts/setup_env.sh` (or pip install upp-grid into it)")
    keep, todo = {"upp-grid": root}, [root]
    while todo:
        dist = todo.pop()
        for req in dist.requires or []:
            name, needed = _requirement(req)
            if not needed or name in keep or (dist is root and name in LOCAL_ONLY_DISTS):
                continue
            if name not in dists:
                raise SandboxError(f"{site}: {name}, which {dist.metadata['Name']} needs at run "
                                   "time, is not installed: rerun `bash scripts/setup_env.sh`")
            keep[name] = dists[name]
            todo.append(dists[name])
    return [keep[n] for n in sorted(keep)]


def _record(dist: importlib.metadata.Distribution) -> list[str]:
    if dist.files is None:
        raise SandboxError(f"{dist.metadata['Name']}: installed without a RECORD, so its files "
                           "are unknown: reinstall it with pip")
    out = []
    for f in dist.files:
        rel = f.as_posix()
        parts = PurePosixPath(rel).parts
        if rel.startswith(("/", "..")) or _SKIPPED_PARTS & set(parts):
            continue
        if rel.endswith((".pyc", ".pyo")) or parts[-1] in _SKIPPED_NAMES \
                or parts[-1] in PRUNED_HDF5_PLUGINS:
            continue
        out.append(rel)
    return out


def site_packages(env: Path) -> Path:
    found = sorted(env.glob("lib/python3*/site-packages"))
    if not found:
        raise SandboxError(f"{env}: no lib/python3*/site-packages")
    return found[-1]


# -------------------------------------------------------------------------------- collecting
def venv_members(env: Path, package_dir: Path, home: str) -> SandboxContent:
    """The allow-listed members of a venv sandbox (config, runtime and manifest excluded)."""
    col = _Members()
    cfg = env / "pyvenv.cfg"
    col.add_path(cfg, "env/pyvenv.cfg")
    base = _add_interpreters(col, env, home)
    site = site_packages(env)
    site_arc = "env/" + site.relative_to(env).as_posix()
    own = package_files(package_dir, site)
    for dist in runtime_distributions(site):
        for rel in _record(dist):
            if rel.startswith("upp_grid/"):
                continue  # upp_grid: the running code, below
            col.add_path(site / rel, f"{site_arc}/{rel}")
    for path, rel in own:
        col.add_path(path, f"{site_arc}/{rel}")
    for path, arcname in worker_scripts(package_dir):
        col.add_path(path, arcname)
    col.check_links()
    return SandboxContent(col.sorted(), base)


def container_members(package_dir: Path) -> SandboxContent:
    """The allow-listed members of a container sandbox: our code and the worker scripts."""
    col = _Members()
    site = _installed_site(package_dir)
    for path, rel in package_files(package_dir, site):
        col.add_path(path, f"code/{rel}")
    for path, arcname in worker_scripts(package_dir):
        col.add_path(path, arcname)
    col.check_links()
    return SandboxContent(col.sorted())


def _installed_site(package_dir: Path) -> Path | None:
    """The site-packages ``package_dir`` is installed in (it has upp-grid's dist-info)."""
    parent = package_dir.resolve().parent
    return parent if any(parent.glob("upp_grid-*.dist-info")) else None


def _add_interpreters(col: _Members, env: Path, home: str) -> BaseInterpreter | None:
    """``env/bin/python*`` interpreter entries; the link out of env/ is copied (once)."""
    bin_dir = env / "bin"
    names = sorted(p.name for p in _listdir(bin_dir) if _INTERPRETER.fullmatch(p.name))
    if not names:
        raise SandboxError(f"{bin_dir}: no python interpreter")
    base: BaseInterpreter | None = None
    home_dir = Path(home).resolve()
    for name in names:
        path = bin_dir / name
        arcname = f"env/bin/{name}"
        if not path.is_symlink():
            col.add_path(path, arcname)
            continue
        first = os.readlink(path)
        if "/" not in first and _INTERPRETER.fullmatch(first) and first in names:
            col.add(Member(arcname, "symlink", source=path, linkname=first))
            continue
        target = path.resolve()
        if base is not None and str(target) == base.source:  # python and python3 both out
            col.add(Member(arcname, "symlink", source=path,
                           linkname=base.arcname.rsplit("/", 1)[1]))
            continue
        if base is not None or not target.is_file() or not target.is_relative_to(home_dir):
            raise SandboxError(
                f"{path}: links to {target}, which is not the base interpreter under "
                f"{home_dir} (home in {env / 'pyvenv.cfg'}): rebuild env/ with "
                "`bash scripts/setup_env.sh`")
        col.add(Member(arcname, "file", source=target, executable=True))
        base = BaseInterpreter(arcname, str(target))
    return base


def _listdir(path: Path) -> Iterable[Path]:
    try:
        return list(path.iterdir())
    except OSError as err:
        raise SandboxError(f"{path}: unreadable ({err.strerror})") from None
