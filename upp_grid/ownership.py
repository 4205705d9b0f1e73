"""Which config a directory belongs to: ``components_dir`` and ``out_dir`` record their writer.

Two configs sharing a directory (the bundled ones did, a copied config does) would replace each
other's outputs one run after the other, or mix them. So ``<dir>/.upp-grid-owner.json`` records
the config (path and hashes) that last wrote there (the split's catalogue, the weights' and the
merge's outputs), and every command that writes checks it first.

* ``components_dir`` belongs to a config path and its split hash: another config file with the
  same split hash (a copy with other reweights, or one narrowed to a sample) shares it; one that
  splits differently is refused.
* ``out_dir`` belongs to a config path: the same file, edited, replaces its own outputs; another
  config file is refused.

A refusal is one line naming both configs and the way out: ``--overwrite`` (the directory then
belongs to this config), or another directory in the config.
"""

from __future__ import annotations

import json
from pathlib import Path

from upp_grid.config import Config
from upp_grid.errors import InputError
from upp_grid.fsutil import write_json_atomic

OWNER_NAME = ".upp-grid-owner.json"


def _owner(directory: Path) -> dict | None:
    try:
        data = json.loads((directory / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _same_path(a: str, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def check_components_dir(config: Config, overwrite: bool = False) -> None:
    """Refuse a ``components_dir`` split by another config with another split hash."""
    from upp_grid.stages.split import split_hash

    root = config.global_.components_dir
    owner = _owner(root)
    if owner is None or overwrite:
        return
    mine = split_hash(config)
    if _same_path(str(owner.get("config", "")), config.path) or owner.get("split_hash") == mine:
        return
    raise InputError(
        f"{root}: split by {owner.get('config')} (split hash {owner.get('split_hash')}), not "
        f"{config.path} ({mine}): rerun with --overwrite to replace its outputs, or set "
        "global.components_dir to another directory")


def check_out_dir(config: Config, overwrite: bool = False) -> None:
    """Refuse an ``out_dir`` written by another config file."""
    out = config.global_.out_dir
    owner = _owner(out)
    if owner is None or overwrite or _same_path(str(owner.get("config", "")), config.path):
        return
    raise InputError(
        f"{out}: written by {owner.get('config')} (config hash "
        f"{str(owner.get('config_hash', ''))[:12]}), not {config.path}: rerun with "
        "--overwrite to replace its outputs, or set global.out_dir to another directory")


def _record(directory: Path, data: dict) -> None:
    if _owner(directory) != data:  # unchanged: not rewritten (reruns touch nothing)
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / OWNER_NAME, data)


def record_components_dir(config: Config) -> None:
    """Record ``config`` as the writer of its ``components_dir`` (with the catalogue)."""
    from upp_grid.stages.split import split_hash

    _record(config.global_.components_dir, {"config": str(config.path.absolute()),
                                            "split_hash": split_hash(config)})


def record_out_dir(config: Config) -> None:
    """Record ``config`` as the writer of its ``out_dir`` (with histograms or merged files)."""
    _record(config.global_.out_dir, {"config": str(config.path.absolute()),
                                     "config_hash": config.config_hash})
