"""YAML loading for configs: ``!include``, anchors, ``<<`` merge keys, and source positions.

Every mapping and sequence is loaded as a :class:`SourcedDict` / :class:`SourcedList` that
remembers the file and line of each entry, so validation errors can point at the exact place
(``configs/x.yaml:12: components[0].flavours[1]: ...``), even inside included files.

``!include PATH`` is resolved relative to the directory of the file that contains it. For
compatibility with UPP's configs (which include e.g. ``GN3V01/simple-split.yaml`` relative to
UPP's ``configs/`` directory), the parent directories of that file are tried next, nearest
first, then each directory on ``UPP_GRID_INCLUDE_PATH`` (``:``-separated), then the
``configs/`` directory of an installed umami-preprocessing (``upp/configs``, where UPP itself
resolves includes; a source or editable install has it, the PyPI wheel ships none).
Includes may be nested; a cycle (``a.yaml`` → ``b.yaml`` → ``a.yaml``) is an error.

Besides invalid YAML (reported with its line), the loader rejects what PyYAML silently
accepts: a key written twice in one mapping (keys brought in by a ``<<`` merge may be
overridden, that is what merge keys are for) and keys that are not scalars.

Resources are bounded before anything is built, so a hostile config is a one-line error in
milliseconds, never an out-of-memory: a config file is at most :data:`MAX_CONFIG_BYTES`, its
values nest at most :data:`MAX_DEPTH` deep, and with every alias (``*name``) expanded it holds
at most :data:`MAX_EXPANDED_NODES` values (a "billion laughs" chain of anchors is caught by
counting, not by expanding). Real configs are far below each: UPP's largest is 20 kB, 8 deep
and a few thousand values expanded.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import yaml

from upp_grid.errors import ConfigError

# PyYAML (YAML 1.1) reads `2.5e5` or `20e3` as strings; physicists write them as numbers.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_CONFIG_BYTES = 1 << 20  # per file, includes each counted on their own
MAX_DEPTH = 64  # nesting of mappings and lists
MAX_EXPANDED_NODES = 200_000  # values with every alias expanded, per file


class SourcedDict(dict):
    """A dict that knows where it and each of its keys came from."""

    file: Path | None = None
    line: int = 0
    lines: dict[Any, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines = {}


class SourcedList(list):
    """A list that knows where it and each of its items came from."""

    file: Path | None = None
    line: int = 0
    lines: list[int]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines = []


def _join(keypath: str, key: str) -> str:
    return f"{keypath}.{key}" if keypath else key


def _node_keypaths(root: yaml.Node, path: Path, prefix: str) -> dict[int, str]:
    """Key path (``a.b[2].c``) of every node, by ``id``; an aliased node keeps its first path.

    Also rejects keys written twice in one mapping and keys that are not scalars, which PyYAML
    would silently accept. Runs on the node graph, before ``<<`` merges are flattened.
    """
    paths: dict[int, str] = {}

    def visit(node: yaml.Node, keypath: str) -> None:
        if id(node) in paths:
            return
        paths[id(node)] = keypath
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE_TAG:
                    visit(value_node, keypath)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    where = f"{path}:{line}: {keypath}" if keypath else f"{path}:{line}"
                    raise ConfigError(
                        [f"{where}: a key must be a name or a number, not a {key_node.id}"]
                    )
                if key_node.value in first:
                    raise ConfigError(
                        [
                            f"{path}:{line}: {_join(keypath, key_node.value)}: "
                            f"duplicate key (first written at line "
                            f"{first[key_node.value]})"
                        ]
                    )
                first[key_node.value] = line
                visit(value_node, _join(keypath, key_node.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, f"{keypath}[{i}]")

    visit(root, prefix)
    return paths


def _check_size(root: yaml.Node, path: Path) -> None:
    """Reject a node graph that is too deep or too large once aliases are expanded.

    The expanded size of each node is computed once (memoised by ``id``), so a chain of
    anchors that would expand to 10^9 values costs as many steps as it has nodes.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in sizes and not done:
            continue
        if depth > MAX_DEPTH:
            raise ConfigError([f"{path}:{node.start_mark.line + 1}: values nested more than "
                               f"{MAX_DEPTH} deep: not a preprocessing config"])
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if done:
            total = 1 + sum(sizes[id(c)] for c in children)
            if total > MAX_EXPANDED_NODES:
                raise ConfigError([f"{path}:{node.start_mark.line + 1}: with its aliases "
                                   f"(*name) expanded the config holds more than "
                                   f"{MAX_EXPANDED_NODES:,} values: an anchor chain that "
                                   "multiplies (a YAML bomb?)"])
            sizes[id(node)] = total
            continue
        sizes[id(node)] = 0  # visiting; a cycle (not possible in YAML aliases) counts once
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def _make_loader(path: Path, stack: tuple[Path, ...], prefix: str) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        keypaths: dict[int, str]

        def construct_document(self, node: yaml.Node) -> Any:
            _check_size(node, path)
            self.keypaths = _node_keypaths(node, path, prefix)
            return super().construct_document(node)

        def where(self, node: yaml.Node) -> str:
            """``file:line: key.path`` of ``node``, the prefix of a one-line problem."""
            keypath = self.keypaths.get(id(node), "")
            at = f"{path}:{node.start_mark.line + 1}"
            return f"{at}: {keypath}" if keypath else at

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789"))

    def construct_map(loader: Loader, node: yaml.MappingNode):
        loader.flatten_mapping(node)
        data = SourcedDict()
        data.file, data.line = path, node.start_mark.line + 1
        yield data
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            data[key] = loader.construct_object(value_node, deep=True)
            data.lines[key] = key_node.start_mark.line + 1

    def construct_seq(loader: Loader, node: yaml.SequenceNode):
        data = SourcedList()
        data.file, data.line = path, node.start_mark.line + 1
        data.lines = [item.start_mark.line + 1 for item in node.value]
        yield data
        data.extend(loader.construct_object(item, deep=True) for item in node.value)

    def construct_include(loader: Loader, node: yaml.Node) -> Any:
        name = loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if not name:
            raise ConfigError(
                [
                    f"{loader.where(node)}: !include needs a file name, "
                    "e.g. !include includes/simple-split.yaml"
                ]
            )
        target = _find_include(path, str(name))
        if target is None:
            raise ConfigError(
                [
                    f"{loader.where(node)}: !include '{name}': file not found next "
                    f"to {path.name}, in any parent directory, on {INCLUDE_PATH_ENV} or in "
                    f"UPP's configs/ ({_upp_configs() or 'umami-preprocessing not installed'})"
                ]
            )
        if target in stack:
            cycle = " -> ".join(p.name for p in (*stack, target))
            raise ConfigError([f"{loader.where(node)}: !include cycle: {cycle}"])
        return load_yaml(target, (*stack, target), loader.keypaths.get(id(node), ""))

    Loader.add_constructor("tag:yaml.org,2002:map", construct_map)
    Loader.add_constructor("tag:yaml.org,2002:seq", construct_seq)
    Loader.add_constructor("!include", construct_include)
    return Loader


