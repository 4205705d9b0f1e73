"""YAML loading for configs: ``!include``, anchors, ``<<`` merge keys, and source positions.

Every mapping and sequence is loaded as a :class:`SourcedDict` / :class:`SourcedList` that
remembers the file and line of each entry, so validation errors can point at the exact place
(``configs/x.yaml:12: components[0].flavours[1]: ...``), even inside included files.

``!include PATH`` is resolved relative to the directory of the file that contains it. For
compatibility with UPP's configs (which include e.g. ``GN3V01/simple-split.yaml`` relative to a
shared configs directory), the parent directories of that file are tried next, nearest first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from upp_grid.errors import ConfigError

# PyYAML (YAML 1.1) reads `2.5e5` or `20e3` as strings; physicists write them as numbers.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class SourcedDict(dict):
    """A dict that knows where it and each of its keys came from."""

    file: Path
    line: int
    lines: dict[Any, int]


class SourcedList(list):
    """A list that knows where it and each of its items came from."""

    file: Path
    line: int
    lines: list[int]


def _make_loader(path: Path, stack: tuple[Path, ...]) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))

    def construct_map(loader: yaml.SafeLoader, node: yaml.MappingNode):
        loader.flatten_mapping(node)
        data = SourcedDict()
        data.file, data.line, data.lines = path, node.start_mark.line + 1, {}
        yield data
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ConfigError([f"{path}:{key_node.start_mark.line + 1}: key must be a scalar"])
            data[key] = loader.construct_object(value_node, deep=True)
            data.lines[key] = key_node.start_mark.line + 1

    def construct_seq(loader: yaml.SafeLoader, node: yaml.SequenceNode):
        data = SourcedList()
        data.file, data.line = path, node.start_mark.line + 1
        data.lines = [item.start_mark.line + 1 for item in node.value]
        yield data
        data.extend(loader.construct_object(item, deep=True) for item in node.value)

    def construct_include(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode) or not loader.construct_scalar(node):
            raise ConfigError([f"{path}:{line}: !include needs a file name, e.g. !include a.yaml"])
        target = _find_include(path, str(loader.construct_scalar(node)), line)
        if target in stack:
            cycle = " -> ".join(p.name for p in (*stack, target))
            raise ConfigError([f"{path}:{line}: !include cycle: {cycle}"])
        return load_yaml(target, (*stack, target))

    Loader.add_constructor("tag:yaml.org,2002:map", construct_map)
    Loader.add_constructor("tag:yaml.org,2002:seq", construct_seq)
    Loader.add_constructor("!include", construct_include)
    return Loader


def _find_include(including: Path, name: str, line: int) -> Path:
    rel = Path(name).expanduser()
    if rel.is_absolute():
        candidates = [rel]
    else:
        candidates = [d / rel for d in (including.parent, *including.parent.parents)]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    raise ConfigError(
        [f"{including}:{line}: !include '{name}': file not found next to {including.name} "
         "or in any parent directory"]
    )


def load_yaml(path: Path, stack: tuple[Path, ...] | None = None) -> Any:
    """Load one YAML file (following includes) into Sourced containers.

    Raises
    ------
    ConfigError
        For a missing/unreadable file, invalid YAML (with its line), or a bad/cyclic include.
    """
    path = Path(path)
    stack = stack or (path.resolve(),)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{path}: cannot read config: {err}"]) from None
    try:
        return yaml.load(text, Loader=_make_loader(path, stack))  # noqa: S506 (SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        what = " ".join(x for x in (err.context, err.problem) if x)
        raise ConfigError([f"{where}: invalid YAML: {what}"]) from None
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: invalid YAML: {err}"]) from None


def to_plain(obj: Any) -> Any:
    """Strip source info: plain dicts and lists (for dumping the resolved config)."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj
