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

Every problem found is reported as one line ``file:line: key.path: what is wrong`` with a
"did you mean" where one fits; :func:`load_config` raises :class:`ConfigError` listing them all.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from ftag import Cuts
from ftag.cuts import OPERATORS
from ftag.flavours import Extended_Flavours, Flavours
from ftag.labels import Label

from upp_grid.errors import ConfigError
from upp_grid.yamlload import SourcedDict, SourcedList, load_yaml, to_plain

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
SECTIONS = ("variables", "global_cuts", "components", "global", "reweighting")
# UPP sections upp-grid does not use; accepted so UPP configs load unchanged.
IGNORED_SECTIONS = ("resampling", "plotting", "transform", "umami")
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
    """Region × sample × flavour, with a jet cap per split (-1 = all jets)."""

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
        return {"train": self.num_jets, "val": self.num_jets_val, "test": self.num_jets_test}[
            split
        ]


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
        text = json.dumps(to_plain(self.raw), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def split_cuts(self, split: str) -> Cuts:
        return self.global_cuts[split]

    def resolved_json(self) -> str:
        """The resolved config as JSON (stored in output attrs)."""
        return json.dumps(to_plain(self.raw), default=str)

    def __reduce__(self) -> tuple:
        # picklable for worker processes: rebuilt from the resolved (already valid) data
        return (parse_config, (dict(self.raw), self.path))


# --------------------------------------------------------------------------- validation
class _Problems:
    """Collects one-line problems with file/line and key path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, parent: Any, key: Any, keypath: str, msg: str) -> None:
        self.items.append(f"{_where(parent, key, self.path)}: {keypath}: {msg}")


def _where(parent: Any, key: Any, default: Path) -> str:
    file = getattr(parent, "file", default)
    line = None
    if isinstance(parent, SourcedDict):
        line = parent.lines.get(key, parent.line)
    elif isinstance(parent, SourcedList):
        line = parent.lines[key] if isinstance(key, int) and key < len(parent.lines) else None
        line = line or parent.line
    return f"{file}:{line}" if line else str(file)


def _suggest(word: str, options: Any) -> str:
    match = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _typename(value: Any) -> str:
    names = {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer"}
    for typ, name in names.items():
        if isinstance(value, typ):
            return name
    return "null" if value is None else type(value).__name__


class _Reader:
    """Typed access to one mapping of the config, recording problems instead of raising."""

    def __init__(self, data: Any, keypath: str, problems: _Problems, parent: Any = None,
                 key: Any = None) -> None:
        self.keypath = keypath
        self.p = problems
        self.ok = isinstance(data, dict)
        self.data = data if self.ok else {}
        if not self.ok:
            where_parent = parent if parent is not None else data
            self.p.add(where_parent, key, keypath,
                       f"expected a mapping, got {_typename(data)}")

    def sub(self, key: str) -> str:
        return f"{self.keypath}.{key}" if self.keypath else key

    def check_keys(self, allowed: tuple[str, ...], ignored: tuple[str, ...] = ()) -> None:
        for key in self.data:
            if key in allowed or key in ignored:
                continue
            self.p.add(self.data, key, self.sub(str(key)),
                       f"unknown key{_suggest(key, allowed)}; allowed: {', '.join(allowed)}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None,
            required: bool = False, check: Callable[[Any], str | None] | None = None) -> Any:
        if key not in self.data:
            if required and self.ok:
                self.p.add(self.data, None, self.sub(key), "missing required key")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        bad_bool = isinstance(value, bool) and bool not in kinds
        if not isinstance(value, kinds) or bad_bool:
            want = " or ".join(_typename(k()) if k is not type(None) else "null" for k in kinds)
            self.p.add(self.data, key, self.sub(key),
                       f"expected {want}, got {_typename(value)} {value!r}")
            return default
        if check is not None and (msg := check(value)):
            self.p.add(self.data, key, self.sub(key), msg)
            return default
        return value

    def str_list(self, key: str, required: bool = False, allow_str: bool = False) -> tuple:
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
                self.p.add(value, i, f"{self.sub(key)}[{i}]",
                           f"expected a non-empty string, got {_typename(item)} {item!r}")
        return tuple(out)


def _normalise_aliases(data: Any) -> Any:
    """Rename UPP's object-agnostic keys to upp-grid's jet names, keeping source info."""
    if isinstance(data, SourcedDict):
        out = SourcedDict()
        out.file, out.line, out.lines = data.file, data.line, {}
        for key, value in data.items():
            new = ALIASES.get(key, key) if isinstance(key, str) else key
            out[new] = _normalise_aliases(value)
            out.lines[new] = data.lines.get(key, data.line)
        return out
    if isinstance(data, SourcedList):
        out_list = SourcedList(_normalise_aliases(v) for v in data)
        out_list.file, out_list.line, out_list.lines = data.file, data.line, data.lines
        return out_list
    return data


def _parse_cuts(value: Any, keypath: str, p: _Problems, parent: Any, key: Any) -> Cuts | None:
    if value is None:
        return Cuts.empty()
    if not isinstance(value, list):
        p.add(parent, key, keypath, f"expected a list of cuts, got {_typename(value)}")
        return None
    triples = []
    ok = True
    for i, cut in enumerate(value):
        here = f"{keypath}[{i}]"
        if isinstance(cut, str):
            cut = cut.split()
        if not isinstance(cut, list) or len(cut) != 3 or not isinstance(cut[0], str):
            p.add(value, i, here, f"a cut is [variable, operator, value], got {cut!r}")
            ok = False
            continue
        var, op, val = cut
        if op not in OPERATORS:
            ops = [o for o in OPERATORS if not o.startswith("%") or o[1:3] == "10"]
            p.add(value, i, here, f"unknown cut operator '{op}'{_suggest(op, ops)}")
            ok = False
            continue
        if op in ("in", "notin"):
            if not isinstance(val, list) or not all(_is_number(v) for v in val):
                p.add(value, i, here, f"operator '{op}' needs a list of numbers, got {val!r}")
                ok = False
                continue
            val = tuple(val)
        elif not _is_number(val) and not (isinstance(val, str) and _numeric_str(val)):
            p.add(value, i, here, f"cut value must be a number, got {val!r}")
            ok = False
            continue
        triples.append((var, op, val))
    return Cuts.from_list(triples) if ok else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_str(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _parse_variables(data: Any, p: _Problems, jets_name: str) -> dict[str, VariableGroup]:
    r = _Reader(data, "variables", p, parent=data)
    groups = {}
    for name, spec in r.data.items():
        g = _Reader(spec, f"variables.{name}", p, parent=r.data, key=name)
        g.check_keys(("inputs", "labels"), ignored=("selection",))
        inputs = g.str_list("inputs")
        labels = g.str_list("labels")
        if g.ok and not inputs and not labels:
            p.add(r.data, name, f"variables.{name}", "needs at least one of inputs or labels")
        groups[str(name)] = VariableGroup(str(name), inputs, labels)
    if r.ok and jets_name not in groups:
        p.add(r.data, None, "variables",
              f"no '{jets_name}' group (global.jets_name){_suggest(jets_name, groups)}")
    return groups


def _parse_global_cuts(data: Any, p: _Problems) -> dict[str, Cuts]:
    r = _Reader(data, "global_cuts", p, parent=data)
    r.check_keys((*SPLITS, "common"))
    common = _parse_cuts(r.data.get("common"), "global_cuts.common", p, r.data, "common")
    out = {}
    for split in SPLITS:
        if r.ok and split not in r.data:
            p.add(r.data, None, f"global_cuts.{split}", "missing required key")
            continue
        cuts = _parse_cuts(r.data.get(split), f"global_cuts.{split}", p, r.data, split)
        if cuts is not None and common is not None:
            out[split] = common + cuts
    return out


def _parse_region(data: Any, keypath: str, p: _Problems, parent: Any, key: Any) -> Region | None:
    r = _Reader(data, keypath, p, parent=parent, key=key)
    r.check_keys(("name", "cuts"))
    name = r.get("name", str, required=True)
    cuts = _parse_cuts(r.data.get("cuts"), f"{keypath}.cuts", p, r.data, "cuts")
    if name is None or cuts is None:
        return None
    return Region(name, cuts)


def _parse_sample(data: Any, keypath: str, p: _Problems, parent: Any, key: Any) -> Sample | None:
    r = _Reader(data, keypath, p, parent=parent, key=key)
    r.check_keys(("name", "pattern", "equal_jets"), ignored=("vds_dir", "skip_checks"))
    name = r.get("name", str, required=True)
    patterns = r.str_list("pattern", required=True, allow_str=True)
    equal = r.get("equal_jets", bool, default=False)
    if r.ok and "pattern" in r.data and not patterns:
        p.add(r.data, "pattern", f"{keypath}.pattern", "needs at least one file pattern")
    if name is None or not patterns:
        return None
    return Sample(name, patterns, equal)


def _check_num_jets(value: Any) -> str | None:
    if value == -1 or value > 0:
        return None
    return f"must be -1 (all jets) or a positive integer, got {value}"


def _resolve_flavour(name: Any, container: Any) -> Label | None:
    try:
        return container[name]
    except (KeyError, TypeError):
        return None


def _parse_components(data: Any, p: _Problems, labels: Any) -> tuple[Component, ...]:
    if not isinstance(data, list):
        p.add(data, None, "components", f"expected a list of components, got {_typename(data)}")
        return ()
    if not data:
        p.add(data, None, "components", "needs at least one component")
    out = []
    seen: dict[str, int] = {}
    names = [lab.name for lab in labels]
    for i, comp in enumerate(data):
        kp = f"components[{i}]"
        r = _Reader(comp, kp, p, parent=data, key=i)
        r.check_keys(("region", "sample", "flavours", "num_jets", "num_jets_val",
                      "num_jets_test"))
        if not r.ok:
            continue
        for req in ("region", "sample", "flavours", "num_jets"):
            r.get(req, object, required=True)
        region = _parse_region(r.data.get("region"), f"{kp}.region", p, r.data, "region") \
            if "region" in r.data else None
        sample = _parse_sample(r.data.get("sample"), f"{kp}.sample", p, r.data, "sample") \
            if "sample" in r.data else None
        num = r.get("num_jets", int, check=_check_num_jets)
        num_val = r.get("num_jets_val", int, check=_check_num_jets)
        num_test = r.get("num_jets_test", int, check=_check_num_jets)
        flavours = r.str_list("flavours")
        resolved = []
        for j, fname in enumerate(flavours):
            label = _resolve_flavour(fname, labels)
            if label is None:
                p.add(r.data["flavours"], j, f"{kp}.flavours[{j}]",
                      f"unknown flavour '{fname}'{_suggest(fname, names)}")
            else:
                resolved.append(label)
        if region is None or sample is None or num is None or len(resolved) != len(flavours):
            continue
        # UPP's default cap for val/test is num_jets // 10 (-1 stays -1)
        default = num if num < 0 else max(num // 10, 1)
        for label in resolved:
            comp_obj = Component(region, sample, label, num,
                                 default if num_val is None else num_val,
                                 default if num_test is None else num_test)
            if comp_obj.name in seen:
                p.add(data, i, kp, f"component '{comp_obj.name}' is defined twice "
                      f"(also components[{seen[comp_obj.name]}])")
                continue
            seen[comp_obj.name] = i
            out.append(comp_obj)
    return tuple(out)


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be a positive integer, got {value}"


def _one_of(options: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in options:
            return None
        return f"must be one of {', '.join(options)}, got '{value}'{_suggest(value, options)}"

    return check


def _parse_global(data: Any, p: _Problems, config_path: Path) -> GlobalConfig:
    r = _Reader(data, "global", p, parent=data)
    allowed = ("base_dir", "ntuple_dir", "components_dir", "out_dir", "jets_name", "batch_size",
               "num_jets_estimate", "num_jets_per_output_file", "precision",
               "full_precision_vars", "compression", "seed", "class_category")
    r.check_keys(allowed, ignored=UPP_ONLY_GLOBAL)
    for key in UPP_ONLY_GLOBAL:
        if key in r.data:
            log.debug("global.%s is a UPP option with no effect in upp-grid", key)
    base = r.get("base_dir", str)
    base_dir = Path(base).expanduser().absolute() if base else config_path.parent.absolute()

    def path(key: str, default: str) -> Path:
        value = Path(r.get(key, str, default=default) or default).expanduser()
        return value if value.is_absolute() else base_dir / value

    per_file = r.get("num_jets_per_output_file", (int, type(None)), check=lambda v: (
        None if v is None else _positive(v)))
    return GlobalConfig(
        base_dir=base_dir,
        ntuple_dir=path("ntuple_dir", "ntuples"),
        components_dir=path("components_dir", "split-components"),
        out_dir=path("out_dir", "output"),
        jets_name=r.get("jets_name", str, default="jets"),
        batch_size=r.get("batch_size", int, default=100_000, check=_positive),
        num_jets_estimate=r.get("num_jets_estimate", int, default=1_000_000, check=_positive),
        num_jets_per_output_file=per_file,
        precision=r.get("precision", str, default="half", check=_one_of(PRECISIONS)),
        full_precision_vars=r.str_list("full_precision_vars") or DEFAULT_FULL_PRECISION_VARS,
        compression=r.get("compression", (str, type(None)), default="gzip",
                          check=lambda v: None if v is None else _one_of(COMPRESSIONS)(v))
        or "none",
        seed=r.get("seed", int, default=42),
        class_category=r.get("class_category", str, default="standard",
                             check=_one_of(("standard", "extended"))),
    )


def _parse_bins(value: Any, keypath: str, p: _Problems, parent: Any, key: Any
                ) -> tuple[tuple[float, float, int], ...] | None:
    if isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value):
        value_list: Any = [value]  # a single [start, stop, n]
        value_list = SourcedList(value_list)
        value_list.file, value_list.line = getattr(value, "file", p.path), getattr(value, "line", 0)
        value_list.lines = [value_list.line]
        value = value_list
    if not isinstance(value, list) or not value:
        p.add(parent, key, keypath,
              f"bins must be a list of [start, stop, n] ranges, got {value!r}")
        return None
    ranges = []
    for i, rng in enumerate(value):
        here = f"{keypath}[{i}]"
        if not (isinstance(rng, list) and len(rng) == 3 and all(_is_number(v) for v in rng)):
            p.add(value, i, here, f"a bin range is [start, stop, n], got {rng!r}")
            return None
        start, stop, n = rng
        if not isinstance(n, int):
            p.add(value, i, here, f"number of bins must be an integer, got {n!r}")
            return None
        if n <= 0:
            p.add(value, i, here, f"number of bins must be > 0, got {n}")
            return None
        if start >= stop:
            p.add(value, i, here, f"start must be < stop, got start={start}, stop={stop}")
            return None
        if ranges:
            prev = ranges[-1][1]
            if start < prev:
                p.add(value, i, here, f"range overlaps the previous one (starts at {start}, "
                      f"previous stops at {prev})")
                return None
            if start > prev:
                p.add(value, i, here, f"gap between ranges: previous stops at {prev}, "
                      f"this starts at {start}")
                return None
        ranges.append((float(start), float(stop), int(n)))
    return tuple(ranges)


def _check_target(value: Any) -> str | None:
    if isinstance(value, str):
        return _one_of(TARGETS)(value)
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return None
        return f"a list target must be a non-empty list of class labels (integers), got {value!r}"
    return None


def _parse_reweighting(data: Any, p: _Problems, groups: Mapping[str, VariableGroup],
                       default_estimate: int) -> Reweighting | None:
    r = _Reader(data, "reweighting", p, parent=data)
    r.check_keys(("reweights", "num_jets_estimate", "merge_num_proc"))
    estimate = r.get("num_jets_estimate", int, default=default_estimate, check=_positive)
    nproc = r.get("merge_num_proc", int, default=1, check=_positive)
    items = r.get("reweights", list, default=[], required=True)
    out = []
    for i, item in enumerate(items):
        kp = f"reweighting.reweights[{i}]"
        rw = _Reader(item, kp, p, parent=items, key=i)
        if not rw.ok:
            continue
        rw.check_keys(("group", "reweight_vars", "bins", "class_var", "class_target",
                       "add_overflow"))
        group = rw.get("group", str, required=True)
        if group is not None and groups and group not in groups:
            p.add(rw.data, "group", f"{kp}.group",
                  f"group '{group}' is not in variables{_suggest(group, groups)}")
        rw_vars = rw.str_list("reweight_vars", required=True)
        if rw.ok and "reweight_vars" in rw.data and not rw_vars:
            p.add(rw.data, "reweight_vars", f"{kp}.reweight_vars", "needs at least one variable")
        bins_raw = rw.get("bins", dict, default={}, required=True)
        bins = {}
        for var in rw_vars:
            if var not in bins_raw:
                p.add(bins_raw or rw.data, None if bins_raw else "bins", f"{kp}.bins.{var}",
                      f"reweight variable '{var}' has no bins")
                continue
            parsed = _parse_bins(bins_raw[var], f"{kp}.bins.{var}", p, bins_raw, var)
            if parsed is not None:
                bins[var] = parsed
        for var in bins_raw:
            if var not in rw_vars:
                p.add(bins_raw, var, f"{kp}.bins.{var}",
                      f"bins for '{var}', which is not in reweight_vars{_suggest(var, rw_vars)}")
        class_var = rw.get("class_var", str, required=True)
        target = rw.get("class_target", (str, int, list), required=True, check=_check_target)
        overflow = rw.get("add_overflow", bool, default=True)
        if None in (group, class_var, target) or len(bins) != len(rw_vars) or not rw_vars:
            continue
        if isinstance(target, list):
            target = tuple(target)
        out.append(Reweight(group, rw_vars, MappingProxyType(bins), class_var, target, overflow))
    names = [rw.name for rw in out]
    for i, name in enumerate(names):
        if name in names[:i]:
            p.add(items, i, f"reweighting.reweights[{i}]",
                  f"duplicate reweight: another entry already produces '{name}'")
    return Reweighting(tuple(out), estimate, nproc)


def parse_config(data: Any, path: Path) -> Config:
    """Validate already-loaded YAML data (from :func:`load_yaml`) into a :class:`Config`."""
    p = _Problems(path)
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the config must be a mapping of sections, "
                           f"got {_typename(data)}"])
    data = _normalise_aliases(data)
    for key in data:
        if key in SECTIONS or key in IGNORED_SECTIONS:
            continue
        if match := difflib.get_close_matches(str(key), SECTIONS, n=1, cutoff=0.75):
            p.add(data, key, str(key), f"unknown section (did you mean '{match[0]}'?)")
    for key in IGNORED_SECTIONS:
        if key in data:
            log.warning("%s: section '%s' is UPP-only and ignored (upp-grid reweights)", path, key)
    for section in ("variables", "global_cuts", "components", "global"):
        if section not in data:
            p.add(data, None, section, "missing required section")
    glob = _parse_global(data.get("global", SourcedDict()), p, path)
    labels = Extended_Flavours if glob.class_category == "extended" else Flavours
    variables = _parse_variables(data.get("variables", SourcedDict()), p, glob.jets_name) \
        if "variables" in data else {}
    cuts = _parse_global_cuts(data["global_cuts"], p) if "global_cuts" in data else {}
    components = _parse_components(data["components"], p, labels) \
        if "components" in data else ()
    reweighting = None
    if "reweighting" in data:
        reweighting = _parse_reweighting(data["reweighting"], p, variables,
                                         glob.num_jets_estimate)
    if p.items:
        raise ConfigError(p.items)
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
        Listing every problem as ``file:line: key.path: what is wrong``.
    """
    path = Path(path)
    return parse_config(load_yaml(path), path)
