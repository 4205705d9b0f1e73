"""The catalogue: ``<components_dir>/organised-components.yaml`` in UPP's format.

It is built from the split outputs on disk (local split or grid download alike):
``files: {split: {flavour: [paths]}}`` and ``num_jets: {split: {flavour: N}}`` (also written as
``num_global_objects``, the key newer UPP versions read), plus ``components: {split:
{component: N}}`` for bookkeeping. Hidden files and directories (staging areas) are ignored.

Provenance: every unit's ``split-record.json`` holds the split hash of the config that split it
(:func:`upp_grid.stages.split.split_hash`); the catalogue is built only when they all equal the
current config's, and records it as ``provenance.split_hash``. Reading the catalogue with a
config of another split hash is a one-line error naming the stage to rerun, and
:attr:`Catalogue.digest`, a hash of its content, is what the weights stage records in
``histograms.h5``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import yaml

from upp_grid.config import SPLITS, Config
from upp_grid.errors import BookkeepingError, InputError
from upp_grid.fsutil import remove_stale_temps, write_text_atomic
from upp_grid.h5io import open_input
from upp_grid.ownership import record_components_dir
from upp_grid.stages.split import reweight_fields, split_hash

log = logging.getLogger(__name__)

CATALOGUE_NAME = "organised-components.yaml"
_OUTPUT_RE = re.compile(r"output_(train|val|test)_(.+)\.h5$")


@dataclass(frozen=True)
class Catalogue:
    """Split outputs per split and flavour, with exact jet counts read from the files."""

    files: dict[str, dict[str, list[str]]]
    num_jets: dict[str, dict[str, int]]
    components: dict[str, dict[str, int]]
    split_hash: str = ""  # of the config that split the files
    reweight_fields: tuple[str, ...] = ()  # kept for the reweighting (split.reweight_fields)
    test_region_cuts: bool = False  # whether the test split took the region cuts (UPP: no)

    def total(self, split: str) -> int:
        return sum(self.num_jets[split].values())

    @property
    def digest(self) -> str:
        """Hash of the content (files, counts, split hash): what later stages record."""
        text = json.dumps([self.files, self.num_jets, self.components, self.split_hash,
                           list(self.reweight_fields)], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_yaml_dict(self) -> dict:
        return {"files": self.files, "num_jets": self.num_jets,
                "num_global_objects": self.num_jets, "components": self.components,
                "provenance": {"split_hash": self.split_hash,
                               "reweight_fields": list(self.reweight_fields),
                               "test_region_cuts": self.test_region_cuts}}


def catalogue_path(config: Config) -> Path:
    return config.global_.components_dir / CATALOGUE_NAME


def _component_of(name: str, config: Config, split: str) -> tuple[str, str] | None:
    """(component name, flavour) for a file name suffix, matching the split's components."""
    for comp in config.split_components(split):
        if name == comp.name:
            return comp.name, comp.flavour.name
    return None


