"""Benchmark the grid sandbox: build time, content-scan time and size, venv and container mode.

    env/bin/python bench/bench_sandbox.py [--env ENV] [--repeat 3] [--smoke] [--summary FILE]

Builds the sandbox of the demo config from ``--env`` (default: the venv running this script;
with ``--smoke``, a tiny venv that links to it) twice per repeat, into fresh directories, and
reports the best wall time of the whole build (allow-list, content scan and sha256 of every
member, gzip level 6), the part of it spent reading, hashing and scanning, the size and the
number of members; then the same for the code-only container sandbox (``--noBuild``, 10 MiB
limit). Target (issue 13): the scan of a 64 MiB sandbox adds well under a second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import common

from tests.grid_support import linked_env
from upp_grid.config import load_config
from upp_grid.grid.sandbox import NO_BUILD_LIMIT
from upp_grid.grid.submit import build_sandbox
from upp_grid.grid.tasks import TaskOptions

SCAN_TARGET_S = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__, jets=False, workdir=None)
    parser.add_argument("--env", type=Path, default=None,
                        help="venv to pack (default: the one running this script)")
    return common.run_bench(parser, argv, report)


def build(config_path: Path, env_dir: Path, options: TaskOptions):
    config = load_config(config_path)
    with tempfile.TemporaryDirectory() as out:
        return build_sandbox(config, Path(out), env_dir=env_dir, options=options)


def report(args: argparse.Namespace, work: Path) -> None:
    env_dir = args.env or (linked_env(work) if args.smoke else Path(sys.prefix))
    config_path = common.project_config(work, common.ensure_ntuples(work, 1000, 2))
    rows = []
    results = {}
    for label, options in (("venv", TaskOptions()),
                           ("container", TaskOptions(container_image="/cvmfs/img:1"))):
        best, _ = common.best_of(args.repeat, lambda o=options: build(config_path, env_dir, o),
                                 key=lambda i: i.build_s)
        results[label] = best
        rows.append((f"{label} sandbox", f"{best.build_s:.2f} s",
                     f"scan+hash {best.scan_s:.2f} s, {best.size_mib:.1f} MiB, "
                     f"{len(best.members):,} members", ""))
    venv = results["venv"]
    container = results["container"]
    rows.append(("container under --noBuild limit", f"{container.size_mib:.2f} MiB",
                 f"< {NO_BUILD_LIMIT / 2**20:.0f} MiB",
                 common.ok(container.size < NO_BUILD_LIMIT)))
    if not args.smoke:
        rows.append(("target: scan of the venv sandbox", f"{venv.scan_s:.2f} s",
                     f"< {SCAN_TARGET_S:.0f} s", common.ok(venv.scan_s < SCAN_TARGET_S)))
    print(f"\nsandbox of {env_dir}, best of {args.repeat}")
    print(common.table(("measure", "value", "detail", "met"), rows))
    common.write_summary(args, f"venv sandbox {venv.size_mib:.1f} MiB in {venv.build_s:.2f} s "
                               f"(scan {venv.scan_s:.2f} s); container "
                               f"{container.size_mib:.2f} MiB")
    if container.size >= NO_BUILD_LIMIT:
        raise SystemExit("the container sandbox is above the --noBuild limit")


if __name__ == "__main__":
    sys.exit(main())
