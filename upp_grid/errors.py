"""Exceptions that reach the user as a one-line message (no traceback unless ``-v``)."""

from __future__ import annotations

import errno
import re


class UppGridError(Exception):
    """An error the user can act on. ``str(err)`` is a single line naming the file/key/dataset."""


class ConfigError(UppGridError):
    """One or more problems in a config file; each problem is one ``file:line: key: what`` line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid config"
        more = len(self.problems) - 1
        suffix = f" (+{more} more problem{'s' * (more > 1)}: run `upp-grid check -c CFG`)" * (
            more > 0
        )
        super().__init__(first + suffix)


class InputError(UppGridError):
    """A missing, unreadable or malformed input file, dataset or field."""


class BookkeepingError(UppGridError):
    """Jets expected and jets written differ: a stage refuses to publish its outputs."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is a write that failed for lack of space (ENOSPC or a quota)."""
    return isinstance(err, OSError) and (
        err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err))


def written_path(err: OSError) -> str | None:
    """The file a failed write was writing, from the error (h5py puts it in the message)."""
    if err.filename:
        return str(err.filename)
    found = re.search(r"filename = '([^']+)'", str(err))
    return found[1] if found else None