def build_catalogue(config: Config) -> Catalogue:
    """Scan the split outputs under ``components_dir`` and count their jets exactly.

    Raises
    ------
    InputError
        If the directory is missing, a file is unreadable, or a file belongs to no component.
    """
    root = config.global_.components_dir
    if not root.is_dir():
        raise InputError(f"{root}: no split outputs (run `upp-grid split` or `download` first)")
    flavours = config.flavour_names
    files = {s: {f: [] for f in flavours} for s in SPLITS}
    num = {s: dict.fromkeys(flavours, 0) for s in SPLITS}
    comps = {s: {c.name: 0 for c in config.split_components(s)} for s in SPLITS}
    check_inputs_once(root, config)
    for path in sorted(root.rglob("output_*.h5")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        match = _OUTPUT_RE.search(path.name)
        found = _component_of(match.group(2), config, match.group(1)) if match else None
        if found is None:
            raise InputError(f"{path}: split output of no component in {config.path}")
        split, (comp, flavour) = match.group(1), found
        with open_input(path) as f:
            if config.jets_name not in f:
                raise InputError(f"{path}: dataset '{config.jets_name}' not found")
            n = int(f[config.jets_name].shape[0])
        files[split][flavour].append(str(path))
        num[split][flavour] += n
        comps[split][comp] += n
    return Catalogue(files, num, comps, split_hash(config), tuple(reweight_fields(config)),
                     config.global_.test_region_cuts)


def check_inputs_once(root: Path, config: Config | None = None) -> None:
    """Every input file's rows may be in the components once: a unit directory (local split or
    unpacked grid job) whose input and rows overlap another's is an error naming the input and
    both directories (PanDA can run a job twice; a download and a local split may meet).

    With ``config``, every unit must have been split with its split hash for the unit's
    samples."""
    hashes: dict[tuple[str, ...], str] = {}  # per samples: the config's split hash
    needed = set(reweight_fields(config)) if config is not None else set()
    seen: dict[tuple[str, str], list[tuple[int, int, Path]]] = {}
    for record in sorted(root.rglob("split-record.json")):
        rel = record.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        try:
            data = json.loads(record.read_text())
            name = Path(str(data["input"])).name
            rows = data.get("rows") or (0, int(data["jets_read"]))
            start, stop = int(rows[0]), int(rows[1])
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            raise InputError(f"{record}: unreadable split record") from None
        samples = tuple(data.get("samples") or [rel.parts[0]])
        if config is not None and samples not in hashes:
            hashes[samples] = split_hash(config, samples)
        expected = hashes.get(samples)
        if expected is not None and data.get("split_hash") != expected:
            raise InputError(f"{record.parent}: split with another config (split hash "
                             f"{data.get('split_hash') or 'none'}, this config's "
                             f"{expected}): rerun `upp-grid split -c CFG --overwrite`")
        missing = sorted(needed - set(data.get("reweight_fields") or ()))
        if missing:
            raise InputError(f"{record.parent}: split without the reweight variable "
                             f"{missing[0]} the config needs: rerun `upp-grid split -c CFG "
                             "--overwrite`")
        key = (rel.parts[0], name)
        for a, b, other in seen.get(key, []):
            if (start < b and a < stop) or (start == stop == a == b):
                raise BookkeepingError(
                    f"input {name} is in the split outputs twice: {other.parent} and "
                    f"{record.parent} (rows {a}-{b} and {start}-{stop}); remove one of them "
                    "so no jet is counted twice")
        seen.setdefault(key, []).append((start, stop, record))


def write_catalogue(config: Config, expected: dict[str, dict[str, int]] | None = None
                    ) -> Catalogue:
    """Build the catalogue and write it atomically.

    If ``expected`` (``{split: {component: jets}}`` from the split records) is given, the
    counts on disk must equal it exactly or nothing is written.
    """
    cat = build_catalogue(config)
    remove_stale_temps(config.global_.components_dir)
    if expected is not None:
        for split in SPLITS:
            for comp, n in expected.get(split, {}).items():
                if cat.components[split].get(comp, 0) != n:
                    raise BookkeepingError(
                        f"{catalogue_path(config)}: {split} {comp}: split records say {n} jets, "
                        f"files on disk hold {cat.components[split].get(comp, 0)}: other split "
                        f"outputs are in {config.global_.components_dir} (a download or "
                        "another split): remove them, or rerun `upp-grid split -c CFG "
                        "--overwrite` after removing the directory")
    data = cat.as_yaml_dict()
    if config.auto_counts:
        data["auto_counts"] = {f"solved_{s}": n for s, n in solve_auto_counts(config, cat).items()}
    write_text_atomic(catalogue_path(config), yaml.safe_dump(data, sort_keys=False))
    record_components_dir(config)
    return cat


def solve_auto_counts(config: Config, cat: Catalogue) -> dict[str, dict[str, int]]:
    """``num_jets: auto`` with UPP's meaning (``upp.utils.availability.solve_counts``), from the
    exact jets per component on disk: per split, each flavour gets the most jets per unit of
    sample weight that every component of that flavour can give (or the most that keep
    ``auto_counts.class_ratios``), times the component's sample weight.

    As in UPP's reweighting chain, the counts are not applied (every jet is kept and
    reweighted): they are recorded in the catalogue and shown after the split."""
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        comps = config.split_components(split)
        available = {c.name: cat.components[split].get(c.name, 0) for c in comps}
        units: dict[str, float] = {}
        for c in comps:
            unit = available[c.name] / c.sample.weight
            units[c.flavour.name] = min(units.get(c.flavour.name, unit), unit)
        if config.class_ratios is None:
            per_unit = {f: int(u) for f, u in units.items()}
        else:
            scale = min(units[f] / config.class_ratios[f] for f in units)
            per_unit = {f: int(scale * config.class_ratios[f]) for f in units}
        out[split] = {c.name: int(per_unit[c.flavour.name] * c.sample.weight) for c in comps}
    return out


def read_catalogue(config: Config) -> Catalogue:
    """Load the catalogue written by :func:`write_catalogue` and re-check its counts."""
    path = catalogue_path(config)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: catalogue not found (run `upp-grid split` first)") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: unreadable catalogue: {err}") from None
    try:
        provenance = data.get("provenance") or {}
        # UPP 0.3.3 writes only ``num_global_objects``; older UPP and upp-grid ``num_jets``
        counts = data["num_jets"] if "num_jets" in data else data["num_global_objects"]
        cat = Catalogue(data["files"], counts, data.get("components", {}),
                        str(provenance.get("split_hash", "")),
                        tuple(provenance.get("reweight_fields") or ()),
                        bool(provenance.get("test_region_cuts", False)))
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: not an organised-components catalogue") from None
    if not cat.split_hash and "num_jets" not in data:
        raise InputError(f"{path}: written by UPP (num_global_objects, no upp-grid provenance):"
                         " its split outputs carry no record of the cuts and variables they "
                         "were made with; run `upp-grid split -c CFG` (or `download`) instead")
    if cat.split_hash != split_hash(config):
        raise InputError(f"{path}: written for another config (split hash "
                         f"{cat.split_hash or 'none'}, {config.path} has {split_hash(config)}):"
                         " rerun `upp-grid split -c CFG` (or `download`) first")
    missing = sorted(set(reweight_fields(config)) - set(cat.reweight_fields))
    if missing:
        raise InputError(f"{path}: the split outputs lack the reweight variable {missing[0]} "
                         f"{config.path} needs: rerun `upp-grid split -c CFG --overwrite`")
    for split, per_flavour in cat.files.items():
        for flavour, paths in per_flavour.items():
            n = 0
            for p in paths:
                try:
                    with h5py.File(p, "r") as f:
                        n += int(f[config.jets_name].shape[0])
                except (OSError, KeyError):
                    raise InputError(f"{p}: listed in {path} but missing or unreadable") from None
            if n != cat.num_jets[split][flavour]:
                raise BookkeepingError(f"{path}: {split} {flavour}: catalogue says "
                                       f"{cat.num_jets[split][flavour]} jets, files hold {n}")
    return cat
