"""Benchmark ``upp-grid download`` against the real local rucio test server.

    env/bin/python bench/bench_download.py [--files 1000] [--threads 10] [--code DIR]
                                           [--repeat 1] [--smoke] [--summary FILE]

Publishes a tag of ``--files`` job outputs in 3 output containers (cloned from one real job
output per container, registered in bulk as the grid's stage-out leaves them, with each input
container listing its inputs: ``tests/download_support.py``), then runs
``upp-grid download --prepare-only --allow-partial`` without a state DB, as a user would, and
reports the wall time and the REST calls the server answered (from its request log), and the
calls per 100 files. ``--code DIR`` runs the ``upp_grid`` of another checkout (an older
commit, say) against the same server and files, for a before/after comparison.
Target (issue 14): at most 1 call per 100 files plus a constant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import common

from tests.download_support import USER, publish_clones, rebased_config, scale_project
from tests.grid_support import clean_env
from tests.servers.rucio_server import RucioTestServer


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__, jets=False, workdir=None)
    parser.add_argument("--files", type=int, default=1000, help="job outputs in all")
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--code", type=Path, default=None,
                        help="a checkout whose upp_grid to run (default: this one)")
    return common.run_bench(parser, argv, report)


def report(args: argparse.Namespace, work: Path) -> None:
    files = 30 if args.smoke else args.files
    per_container = -(-files // 3)
    code = (args.code or common.REPO).resolve()
    with RucioTestServer() as server:
        config = scale_project(work / "project", "bench")
        n = publish_clones(server, config, "bench", per_container, work / "jobs")
        rows, best = [], None
        for k in range(args.repeat):
            target = rebased_config(config, work / f"download-{k}")
            env = {**clean_env(**server.client_env()), "PYTHONPATH": str(code)}
            before = len(server.rest_calls())
            run = common.run_measured(
                [sys.executable, "-m", "upp_grid", "download", "-c", target, "--tag", "bench",
                 "--prepare-only", "--allow-partial", "--rucio-user", USER, "--threads",
                 str(args.threads)], env=env, cwd=work).check("download")
            wall = run.wall_s
            calls = len(server.rest_calls()) - before
            rows.append((f"run {k + 1}", f"{wall:.1f} s", f"{calls}", f"{100 * calls / n:.2f}"))
            best = min(best or (wall, calls), (wall, calls))
    assert best is not None
    print(f"\ndownload of {n:,} files in 3 containers, --threads {args.threads}, code {code}")
    print(common.table(("run", "wall", "REST calls", "calls per 100 files"), rows))
    common.write_summary(args, f"{n:,} files: {best[1]} REST calls, {best[0]:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
