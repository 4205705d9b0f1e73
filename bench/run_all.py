"""Run every benchmark in bench/ in sequence and print one summary table.

    env/bin/python bench/run_all.py [--smoke] [--repeat N] [--benches split,weights,...]

Each bench runs as its own process (``python bench/bench_<name>.py``, with ``--smoke`` and
``--repeat`` passed on) and prints its own report as it goes; the table at the end has a line
per bench: whether it passed, its wall time and its headline numbers. The exit code is 1 if any
bench failed (the others still run). ``--smoke`` is the CI check that every bench works (tiny
inputs in temporary directories, about a minute in all); without it, the full 1M-jet
measurements run, with their inputs cached in /tmp/upp-grid-bench (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

BENCH = Path(__file__).resolve().parent
BENCHES = ("split", "weights", "merge_norm", "run", "dryrun", "sandbox", "job_archive",
           "download")
SMOKE_BUDGET_S = 15.0


def run_one(name: str, extra: list[str], summary: Path) -> tuple[int, float, str]:
    """One bench: exit code, wall seconds and the summary line it wrote."""
    print(f"\n=== bench_{name}.py {' '.join(extra)}", flush=True)
    start = time.perf_counter()
    code = subprocess.run([sys.executable, str(BENCH / f"bench_{name}.py"), *extra,
                           "--summary", str(summary)], check=False).returncode
    wall = time.perf_counter() - start
    text = json.loads(summary.read_text())["summary"] if summary.is_file() else ""
    return code, wall, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, one run each (CI)")
    parser.add_argument("--repeat", type=int, default=None, help="passed on to every bench")
    parser.add_argument("--benches", default=",".join(BENCHES),
                        help=f"comma-separated subset of {','.join(BENCHES)}")
    args = parser.parse_args(argv)
    names = args.benches.split(",")
    if unknown := set(names) - set(BENCHES):
        parser.error(f"unknown benches {sorted(unknown)}; choose from {','.join(BENCHES)}")
    extra = ["--smoke"] * args.smoke + (["--repeat", str(args.repeat)] if args.repeat else [])

    rows, failed, start = [], 0, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="upp-grid-bench-all-") as tmp:
        for name in names:
            code, wall, text = run_one(name, extra, Path(tmp) / f"{name}.json")
            result = "ok" if code == 0 else f"FAILED (exit {code})"
            if code == 0 and args.smoke and wall > SMOKE_BUDGET_S:
                result = f"ok, over the {SMOKE_BUDGET_S:.0f} s smoke budget"
            failed += code != 0
            rows.append((name, result, f"{wall:.1f} s", text))
    total = time.perf_counter() - start
    rows.append(("total", f"{len(names) - failed} of {len(names)} ok", f"{total:.1f} s", ""))
    print(f"\nbenchmarks{' (smoke run: tiny inputs, timings mean nothing)' * args.smoke}")
    print(common.table(("bench", "result", "wall", "summary"), rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
