"""Import atlas-ftag-tools' light modules without paying for its package ``__init__``.

``ftag/__init__.py`` imports every submodule, and ``ftag.hdf5`` and ``ftag.fraction_optimization``
import scipy: 0.45-0.5 s on every ``upp-grid`` command and every grid job (``python -X importtime
-c "import ftag"``), more than a split worker spends on a 333k-jet file's routing. upp-grid uses
only ``ftag.cuts``, ``ftag.labels`` and ``ftag.flavours``, which need numpy and yaml alone.

:func:`install` (called when ``upp_grid`` is imported) registers the ``ftag`` package in
``sys.modules`` without executing its ``__init__``: its ``__path__`` is set, so ``import
ftag.cuts`` and friends load just those modules. The first access to any other attribute of the
package (``ftag.Flavours``, ``ftag.hdf5``, ``ftag.__version__``, ``from ftag import Cuts``) runs
the real ``__init__`` into the same module object, so any other code using ftag in the process
sees the whole package, only later.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import yaml

_lock = threading.RLock()


def install() -> None:
    """Make ``ftag`` a package whose ``__init__`` runs on first use (no-op if already imported
    or not installed: a normal import then reports it where it is used)."""
    if "ftag" in sys.modules:
        return
    spec = importlib.util.find_spec("ftag")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    loading = False

    def __getattr__(name: str) -> Any:  # noqa: N807 — the module-level hook of PEP 562
        nonlocal loading
        with _lock:
            if loading or module.__dict__.get("__getattr__") is not __getattr__:
                # inside the real __init__ (``from . import hdf5`` probes the attribute
                # before importing the submodule), or already loaded
                raise AttributeError(f"module 'ftag' has no attribute '{name}'")
            loading = True
            try:
                spec.loader.exec_module(module)
            finally:
                loading = False
            if module.__dict__.get("__getattr__") is __getattr__:
                del module.__dict__["__getattr__"]
        return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["ftag"] = module


@contextmanager
def libyaml_safe_load() -> Iterator[None]:
    """Within the block, ``yaml.safe_load`` parses with libyaml's ``CSafeLoader`` (same
    results, ~10x faster) when PyYAML has it.

    For importing ``ftag.flavours``, which parses its 457-line ``flavours.yaml`` twice with the
    pure-Python loader at import time (80 ms of every command's start-up).
    """
    loader = getattr(yaml, "CSafeLoader", None)
    original = yaml.safe_load
    if loader is not None:
        yaml.safe_load = lambda stream: yaml.load(stream, Loader=loader)
    try:
        yield
    finally:
        yaml.safe_load = original


def is_fully_loaded(module: ModuleType) -> bool:
    """Whether ``ftag``'s ``__init__`` has run (for tests and diagnostics)."""
    return "__version__" in module.__dict__
