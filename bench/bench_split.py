"""Benchmark ``upp-grid split`` against a plain h5py read of the same inputs, and against UPP.

    env/bin/python bench/bench_split.py [--workdir /tmp/upp-grid-bench] [--jets 1000000]
                                        [--files 3] [--workers N] [--repeat 3] [--codecs]
                                        [--smoke]

Mock ntuples (40 tracks per jet) are made once and cached under ``--workdir`` (the same
``ntuples-<jets>`` directory the weights bench uses for 3 files). Then, in the same run:

1. **raw read**: every dataset of every input read fully with h5py (``read_direct``, in slabs
   of up to 512 MiB into one buffer), file by file, after one warm-up read so that both
   measurements start from the page cache (as far as it holds the inputs);
2. **split**: ``upp-grid split -c <demo config> --overwrite`` as a subprocess (default
   workers), wall time from start to exit (interpreter start-up and imports included);
3. optionally (``--codecs``) the split once per intermediate codec, with the output size.

Peak RSS is reported two ways: the largest single process (``getrusage(RUSAGE_CHILDREN)``,
the usual "max RSS"), and the whole split process tree's memory (sum of PSS, so pages shared
after fork count once) sampled from /proc every 0.25 s (reading smaps more often slows the
split down measurably; its buffers are allocated up front, so the plateau is what is seen).
Each timing is the best of ``--repeat`` runs (the 2 cores may be shared with other work).

Targets (DESIGN.md §8, 1M jets, 3 files, 2 cores): split within 2.5x of the raw read, at least
5x faster than UPP 0.3.3's 18.7 s, peak RSS at most 400 MiB and flat from 1M to 10M jets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from upp_grid.h5io import INTERMEDIATE_CODEC, INTERMEDIATE_CODECS  # noqa: E402
from upp_grid.mock import make_mock  # noqa: E402

UPP_SPLIT_S = 18.7  # UPP 0.3.3 on UPP_JETS mock jets in 3 files
UPP_JETS = 1_000_000
UPP_SPLIT_RSS_MIB = 871
TARGET_RATIO = 2.5
TARGET_SPEEDUP = 5.0
TARGET_RSS_MIB = 400
MIB = 2**20
PSS_INTERVAL_S = 0.25
LAUNCHER = ("import resource, subprocess, sys; "
            "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(code, r.ru_maxrss, r.ru_utime + r.ru_stime)")


@dataclass(frozen=True)
class Run:
    """One split run: wall and CPU seconds, largest process and process-tree peak (MiB)."""

    wall_s: float
    cpu_s: float
    max_rss_mib: float
    tree_rss_mib: float
    returncode: int
    stderr: str


def inputs(ntuples: Path) -> list[Path]:
    return sorted(p for p in ntuples.rglob("*.h5") if p.is_file())


def count_jets(files: list[Path]) -> int:
    total = 0
    for path in files:
        with h5py.File(path, "r") as f:
            total += len(f["jets"])
    return total


def ensure_ntuples(workdir: Path, num_jets: int, num_files: int) -> Path:
    """Mock ntuples with ``num_jets`` jets in ``num_files`` files, made once and reused."""
    name = f"ntuples-{num_jets}" if num_files == 3 else f"ntuples-{num_jets}x{num_files}"
    ntuples = workdir / name
    files = inputs(ntuples) if ntuples.is_dir() else []
    if len(files) == num_files and count_jets(files) == num_jets:
        return ntuples
    shutil.rmtree(ntuples, ignore_errors=True)
    print(f"making {num_jets:,} mock jets in {num_files} files under {ntuples}", flush=True)
    start = time.perf_counter()
    make_mock(ntuples, num_jets=num_jets, num_files=num_files, seed=42)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return ntuples


def write_config(base_dir: Path, ntuples: Path) -> Path:
    """configs/demo.yaml (two samples, two regions, four flavours) on the bench inputs."""
    data = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    data["global"]["base_dir"] = str(base_dir)
    data["global"]["ntuple_dir"] = str(ntuples)
    base_dir.mkdir(parents=True, exist_ok=True)
    path = base_dir / "bench-split.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def raw_read(files: list[Path], slab_bytes: int = 512 * MIB) -> int:
    """Read every dataset of every file fully, file by file; returns the bytes read.

    Each dataset is read with ``read_direct`` in slabs of at most ``slab_bytes`` into one
    reused buffer (the whole dataset in one call for 1M jets; bounded memory at 10M).
    """
    nbytes = 0
    for path in files:
        with h5py.File(path, "r") as f:
            for ds in f.values():
                if not isinstance(ds, h5py.Dataset) or not ds.shape[0]:
                    continue
                row = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
                step = max(1, min(ds.shape[0], slab_bytes // row))
                buf = np.empty((step, *ds.shape[1:]), dtype=ds.dtype)
                for start in range(0, ds.shape[0], step):
                    stop = min(start + step, ds.shape[0])
                    ds.read_direct(buf, np.s_[start:stop], np.s_[0:stop - start])
                nbytes += row * ds.shape[0]
                del buf
    return nbytes


def best_raw_read(files: list[Path], repeat: int) -> tuple[float, int]:
    nbytes = raw_read(files)  # warm-up: inputs into the page cache
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        raw_read(files)
        best = min(best, time.perf_counter() - start)
    return best, nbytes


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task")
        out = []
        for task in tasks.iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
        return out
    except OSError:
        return []


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(pid: int) -> float:
    """Memory of ``pid`` and all its descendants, MiB: the sum of their proportional set sizes
    (pages shared after fork counted once), 0 where /proc is unavailable."""
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        total += _pss_kib(p)
        todo += _children(p)
    return total / 1024


def run_split(config: Path, workers: int | None, codec: str | None = None) -> Run:
    """``upp-grid split -c CONFIG --overwrite`` in a subprocess, timed, with peak RSS."""
    args = ["split", "-c", str(config), "--overwrite"]
    if workers:
        args += ["--workers", str(workers)]
    if codec is None:
        cmd = [sys.executable, "-m", "upp_grid", *args]
    else:  # same CLI, another intermediate codec (forked workers inherit the setting)
        code = ("import sys, upp_grid.h5io as h; h.INTERMEDIATE_CODEC = sys.argv[1]; "
                "from upp_grid.cli import main; main(sys.argv[2:])")
        cmd = [sys.executable, "-c", code, codec, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peak = [0.0]
    start = time.perf_counter()
    # A small launcher runs the split and reports getrusage(RUSAGE_CHILDREN) for it alone: this
    # (large) process's own max RSS must not leak into the child's through fork.
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *cmd], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss_mib(proc.pid))
            done.wait(PSS_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    code, max_rss_kib, cpu = stdout.split()
    return Run(wall, float(cpu), int(max_rss_kib) / 1024, peak[0], int(code), stderr)


def best_split(config: Path, workers: int | None, repeat: int, codec: str | None = None
               ) -> Run:
    runs = []
    for _ in range(repeat):
        run = run_split(config, workers, codec)
        if run.returncode != 0:
            sys.exit(f"split failed (exit {run.returncode}):\n{run.stderr}")
        runs.append(run)
    best = min(runs, key=lambda r: r.wall_s)
    return Run(best.wall_s, min(r.cpu_s for r in runs), max(r.max_rss_mib for r in runs),
               max(r.tree_rss_mib for r in runs), 0, "")


def startup_s(repeat: int) -> float:
    """Interpreter start-up plus the imports every split pays before reading anything."""
    code = "import upp_grid.cli, upp_grid.config, upp_grid.stages.split_local"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.h5") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/upp-grid-bench"))
    parser.add_argument("--jets", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None,
                        help="split --workers (default: the CLI's, min(files, cores))")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--codecs", action="store_true",
                        help=f"also time the split with each codec of {INTERMEDIATE_CODECS}")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny input in a temporary directory, one repeat (for CI)")
    args = parser.parse_args(argv)
    tmp = None
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="upp-grid-bench-smoke-")
        args.workdir, args.jets, args.repeat = Path(tmp.name), 30_000, 1
    try:
        report(args)
    finally:
        if tmp is not None:
            tmp.cleanup()


def report(args: argparse.Namespace) -> None:
    ntuples = ensure_ntuples(args.workdir, args.jets, args.files)
    files = inputs(ntuples)
    base = args.workdir / f"split-{args.jets}x{args.files}"
    config = write_config(base, ntuples)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    raw_s, nbytes = best_raw_read(files, args.repeat)
    run = best_split(config, args.workers, args.repeat)
    start_s = startup_s(args.repeat)
    out_bytes = dir_bytes(base / "split-components")
    ratio = run.wall_s / raw_s
    speedup = UPP_SPLIT_S / run.wall_s

    def ok(good: bool) -> str:
        return "yes" if good else "NO"

    print(f"\nsplit benchmark: {args.jets:,} jets in {args.files} files, 40 tracks/jet, "
          f"{nbytes / 1e9:.2f} GB; {cores} cores; workers "
          f"{args.workers or 'default'}; codec {INTERMEDIATE_CODEC}; best of {args.repeat}")
    rows = [
        ("raw h5py read", f"{raw_s:.2f} s", "", ""),
        ("upp-grid split (CLI wall)", f"{run.wall_s:.2f} s", "", ""),
        ("  of which start-up + imports", f"{start_s:.2f} s", "", ""),
        ("split CPU, all processes (user+sys)", f"{run.cpu_s:.2f} s", "", ""),
        ("split / raw read", f"{ratio:.2f}", f"<= {TARGET_RATIO}", ok(ratio <= TARGET_RATIO)),
        ("UPP 0.3.3 split (reference, 1M jets)", f"{UPP_SPLIT_S:.1f} s", "", ""),
        ("speed-up vs UPP", f"{speedup:.1f}x", f">= {TARGET_SPEEDUP:.0f}x",
         ok(speedup >= TARGET_SPEEDUP)) if args.jets == UPP_JETS else
        ("speed-up vs UPP", "n/a", "(UPP measured at 1M jets)", ""),
        ("peak RSS, largest process", f"{run.max_rss_mib:.0f} MiB", f"<= {TARGET_RSS_MIB}",
         ok(run.max_rss_mib <= TARGET_RSS_MIB)),
        ("peak memory, process tree (PSS)", f"{run.tree_rss_mib:.0f} MiB",
         f"(UPP {UPP_SPLIT_RSS_MIB})", ""),
        ("split outputs on disk", f"{out_bytes / 1e9:.2f} GB", "", ""),
    ]
    print(_table(("measure", "value", "target", "met"), rows))
    if args.smoke:
        print("(smoke run: the input is too small for the targets to mean anything)")

    if args.codecs:
        codec_rows = []
        for codec in INTERMEDIATE_CODECS:
            c_run = best_split(config, args.workers, args.repeat, codec)
            size = dir_bytes(base / "split-components")
            codec_rows.append((codec, f"{c_run.wall_s:.2f} s", f"{c_run.wall_s / raw_s:.2f}",
                               f"{size / 1e9:.2f} GB", f"{nbytes / max(size, 1):.1f}"))
        print("\nintermediate codec (outputs of the same split):")
        print(_table(("codec", "split wall", "/ raw read", "on disk", "input/output bytes"),
                     codec_rows))
        best_split(config, args.workers, 1)  # leave the default codec's outputs behind


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


if __name__ == "__main__":
    main()
