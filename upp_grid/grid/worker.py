"""The worker-node payload: ``python -m upp_grid.grid.worker --config C --samples S INPUT``.

Called by ``grid/split.sh`` (see ``grid/README.md``). It splits the one staged input file into
every declared output ``output_<split>_<region>_<sample>_<flavour>.h5`` in the output directory
(the job's work directory), even outputs with no jets, and exits non-zero on any error:
1 for an error in the input or the config (one line on stderr), 2 for anything else (with a
traceback), 3 if a declared output is missing afterwards.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import traceback
from pathlib import Path

log = logging.getLogger("upp_grid.grid.worker")

# hdf5plugin logs an error at import for each plugin the sandbox does not ship (the lossy
# compressors, see upp_grid.grid.sandbox.PRUNED_HDF5_PLUGINS): expected, so not shown.
_PRUNED_PLUGIN = re.compile(r"Cannot initialize filter (sz|sz3|sperr|zfp|fcidecomp|htj2k): "
                            r"File not found")


def _quiet_pruned_plugins(record: logging.LogRecord) -> bool:
    return not _PRUNED_PLUGIN.search(record.getMessage())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upp_grid.grid.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="resolved config.yaml")
    parser.add_argument("--samples", required=True, help="comma-separated samples of the task")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where outputs go")
    parser.add_argument("inputs", help="the job's input file (%%IN: comma-separated list)")
    return parser


def run(config_path: Path, samples: list[str], inputs: list[str], out_dir: Path) -> int:
    """Split the input; returns the exit code."""
    from upp_grid.config import load_config
    from upp_grid.stages.split import declared_outputs, split_file

    if len(inputs) != 1:
        raise SystemExit(f"upp-grid job: error: one input file per job expected, got "
                         f"{len(inputs)} ({','.join(inputs)})")
    config = load_config(config_path)
    start = time.monotonic()
    record = split_file(config, Path(inputs[0]), out_dir, samples)
    for name, count in sorted(record.outputs.items()):
        log.info("  %-60s %10d jets", f"output_{name}.h5", count)
    log.info("read %d jets, wrote %d, %d in no component, in %.1f s", record.jets_read,
             sum(record.outputs.values()), record.no_component, time.monotonic() - start)
    missing = [o.filename for o in declared_outputs(config, samples)
               if not (out_dir / o.filename).is_file()]
    if missing:
        print(f"upp-grid job: error: declared output {missing[0]} was not written",
              file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("hdf5plugin").addFilter(_quiet_pruned_plugins)
    logging.getLogger("hdf5plugin._utils").addFilter(_quiet_pruned_plugins)
    from upp_grid.errors import UppGridError

    samples = [s for s in args.samples.split(",") if s]
    inputs = [i for i in args.inputs.split(",") if i]
    log.info("upp-grid job: samples %s, input %s", ",".join(samples), ",".join(inputs))
    try:
        return run(args.config, samples, inputs, args.out_dir)
    except UppGridError as err:
        print(f"upp-grid job: error: {err}", file=sys.stderr)
        return 1
    except Exception:  # the grid only sees the exit code and the log
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
