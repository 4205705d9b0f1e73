"""Benchmark ``upp-grid submit --dryrun`` on many input files.

    env/bin/python bench/bench_dryrun.py [--workdir DIR] [--containers 10] [--files 100]
                                         [--env ENV] [--repeat 3] [--smoke]

Makes ``--containers`` grid-style containers of ``--files`` input files each (empty files: a
dry run lists the inputs but never opens them) and a config with one sample per container, 4
flavours and 3 splits (12 declared outputs per task). Then:

1. **sandbox build**: the tarball of ``--env`` (default: the venv running this script), timed
   on its own; the dry runs below reuse it (unchanged inputs);
2. **dry run**: ``python -m upp_grid submit --dryrun`` as a subprocess, wall time from start to
   exit (interpreter start-up, imports, config, planning, the reuse check of the sandbox, prun's
   task parameters for every task, the task files and the table), best of ``--repeat``;
   inside ``unshare -rn`` (no network at all) when that works.

Target (issue 6): 1,000 input files over 10 containers in under 5 s, excluding the tarball
build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from upp_grid.config import load_config  # noqa: E402
from upp_grid.demo import bundled_config_text  # noqa: E402
from upp_grid.grid.submit import build_sandbox, submission_dir  # noqa: E402

TARGET_S = 5.0
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
    data = yaml.safe_load(bundled_config_text())
    data["global"]["base_dir"] = str(base)
    region = data["components"][0]["region"]
    data["components"] = [
        {"region": region, "sample": {"name": f"s{k}", "pattern": container_name(k)},
         "flavours": ["bjets", "cjets", "ujets", "taujets"], "num_jets": -1}
        for k in range(containers)]
    for anchor in ("ttbar", "zprime", "lowpt", "highpt"):
        data.pop(anchor, None)
    config = base / "bench.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def dry_run(config: Path, env_dir: Path, offline: bool) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PANDA", "X509"))}
    env.update(PYTHONPATH=str(REPO), UPP_GRID_ENV=str(env_dir))
    cmd = [sys.executable, "-m", "upp_grid", "submit", "-c", str(config), "--tag", TAG,
           "--dryrun", "--rucio-user", "bench"]
    if offline:
        cmd = ["unshare", "-rn", *cmd]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"dry run failed:\n{done.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--files", type=int, default=100, help="input files per container")
    parser.add_argument("--env", type=Path, default=Path(sys.prefix), help="venv to pack")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="2 containers x 5 files, once")
    args = parser.parse_args()
    if args.smoke:
        args.containers, args.files, args.repeat = 2, 5, 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix="upp-grid-bench-dryrun-"))
    shutil.rmtree(work / "submission", ignore_errors=True)
    config_path = make_inputs(work, args.containers, args.files)
    config = load_config(config_path)

    start = time.perf_counter()
    info = build_sandbox(config, submission_dir(config, TAG), env_dir=args.env)
    build_s = time.perf_counter() - start
    offline = unshare_works()
    times = [dry_run(config_path, args.env, offline) for _ in range(args.repeat)]
    tasks = sorted((submission_dir(config, TAG) / "tasks").glob("*.json"))
    n_files = sum(len(json.loads(t.read_text())["files"]) for t in tasks)

    n = args.containers * args.files
    print(f"sandbox build: {build_s:.1f} s, {info.size_mib:.1f} MiB ({args.env})")
    print(f"dry run: {n} input files in {len(tasks)} tasks ({n_files} listed), "
          f"best {min(times):.2f} s of {[round(t, 2) for t in times]}"
          f"{' (unshare -rn: no network)' if offline else ''}")
    if n == 1000:
        verdict = "ok" if min(times) < TARGET_S else "MISSED"
        print(f"target < {TARGET_S:.0f} s for 1,000 files: {verdict}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
