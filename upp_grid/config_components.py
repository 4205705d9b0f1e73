"""Components in a config: regions, samples, and region x sample x flavour with jet caps.

Parsed from UPP's ``components:`` list (each item a region, a sample, flavours and
``num_jets``). ``num_jets`` (UPP: ``num_global_objects``) is a number of jets, ``-1`` (all) or
``auto`` (UPP's automatic counts, all components or none); val/test default to a tenth of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftag.cuts import Cuts
from ftag.labels import Label

from upp_grid.config_cuts import parse_cuts
from upp_grid.config_reader import (
    Problems,
    Reader,
    describe,
    find_flavour,
    mapping_hint,
    path_component,
    suggest,
)
from upp_grid.config_upp import AUTO
from upp_grid.lazy_ftag import libyaml_safe_load

with libyaml_safe_load():  # ftag.flavours parses its YAML at import time
    from ftag.flavours import Extended_Flavours, Flavours

AUTO_JETS = -2  # a component cap of ``auto``: resolved from the split outputs


INCLUSIVE = "inclusive"  # the region of test components without region cuts


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
    weight: float = 1.0  # UPP's sample_weight: the region's weight in num_jets: auto


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
        """Jet cap for ``split`` (-1 means all, :data:`AUTO_JETS` means ``auto``)."""
        return {"train": self.num_jets, "val": self.num_jets_val, "test": self.num_jets_test}[split]


def _parse_region(data: Any, keypath: str, p: Problems, parent: Any, key: Any) -> Region | None:
    r = Reader(data, keypath, p, parent, key)
    r.check_keys(("name", "cuts"))
    name = r.get("name", str, required=r.ok, check=path_component)
    cuts = parse_cuts(r.data.get("cuts"), r.sub("cuts"), p, r.data, "cuts")
    if name is None or cuts is None:
        return None
    return Region(name, cuts)


def _parse_sample(data: Any, keypath: str, p: Problems, parent: Any, key: Any) -> Sample | None:
    r = Reader(data, keypath, p, parent, key)
    r.check_keys(
        ("name", "pattern", "equal_jets", "sample_weight"), ignored=("vds_dir", "skip_checks")
    )
    name = r.get("name", str, required=r.ok, check=path_component)
    patterns = r.str_list("pattern", required=r.ok, allow_str=True)
    equal = r.get("equal_jets", bool, default=False)
    weight = r.get("sample_weight", (int, float), default=1, check=_positive_number)
    if r.data.get("pattern") in ([], ""):
        p.add(r.data, "pattern", r.sub("pattern"), "needs at least one file pattern")
    if name is None or not patterns:
        return None
    return Sample(name, patterns, equal, float(weight))


def _positive_number(value: float) -> str | None:
    return None if value > 0 else f"must be a positive number, got {value}"


_NUM_JETS_HINT = " (-1 means all jets, auto UPP's automatic counts)"


def _check_num_jets(value: int) -> str | None:
    if value == -1 or value > 0:
        return None
    return f"must be -1 (all jets), auto or a positive number of jets, got {value}"


def _unknown_flavour(name: str, labels: Any) -> str:
    names = [lab.name for lab in labels]
    other = Flavours if labels is Extended_Flavours else Extended_Flavours
    if find_flavour(name, other) is not None:
        category = "standard" if other is Flavours else "extended"
        return f"unknown flavour '{name}' (it is defined for global.class_category: {category})"
    return f"unknown flavour '{name}'{suggest(name, names)}"


def _parse_component(
    comp: Any, kp: str, p: Problems, parent: Any, i: int, labels: Any
) -> list[Component]:
    r = Reader(comp, kp, p, parent, i)
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
        AUTO_JETS if r.data.get(key) == AUTO
        else r.get(key, int, check=_check_num_jets, hint=_NUM_JETS_HINT)
        for key in ("num_jets", "num_jets_val", "num_jets_test")
    ]
    flavours = r.str_list("flavours")
    resolved = []
    for j, name in enumerate(flavours):
        label = find_flavour(name, labels)
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
    # UPP's default cap for val/test is num_jets // 10 (-1, all jets, and auto stay as they are)
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


def parse_components(data: Any, p: Problems, root: Any, labels: Any) -> tuple[Component, ...]:
    if not isinstance(data, list):
        p.add(
            root,
            "components",
            "components",
            "expected a list of components (each item "
            f"starting with '- region:'), got {describe(data)}{mapping_hint(data, p)}",
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
    weights: dict[str, Component] = {}
    for c in out:
        other = weights.setdefault(c.region.name, c)
        if other.sample.weight != c.sample.weight:
            p.add(root, "components", "components", f"region {c.region.name} is used with "
                  f"sample_weight {other.sample.weight:g} ({other.sample.name}) and "
                  f"{c.sample.weight:g} ({c.sample.name}): as in UPP, a region has one weight")
            break
    auto = [c.num_jets == AUTO_JETS for c in out]
    if any(auto) and not all(auto):
        first = next(c for c in out if c.num_jets == AUTO_JETS)
        p.add(root, "components", "components", f"num_jets: auto in {first.name} but not in "
              "every component: UPP solves the counts of all components together, so either "
              "all or none of them are auto")
    return tuple(out)
