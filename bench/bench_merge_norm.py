"""Benchmark the merge (train, val, test; gzip) and norm stages on mock data, against UPP 0.3.3.

    env/bin/python bench/bench_merge_norm.py [--workdir /tmp/upp-grid-bench] [--jets 1000000]
                                             [--smoke] [--repeat 3] [--cases train,...]
                                             [--summary FILE]

The demo config (configs/demo.yaml: 4 flavours, one jets reweight, 100k jets per output file,
half precision, gzip; the merge uses every core) runs on ``--jets`` mock jets in 3 files, split and
weighted once (a complete split is reused). Then, each in a fresh process and from scratch
(previous outputs deleted), best of ``--repeat``:

* ``merge --split train``, ``val`` and ``test`` one at a time, as UPP's figures were taken, and
  ``merge --split all`` (one run for the three, each split's writing overlapping the next
  split's reading, as ``run`` does);
* ``norm`` (unweighted, as UPP) as ``upp-grid norm`` runs it, combining the statistics merge
  cached in the train files; ``norm-recompute``, the same from a fresh pass over the files
  (what the stage does without the cache); and ``norm --weighted`` (always a fresh pass).
  ``--smoke`` runs ``all`` and the three norm cases (the one-split merges share ``all``'s code).

The stage's wall and CPU time (user + system of the stage and its workers: what the wall time
would be on one free core) are taken inside that process, around the stage; peak RSS is the
largest of that process and its workers (``os.wait4``, see bench/py).
UPP 0.3.3 on 1M mock jets (the reference machine; bench/bench_vs_upp.py measures it side by
side on any other): merge train 8.0 s, val 2.5 s, test 8.9 s (19.4 s), norm 4.3 s.
Targets: merge and norm 3x faster; peak RSS <= 400 MiB, flat from 1M to 10M jets.
The 2 cores may be shared with other work: best of 3.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import common

from upp_grid.config import SPLITS, Config, load_config
from upp_grid.stages.merge import merge_stage
from upp_grid.stages.merge_plan import SplitPaths
from upp_grid.stages.normalise import norm_stage
from upp_grid.stages.weights import weights_stage

UPP_MERGE_S = {"train": 8.0, "val": 2.5, "test": 8.9}
UPP_NORM_S = 4.3
TARGET = 3.0
RSS_LIMIT_MIB = 400
CASES = ("train", "val", "test", "all", "norm", "norm-recompute", "norm-weighted")
NORM_CASES = CASES[4:]
SMOKE_CASES = ("all", *NORM_CASES)  # the one-split merges run the same code as "all"


def prepare(workdir: Path, num_jets: int) -> Config:
    """Shared mock ntuples, the demo config in ``merge-<jets>``, split and weighted."""
    ntuples = common.ensure_ntuples(workdir, num_jets)
    config = load_config(common.project_config(workdir / f"merge-{num_jets}", ntuples))
    common.split_once(config)
    weights_stage(config, plots=False)
    return config


def case_splits(case: str) -> tuple[str, ...]:
    return SPLITS if case == "all" else (case,)


def clean(config: Config, splits: tuple[str, ...]) -> None:
    """Delete the merged outputs of ``splits``, so the next merge starts from scratch."""
    for split in splits:
        paths = SplitPaths(config.global_.out_dir, split)
        shutil.rmtree(paths.split_dir, ignore_errors=True)
        paths.vds.unlink(missing_ok=True)


def measure(config_path: Path, case: str) -> dict:
    """One run of ``case`` in this (fresh) process: its wall and CPU seconds."""
    config = load_config(config_path)
    cpu0 = common.cpu_seconds()
    start = time.perf_counter()
    if case in NORM_CASES:
        norm_stage(config, weighted=case == "norm-weighted", use_cache=case == "norm")
    else:
        merge_stage(config, case_splits(case))
    return {"seconds": time.perf_counter() - start, "cpu_s": common.cpu_seconds() - cpu0}


def run(config: Config, case: str, repeat: int) -> dict:
    """Best of ``repeat`` fresh-process runs (outputs of a merge case deleted before each)."""
    def once() -> dict:
        if case not in NORM_CASES:
            clean(config, case_splits(case))
        return common.measure_in_child(__file__, config.path, "--case", case)

    best, _ = common.best_of(repeat, once, key=lambda r: r["seconds"])
    return best


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--cases", default=None,
                        help=f"Comma-separated subset of {','.join(CASES)} (default: all; "
                             f"with --smoke: {','.join(SMOKE_CASES)}).")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    return common.run_bench(parser, argv, bench,
                            measure=lambda args: measure(args.measure, args.case))


def bench(args: argparse.Namespace, work: Path) -> None:
    cases = args.cases.split(",") if args.cases else list(SMOKE_CASES if args.smoke else CASES)
    if unknown := set(cases) - set(CASES):
        raise SystemExit(f"unknown cases {sorted(unknown)}; choose from {','.join(CASES)}")
    config = prepare(work, args.jets)
    results = {}
    for case in cases:
        results[case] = r = run(config, case, args.repeat)
        print(f"{case:14} {r['seconds']:7.2f} s wall {r['cpu_s']:7.2f} s CPU "
              f"{r['rss_mib']:6.0f} MiB", flush=True)
    report(results, args.jets, args.repeat)
    peak = max(r["rss_mib"] for r in results.values())
    shown = [c for c in ("all", "norm") if c in results]
    common.write_summary(args, ", ".join(f"{c} {results[c]['seconds']:.2f} s" for c in shown)
                         + f", peak RSS {peak:.0f} MiB")


def report(results: dict[str, dict], jets: int, repeat: int) -> None:
    peak = max(r["rss_mib"] for r in results.values())
    compare = jets == common.UPP_JETS
    print(f"\nmerge (gzip) and norm, {jets:,} mock jets, best of {repeat}; "
          f"peak RSS {peak:.0f} MiB (limit {RSS_LIMIT_MIB}: {common.ok(peak <= RSS_LIMIT_MIB)})")
    rows = []
    for case, r in results.items():
        upp = (UPP_NORM_S if case in NORM_CASES else
               sum(UPP_MERGE_S[s] for s in case_splits(case)))
        rows.append(_row(case, r["seconds"], r["cpu_s"], r["rss_mib"], upp, compare))
    if all(s in results for s in SPLITS):
        seconds = sum(results[s]["seconds"] for s in SPLITS)
        rows.append(_row("train+val+test", seconds, sum(results[s]["cpu_s"] for s in SPLITS),
                         max(results[s]["rss_mib"] for s in SPLITS),
                         sum(UPP_MERGE_S.values()), compare))
    print(common.table(("case", "wall", "CPU", "peak RSS", "UPP 0.3.3", "speed-up",
                        f"target {TARGET:.0f}x"), rows))
    if not compare:
        print("(UPP's figures are for 1M jets: no comparison)")


def _row(case: str, seconds: float, cpu_s: float, rss_mib: float, upp_s: float,
         compare: bool) -> tuple[str, ...]:
    speedup = upp_s / seconds if seconds > 0 else float("inf")
    return (case, f"{seconds:.2f} s", f"{cpu_s:.2f} s", f"{rss_mib:.0f} MiB",
            f"{upp_s:.1f} s", f"{speedup:.1f}x" if compare else "n/a",
            common.ok(speedup >= TARGET) if compare else "")


if __name__ == "__main__":
    sys.exit(main())
