"""YAML loading for configs: ``!include``, anchors, ``<<`` merge keys, and source positions.

Every mapping and sequence is loaded as a :class:`SourcedDict` / :class:`SourcedList` that
remembers the file and line of each entry, so validation errors can point at the exact place
(``configs/x.yaml:12: components[0].flavours[1]: ...``), even inside included files.

``!include PATH`` is resolved relative to the directory of the file that contains it. For
compatibility with UPP's configs (which include e.g. ``GN3V01/simple-split.yaml`` relative to a
shared configs directory), the parent directories of that file are tried next, nearest first.
Includes may be nested; a cycle (``a.yaml`` → ``b.yaml`` → ``a.yaml``) is an error.

Besides invalid YAML (reported with its line), the loader rejects what PyYAML silently
accepts: a key written twice in one mapping (keys brought in by a ``<<`` merge may be
overridden, that is what merge keys are for) and keys that are not scalars.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from upp_grid.errors import ConfigError

# PyYAML (YAML 1.1) reads `2.5e5` or `20e3` as strings; physicists write them as numbers.
_FLOAT_RE = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


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


def _make_loader(path: Path, stack: tuple[Path, ...], prefix: str) -> type[yaml.SafeLoader]:
    class Loader(yaml.SafeLoader):
        keypaths: dict[int, str]

        def construct_document(self, node: yaml.Node) -> Any:
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
                    f"to {path.name} or in any parent directory"
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


def _find_include(including: Path, name: str) -> Path | None:
    rel = Path(name).expanduser()
    if rel.is_absolute():
        candidates = [rel]
    else:
        folder = including.absolute().parent
        candidates = [d / rel for d in (folder, *folder.parents)]
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


def to_plain(obj: Any) -> Any:
    """Strip source info: plain dicts and lists (for dumping the resolved config)."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    return obj