INCLUDE_PATH_ENV = "UPP_GRID_INCLUDE_PATH"


def _upp_configs() -> Path | None:
    """UPP's ``configs/`` directory (``upp/configs``), found without importing UPP."""
    try:
        spec = importlib.util.find_spec("upp")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / "configs").is_dir():
            return Path(root) / "configs"
    return None


def include_dirs(including: Path) -> list[Path]:
    """Where ``!include`` looks, in order (see the module docstring)."""
    folder = including.absolute().parent
    extra = [Path(d).expanduser() for d in os.environ.get(INCLUDE_PATH_ENV, "").split(os.pathsep)
             if d]
    upp = _upp_configs()
    return [folder, *folder.parents, *extra, *([upp] if upp else [])]


def _find_include(including: Path, name: str) -> Path | None:
    rel = Path(name).expanduser()
    dirs = [] if rel.is_absolute() else include_dirs(including)
    candidates = [d / rel for d in dirs] or [rel]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    return None


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    """One line for a syntax error: the problem, and where the construct it breaks began."""
    problem = err.problem or err.context or "syntax error"
    if "'\\t'" in problem:
        return f"{problem} (YAML does not allow tabs for indentation: use spaces)"
    if "undefined alias" in problem:
        return f"{problem} (an anchor &name must be defined above the first *name)"
    if tag := re.search(r"constructor for the tag '(!\w*)'", problem):
        return f"unknown tag '{tag[1]}' (the only tag upp-grid knows is !include)"
    context = err.context
    if context and err.context_mark and err.problem_mark:
        if err.context_mark.line != err.problem_mark.line:
            context = f"{context} started at line {err.context_mark.line + 1}"
        return f"{problem} ({context})"
    return problem


def load_yaml(path: Path | str, stack: tuple[Path, ...] | None = None, prefix: str = "") -> Any:
    """Load one YAML file (following includes) into Sourced containers.

    ``prefix`` is the key path at which the file is included (it prefixes key paths in errors).

    Raises
    ------
    ConfigError
        For a missing/unreadable file, invalid YAML (with its line), a duplicate key, or a
        missing/cyclic include.
    """
    path = Path(path)
    stack = stack or (path.resolve(),)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: config file is {size:,} bytes, more than the "
                               f"{MAX_CONFIG_BYTES:,} a config may have"])
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a config file"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{path}: cannot read config: {err}"]) from None
    try:
        return yaml.load(text, Loader=_make_loader(path, stack, prefix))  # a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError([f"{where}: invalid YAML: {_yaml_problem(err)}"]) from None
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: invalid YAML: {' '.join(str(err).split())}"]) from None
    except RecursionError:  # PyYAML's composer recurses per level, before _check_size
        raise ConfigError([f"{path}: values nested more than {MAX_DEPTH} deep: "
                           "not a preprocessing config"]) from None


def to_plain(obj: Any) -> Any:
    """Strip source info: plain dicts and lists (for dumping the resolved config)."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj
