"""Benchmark the whole local chain, ``upp-grid run``, on mock data against UPP 0.3.3.

    env/bin/python bench/bench_run.py [--workdir /tmp/upp-grid-bench] [--jets 1000000]
                                      [--smoke] [--repeat 3] [--plots]

The demo config (configs/demo.yaml) runs split → weights (no plots unless ``--plots``) →
merge train, val, test → norm on ``--jets`` mock jets in 3 files, from scratch every time
(split outputs and outputs deleted; the mock ntuples are made once and shared), each run in a
fresh process. Reported: the best of ``--repeat`` runs, its time per stage, and the peak RSS of
the run (VmHWM) and its worker processes (``ru_maxrss``), and their CPU time.
UPP 0.3.3's whole chain on 1M mock jets: 45.4 s. Target: 5x faster; peak RSS <= 400 MiB and flat
from 1M to 10M jets. The 2 cores may be shared with other work: best of 3.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from upp_grid.config import Config, load_config  # noqa: E402
from upp_grid.mock import make_mock  # noqa: E402
from upp_grid.stages.run import run_chain  # noqa: E402
from upp_grid.yamlload import load_yaml, to_plain  # noqa: E402

UPP_RUN_S = 45.4
TARGET = 5.0
RSS_LIMIT_MIB = 400


def prepare(workdir: Path, num_jets: int) -> Config:
    """Shared mock ntuples and the demo config in ``run-<jets>``."""
    ntuples = workdir / f"ntuples-{num_jets}"
    if not any(ntuples.glob("*/*.h5")):
        print(f"making {num_jets:,} mock jets in {ntuples}", flush=True)
        make_mock(ntuples, num_jets=num_jets, num_files=3, seed=42)
    data = to_plain(load_yaml(REPO / "configs" / "demo.yaml"))
    base = workdir / f"run-{num_jets}"
    data["global"].update(base_dir=str(base), ntuple_dir=str(ntuples), out_dir="output",
                          components_dir="split-components")
    base.mkdir(parents=True, exist_ok=True)
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def clean(config: Config) -> None:
    shutil.rmtree(config.global_.components_dir, ignore_errors=True)
    shutil.rmtree(config.global_.out_dir, ignore_errors=True)


def own_peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that over ``exec``
    from the parent, so a process started by a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config_path: Path, plots: bool) -> dict:
    """One ``run`` in this (fresh) process."""
    config = load_config(config_path)
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    start = time.perf_counter()
    summary = run_chain(config, plots=plots)
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    rss = max(own_peak_rss_mib(), usage[1].ru_maxrss / 1024)
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu0
    return {"seconds": seconds, "cpu_s": cpu, "rss_mib": rss,
            "stages": {t.stage: t.seconds for t in summary.timings},
            "jets_in": sum(sum(v.values()) for v in summary.jets_in.values()),
            "jets_out": sum(sum(v.values()) for v in summary.jets_out.values())}


def run(config: Config, repeat: int, plots: bool) -> dict:
    best: dict | None = None
    for _ in range(repeat):
        clean(config)
        cmd = [sys.executable, __file__, "--measure", str(config.path)]
        cmd += ["--plots"] if plots else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        data = json.loads(out.strip().splitlines()[-1])
        print(f"run: {data['seconds']:.2f} s wall, {data['cpu_s']:.2f} s CPU, "
              f"peak RSS {data['rss_mib']:.0f} MiB", flush=True)
        if data["jets_in"] != data["jets_out"]:
            raise SystemExit(f"jets in {data['jets_in']} != jets out {data['jets_out']}")
        if best is None or data["seconds"] < best["seconds"]:
            best = data
    assert best is not None
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/upp-grid-bench"))
    parser.add_argument("--jets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--plots", action="store_true", help="Make the weights plots too.")
    parser.add_argument("--smoke", action="store_true",
                        help="20k jets, one repeat: check the bench runs, not the timings")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.measure:
        print(json.dumps(measure(args.measure, args.plots)))
        return 0
    if args.smoke:
        args.jets, args.repeat = 20_000, 1
    best = run(prepare(args.workdir, args.jets), args.repeat, args.plots)
    report(best, args.jets, args.repeat)
    return 0


def report(best: dict, jets: int, repeat: int) -> None:
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in best["stages"].items())
    print(f"\nupp-grid run, {jets:,} mock jets, best of {repeat}: {best['seconds']:.2f} s "
          f"({stages}); {best['cpu_s']:.2f} s CPU; peak RSS {best['rss_mib']:.0f} MiB "
          f"(limit {RSS_LIMIT_MIB})")
    if jets != 1_000_000:
        print("(UPP's figure is for 1M jets: no comparison)")
        return
    print(f"{UPP_RUN_S / best['seconds']:.1f}x faster than UPP's {UPP_RUN_S} s "
          f"(target {TARGET:.0f}x)")


if __name__ == "__main__":
    sys.exit(main())
