"""Benchmark the whole local chain, ``upp-grid run``, on mock data against UPP 0.3.3.

    env/bin/python bench/bench_run.py [--workdir /tmp/upp-grid-bench] [--jets 1000000]
                                      [--smoke] [--repeat 3] [--plots both|on|off]
                                      [--summary FILE]

The demo config (configs/demo.yaml) runs split → weights → merge train, val, test → norm on
``--jets`` mock jets in 3 files, from scratch every time (split outputs and outputs deleted;
the mock ntuples are made once and shared), each run in a fresh process, without the weights
plots (``--no-plots``) and with them (``--plots``: both, the default, or one). Reported for
each: the best of ``--repeat`` runs, its time per stage (with plots, ``plots (wait)`` is how
long the chain waited for them after norm: they are drawn in the background during merge and
norm), its CPU time (the run and its workers), and the peak RSS of the run or its largest
worker (``os.wait4``, see bench/py). The bench fails if a run fails or loses jets (jets in !=
jets out). UPP 0.3.3's whole chain on 1M mock jets: 45.4 s. Target: 5x faster; peak RSS <= 400
MiB and flat from 1M to 10M jets. The 2 cores may be shared with other work: best of 3.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import common

from upp_grid.config import Config, load_config
from upp_grid.stages.run import run_chain

UPP_RUN_S = 45.4
TARGET = 5.0
RSS_LIMIT_MIB = 400


def clean(config: Config) -> None:
    shutil.rmtree(config.global_.components_dir, ignore_errors=True)
    shutil.rmtree(config.global_.out_dir, ignore_errors=True)


def measure(config_path: Path, plots: bool) -> dict:
    """One ``run`` in this (fresh) process."""
    config = load_config(config_path)
    cpu0 = common.cpu_seconds()
    start = time.perf_counter()
    summary = run_chain(config, plots=plots)
    return {"seconds": time.perf_counter() - start, "cpu_s": common.cpu_seconds() - cpu0,
            "stages": {t.stage: t.seconds for t in summary.timings},
            "jets_in": sum(sum(v.values()) for v in summary.jets_in.values()),
            "jets_out": sum(sum(v.values()) for v in summary.jets_out.values())}


def run(config: Config, repeat: int, plots: bool) -> dict:
    """Best of ``repeat`` runs from scratch, each in a fresh process."""
    def once() -> dict:
        clean(config)
        data = common.measure_in_child(__file__, config.path, "--plots",
                                       "on" if plots else "off")
        print(f"run {'with' if plots else 'without'} plots: {data['seconds']:.2f} s wall, "
              f"{data['cpu_s']:.2f} s CPU, peak RSS {data['rss_mib']:.0f} MiB", flush=True)
        if data["jets_in"] != data["jets_out"]:
            raise SystemExit(f"jets in {data['jets_in']} != jets out {data['jets_out']}")
        return data

    best, _ = common.best_of(repeat, once, key=lambda r: r["seconds"])
    return best


PLOTS = {"off": (False,), "on": (True,), "both": (False, True)}


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--plots", choices=sorted(PLOTS), default="both",
                        help="Runs without the weights plots, with them, or both (default).")
    return common.run_bench(parser, argv, bench,
                            measure=lambda args: measure(args.measure, args.plots == "on"))


def bench(args: argparse.Namespace, work: Path) -> None:
    ntuples = common.ensure_ntuples(work, args.jets)
    config = load_config(common.project_config(work / f"run-{args.jets}", ntuples))
    best = {plots: run(config, args.repeat, plots) for plots in PLOTS[args.plots]}
    for plots, result in best.items():
        report(result, args.jets, args.repeat, plots)
    if len(best) == 2:
        added = best[True]["seconds"] - best[False]["seconds"]
        print(f"\nthe weights plots add {added:+.2f} s to the whole chain "
              f"({best[True]['seconds']:.2f} s with, {best[False]['seconds']:.2f} s without; "
              f"waited for after norm: {best[True]['stages'].get('plots (wait)', 0):.2f} s)")
    last = best[PLOTS[args.plots][0]]
    common.write_summary(args, ", ".join(f"run {'with' if p else 'without'} plots "
                                         f"{r['seconds']:.2f} s" for p, r in best.items())
                         + f", {last['jets_out']:,} jets, peak RSS "
                           f"{max(r['rss_mib'] for r in best.values()):.0f} MiB")


def report(best: dict, jets: int, repeat: int, plots: bool) -> None:
    print(f"\nupp-grid run {'with' if plots else 'without'} plots, {jets:,} mock jets, best "
          f"of {repeat}; jets in = jets out = {best['jets_out']:,}")
    rows = [(f"  {stage}", f"{seconds:.2f} s", "", "")
            for stage, seconds in best["stages"].items()]
    rows.insert(0, ("whole chain", f"{best['seconds']:.2f} s",
                    f"{UPP_RUN_S / TARGET:.1f} s ({TARGET:.0f}x faster than UPP's {UPP_RUN_S} s)",
                    common.ok(best["seconds"] * TARGET <= UPP_RUN_S)
                    if jets == common.UPP_JETS else ""))
    rows += [("CPU, run and workers", f"{best['cpu_s']:.2f} s", "", ""),
             ("peak RSS", f"{best['rss_mib']:.0f} MiB", f"<= {RSS_LIMIT_MIB} MiB",
              common.ok(best["rss_mib"] <= RSS_LIMIT_MIB))]
    print(common.table(("measure", "value", "target", "met"), rows))
    if jets == common.UPP_JETS:
        print(f"{UPP_RUN_S / best['seconds']:.1f}x faster than UPP's {UPP_RUN_S} s")
    else:
        print("(UPP's figure is for 1M jets: no comparison)")


if __name__ == "__main__":
    sys.exit(main())
