"""The demo: mock ntuples plus a ready-to-run copy of the bundled demo config."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml

DEMO_CONFIG = "demo.yaml"


def bundled_config_text(name: str = DEMO_CONFIG) -> str:
    """Text of a config shipped inside the package (``configs/demo.yaml`` in the repo)."""
    return (files("upp_grid") / "resources" / name).read_text()


def write_demo_config(workdir: Path) -> Path:
    """Write ``<workdir>/demo.yaml``: the bundled demo config with ``base_dir`` = workdir.

    The result is a normal config the user can pass to any command with ``-c``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    text = bundled_config_text()
    data = yaml.safe_load(text)
    data["global"]["base_dir"] = str(workdir.absolute())
    out = workdir / DEMO_CONFIG
    tmp = out.with_name(f".{out.name}.tmp")
    header = "# written by `upp-grid demo` from the bundled configs/demo.yaml\n"
    tmp.write_text(header + yaml.safe_dump(data, sort_keys=False))
    tmp.replace(out)
    return out
