"""Benchmark ``upp-grid submit --dryrun`` on many input files.

    env/bin/python bench/bench_dryrun.py [--workdir DIR] [--containers 10] [--files 100]
                                         [--env ENV] [--repeat 3] [--smoke] [--summary FILE]

Makes ``--containers`` grid-style containers of ``--files`` input files each (empty files: a
dry run lists the inputs but never opens them) and a config with one sample per container, 4
flavours and 3 splits (12 declared outputs per task). Then:

1. **sandbox build**: the tarball of ``--env`` (default: the venv running this script; with
   ``--smoke``, a tiny venv that links to it, so the tarball takes a second, not ten), timed
   on its own; the dry runs below reuse it (unchanged inputs);
2. **dry run**: ``python -m upp_grid submit --dryrun`` as a subprocess, wall time from start to
   exit (interpreter start-up, imports, config, planning, the reuse check of the sandbox, prun's
   task parameters for every task, the task files and the table), best of ``--repeat``;
   inside ``unshare -rn`` (no network at all) when that works. The bench fails if the dry run
   fails or its task files do not list every input file.

The work directory is temporary unless ``--workdir`` is given.
Target (issue 6): 1,000 input files over 10 containers in under 5 s, excluding the tarball
build.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import common

from tests.grid_support import linked_env, unshare_works
from upp_grid.config import load_config
from upp_grid.grid.submit import build_sandbox, submission_dir

TARGET_S = 5.0
TARGET_FILES = 1000
TAG = "bench"


def container_name(k: int) -> str:
    return f"user.bench.{601000 + k}.e8547_s3797_r13144_p6859.tdd.Bench.25_2_56.output.h5"


def make_inputs(base: Path, containers: int, files: int) -> Path:
    """Containers of empty input files and a config with one sample per container."""
    for k in range(containers):
        folder = base / "ntuples" / container_name(k)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, files + 1):
            (folder / f"user.bench.{601000 + k}._{i:06d}.output.h5").touch()
    data = common.load_template()
    region = data["components"][0]["region"]
    data["components"] = [
        {"region": region, "sample": {"name": f"s{k}", "pattern": container_name(k)},
         "flavours": ["bjets", "cjets", "ujets", "taujets"], "num_jets": -1}
        for k in range(containers)]
    for anchor in ("ttbar", "zprime", "lowpt", "highpt"):
        data.pop(anchor, None)
    return common.write_config(base, data, "bench.yaml")


def dry_run(config: Path, env_dir: Path, offline: bool) -> float:
    """Wall seconds of one dry run; exits the bench if it fails."""
    env = {k: v for k, v in common.cli_env(UPP_GRID_ENV=str(env_dir)).items()
           if not k.startswith(("PANDA", "X509"))}
    cmd = [sys.executable, "-m", "upp_grid", "submit", "-c", str(config), "--tag", TAG,
           "--dryrun", "--rucio-user", "bench"]
    if offline:
        cmd = ["unshare", "-rn", *cmd]
    return common.run_measured(cmd, env=env).check("dry run").wall_s


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__, jets=False, workdir=None)
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--files", type=int, default=100, help="input files per container")
    parser.add_argument("--env", type=Path, default=None,
                        help="venv to pack (default: the one running this script)")
    return common.run_bench(parser, argv, report)


def report(args: argparse.Namespace, work: Path) -> None:
    if args.smoke:
        args.containers, args.files = 2, 5
    env_dir = args.env or (linked_env(work) if args.smoke else Path(sys.prefix))
    shutil.rmtree(work / "submission", ignore_errors=True)
    config_path = make_inputs(work, args.containers, args.files)
    config = load_config(config_path)

    start = time.perf_counter()
    info = build_sandbox(config, submission_dir(config, TAG), env_dir=env_dir)
    build_s = time.perf_counter() - start
    offline = unshare_works()
    best, times = common.best_of(args.repeat, lambda: dry_run(config_path, env_dir, offline),
                                 key=float)
    tasks = sorted((submission_dir(config, TAG) / "tasks").glob("*.json"))
    listed = sum(len(json.loads(t.read_text())["files"]) for t in tasks)
    n = args.containers * args.files

    print(f"\nsubmit --dryrun: {n:,} input files in {args.containers} containers, best of "
          f"{args.repeat}{' (unshare -rn: no network)' if offline else ''}")
    rows = [("sandbox build", f"{build_s:.1f} s", f"{info.size_mib:.1f} MiB of {env_dir}", ""),
            ("dry run", f"{best:.2f} s", f"of {[round(t, 2) for t in times]}", ""),
            ("task files", f"{len(tasks)}", f"{listed:,} input files listed",
             common.ok(len(tasks) == args.containers and listed == n))]
    if n == TARGET_FILES:
        rows.append((f"target: {TARGET_FILES:,} files", f"< {TARGET_S:.0f} s", "",
                     common.ok(best < TARGET_S)))
    print(common.table(("measure", "value", "detail", "met"), rows))
    common.write_summary(args, f"dry run of {n:,} files {best:.2f} s, "
                               f"sandbox build {build_s:.1f} s")
    if len(tasks) != args.containers or listed != n:
        raise SystemExit(f"the dry run wrote {len(tasks)} task files listing {listed} input "
                         f"files, expected {args.containers} listing {n}")


if __name__ == "__main__":
    sys.exit(main())
