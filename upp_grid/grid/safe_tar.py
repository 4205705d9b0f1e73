"""Checking a tar archive's members before anything is extracted.

Used for the sandbox the local backend unpacks and for the job archives ``download`` unpacks:
a member may only create a file or a directory inside the target (and, where allowed, a
symbolic link whose target stays inside it). Refused, naming the archive and the member:

* an absolute name, or one with a ``..`` component;
* a hard link (the target of a hard link is another file on the machine);
* a symbolic link whose target resolves outside the target directory (or any link, where
  links are not allowed);
* a device node, FIFO or any other special file;
* more than ``max_members`` members (a hostile archive must not make the check loop for ever).
"""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path

from upp_grid.errors import InputError

DEFAULT_MAX_MEMBERS = 100_000


class UnsafeArchiveError(InputError):
    """An archive member that would write outside its target, or is not a plain file."""


def safe_members(tar: tarfile.TarFile, archive: Path, *, allow_links: bool,
                 max_members: int = DEFAULT_MAX_MEMBERS,
                 error: type[InputError] = UnsafeArchiveError) -> list[tarfile.TarInfo]:
    """Every member of ``tar``, after checking each one (see the module docstring)."""
    out = []
    for n, member in enumerate(tar):
        if n >= max_members:
            raise error(f"{archive}: more than {max_members} members")
        check_member(member, archive, allow_links=allow_links, error=error)
        out.append(member)
    return out


def check_member(member: tarfile.TarInfo, archive: Path, *, allow_links: bool,
                 error: type[InputError] = UnsafeArchiveError) -> None:
    name = member.name
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise error(f"{archive}: member '{name}' points outside the target directory")
    if member.islnk():
        raise error(f"{archive}: member '{name}' is a hard link (to '{member.linkname}')")
    if member.issym():
        if not allow_links:
            raise error(f"{archive}: member '{name}' is a symbolic link, not a file")
        target = posixpath.normpath(posixpath.join(posixpath.dirname("/".join(parts)),
                                                   member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise error(f"{archive}: member '{name}' links to '{member.linkname}', outside "
                        "the target directory")
        return
    if not (member.isfile() or member.isdir()):
        raise error(f"{archive}: member '{name}' is a device or special file, not a file")
