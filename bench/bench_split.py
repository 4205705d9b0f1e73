"""Benchmark ``upp-grid split`` against a plain h5py read of the same inputs, and against UPP.

    env/bin/python bench/bench_split.py [--workdir /tmp/upp-grid-bench] [--jets 1000000]
                                        [--files 3] [--workers N] [--repeat 3] [--codecs]
                                        [--smoke] [--summary FILE]

Mock ntuples (40 tracks per jet) are made once and cached under ``--workdir`` (the same
``ntuples-<jets>`` directory the other benches use for 3 files). Then, in the same run:

1. **raw read**, two ways, file by file, after one warm-up read so that every measurement starts
   from the page cache (as far as it holds the inputs):

   * *plain h5py* (the target's reference, DESIGN.md §8): every dataset read with ``ds[a:b]``
     into fresh arrays, in slabs of up to 512 MiB (the whole dataset at 1M jets), as a user's
     script does;
   * *read_direct*: the same slabs read with ``read_direct`` into one reused buffer: the
     fastest way h5py can move the bytes (no allocation, no page faults), shown as a floor;
2. **split stage**: :func:`split_stage` (``--overwrite``, default workers) timed around the
   call in a fresh process (``--measure`` mode), like the raw read, which is timed around the
   reads with h5py already imported: the two measure the same kind of thing, and their ratio
   is the target's;
3. **split CLI**: ``upp-grid split -c <demo config> --overwrite`` as a subprocess, wall time
   from start to exit (interpreter start-up, imports and exit included): what a user waits;
4. optionally (``--codecs``) the split once per intermediate codec, with the output size.

Peak RSS is reported two ways: the largest single process (the split or one of its workers,
from ``os.wait4``: see bench/py), and the whole split process tree's memory (sum of PSS,
so pages shared after fork count once) sampled from /proc every 0.25 s (reading smaps more
often slows the split down measurably; its buffers are allocated up front, so the plateau is
what is seen). Each timing is the best of ``--repeat`` runs (the 2 cores may be shared with
other work).

Targets (DESIGN.md §8, 1M jets, 3 files, 2 cores): split within 2.5x of the raw read, at least
5x faster than UPP 0.3.3's 18.7 s, peak RSS at most 400 MiB and flat from 1M to 10M jets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import common
import h5py
import numpy as np

from upp_grid.h5io import INTERMEDIATE_CODEC, INTERMEDIATE_CODECS

UPP_SPLIT_S = 18.7  # UPP 0.3.3 on UPP_JETS mock jets in 3 files
UPP_SPLIT_RSS_MIB = 871
TARGET_RATIO = 2.5
TARGET_SPEEDUP = 5.0
TARGET_RSS_MIB = 400
MIB = 2**20


@dataclass(frozen=True)
class Run:
    """The best of some split runs: wall and CPU seconds, largest process and process-tree
    peak (MiB)."""

    wall_s: float
    cpu_s: float
    max_rss_mib: float
    tree_rss_mib: float


def raw_read(files: list[Path], direct: bool = False, slab_bytes: int = 512 * MIB) -> int:
    """Read every dataset of every file fully, file by file; returns the bytes read.

    Each dataset is read in slabs of at most ``slab_bytes`` (the whole dataset in one call for
    1M jets; bounded memory at 10M): plain ``ds[a:b]`` into fresh arrays, or with ``direct``
    by ``read_direct`` into one reused buffer.
    """
    nbytes = 0
    for path in files:
        with h5py.File(path, "r") as f:
            for ds in f.values():
                if not isinstance(ds, h5py.Dataset) or not ds.shape[0]:
                    continue
                row = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
                step = max(1, min(ds.shape[0], slab_bytes // row))
                buf = np.empty((step, *ds.shape[1:]), dtype=ds.dtype) if direct else None
                for start in range(0, ds.shape[0], step):
                    stop = min(start + step, ds.shape[0])
                    if buf is None:
                        ds[start:stop]
                    else:
                        ds.read_direct(buf, np.s_[start:stop], np.s_[0:stop - start])
                nbytes += row * ds.shape[0]
                del buf
    return nbytes


def best_raw_read(files: list[Path], repeat: int, direct: bool = False) -> tuple[float, int]:
    nbytes = raw_read(files, direct)  # warm-up: inputs into the page cache

    def timed() -> float:
        start = time.perf_counter()
        raw_read(files, direct)
        return time.perf_counter() - start

    best, _ = common.best_of(repeat, timed, key=float)
    return best, nbytes


def best_split(config: Path, workers: int | None, repeat: int, codec: str | None = None
               ) -> Run:
    """``upp-grid split -c CONFIG --overwrite`` in a subprocess, best of ``repeat``; exits the
    bench if a split fails."""
    args = ["split", "-c", str(config), "--overwrite"]
    if workers:
        args += ["--workers", str(workers)]
    if codec is None:
        cmd = [sys.executable, "-m", "upp_grid", *args]
    else:  # same CLI, another intermediate codec (forked workers inherit the setting)
        code = ("import sys, upp_grid.h5io as h; h.INTERMEDIATE_CODEC = sys.argv[1]; "
                "from upp_grid.cli import main; main(sys.argv[2:])")
        cmd = [sys.executable, "-c", code, codec, *args]
    best, runs = common.best_of(
        repeat, lambda: common.run_measured(cmd, sample_pss=True).check("split"),
        key=lambda r: r.wall_s)
    return Run(best.wall_s, min(r.cpu_s for r in runs), max(r.max_rss_mib for r in runs),
               max(r.tree_pss_mib for r in runs))


def measure(config_path: Path, workers: int | None) -> dict:
    """``--measure`` mode: one split stage of ``config_path`` (``--overwrite``), timed around
    the call."""
    from upp_grid.config import load_config
    from upp_grid.stages.split_local import split_stage

    config = load_config(config_path)
    start = time.perf_counter()
    split_stage(config, workers=workers, overwrite=True)
    return {"stage_s": time.perf_counter() - start}


def best_stage(config: Path, workers: int | None, repeat: int) -> float:
    extra = ["--workers", str(workers)] if workers else []
    runs = [common.measure_in_child(__file__, config, *extra)["stage_s"]
            for _ in range(max(1, repeat))]
    return min(runs)


def startup_s(repeat: int) -> float:
    """Interpreter start-up plus the imports every split pays before reading anything."""
    code = "import upp_grid.cli, upp_grid.config, upp_grid.stages.split_local"
    best, _ = common.best_of(
        repeat, lambda: common.run_measured([sys.executable, "-c", code]).check("imports"),
        key=lambda r: r.wall_s)
    return best.wall_s


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in common.h5_files(path))


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="split --workers (default: the CLI's, min(files, cores))")
    parser.add_argument("--codecs", action="store_true",
                        help=f"also time the split with each codec of {INTERMEDIATE_CODECS}")
    return common.run_bench(parser, argv, report,
                            measure=lambda args: measure(args.measure, args.workers))


def report(args: argparse.Namespace, work: Path) -> None:
    ntuples = common.ensure_ntuples(work, args.jets, args.files)
    files = common.h5_files(ntuples)
    base = work / f"split-{args.jets}x{args.files}"
    config = common.project_config(base, ntuples)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    raw_s, nbytes = best_raw_read(files, args.repeat)
    direct_s, _ = best_raw_read(files, args.repeat, direct=True)
    stage_s = best_stage(config, args.workers, args.repeat)
    run = best_split(config, args.workers, args.repeat)
    start_s = startup_s(args.repeat)
    out_bytes = dir_bytes(base / "split-components")
    ratio = stage_s / raw_s
    speedup = UPP_SPLIT_S / run.wall_s

    print(f"\nsplit benchmark: {args.jets:,} jets in {args.files} files, 40 tracks/jet, "
          f"{nbytes / 1e9:.2f} GB; {cores} cores; workers "
          f"{args.workers or 'default'}; codec {INTERMEDIATE_CODEC}; best of {args.repeat}")
    rows = [
        ("raw read, plain h5py ds[a:b]", f"{raw_s:.2f} s", "", ""),
        ("raw read, h5py read_direct (floor)", f"{direct_s:.2f} s", "", ""),
        ("split stage (timed around the call)", f"{stage_s:.2f} s", "", ""),
        ("upp-grid split (CLI wall)", f"{run.wall_s:.2f} s", "", ""),
        ("  of which start-up + imports", f"{start_s:.2f} s", "", ""),
        ("split CPU, all processes (user+sys)", f"{run.cpu_s:.2f} s", "", ""),
        ("split stage / plain read", f"{ratio:.2f}", f"<= {TARGET_RATIO}",
         common.ok(ratio <= TARGET_RATIO)),
        ("split stage / read_direct", f"{stage_s / direct_s:.2f}", "", ""),
        ("split CLI wall / plain read", f"{run.wall_s / raw_s:.2f}", "", ""),
        ("UPP 0.3.3 split (reference, 1M jets)", f"{UPP_SPLIT_S:.1f} s", "", ""),
        ("speed-up vs UPP", f"{speedup:.1f}x", f">= {TARGET_SPEEDUP:.0f}x",
         common.ok(speedup >= TARGET_SPEEDUP)) if args.jets == common.UPP_JETS else
        ("speed-up vs UPP", "n/a", "(UPP measured at 1M jets)", ""),
        ("peak RSS, largest process", f"{run.max_rss_mib:.0f} MiB", f"<= {TARGET_RSS_MIB}",
         common.ok(run.max_rss_mib <= TARGET_RSS_MIB)),
        ("peak memory, process tree (PSS)", f"{run.tree_rss_mib:.0f} MiB",
         f"(UPP {UPP_SPLIT_RSS_MIB})", ""),
        ("split outputs on disk", f"{out_bytes / 1e9:.2f} GB", "", ""),
    ]
    print(common.table(("measure", "value", "target", "met"), rows))
    if args.smoke:
        print("(smoke run: the input is too small for the targets to mean anything)")
    common.write_summary(args, f"split stage {stage_s:.2f} s = {ratio:.2f}x plain read "
                               f"({stage_s / direct_s:.2f}x read_direct), CLI {run.wall_s:.2f} s, "
                               f"peak RSS {run.max_rss_mib:.0f} MiB")

    if args.codecs:
        codec_rows = []
        for codec in INTERMEDIATE_CODECS:
            c_run = best_split(config, args.workers, args.repeat, codec)
            size = dir_bytes(base / "split-components")
            codec_rows.append((codec, f"{c_run.wall_s:.2f} s", f"{c_run.wall_s / raw_s:.2f}",
                               f"{size / 1e9:.2f} GB", f"{nbytes / max(size, 1):.1f}"))
        print("\nintermediate codec (outputs of the same split):")
        print(common.table(("codec", "split wall", "/ raw read", "on disk",
                            "input/output bytes"), codec_rows))
        best_split(config, args.workers, 1)  # leave the default codec's outputs behind


if __name__ == "__main__":
    sys.exit(main())
