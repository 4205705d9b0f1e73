"""UPP-style YAML config → typed, frozen dataclasses.

The config language is UPP's (umami-preprocessing): sections ``variables``, ``global_cuts``,
``components``, ``global`` and ``reweighting``, plus any number of top-level anchor holders
(``ttbar: &ttbar {...}``). UPP's newer object-agnostic key names (``global_name``,
``num_global_objects``, ``classes``, ``equal_global_objects``) are accepted as aliases.

Paths resolve the way UPP resolves them:

* ``global.base_dir``: absolute, or relative to the current working directory. Unlike UPP it
  may be omitted, in which case it is the directory that contains the config file.
* ``ntuple_dir`` (default ``ntuples``), ``components_dir`` (default ``split-components``) and
  ``out_dir`` (default ``output``): absolute, or relative to ``base_dir``.

Where upp-grid reads a config differently from UPP:

* a count (``num_jets``, ``batch_size``, ...) may be written as a whole float, ``4e6``;
* a reweight variable with a single range may write it flat, ``pt: [20e3, 250e3, 50]``, as
  well as ``pt: [[20e3, 250e3, 50]]``. Anything else flat (``[0, 10]``) is an error, never
  read as bin edges;
* ``num_jets_val`` / ``num_jets_test`` default to ``num_jets // 10`` as in UPP, but to at least
  one jet (UPP would ask for 0 jets when ``num_jets < 10``); ``-1`` (all jets) stays ``-1``.

Every problem found is reported as one line ``file:line: key.path: what is wrong`` with a
"did you mean" where one fits; :func:`load_config` raises :class:`ConfigError` listing them
all, earliest first. A misspelt required key is one problem (``num_jet: unknown key (did you
mean 'num_jets'?)``), not two; a section that is not a mapping is reported once, without
follow-up problems about its content.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from ftag.cuts import OPERATORS, Cuts
from ftag.labels import Label

from upp_grid.lazy_ftag import libyaml_safe_load

with libyaml_safe_load():  # ftag.flavours parses its YAML at import time
    from ftag.flavours import Extended_Flavours, Flavours

from upp_grid.errors import ConfigError
from upp_grid.yamlload import SourcedDict, SourcedList, load_yaml, to_plain

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
SECTIONS = ("variables", "global_cuts", "components", "global", "reweighting")
# UPP sections upp-grid does not use; accepted so UPP configs load unchanged.
IGNORED_SECTIONS = ("resampling", "plotting", "transform", "umami", "auto_counts")
TARGETS = ("mean", "min", "max", "uniform")
PRECISIONS = ("half", "full")
COMPRESSIONS = ("gzip", "lzf", "none")
DEFAULT_FULL_PRECISION_VARS = ("pt", "pt_btagJes", "energy", "mass")

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
}
# UPP global options that have no effect here (accepted, logged at debug level)
UPP_ONLY_GLOBAL = (
    "num_jets_estimate_available",
    "num_jets_estimate_hist",
    "num_jets_estimate_norm",
    "num_jets_estimate_plotting",
    "num_global_objects_estimate_available",
    "num_global_objects_estimate_hist",
    "num_global_objects_estimate_norm",
    "num_global_objects_estimate_plotting",
    "merge_test_samples",
    "vds_dir",
    "skip_checks",
    "skip_config_copy",
    "out_fname",
)


# --------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class VariableGroup:
    """Variables kept for one HDF5 group (``jets``, ``tracks``, ...)."""

    name: str
    inputs: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def variables(self) -> tuple[str, ...]:
        """Inputs then labels, without duplicates, in config order."""
        return tuple(dict.fromkeys(self.inputs + self.labels))


@dataclass(frozen=True)
class Region:
    """A named kinematic region (cuts on e.g. ``pt`` in MeV and ``eta``)."""

    name: str
    cuts: Cuts


@dataclass(frozen=True)
class Sample:
    """A physics sample. Each pattern is one grid container (a directory of files)."""

    name: str
    patterns: tuple[str, ...]
    equal_jets: bool = False


@dataclass(frozen=True)
class Component:
    """Region x sample x flavour, with a jet cap per split (-1 = all jets)."""

    region: Region
    sample: Sample
    flavour: Label
    num_jets: int
    num_jets_val: int
    num_jets_test: int

    @property
    def name(self) -> str:
        """UPP's component name ``<region>_<sample>_<flavour>``."""
        return f"{self.region.name}_{self.sample.name}_{self.flavour.name}"

    def cap(self, split: str) -> int:
        """Jet cap for ``split`` (-1 means all)."""
        return {"train": self.num_jets, "val": self.num_jets_val, "test": self.num_jets_test}[split]


