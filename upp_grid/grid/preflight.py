"""Pre-flight check of a grid job: the run-time imports load, before any input is touched.

``grid/split.sh`` runs ``python -m upp_grid.grid.preflight`` after setting up the runtime. A
module that does not load (a venv whose base interpreter differs, a missing shared library, an
image without h5py) is one line naming it, and the exit code :data:`EXIT_IMPORTS` (11), so a
broken runtime fails in seconds with a reason, not halfway through an input.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys

EXIT_IMPORTS = 11
#: what a split job imports, heaviest compiled parts first
RUNTIME_MODULES = ("numpy", "h5py", "hdf5plugin", "yaml", "ftag.cuts", "ftag.flavours",
                   "upp_grid.config", "upp_grid.stages.split", "upp_grid.grid.job_archive")


# hdf5plugin logs an error at import for each plugin the sandbox does not ship (the lossy
# compressors, see upp_grid.grid.sandbox_members.PRUNED_HDF5_PLUGINS): expected, so not shown.
_PRUNED_PLUGIN = re.compile(r"Cannot initialize filter (sz|sz3|sperr|zfp|fcidecomp|htj2k): "
                            r"File not found")


def quiet_pruned_plugins() -> None:
    """Hide hdf5plugin's messages about the plugins left out of the sandbox."""
    for name in ("hdf5plugin", "hdf5plugin._utils"):
        logging.getLogger(name).addFilter(lambda r: not _PRUNED_PLUGIN.search(r.getMessage()))


def check(modules: tuple[str, ...] = RUNTIME_MODULES) -> str | None:
    """The first module that fails to import, with the reason; None if all load."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # ImportError, OSError of a shared library, anything
            return f"{name}: {type(err).__name__}: {' '.join(str(err).split())}"
    return None


def main(argv: list[str] | None = None) -> int:
    modules = tuple(argv) if argv else RUNTIME_MODULES
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    quiet_pruned_plugins()
    problem = check(modules)
    if problem is not None:
        print(f"upp-grid job: error: run-time import failed ({sys.executable}, Python "
              f"{sys.version.split()[0]}): {problem}", file=sys.stderr)
        return EXIT_IMPORTS
    print(f"upp-grid job: pre-flight ok: Python {sys.version.split()[0]} at "
          f"{sys.executable}, {len(modules)} run-time modules load")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
