"""Reading a loaded config with positions: one-line problems and typed access.

:class:`Problems` collects ``file:line: key.path: what is wrong`` lines; :class:`Reader` gives
typed access to one mapping of the config and records problems instead of raising. The value
helpers (``describe``, ``suggest``, ``as_int``, ...) word those problems as a user wrote the
values. Used by :mod:`upp_grid.config` and :mod:`upp_grid.config_reweighting`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ftag.labels import Label

from upp_grid.yamlload import SourcedDict, SourcedList, to_plain

# UPP's object-agnostic names -> the names used here
ALIASES = {
    "global_name": "jets_name",
    "num_global_objects": "num_jets",
    "num_global_objects_val": "num_jets_val",
    "num_global_objects_test": "num_jets_test",
    "num_global_objects_estimate": "num_jets_estimate",
    "num_global_objects_per_output_file": "num_jets_per_output_file",
    "equal_global_objects": "equal_jets",
    "classes": "flavours",
    "flavour_category": "class_category",
    "flavour_config": "class_config",
}


# --------------------------------------------------------------------------- validation
class Problems:
    """Collects one-line problems ``file:line: key.path: what is wrong``.

    :meth:`lines` sorts them by position (the config file first, then included files) so the
    first line a user sees is the earliest problem in the file. A mistake in an anchored block
    used by several components is reported once, with the key path of its first use.
    """

    def __init__(self, path: Path, root: Mapping[Any, Any]) -> None:
        self.path = path
        self.root = root  # the top-level mapping, for "did you mean the anchor" hints
        self.found: list[tuple[str, int, str, str]] = []

    def add(self, parent: Any, key: Any, keypath: str, msg: str) -> None:
        file, line = position_of(parent, key, self.path)
        self.found.append((str(file), line, keypath, msg))

    def lines(self) -> list[str]:
        main = str(self.path)
        ordered = sorted(self.found, key=lambda f: (f[0] != main, f[0], f[1]))
        seen, out = set(), []
        for file, line, keypath, msg in ordered:
            same = (file, line, keypath.rpartition(".")[2], msg)  # e.g. `cuts[1]` of an anchor
            if same in seen:
                continue
            seen.add(same)
            at = f"{file}:{line}" if line else file
            out.append(f"{at}: {keypath}: {msg}" if keypath else f"{at}: {msg}")
        return out


def position_of(parent: Any, key: Any, default: Path) -> tuple[Path, int]:
    """File and line of ``parent[key]`` (of ``parent`` itself if ``key`` is None)."""
    file = getattr(parent, "file", None) or default
    line = getattr(parent, "line", 0)
    if isinstance(parent, SourcedDict):
        line = parent.lines.get(key, line)
    elif isinstance(parent, SourcedList) and isinstance(key, int) and key < len(parent.lines):
        line = parent.lines[key]
    return file, line


def closest(word: Any, options: Any, cutoff: float = 0.6) -> str | None:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return match[0] if match else None


def suggest(word: Any, options: Any, cutoff: float = 0.6) -> str:
    match = closest(word, options, cutoff)
    return f" (did you mean '{match}'?)" if match else ""


def typename(value: Any) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        dict: "mapping",
        list: "list",
    }
    for typ, name in names.items():
        if isinstance(value, typ):
            return name
    return "null" if value is None else type(value).__name__


def describe(value: Any) -> str:
    """``string 'all'``, ``null``, ``list [0, 10]``: a value as a user wrote it, kept short."""
    if value is None:
        return "null"
    text = repr(to_plain(value))
    return f"{typename(value)} {text if len(text) <= 60 else text[:57] + '...'}"


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_int(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (``4e6`` is written for 4 million)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def plain_number(value: float) -> int | float:
    """``250000`` rather than ``250000.0`` in messages (YAML reads ``250e3`` as a float)."""
    return int(value) if float(value).is_integer() else value


def show(value: Any) -> str:
    """``repr`` of a value as written: plain containers, ``250000`` for ``250e3``."""
    if isinstance(value, list):
        return f"[{', '.join(show(v) for v in value)}]"
    if isinstance(value, float):
        return (
            repr(plain_number(value))
            if value == value and abs(value) != float("inf")
            else repr(value)
        )
    return repr(to_plain(value))


def numeric_str(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


class Reader:
    """Typed access to one mapping of the config, recording problems instead of raising."""

    def __init__(self, data: Any, keypath: str, problems: Problems, parent: Any, key: Any) -> None:
        self.keypath = keypath
        self.p = problems
        self.ok = isinstance(data, dict)
        self.data = data if self.ok else SourcedDict()
        self.typos: set[str] = set()  # required keys already reported as a misspelt key
        if not self.ok:
            problems.add(
                parent,
                key,
                keypath,
                f"expected a mapping, got {describe(data)}{mapping_hint(data, problems)}",
            )

    def sub(self, key: Any) -> str:
        return f"{self.keypath}.{key}" if self.keypath else str(key)

    def check_keys(self, allowed: tuple[str, ...], ignored: tuple[str, ...] = ()) -> None:
        """Report keys that are not ``allowed`` (``ignored`` keys are accepted silently)."""
        for key in self.data:
            if key in allowed or key in ignored:
                continue
            if not isinstance(key, str):
                self.p.add(
                    self.data, key, self.sub(key), f"key must be a name, got {describe(key)}"
                )
                continue
            match = closest(key, allowed)
            if match and match not in self.data:
                self.typos.add(match)
                self.p.add(self.data, key, self.sub(key), f"unknown key (did you mean '{match}'?)")
            else:
                self.p.add(
                    self.data, key, self.sub(key), f"unknown key; allowed: {', '.join(allowed)}"
                )

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
        hint: str = "",
    ) -> Any:
        """``data[key]`` if it has type ``kind`` and passes ``check``; else record a problem.

        An ``int`` field also takes a whole float (``num_jets: 4e6``).
        """
        if key not in self.data:
            if required and self.ok and key not in self.typos:
                self.p.add(self.data, None, self.sub(key), "missing required key")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if int in kinds and float not in kinds and as_int(value) is not None:
            value = as_int(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            self.p.add(
                self.data, key, self.sub(key), f"expected {want}, got {describe(value)}{hint}"
            )
            return default
        if check is not None and (msg := check(value)):
            self.p.add(self.data, key, self.sub(key), msg)
            return default
        return value

    def str_list(
        self, key: str, required: bool = False, allow_str: bool = False
    ) -> tuple[str, ...]:
        """A list of names; a lone string is accepted only if ``allow_str``."""
        value = self.data.get(key)
        if isinstance(value, str) and not allow_str:
            self.p.add(
                self.data,
                key,
                self.sub(key),
                f"expected a list, got string {value!r} (write [{value}])",
            )
            return ()
        value = self.get(key, (list, str) if allow_str else list, None, required)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str) and item:
                out.append(item)
            else:
                self.p.add(
                    value,
                    i,
                    f"{self.sub(key)}[{i}]",
                    f"expected a non-empty string, got {describe(item)}",
                )
        return tuple(out)


_KIND_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
    object: "a value",
}


def mapping_hint(value: Any, p: Problems) -> str:
    """Why a mapping may be missing: an anchor name written without ``*``, or bad indentation."""
    if value is None:
        return " (is it empty, or is its content not indented under it?)"
    if isinstance(value, str) and isinstance(p.root.get(value), dict):
        return f" (to use the block '{value}' defined at the top, write *{value})"
    return ""


def normalise_aliases(data: Any, p: Problems, keypath: str = "") -> Any:
    """Rename UPP's object-agnostic keys to upp-grid's jet names, keeping source info."""
    if isinstance(data, dict):
        out = SourcedDict()
        out.file, out.line = getattr(data, "file", None), getattr(data, "line", 0)
        lines = getattr(data, "lines", {})
        for key, value in data.items():
            new = ALIASES.get(key, key) if isinstance(key, str) else key
            here = f"{keypath}.{key}" if keypath else str(key)
            if new != key and new in data:
                p.add(
                    data,
                    key,
                    here,
                    f"both '{key}' and '{new}' are given (they are the same "
                    "option under two names): keep one",
                )
            out[new] = normalise_aliases(value, p, here)
            out.lines[new] = lines.get(key, out.line)
        return out
    if isinstance(data, list):
        out_list = SourcedList(
            normalise_aliases(v, p, f"{keypath}[{i}]") for i, v in enumerate(data)
        )
        out_list.file, out_list.line = getattr(data, "file", None), getattr(data, "line", 0)
        out_list.lines = list(getattr(data, "lines", []))
        return out_list
    return data


def positive(value: int) -> str | None:
    return None if value > 0 else f"must be a positive integer, got {value}"


def one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in options:
            return None
        return f"must be one of {', '.join(options)}, got '{value}'{suggest(value, options)}"

    return check


def optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value is None else check(value)


def find_flavour(name: str, labels: Any) -> Label | None:
    try:
        return labels[name]
    except (KeyError, TypeError):
        return None


def path_component(name: str) -> str | None:
    """Why ``name`` cannot name a file or directory on its own, or None if it can.

    Sample, region and group names become parts of output paths
    (``<components_dir>/<sample>/...``, ``output_<split>_<region>_<sample>_<flavour>.h5``), so
    a name with ``/``, ``..`` or a leading ``/`` would write outside the output directories.
    """
    if not name:
        return "must not be empty"
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return (
            f"'{name}' is used in file names and must not contain '/', '\\', a NUL or be "
            "'.' or '..'"
        )
    if name != name.strip():
        return f"'{name}' has leading or trailing spaces"
    return None
