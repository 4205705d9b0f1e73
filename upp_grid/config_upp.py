"""The parts of UPP's config language around the core sections.

* :func:`flavour_labels`: ``global.class_config`` (UPP's custom flavour definitions, older
  name ``flavour_config``), read by atlas-ftag-tools' own ``LabelContainer.from_yaml``; a path
  is relative to ``global.base_dir`` as in UPP, and the file is inlined into the resolved config
  (the grid worker and the config hash see the definitions, not a path);
* :func:`resampling_problem`: a ``resampling:`` section, the way most UPP configs balance the
  classes, is refused with the ``reweighting:`` section to write instead;
* :func:`output_name`: the top-level ``norm_fname`` / ``class_fname`` (names under ``out_dir``);
* :func:`class_ratios`: ``auto_counts.class_ratios``, the class ratios ``num_jets: auto`` solves.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ftag.labels import LabelContainer

from upp_grid.config_reader import Problems, Reader, describe
from upp_grid.lazy_ftag import libyaml_safe_load

with libyaml_safe_load():  # ftag.flavours parses its YAML at import time
    from ftag.flavours import Extended_Flavours, Flavours

from upp_grid.yamlload import MAX_CONFIG_BYTES, to_plain

log = logging.getLogger(__name__)

AUTO = "auto"  # num_jets: auto, auto_counts.class_ratios: auto


def flavour_labels(r: Reader, path: Path | None, category: str) -> Any:
    """The flavour definitions: ``global.class_config`` read by atlas-ftag-tools' own loader
    (``LabelContainer.from_yaml``), else ftag's standard or extended flavours.

    A class_config file is inlined into the global section (so the resolved config shipped to
    the grid carries the definitions, and the config hash covers them); the inlined list is
    read back the same way."""
    value = r.data.get("class_config")
    if value is None:
        return Extended_Flavours if category == "extended" else Flavours
    where = r.sub("class_config")
    if isinstance(value, list):
        definitions = to_plain(value)
    elif isinstance(value, str) and path is not None:
        definitions = _read_class_config(path, r, where)
        if definitions is None:
            return None
        r.data["class_config"] = definitions
    else:
        r.p.add(r.data, "class_config", where, "expected the path of a flavour definition file "
                f"(atlas-ftag-tools' flavours.yaml format), got {describe(value)}")
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
        yaml.safe_dump(definitions, tmp)
        tmp.flush()
        try:
            return LabelContainer.from_yaml(Path(tmp.name))
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            source = path or "the inlined definitions"
            r.p.add(r.data, "class_config", where, f"{source}: not a valid flavour definition "
                    f"list (name, label, cuts, colour, category per flavour): {err}")
            return None


def _read_class_config(path: Path, r: Reader, where: str) -> list | None:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES >> 20} MiB")
        with libyaml_safe_load():
            definitions = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        r.p.add(r.data, "class_config", where, f"{path}: file not found (a relative path is "
                "relative to global.base_dir, as in UPP)")
        return None
    except (OSError, ValueError, yaml.YAMLError) as err:
        r.p.add(r.data, "class_config", where, f"{path}: unreadable: {err}".splitlines()[0])
        return None
    if not isinstance(definitions, list):
        r.p.add(r.data, "class_config", where, f"{path}: expected a list of flavours, got "
                f"{describe(definitions)}")
        return None
    return definitions


def resampling_problem(data: Mapping[str, Any], reweights: bool, p: Problems) -> None:
    """UPP's ``resampling:`` section: an error when it would be the config's only way to
    balance the classes (upp-grid reweights), a warning next to a ``reweighting:`` one."""
    section = data.get("resampling")
    method = section.get("method") if isinstance(section, Mapping) else section
    if section is None or method in (None, "none"):
        return
    if reweights:
        log.warning("%s: resampling (method %s) is ignored: upp-grid uses the reweighting "
                    "section", p.path, method)
        return
    target = section.get("target", "bjets") if isinstance(section, Mapping) else "bjets"
    names = list(section.get("variables") or {}) if isinstance(section, Mapping) else []
    variables = ", ".join(names) or "pt_btagJes, absEta_btagJes"
    p.add(data, "resampling", "resampling", f"upp-grid reweights and does not resample "
          f"(method {method}): replace this section by `reweighting: {{reweights: [{{group: "
          f"jets, reweight_vars: [{variables}], bins: {{...}}, class_var: flavour_label, "
          f"target: {target}}}]}}` (README: Coming from UPP)")


def output_name(data: Mapping[str, Any], key: str, default: str, p: Problems) -> str:
    """``norm_fname`` / ``class_fname``: a file name (or path) under ``out_dir``, as in UPP."""
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        p.add(data, key, key, f"expected a file name such as {default}, got {describe(value)}")
        return default
    parts = Path(value).parts
    if Path(value).is_absolute() or ".." in parts:
        p.add(data, key, key, f"must be a file name under global.out_dir (like {default}), "
              f"got {value!r}")
        return default
    return value


def class_ratios(data: Mapping[str, Any], flavour_names: list[str],
                 p: Problems) -> dict[str, float] | None:
    """``auto_counts.class_ratios`` (UPP): the class ratios ``num_jets: auto`` solves for;
    ``auto`` (the default) maximises each class on its own."""
    section = data.get("auto_counts")
    if section is None:
        return None
    r = Reader(section, "auto_counts", p, data, "auto_counts")
    r.check_keys(("class_ratios",))
    ratios = r.data.get("class_ratios", AUTO) if r.ok else AUTO
    if ratios == AUTO:
        return None
    flavours = set(flavour_names)
    if not isinstance(ratios, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
            for v in ratios.values()):
        p.add(r.data, "class_ratios", r.sub("class_ratios"), "expected 'auto' or a positive "
              f"ratio per flavour ({', '.join(sorted(flavours))}), got {describe(ratios)}")
        return None
    if set(ratios) != flavours and flavours:
        p.add(r.data, "class_ratios", r.sub("class_ratios"), "needs a ratio for exactly the "
              f"flavours of the components ({', '.join(sorted(flavours))}), got "
              f"{', '.join(map(str, ratios))}")
        return None
    return {str(k): float(v) for k, v in ratios.items()}