@dataclass(frozen=True)
class Reweight:
    """One reweighting: per-class histograms of ``group`` over ``reweight_vars``."""

    group: str
    reweight_vars: tuple[str, ...]
    bins: Mapping[str, tuple[tuple[float, float, int], ...]]
    class_var: str
    class_target: str | int | tuple[int, ...]
    add_overflow: bool = True

    @property
    def name(self) -> str:
        """UPP's weight field name, e.g. ``weight_jets_pt_eta_target_mean_flavour_label``."""
        if isinstance(self.class_target, tuple):
            target = "_".join(map(str, self.class_target))
        else:
            target = f"{self.class_target}_{self.class_var}"
        return f"weight_{self.group}_{'_'.join(self.reweight_vars)}_target_{target}"

    def edges(self, var: str) -> np.ndarray:
        """Bin edges of ``var`` (float64), with ±inf overflow edges if ``add_overflow``."""
        parts = [np.linspace(a, b, n + 1) for a, b, n in self.bins[var]]
        edges = np.concatenate([parts[0], *(p[1:] for p in parts[1:])])
        if self.add_overflow:
            edges = np.concatenate([[-np.inf], edges, [np.inf]])
        return edges


@dataclass(frozen=True)
class Reweighting:
    """The ``reweighting`` section."""

    reweights: tuple[Reweight, ...]
    num_jets_estimate: int
    merge_num_proc: int = 1


@dataclass(frozen=True)
class GlobalConfig:
    """The ``global`` section, with paths resolved (see module docstring)."""

    base_dir: Path
    ntuple_dir: Path
    components_dir: Path
    out_dir: Path
    jets_name: str = "jets"
    batch_size: int = 100_000
    num_jets_estimate: int = 1_000_000
    num_jets_per_output_file: int | None = None
    precision: str = "half"
    full_precision_vars: tuple[str, ...] = DEFAULT_FULL_PRECISION_VARS
    compression: str = "gzip"
    seed: int = 42
    class_category: str = "standard"


@dataclass(frozen=True)
class Config:
    """A validated preprocessing config."""

    path: Path
    raw: Mapping[str, Any]
    variables: Mapping[str, VariableGroup]
    global_cuts: Mapping[str, Cuts]
    components: tuple[Component, ...]
    global_: GlobalConfig
    reweighting: Reweighting | None

    @property
    def flavours(self) -> tuple[Label, ...]:
        """Ordered flavours; a jet's ``flavour_label`` is its flavour's index here."""
        return tuple({c.flavour.name: c.flavour for c in self.components}.values())

    @property
    def flavour_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.flavours)

    @property
    def samples(self) -> tuple[Sample, ...]:
        """Samples in order of first use."""
        return tuple({c.sample.name: c.sample for c in self.components}.values())

    @property
    def regions(self) -> tuple[Region, ...]:
        return tuple({c.region.name: c.region for c in self.components}.values())

    @property
    def jets_name(self) -> str:
        return self.global_.jets_name

    @property
    def config_hash(self) -> str:
        """SHA-256 of the resolved config (includes inlined), for manifests and attrs."""
        text = json.dumps(to_plain(dict(self.raw)), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def split_cuts(self, split: str) -> Cuts:
        return self.global_cuts[split]

    def resolved_json(self) -> str:
        """The resolved config as JSON (stored in output attrs)."""
        return json.dumps(to_plain(dict(self.raw)), default=str)

    def __reduce__(self) -> tuple:
        # picklable for worker processes: rebuilt from the resolved (already valid) data
        return (parse_config, (dict(self.raw), self.path))


# --------------------------------------------------------------------------- validation
class _Problems:
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
        file, line = _where(parent, key, self.path)
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


def _where(parent: Any, key: Any, default: Path) -> tuple[Path, int]:
    """File and line of ``parent[key]`` (of ``parent`` itself if ``key`` is None)."""
    file = getattr(parent, "file", None) or default
    line = getattr(parent, "line", 0)
    if isinstance(parent, SourcedDict):
        line = parent.lines.get(key, line)
    elif isinstance(parent, SourcedList) and isinstance(key, int) and key < len(parent.lines):
        line = parent.lines[key]
    return file, line


def _closest(word: Any, options: Any, cutoff: float = 0.6) -> str | None:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=cutoff)
    return match[0] if match else None


