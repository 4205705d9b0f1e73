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

import functools
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ftag.cuts import Cuts
from ftag.labels import Label

from upp_grid.config_components import AUTO_JETS as AUTO_JETS
from upp_grid.config_components import INCLUSIVE as INCLUSIVE
from upp_grid.config_components import Component, Region, Sample, parse_components
from upp_grid.config_cuts import parse_cuts, split_overlaps
from upp_grid.config_reader import (
    Problems,
    Reader,
    closest,
    describe,
    normalise_aliases,
    one_of,
    optional,
    path_component,
    position_of,
    positive,
    suggest,
)
from upp_grid.config_reweighting import Reweight as Reweight  # re-exported
from upp_grid.config_reweighting import Reweighting, parse_reweighting
from upp_grid.config_upp import (
    class_ratios,
    flavour_labels,
    output_name,
    resampling_problem,
)
from upp_grid.errors import ConfigError
from upp_grid.yamlload import SourcedDict, load_yaml, to_plain

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
SECTIONS = ("variables", "global_cuts", "components", "global", "reweighting")
# UPP sections upp-grid does not use; accepted so UPP configs load unchanged.
IGNORED_SECTIONS = ("plotting", "transform", "umami")
# Top-level keys of UPP's that are not sections: output names (used) and UPP-only settings.
TOP_LEVEL_KEYS = ("norm_fname", "class_fname", "auto_counts", "resampling")

PRECISIONS = ("half", "full")
COMPRESSIONS = ("gzip", "lzf", "none")
NAN_POLICIES = ("pass", "error")
DEFAULT_FULL_PRECISION_VARS = ("pt", "pt_btagJes", "energy", "mass")

# UPP's object-agnostic names -> the names used here
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
    selection: Cuts | None = None  # UPP's track selection: entries failing it are made invalid

    @property
    def variables(self) -> tuple[str, ...]:
        """Inputs then labels, without duplicates, in config order."""
        return tuple(dict.fromkeys(self.inputs + self.labels))


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
    nan_policy: str = "pass"  # NaN/inf in a training variable: "pass" (warn) or "error"
    test_region_cuts: bool = False  # UPP: the test split takes no region cuts
    class_config: Path | None = None  # custom flavour definitions (atlas-ftag-tools' format)


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
    norm_fname: str = "norm_dict.yaml"
    class_fname: str = "class_dict.yaml"
    class_ratios: Mapping[str, float] | None = None  # auto_counts.class_ratios (num_jets: auto)

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

    def split_components(self, split: str) -> tuple[Component, ...]:
        """The components ``split`` writes: the config's, except for ``test`` without
        ``global.test_region_cuts``, where each sample and flavour is one component of the
        region :data:`INCLUSIVE` (no region cuts; UPP's test split), written once."""
        if split != "test" or self.global_.test_region_cuts:
            return self.components
        return self._inclusive_test_components

    @functools.cached_property
    def _inclusive_test_components(self) -> tuple[Component, ...]:
        inclusive = Region(INCLUSIVE, Cuts.empty())
        out: dict[tuple[str, str], Component] = {}
        for c in self.components:
            out.setdefault((c.sample.name, c.flavour.name), Component(
                inclusive, c.sample, c.flavour, c.num_jets, c.num_jets_val, c.num_jets_test))
        return tuple(out.values())

    @property
    def auto_counts(self) -> bool:
        """Whether the components ask for ``num_jets: auto``."""
        return any(c.num_jets == AUTO_JETS for c in self.components)

    def resolved_json(self) -> str:
        """The resolved config as JSON (stored in output attrs)."""
        return json.dumps(to_plain(dict(self.raw)), default=str)

    def __reduce__(self) -> tuple:
        # picklable for worker processes: rebuilt from the resolved (already valid) data
        return (parse_config, (dict(self.raw), self.path))


# --------------------------------------------------------------------------- sections
def _parse_variables(r: Reader, p: Problems, jets_name: str) -> dict[str, VariableGroup]:
    groups = {}
    for name, spec in r.data.items():
        if not isinstance(name, str):
            p.add(r.data, name, r.sub(name), f"a group name must be a name, got {describe(name)}")
            continue
        if problem := path_component(name):
            p.add(r.data, name, r.sub(name), f"group name {problem}")
            continue
        g = Reader(spec, r.sub(name), p, r.data, name)
        g.check_keys(("inputs", "labels", "selection"))
        inputs = g.str_list("inputs")
        labels = g.str_list("labels")
        if g.ok and not inputs and not labels and not ({"inputs", "labels"} & set(g.data)):
            p.add(r.data, name, r.sub(name), "needs inputs or labels (a list of variables)")
        selection = None
        if g.ok and g.data.get("selection") is not None:
            selection = parse_cuts(g.data["selection"], g.sub("selection"), p, g.data,
                                   "selection")
            if name == jets_name:
                p.add(g.data, "selection", g.sub("selection"), "a selection applies to the "
                      "entries of a track-like group, not to jets (cut jets in global_cuts or "
                      "a region)")
        groups[name] = VariableGroup(name, inputs, labels, selection or None)
    if r.ok and jets_name not in groups:
        p.add(
            r.data,
            None,
            "variables",
            f"no '{jets_name}' group (the jets dataset, "
            f"global.jets_name){suggest(jets_name, groups)}",
        )
    return groups


