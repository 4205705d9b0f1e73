"""Grid dataset names (DESIGN §6): who the user is, what a container's DSID and AMI tags are,
and the outDS and output containers of a task, checked against PanDA's and rucio's rules.

* outDS: ``user.<user>.<dsid>.<tags>.<tag>_split.h5``; a later submission attempt ``N`` of the
  same tag and container gets ``user.<user>.<dsid>.<tags>.<tag>.try<N>_split.h5``, because JEDI
  reactivates the old task for a reused name instead of making a new one (GRID-FACTS.md). A tag
  may therefore not end in ``.try<N>`` itself.
* output container of a declared output file ``F``: ``<outDS>_F`` (prun names it that way), so
  ``<outDS>_output_<split>_<region>_<sample>_<flavour>.h5``
* log container: ``<outDS>.log``

prun refuses a container name longer than 132 characters including the trailing ``/`` it
appends, so every container here must be at most 131 characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from upp_grid.errors import UppGridError

# prun's limit for the outDS, output and log containers, counting the trailing "/".
CONTAINER_LIMIT = 132
SPLIT_SUFFIX = "_split.h5"

_USER_RE = re.compile(r"^[a-z0-9_-]{1,30}$")  # rucio account names
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DATASET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DSID_RE = re.compile(r"^\d{6,8}$")
_TAGS_RE = re.compile(r"^[a-z]\d+(_[a-z]\d+)*$")
_ATTEMPT_RE = re.compile(r"\.try\d+$")


class DatasetNameError(UppGridError):
    """A dataset name (or the user or tag it is made from) breaks a grid naming rule."""


@dataclass(frozen=True)
class ContainerName:
    """The parts of an input container name that the outDS is built from."""

    name: str
    dsid: str
    tags: str


def resolve_user(cli_user: str | None, environ: Mapping[str, str]) -> str:
    """The grid nickname for dataset names: ``--rucio-user``, else ``RUCIO_ACCOUNT``, else
    ``PANDA_NICKNAME``.

    Raises
    ------
    DatasetNameError
        If none is set, or the name is not a valid rucio account name.
    """
    for source, value in (("--rucio-user", cli_user),
                          ("RUCIO_ACCOUNT", environ.get("RUCIO_ACCOUNT")),
                          ("PANDA_NICKNAME", environ.get("PANDA_NICKNAME"))):
        if value:
            if not _USER_RE.match(value):
                raise DatasetNameError(
                    f"{source}: '{value}' is not a grid nickname (lower-case letters, digits, "
                    "'_' and '-', at most 30)")
            return value
    raise DatasetNameError("no grid nickname: pass --rucio-user NICK or set RUCIO_ACCOUNT "
                           "(or PANDA_NICKNAME) to your grid nickname")


def check_tag(tag: str) -> str:
    """Return ``tag`` if it can go into dataset and directory names."""
    if not _TAG_RE.match(tag):
        raise DatasetNameError(f"--tag '{tag}': use letters, digits, '_', '-' and '.', starting "
                               "with a letter or digit (at most 64)")
    if _ATTEMPT_RE.search(tag):
        raise DatasetNameError(f"--tag '{tag}': a tag may not end in '.try<N>', which upp-grid "
                               "adds to the outDS of a resubmission")
    return tag


def parse_container(name: str) -> ContainerName:
    """Find the DSID (or run number) and the AMI tags in a container name.

    Works for user containers (``user.x.601589.e8547_s3797_r13144_p6859.tdd.….h5``) and
    central ones (``mc20_13TeV.601589.PhPy8EG_….deriv.DAOD_FTAG1.e8547_s3797_r13144_p6859``).
    A ``scope:`` prefix and a trailing ``/`` are ignored.
    """
    bare = name.split(":", 1)[-1].rstrip("/")
    parts = bare.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if _DSID_RE.match(part):
            tags = next((p for p in parts[i + 1:] if _TAGS_RE.match(p)), None)
            if tags is None:
                break
            return ContainerName(bare, part, tags)
    raise DatasetNameError(
        f"container '{name}': cannot find a DSID and AMI tags (like "
        "'601589.e8547_s3797_r13144_p6859') in its name")


def out_ds_name(user: str, container: ContainerName, tag: str, attempt: int = 1) -> str:
    """``user.<user>.<dsid>.<tags>.<tag>_split.h5``; attempt ``N > 1`` adds ``.try<N>``."""
    suffix = f".try{attempt}" if attempt > 1 else ""
    return f"user.{user}.{container.dsid}.{container.tags}.{tag}{suffix}{SPLIT_SUFFIX}"


def output_container(out_ds: str, filename: str) -> str:
    """The container prun creates for the declared output ``filename``: ``<outDS>_<filename>``."""
    return f"{out_ds}_{filename}"


def log_container(out_ds: str) -> str:
    return f"{out_ds}.log"


def scope_of(name: str) -> str:
    """The rucio scope of a DID name: ``user.<nick>`` / ``group.<name>`` or the first field."""
    parts = name.split(".")
    if parts[0] in ("user", "group") and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def check_dataset_name(name: str, user: str, what: str) -> None:
    """Check one output-side dataset name: ``user.<user>.`` prefix, characters and length.

    ``what`` names the dataset in the message (e.g. ``"outDS of container X"``).
    """
    if not name.startswith(f"user.{user}."):
        raise DatasetNameError(f"{what} '{name}' must start with 'user.{user}.'")
    if not name.isascii() or not _DATASET_RE.match(name):
        bad = next(c for c in name if not (c.isascii() and (c.isalnum() or c in "._-")))
        raise DatasetNameError(f"{what} '{name}' contains '{bad}'; only letters, digits, "
                               "'.', '_' and '-' are allowed")
    if len(name) + 1 > CONTAINER_LIMIT:
        raise DatasetNameError(
            f"{what} '{name[:60]}…' has {len(name) + 1} characters with the trailing '/', "
            f"PanDA allows {CONTAINER_LIMIT}: use a shorter --tag (or shorter sample/region "
            "names)")