def _suggest(word: Any, options: Any, cutoff: float = 0.6) -> str:
    match = _closest(word, options, cutoff)
    return f" (did you mean '{match}'?)" if match else ""


def _typename(value: Any) -> str:
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


def _describe(value: Any) -> str:
    """``string 'all'``, ``null``, ``list [0, 10]``: a value as a user wrote it, kept short."""
    if value is None:
        return "null"
    text = repr(to_plain(value))
    return f"{_typename(value)} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is a whole number (``4e6`` is written for 4 million)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _num(value: float) -> int | float:
    """``250000`` rather than ``250000.0`` in messages (YAML reads ``250e3`` as a float)."""
    return int(value) if float(value).is_integer() else value


def _show(value: Any) -> str:
    """``repr`` of a value as written: plain containers, ``250000`` for ``250e3``."""
    if isinstance(value, list):
        return f"[{', '.join(_show(v) for v in value)}]"
    if isinstance(value, float):
        return repr(_num(value)) if value == value and abs(value) != float("inf") else repr(value)
    return repr(to_plain(value))


def _numeric_str(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


class _Reader:
    """Typed access to one mapping of the config, recording problems instead of raising."""

    def __init__(self, data: Any, keypath: str, problems: _Problems, parent: Any, key: Any) -> None:
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
                f"expected a mapping, got {_describe(data)}{_hint(data, problems)}",
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
                    self.data, key, self.sub(key), f"key must be a name, got {_describe(key)}"
                )
                continue
            match = _closest(key, allowed)
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
        if int in kinds and float not in kinds and _as_int(value) is not None:
            value = _as_int(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            self.p.add(
                self.data, key, self.sub(key), f"expected {want}, got {_describe(value)}{hint}"
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
                    f"expected a non-empty string, got {_describe(item)}",
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


def _hint(value: Any, p: _Problems) -> str:
    """Why a mapping may be missing: an anchor name written without ``*``, or bad indentation."""
    if value is None:
        return " (is it empty, or is its content not indented under it?)"
    if isinstance(value, str) and isinstance(p.root.get(value), dict):
        return f" (to use the block '{value}' defined at the top, write *{value})"
    return ""


def _normalise_aliases(data: Any, p: _Problems, keypath: str = "") -> Any:
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
            out[new] = _normalise_aliases(value, p, here)
            out.lines[new] = lines.get(key, out.line)
        return out
    if isinstance(data, list):
        out_list = SourcedList(
            _normalise_aliases(v, p, f"{keypath}[{i}]") for i, v in enumerate(data)
        )
        out_list.file, out_list.line = getattr(data, "file", None), getattr(data, "line", 0)
        out_list.lines = list(getattr(data, "lines", []))
        return out_list
    return data


# --------------------------------------------------------------------------- cuts
_OPERATOR_FIXES = {
    "=": "==",
    "=<": "<=",
    "=>": ">=",
    "=!": "!=",
    "<>": "!=",
    "≤": "<=",
    "≥": ">=",
    "≠": "!=",
    "!in": "notin",
    "not_in": "notin",
}


def _suggest_operator(op: Any) -> str:
    """A did-you-mean for a cut operator: ``=>`` → ``>=``, ``%10=<`` → ``%10<=``, ``=`` → ``==``."""
    text = str(op).replace(" ", "").lower()
    match = re.fullmatch(r"(%\d+)?(.*)", text)
    mod, rest = (match[1] or "", match[2]) if match else ("", text)
    for cand in (text, mod + _OPERATOR_FIXES.get(rest, rest), mod + rest[::-1]):
        if cand in OPERATORS:
            return f" (did you mean '{cand}'?)"
    return _suggest(op, [o for o in OPERATORS if not o.startswith("%") or o[1:3] == "10"])


def _parse_cuts(value: Any, keypath: str, p: _Problems, parent: Any, key: Any) -> Cuts | None:
    """UPP's cut list ``[[var, op, value], ...]`` (or ``"var op value"`` strings) → Cuts."""
    if value is None:
        return Cuts.empty()
    if not isinstance(value, list):
        p.add(
            parent,
            key,
            keypath,
            f"expected a list of cuts [variable, operator, value], got {_describe(value)}",
        )
        return None
    triples = []
    for i, cut in enumerate(value):
        here = f"{keypath}[{i}]"
        if isinstance(cut, str):
            cut = cut.split()
        if not isinstance(cut, list) or len(cut) != 3 or not isinstance(cut[0], str):
            p.add(value, i, here, f"a cut is [variable, operator, value], got {to_plain(cut)!r}")
            continue
        var, op, val = cut
        if op not in OPERATORS:
            swapped = any(isinstance(x, str) and x in OPERATORS for x in (var, val))
            hint = " (a cut is [variable, operator, value])" if swapped else _suggest_operator(op)
            p.add(value, i, here, f"unknown cut operator '{op}'{hint}")
            continue
        if op in ("in", "notin"):
            if not isinstance(val, list) or not all(_is_number(v) for v in val):
                p.add(
                    value,
                    i,
                    here,
                    f"operator '{op}' needs a list of numbers, got {to_plain(val)!r}",
                )
                continue
            val = tuple(val)
        elif not _is_number(val) and not (isinstance(val, str) and _numeric_str(val)):
            p.add(value, i, here, f"cut value must be a number, got {to_plain(val)!r}")
            continue
        triples.append((var, op, val))
    return Cuts.from_list(triples) if len(triples) == len(value) else None


# --------------------------------------------------------------------------- sections
def _parse_variables(r: _Reader, p: _Problems, jets_name: str) -> dict[str, VariableGroup]:
    groups = {}
    for name, spec in r.data.items():
        if not isinstance(name, str):
            p.add(r.data, name, r.sub(name), f"a group name must be a name, got {_describe(name)}")
            continue
        g = _Reader(spec, r.sub(name), p, r.data, name)
        g.check_keys(("inputs", "labels"), ignored=("selection",))
        inputs = g.str_list("inputs")
        labels = g.str_list("labels")
        if g.ok and not inputs and not labels and not ({"inputs", "labels"} & set(g.data)):
            p.add(r.data, name, r.sub(name), "needs inputs or labels (a list of variables)")
        groups[name] = VariableGroup(name, inputs, labels)
    if r.ok and jets_name not in groups:
        p.add(
            r.data,
            None,
            "variables",
            f"no '{jets_name}' group (the jets dataset, "
            f"global.jets_name){_suggest(jets_name, groups)}",
        )
    return groups


def _parse_global_cuts(r: _Reader, p: _Problems) -> dict[str, Cuts]:
    r.check_keys((*SPLITS, "common"))
    common = _parse_cuts(r.data.get("common"), r.sub("common"), p, r.data, "common")
    out = {}
    for split in SPLITS:
        if split not in r.data:
            if r.ok and split not in r.typos:
                p.add(
                    r.data,
                    None,
                    r.sub(split),
                    "missing required key (the cuts that select "
                    f'the {split} split, e.g. [[eventNumber, "%10==", 9]])',
                )
            continue
        cuts = _parse_cuts(r.data[split], r.sub(split), p, r.data, split)
        if cuts is not None and common is not None:
            out[split] = common + cuts
    return out


def _parse_region(data: Any, keypath: str, p: _Problems, parent: Any, key: Any) -> Region | None:
    r = _Reader(data, keypath, p, parent, key)
    r.check_keys(("name", "cuts"))
    name = r.get("name", str, required=r.ok)
    cuts = _parse_cuts(r.data.get("cuts"), r.sub("cuts"), p, r.data, "cuts")
    if name is None or cuts is None:
        return None
    return Region(name, cuts)


def _parse_sample(data: Any, keypath: str, p: _Problems, parent: Any, key: Any) -> Sample | None:
    r = _Reader(data, keypath, p, parent, key)
    r.check_keys(
        ("name", "pattern", "equal_jets"), ignored=("vds_dir", "skip_checks", "sample_weight")
    )
    name = r.get("name", str, required=r.ok)
    patterns = r.str_list("pattern", required=r.ok, allow_str=True)
    equal = r.get("equal_jets", bool, default=False)
    if r.data.get("pattern") in ([], ""):
        p.add(r.data, "pattern", r.sub("pattern"), "needs at least one file pattern")
    if name is None or not patterns:
        return None
    return Sample(name, patterns, equal)


_NUM_JETS_HINT = " (-1 means all jets)"


def _check_num_jets(value: int) -> str | None:
    if value == -1 or value > 0:
        return None
    return f"must be -1 (all jets) or a positive number of jets, got {value}"


def _flavour(name: str, labels: Any) -> Label | None:
    try:
        return labels[name]
    except (KeyError, TypeError):
        return None


def _unknown_flavour(name: str, labels: Any) -> str:
    names = [lab.name for lab in labels]
    other = Flavours if labels is Extended_Flavours else Extended_Flavours
    if _flavour(name, other) is not None:
        category = "standard" if other is Flavours else "extended"
        return f"unknown flavour '{name}' (it is defined for global.class_category: {category})"
    return f"unknown flavour '{name}'{_suggest(name, names)}"


def _parse_component(
    comp: Any, kp: str, p: _Problems, parent: Any, i: int, labels: Any
) -> list[Component]:
    r = _Reader(comp, kp, p, parent, i)
    if not r.ok:
        return []
    r.check_keys(("region", "sample", "flavours", "num_jets", "num_jets_val", "num_jets_test"))
    for req in ("region", "sample", "flavours", "num_jets"):
        r.get(req, object, required=True)
    region = (
        _parse_region(r.data["region"], r.sub("region"), p, r.data, "region")
        if "region" in r.data
        else None
    )
    sample = (
        _parse_sample(r.data["sample"], r.sub("sample"), p, r.data, "sample")
        if "sample" in r.data
        else None
    )
    nums = [
        r.get(key, int, check=_check_num_jets, hint=_NUM_JETS_HINT)
        for key in ("num_jets", "num_jets_val", "num_jets_test")
    ]
    flavours = r.str_list("flavours")
    resolved = []
    for j, name in enumerate(flavours):
        label = _flavour(name, labels)
        if label is None:
            p.add(
                r.data["flavours"], j, f"{r.sub('flavours')}[{j}]", _unknown_flavour(name, labels)
            )
        resolved.append(label)
    if "flavours" in r.data and isinstance(r.data["flavours"], list) and not r.data["flavours"]:
        p.add(r.data, "flavours", r.sub("flavours"), "needs at least one flavour, e.g. [bjets]")
    num, num_val, num_test = nums
    if region is None or sample is None or num is None or None in resolved or not resolved:
        return []
    # UPP's default cap for val/test is num_jets // 10 (-1, all jets, stays -1)
    default = num if num < 0 else max(num // 10, 1)
    return [
        Component(
            region,
            sample,
            label,
            num,
            default if num_val is None else num_val,
            default if num_test is None else num_test,
        )
        for label in resolved
    ]


def _parse_components(data: Any, p: _Problems, root: Any, labels: Any) -> tuple[Component, ...]:
    if not isinstance(data, list):
        p.add(
            root,
            "components",
            "components",
            "expected a list of components (each item "
            f"starting with '- region:'), got {_describe(data)}{_hint(data, p)}",
        )
        return ()
    if not data:
        p.add(root, "components", "components", "needs at least one component")
    out: list[Component] = []
    seen: dict[str, int] = {}
    for i, comp in enumerate(data):
        kp = f"components[{i}]"
        for c in _parse_component(comp, kp, p, data, i, labels):
            if c.name in seen:
                also = "" if seen[c.name] == i else f" (also components[{seen[c.name]}])"
                p.add(
                    data,
                    i,
                    kp,
                    f"component '{c.name}' (region x sample x flavour) is defined twice{also}",
                )
                continue
            seen[c.name] = i
            out.append(c)
    return tuple(out)


def _positive(value: int) -> str | None:
    return None if value > 0 else f"must be a positive integer, got {value}"


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in options:
            return None
        return f"must be one of {', '.join(options)}, got '{value}'{_suggest(value, options)}"

    return check


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value is None else check(value)


GLOBAL_KEYS = (
    "base_dir",
    "ntuple_dir",
    "components_dir",
    "out_dir",
    "jets_name",
    "batch_size",
    "num_jets_estimate",
    "num_jets_per_output_file",
    "precision",
    "full_precision_vars",
    "compression",
    "seed",
    "class_category",
)


def _parse_global(r: _Reader, config_path: Path) -> GlobalConfig:
    r.check_keys(GLOBAL_KEYS, ignored=UPP_ONLY_GLOBAL)
    for key in UPP_ONLY_GLOBAL:
        if key in r.data:
            log.debug("global.%s is a UPP option with no effect in upp-grid", key)
    base = r.get("base_dir", str)
    base_dir = Path(base).expanduser().absolute() if base else config_path.parent.absolute()

    def path(key: str, default: str) -> Path:
        value = Path(r.get(key, str, default=default) or default).expanduser()
        return value if value.is_absolute() else base_dir / value

    compression = r.get(
        "compression", (str, type(None)), default="gzip", check=_optional(_one_of(COMPRESSIONS))
    )
    return GlobalConfig(
        base_dir=base_dir,
        ntuple_dir=path("ntuple_dir", "ntuples"),
        components_dir=path("components_dir", "split-components"),
        out_dir=path("out_dir", "output"),
        jets_name=r.get("jets_name", str, default="jets"),
        batch_size=r.get("batch_size", int, default=100_000, check=_positive),
        num_jets_estimate=r.get("num_jets_estimate", int, default=1_000_000, check=_positive),
        num_jets_per_output_file=r.get(
            "num_jets_per_output_file", (int, type(None)), check=_optional(_positive)
        ),
        precision=r.get("precision", str, default="half", check=_one_of(PRECISIONS)),
        full_precision_vars=r.str_list("full_precision_vars") or DEFAULT_FULL_PRECISION_VARS,
        compression=compression or "none",
        seed=r.get("seed", int, default=42),
        class_category=r.get(
            "class_category", str, default="standard", check=_one_of(("standard", "extended"))
        ),
    )


# --------------------------------------------------------------------------- reweighting
def _parse_bins(
    value: Any, keypath: str, p: _Problems, parent: Any, key: Any
) -> tuple[tuple[float, float, int], ...] | None:
    """``[[start, stop, n], ...]`` sub-ranges that must join up; a single range may be flat."""
    example = "e.g. [[20e3, 250e3, 50], [250e3, 1e6, 50]]"
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        if len(value) != 3:
            missing = " (the number of bins n is missing)" if len(value) == 2 else ""
            p.add(
                parent,
                key,
                keypath,
                f"bins are a list of [start, stop, n] ranges, {example};"
                f" got {_show(value)}{missing}",
            )
            return None
        single = SourcedList([value])  # a single [start, stop, n] range, written flat
        single.file, single.line = getattr(value, "file", None), getattr(value, "line", 0)
        single.lines = [single.line]
        value = single
    if not isinstance(value, list) or not value:
        p.add(
            parent,
            key,
            keypath,
            f"bins are a list of [start, stop, n] ranges, {example}; got {_describe(value)}",
        )
        return None
    ranges: list[tuple[float, float, int]] = []
    for i, rng in enumerate(value):
        here = f"{keypath}[{i}]"
        if not (isinstance(rng, list) and len(rng) == 3 and all(_is_number(v) for v in rng)):
            missing = (
                " (the number of bins n is missing)"
                if isinstance(rng, list) and len(rng) == 2
                else ""
            )
            p.add(value, i, here, f"a bin range is [start, stop, n], got {_show(rng)}{missing}")
            return None
        start, stop, n = rng
        if _as_int(n) is None:
            p.add(value, i, here, f"the number of bins n must be a whole number, got {n!r}")
            return None
        if n <= 0:
            p.add(value, i, here, f"the number of bins n must be > 0, got {_as_int(n)}")
            return None
        if start >= stop:
            p.add(
                value, i, here, f"start must be < stop, got start={_num(start)}, stop={_num(stop)}"
            )
            return None
        if ranges and start != ranges[-1][1]:
            prev = ranges[-1][1]
            what = (
                "overlaps the previous range"
                if start < prev
                else "leaves a gap after the previous range"
            )
            p.add(
                value,
                i,
                here,
                f"{what}: it starts at {_num(start)} but the previous range stops at "
                f"{_num(prev)} (each range must start where the previous one stops)",
            )
            return None
        ranges.append((float(start), float(stop), int(n)))
    return tuple(ranges)


def _check_target(value: Any) -> str | None:
    if isinstance(value, str):
        if value in TARGETS:
            return None
        suggestion = _suggest(value, TARGETS) or (
            " (to target one class give its label number, e.g. 0)"
            if _flavour(value, Flavours)
            else ""
        )
        return (
            f"must be one of {', '.join(TARGETS)}, a class label (integer) or a list of "
            f"class labels, got '{value}'{suggestion}"
        )
    if not isinstance(value, list):
        ok = _as_int(value) is not None and value >= 0
        return None if ok else f"a class label is an integer >= 0, got {_show(value)}"
    if not value or not all(_as_int(v) is not None and v >= 0 for v in value):
        return (
            "a list target must be a non-empty list of class labels (integers >= 0), "
            f"got {to_plain(value)!r}"
        )
    return None


RW_KEYS = ("group", "reweight_vars", "bins", "class_var", "class_target", "add_overflow")


def _parse_rw_bins(
    rw: _Reader, rw_vars: tuple[str, ...], p: _Problems
) -> dict[str, tuple[tuple[float, float, int], ...]]:
    """Bins of each reweight variable; a misspelt variable is reported once, not twice."""
    bins_raw = rw.get("bins", dict, default=None, required=True)
    if bins_raw is None:
        return {}
    written = rw.data.get("reweight_vars")
    if not (isinstance(written, list) and len(written) == len(rw_vars)):
        rw_vars = tuple(bins_raw)  # reweight_vars is broken (reported): just check the bins
    extra = [k for k in bins_raw if k not in rw_vars]
    missing = [v for v in rw_vars if v not in bins_raw]
    bins = {}
    for var in extra:
        match = _closest(var, missing)
        if match:
            missing.remove(match)
        p.add(
            bins_raw,
            var,
            rw.sub(f"bins.{var}"),
            f"bins for '{var}', which is not in "
            f"reweight_vars{_suggest(var, [match] if match else rw_vars)}",
        )
    for var in missing:
        p.add(bins_raw, None, rw.sub(f"bins.{var}"), f"reweight variable '{var}' has no bins")
    for var in rw_vars:
        if var in bins_raw:
            parsed = _parse_bins(bins_raw[var], rw.sub(f"bins.{var}"), p, bins_raw, var)
            if parsed is not None:
                bins[var] = parsed
    return bins


def _parse_reweight(
    item: Any,
    kp: str,
    p: _Problems,
    items: Any,
    i: int,
    groups: Mapping[str, VariableGroup],
    num_classes: int,
) -> Reweight | None:
    rw = _Reader(item, kp, p, items, i)
    if not rw.ok:
        return None
    rw.check_keys(RW_KEYS)
    group = rw.get("group", str, required=True)
    if group is not None and groups and group not in groups:
        p.add(
            rw.data,
            "group",
            rw.sub("group"),
            f"group '{group}' is not in variables{_suggest(group, groups)}",
        )
    rw_vars = rw.str_list("reweight_vars", required=True)
    if isinstance(rw.data.get("reweight_vars"), list) and not rw.data["reweight_vars"]:
        p.add(rw.data, "reweight_vars", rw.sub("reweight_vars"), "needs at least one variable")
    bins = _parse_rw_bins(rw, rw_vars, p)
    class_var = rw.get("class_var", str, required=True)
    target = rw.get("class_target", (str, int, float, list), required=True, check=_check_target)
    if isinstance(target, list | int | float) and class_var == "flavour_label" and num_classes:
        bad = [t for t in (target if isinstance(target, list) else [target]) if t >= num_classes]
        if bad:
            p.add(
                rw.data,
                "class_target",
                rw.sub("class_target"),
                f"class label {bad[0]} does not exist: flavour_label runs from 0 to "
                f"{num_classes - 1} (the flavours in order of the components)",
            )
            target = None
    overflow = rw.get("add_overflow", bool, default=True)
    if None in (group, class_var, target) or not rw_vars or set(bins) != set(rw_vars):
        return None
    if isinstance(target, list):
        target = tuple(int(t) for t in target)
    elif not isinstance(target, str):
        target = int(target)
    return Reweight(group, rw_vars, MappingProxyType(bins), class_var, target, overflow)


def _parse_reweighting(
    r: _Reader,
    p: _Problems,
    groups: Mapping[str, VariableGroup],
    default_estimate: int,
    num_classes: int,
) -> Reweighting | None:
    r.check_keys(("reweights", "num_jets_estimate", "merge_num_proc"))
    estimate = r.get("num_jets_estimate", int, default=default_estimate, check=_positive)
    nproc = r.get("merge_num_proc", int, default=1, check=_positive)
    items = r.get("reweights", list, default=None, required=r.ok)
    if items is not None and not items:
        p.add(
            r.data,
            "reweights",
            r.sub("reweights"),
            "needs at least one reweight (or remove the reweighting section)",
        )
    out: list[Reweight] = []
    first: dict[str, int] = {}
    for i, item in enumerate(items or []):
        kp = r.sub(f"reweights[{i}]")
        parsed = _parse_reweight(item, kp, p, items, i, groups, num_classes)
        if parsed is None:
            continue
        if parsed.name in first:
            p.add(
                items,
                i,
                kp,
                f"duplicate reweight: reweights[{first[parsed.name]}] already "
                f"produces '{parsed.name}'",
            )
            continue
        first[parsed.name] = i
        out.append(parsed)
    return Reweighting(tuple(out), estimate, nproc)


# --------------------------------------------------------------------------- the config
# Keys of a section written at the top level: usually an indentation slip.
_MISPLACED = {
    **dict.fromkeys(GLOBAL_KEYS, "global"),
    **dict.fromkeys(SPLITS, "global_cuts"),
    "reweights": "reweighting",
    "merge_num_proc": "reweighting",
}


def _check_top_level(data: Mapping[Any, Any], p: _Problems) -> set[str]:
    """Report misspelt and misplaced top-level keys; return the sections found misspelt.

    Other top-level keys are accepted: they hold anchors (``ttbar: &ttbar {...}``).
    """
    typos = set()
    for key in data:
        if not isinstance(key, str):
            p.add(data, key, str(key), f"a section name must be a name, got {_describe(key)}")
        elif key in SECTIONS or key in IGNORED_SECTIONS:
            continue
        elif key in _MISPLACED:
            owner = _MISPLACED[key]
            p.add(
                data,
                key,
                key,
                f"'{key}' belongs in the '{owner}' section (indent it under '{owner}:')",
            )
        elif match := _closest(key, SECTIONS, cutoff=0.75):
            p.add(data, key, key, f"unknown section (did you mean '{match}'?)")
            typos.add(match)
    for key in IGNORED_SECTIONS:
        if key in data:
            log.warning(
                "%s: section '%s' is UPP-only and ignored (upp-grid reweights)", p.path, key
            )
    return typos


def parse_config(data: Any, path: Path | str) -> Config:
    """Validate already-loaded YAML data (from :func:`load_yaml`) into a :class:`Config`.

    Raises
    ------
    ConfigError
        Listing every problem as ``file:line: key.path: what is wrong``, earliest first.
    """
    path = Path(path)
    if data is None:
        raise ConfigError([f"{path}: the config is empty"])
    if not isinstance(data, dict):
        file, line = _where(data, None, path)
        raise ConfigError(
            [
                f"{file}:{line or 1}: the config must be a mapping of sections "
                f"({', '.join(SECTIONS)}), got {_describe(data)}"
            ]
        )
    p = _Problems(path, data)
    data = _normalise_aliases(data, p)
    typos = _check_top_level(data, p)

    def section(name: str, required: bool = True) -> _Reader:
        if name not in data and required and name not in typos:
            p.add(data, None, name, "missing required section")
        reader = _Reader(data.get(name, SourcedDict()), name, p, data, name)
        reader.ok = reader.ok and name in data
        return reader

    glob = _parse_global(section("global"), path)
    labels = Extended_Flavours if glob.class_category == "extended" else Flavours
    variables = _parse_variables(section("variables"), p, glob.jets_name)
    cuts = _parse_global_cuts(section("global_cuts"), p)
    components: tuple[Component, ...] = ()
    if "components" in data:
        components = _parse_components(data["components"], p, data, labels)
    elif "components" not in typos:
        p.add(data, None, "components", "missing required section")
    reweighting = None
    if "reweighting" in data:
        num_classes = len({c.flavour.name for c in components})
        reweighting = _parse_reweighting(
            section("reweighting"), p, variables, glob.num_jets_estimate, num_classes
        )
    if p.found:
        raise ConfigError(p.lines())
    return Config(
        path=path,
        raw=MappingProxyType(to_plain(data)),
        variables=MappingProxyType(variables),
        global_cuts=MappingProxyType(cuts),
        components=components,
        global_=glob,
        reweighting=reweighting,
    )


def load_config(path: Path | str) -> Config:
    """Load, include-resolve and validate a config file.

    Raises
    ------
    ConfigError
        For a missing file, invalid YAML or a bad include (one line), or listing every
        validation problem as ``file:line: key.path: what is wrong``.
    """
    path = Path(path)
    return parse_config(load_yaml(path), path)