def _parse_global_cuts(r: Reader, p: Problems) -> dict[str, Cuts]:
    r.check_keys((*SPLITS, "common"))
    common = parse_cuts(r.data.get("common"), r.sub("common"), p, r.data, "common")
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
        cuts = parse_cuts(r.data[split], r.sub(split), p, r.data, split)
        if cuts is not None and common is not None:
            out[split] = common + cuts
    if len(out) == len(SPLITS):
        for a, b, jet in split_overlaps(out):
            p.add(r.data, None, "global_cuts", f"the {a} and {b} split cuts overlap: a jet "
                  f"with {jet} passes both (split cuts must exclude each other, e.g. "
                  "eventNumber %10<= 7 / %10== 8 / %10== 9)")
    return out


MAX_SEED = 2**63  # numpy's SeedSequence takes any int >= 0; files record it as int64


def _check_seed(value: int) -> str | None:
    if 0 <= value < MAX_SEED:
        return None
    return f"must be a whole number from 0 to 2^63 - 1, got {value}"


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
    "nan_policy",
    "test_region_cuts",
    "class_config",
)


def _parse_global(r: Reader, config_path: Path) -> GlobalConfig:
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
        "compression", (str, type(None)), default="gzip", check=optional(one_of(COMPRESSIONS))
    )
    return GlobalConfig(
        base_dir=base_dir,
        ntuple_dir=path("ntuple_dir", "ntuples"),
        components_dir=path("components_dir", "split-components"),
        out_dir=path("out_dir", "output"),
        jets_name=r.get("jets_name", str, default="jets", check=path_component),
        batch_size=r.get("batch_size", int, default=100_000, check=positive),
        num_jets_estimate=r.get("num_jets_estimate", int, default=1_000_000, check=positive),
        num_jets_per_output_file=r.get(
            "num_jets_per_output_file", (int, type(None)), check=optional(positive)
        ),
        precision=r.get("precision", str, default="half", check=one_of(PRECISIONS)),
        full_precision_vars=r.str_list("full_precision_vars") or DEFAULT_FULL_PRECISION_VARS,
        compression=compression or "none",
        seed=r.get("seed", int, default=42, check=_check_seed),
        class_category=r.get(
            "class_category", str, default="standard", check=one_of(("standard", "extended"))
        ),
        nan_policy=r.get("nan_policy", str, default="pass", check=one_of(NAN_POLICIES)),
        test_region_cuts=r.get("test_region_cuts", bool, default=False),
        class_config=path("class_config", "") if isinstance(r.data.get("class_config"), str)
        else None,
    )


# --------------------------------------------------------------------------- the config
# Keys of a section written at the top level: usually an indentation slip.
_MISPLACED = {
    **dict.fromkeys(GLOBAL_KEYS, "global"),
    **dict.fromkeys(SPLITS, "global_cuts"),
    "reweights": "reweighting",
    "merge_num_proc": "reweighting",
}


def _check_top_level(data: Mapping[Any, Any], p: Problems) -> set[str]:
    """Report misspelt and misplaced top-level keys; return the sections found misspelt.

    Other top-level keys are accepted: they hold anchors (``ttbar: &ttbar {...}``).
    """
    typos = set()
    for key in data:
        if not isinstance(key, str):
            p.add(data, key, str(key), f"a section name must be a name, got {describe(key)}")
        elif key in SECTIONS or key in IGNORED_SECTIONS or key in TOP_LEVEL_KEYS:
            continue
        elif key in _MISPLACED:
            owner = _MISPLACED[key]
            p.add(
                data,
                key,
                key,
                f"'{key}' belongs in the '{owner}' section (indent it under '{owner}:')",
            )
        elif match := closest(key, SECTIONS, cutoff=0.75):
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
        file, line = position_of(data, None, path)
        raise ConfigError(
            [
                f"{file}:{line or 1}: the config must be a mapping of sections "
                f"({', '.join(SECTIONS)}), got {describe(data)}"
            ]
        )
    p = Problems(path, data)
    data = normalise_aliases(data, p)
    typos = _check_top_level(data, p)

    def section(name: str, required: bool = True) -> Reader:
        if name not in data and required and name not in typos:
            p.add(data, None, name, "missing required section")
        reader = Reader(data.get(name, SourcedDict()), name, p, data, name)
        reader.ok = reader.ok and name in data
        return reader

    global_reader = section("global")
    glob = _parse_global(global_reader, path)
    labels = flavour_labels(global_reader, glob.class_config, glob.class_category)
    variables = _parse_variables(section("variables"), p, glob.jets_name)
    cuts = _parse_global_cuts(section("global_cuts"), p)
    components: tuple[Component, ...] = ()
    if "components" in data and labels is not None:  # else: class_config's problem told
        components = parse_components(data["components"], p, data, labels)
    elif "components" not in typos and "components" not in data:
        p.add(data, None, "components", "missing required section")
    reweighting = None
    if "reweighting" in data:
        num_classes = len({c.flavour.name for c in components})
        reweighting = parse_reweighting(
            section("reweighting"), p, variables, glob.num_jets_estimate, num_classes
        )
    resampling_problem(data, reweighting is not None or "reweighting" in data, p)
    names = {key: output_name(data, key, default, p)
             for key, default in (("norm_fname", "norm_dict.yaml"),
                                  ("class_fname", "class_dict.yaml"))}
    ratios = class_ratios(data, [c.flavour.name for c in components], p)
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
        norm_fname=names["norm_fname"],
        class_fname=names["class_fname"],
        class_ratios=ratios,
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
