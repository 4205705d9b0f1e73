"""The worker-node payload: ``python -m upp_grid.grid.worker --config C --samples S IN[,IN...]``.

Called by ``grid/split.sh`` (see ``grid/README.md``). It splits each of the job's input files
in turn (``%IN`` is a comma-separated list of any length: JEDI sizes jobs by ``nGBPerJob`` and
may change the number of files per job after its scouts) into a unit directory per input, then
packs them with their provenance into the job's one data output ``split.tar``
(:mod:`upp_grid.grid.job_archive`). Exit codes:

* 1: an input or the config is unusable (one line on stderr naming it);
* 2: anything unexpected (a traceback);
* 3: the bookkeeping does not add up, or the output was not written.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
import traceback
from pathlib import Path

log = logging.getLogger("upp_grid.grid.worker")

EXIT_INPUT = 1
EXIT_UNEXPECTED = 2
EXIT_BOOKKEEPING = 3
WORK_DIR = ".upp-split"  # unit directories before packing, inside the job's work directory

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="upp_grid.grid.worker",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="resolved config.yaml")
    parser.add_argument("--samples", required=True, help="comma-separated samples of the task")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where the output goes")
    parser.add_argument("inputs", help="the job's input files (%%IN: comma-separated list)")
    return parser


def run(config_path: Path, samples: list[str], inputs: list[str], out_dir: Path) -> int:
    """Split every input and pack the job's output; returns the exit code."""
    from upp_grid.config import load_config
    from upp_grid.errors import InputError
    from upp_grid.grid.job_archive import (
        ARCHIVE_NAME,
        InputProvenance,
        Provenance,
        pack,
        unit_name,
    )
    from upp_grid.stages.split import split_file, split_hash

    if not inputs:
        raise InputError("the job has no input files (%IN is empty)")
    units = [unit_name(i) for i in inputs]
    dupes = sorted({u for u in units if units.count(u) > 1})
    if dupes:
        raise InputError(f"input files {dupes[0]}.h5 appear twice in %IN")
    config = load_config(config_path)
    work = out_dir / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.monotonic()
    items = []
    for n, (name, unit) in enumerate(zip(inputs, units, strict=True), start=1):
        path = Path(name)
        t0 = time.monotonic()
        record = split_file(config, path, work / unit, samples)
        items.append(InputProvenance(path.name, record.rows or (0, record.jets_read),
                                     record.jets_read, record.no_component,
                                     dict(sorted(record.outputs.items())), record.input_size))
        log.info("input %d/%d %s: read %d jets, wrote %d, %d in no component, %.1f s", n,
                 len(inputs), path.name, record.jets_read, sum(record.outputs.values()),
                 record.no_component, time.monotonic() - t0)
    provenance = Provenance(tuple(items), tuple(samples), config.config_hash, split_hash(config))
    size = pack(out_dir / ARCHIVE_NAME, work, provenance)
    shutil.rmtree(work, ignore_errors=True)
    read = sum(i.jets_read for i in items)
    written = sum(sum(i.outputs.values()) for i in items)
    unrouted = sum(i.no_component for i in items)
    log.info("%d inputs: read %d jets, wrote %d, %d in no component; %s: %.1f MiB, %.1f s",
             len(items), read, written, unrouted, ARCHIVE_NAME, size / 2**20,
             time.monotonic() - start)
    if written + unrouted != read or not (out_dir / ARCHIVE_NAME).is_file():
        print(f"upp-grid job: error: bookkeeping: read {read} jets, wrote {written} and "
              f"{unrouted} in no component", file=sys.stderr)
        return EXIT_BOOKKEEPING
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from upp_grid.grid.preflight import quiet_pruned_plugins

    quiet_pruned_plugins()
    from upp_grid.errors import BookkeepingError, UppGridError

    samples = [s for s in args.samples.split(",") if s]
    inputs = [i for i in args.inputs.split(",") if i]
    log.info("upp-grid job: samples %s, %d input(s): %s", ",".join(samples), len(inputs),
             ",".join(inputs))
    try:
        return run(args.config, samples, inputs, args.out_dir)
    except BookkeepingError as err:
        print(f"upp-grid job: error: {err}", file=sys.stderr)
        return EXIT_BOOKKEEPING
    except UppGridError as err:
        print(f"upp-grid job: error: {err}", file=sys.stderr)
        return EXIT_INPUT
    except Exception:  # the grid only sees the exit code and the log
        traceback.print_exc()
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
