"""The parts every benchmark in bench/ shares (this module measures nothing by itself).

* options: :func:`bench_parser` (``--workdir``, ``--jets``, ``--repeat``, ``--smoke``,
  ``--summary``), :func:`apply_smoke` and :func:`bench_workdir` (a temporary directory for a
  smoke run unless ``--workdir`` is given), all put together by :func:`run_bench`;
* inputs: :func:`ensure_ntuples` (mock ntuples cached under the workdir, remade if incomplete),
  :func:`load_template` and :func:`write_config` (a config with its own ``base_dir``),
  :func:`project_config` (a config on the mock ntuples) and :func:`split_once`;
* processes: :func:`run_measured` runs a command in a child process and reports its wall time,
  CPU time and peak RSS (and optionally the peak PSS of its whole process tree);
  :func:`measure_in_child` runs a bench's own ``--measure`` mode that way;
  :func:`best_of` repeats a measurement;
* output: :func:`table` and :func:`write_summary` (the line bench/run_all.py shows).

Peak RSS, and why a launcher: Linux carries a process's peak RSS over ``exec`` (the peak of the
address space it replaces, which after ``vfork`` is the parent's), and ``RUSAGE_CHILDREN`` is
the largest of every child ever waited for. A bench that has made 1M mock jets in-process would
pass its own size on to the command it measures. So the command runs under a tiny launcher
(``python -S``, a few MiB): the launcher starts it and reaps it with ``os.wait4``, whose rusage
covers that child and the workers it waited for, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h5py
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from upp_grid.config import Config  # noqa: E402
from upp_grid.mock import make_mock  # noqa: E402
from upp_grid.stages.split_local import split_stage  # noqa: E402
from upp_grid.yamlload import load_yaml, to_plain  # noqa: E402

DEFAULT_WORKDIR = Path("/tmp/upp-grid-bench")
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
UPP_JETS = 1_000_000  # UPP 0.3.3's figures (DESIGN.md §8) are for 1M mock jets in 3 files
SMOKE_JETS = 5_000
PSS_INTERVAL_S = 0.25
T = TypeVar("T")

# Runs ARGV[2:] and writes its exit code, wall and CPU seconds and peak RSS (KiB) as JSON to
# the file descriptor ARGV[1] (not inherited by the command).
LAUNCHER = """\
import json, os, sys, time
fd, cmd = int(sys.argv[1]), sys.argv[2:]
os.set_inheritable(fd, False)
start = time.perf_counter()
pid = os.posix_spawnp(cmd[0], cmd, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with os.fdopen(fd, "w") as out:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "wall_s": wall,
               "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kib": usage.ru_maxrss}, out)
"""


# -- options ---------------------------------------------------------------------------------


def bench_parser(doc: str, *, jets: bool = True, workdir: Path | None = DEFAULT_WORKDIR
                 ) -> argparse.ArgumentParser:
    """A parser with the options every bench takes; ``doc`` is the bench's module docstring,
    ``workdir`` the work directory without ``--workdir`` (None: a temporary one)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where inputs are cached and outputs written (default: "
                             f"{workdir or 'a temporary directory'}; a temporary directory "
                             "with --smoke)")
    parser.set_defaults(default_workdir=workdir)
    if jets:
        parser.add_argument("--jets", type=int, default=UPP_JETS)
    parser.add_argument("--repeat", type=int, default=3, help="report the best of N runs")
    parser.add_argument("--smoke", action="store_true",
                        help=f"tiny inputs ({SMOKE_JETS:,} jets), one run: checks that the bench "
                             "works, not the timings (for CI)")
    parser.add_argument("--summary", type=Path, default=None,
                        help="also write a one-line JSON summary here (for bench/run_all.py)")
    return parser


def apply_smoke(args: argparse.Namespace) -> None:
    """With ``--smoke``: :data:`SMOKE_JETS` jets (where the bench takes ``--jets``), one run."""
    if args.smoke:
        args.repeat = 1
        if hasattr(args, "jets"):
            args.jets = SMOKE_JETS


def run_bench(parser: argparse.ArgumentParser, argv: list[str] | None,
              bench: Callable[[argparse.Namespace, Path], None], *,
              measure: Callable[[argparse.Namespace], dict[str, Any]] | None = None) -> int:
    """A bench's ``main``: parse ``argv``; then either its measuring mode (``--measure``, when
    ``measure`` is given: run by :func:`measure_in_child`, prints ``measure(args)`` as JSON), or
    ``bench(args, workdir)`` after :func:`apply_smoke`, in :func:`bench_workdir`."""
    if measure is not None:
        parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if measure is not None and args.measure:
        print(json.dumps(measure(args)))
        return 0
    apply_smoke(args)
    try:
        with bench_workdir(args) as work:
            bench(args, work)
    except SystemExit as failure:  # a failed measurement: say so in the summary too
        if failure.code not in (None, 0):
            write_summary(args, str(failure.code).strip().splitlines()[0])
        raise
    return 0


@contextmanager
def bench_workdir(args: argparse.Namespace) -> Iterator[Path]:
    """``--workdir`` if given; else a temporary directory (removed after) for a smoke run or a
    bench without a default; else the bench's default (kept: the next run reuses its inputs)."""
    default = args.default_workdir
    if args.workdir is None and (args.smoke or default is None):
        with tempfile.TemporaryDirectory(prefix="upp-grid-bench-") as tmp:
            yield Path(tmp)
    else:
        work = args.workdir or default
        work.mkdir(parents=True, exist_ok=True)
        yield work


# -- inputs ----------------------------------------------------------------------------------


def h5_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.h5") if p.is_file())


def count_jets(files: Sequence[Path]) -> int:
    total = 0
    for path in files:
        with h5py.File(path, "r") as f:
            total += len(f["jets"])
    return total


def ensure_ntuples(workdir: Path, num_jets: int, num_files: int = 3) -> Path:
    """Mock ntuples (40 tracks per jet, seed 42) in ``num_files`` files, made once and reused
    by every bench: ``<workdir>/ntuples-<jets>`` (``-<jets>x<files>`` unless 3 files). An
    incomplete directory (another number of files or jets) is made again."""
    name = f"ntuples-{num_jets}" if num_files == 3 else f"ntuples-{num_jets}x{num_files}"
    ntuples = workdir / name
    files = h5_files(ntuples) if ntuples.is_dir() else []
    if len(files) == num_files and count_jets(files) == num_jets:
        return ntuples
    shutil.rmtree(ntuples, ignore_errors=True)
    print(f"making {num_jets:,} mock jets in {num_files} files under {ntuples}", flush=True)
    start = time.perf_counter()
    make_mock(ntuples, num_jets=num_jets, num_files=num_files, seed=42)
    print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return ntuples


def load_template(path: Path = DEMO_CONFIG) -> dict[str, Any]:
    """A config file as plain data (``!include`` resolved), to edit before :func:`write_config`."""
    return to_plain(load_yaml(path))


def write_config(base_dir: Path, data: dict[str, Any], name: str = "config.yaml",
                 **global_: str) -> Path:
    """``data`` with ``global.base_dir`` = ``base_dir`` (and the ``global_`` settings) written to
    ``<base_dir>/<name>``."""
    data["global"].update(base_dir=str(base_dir), **global_)
    if "reweighting" in data:  # the benches time the stages; smoke inputs leave bins empty
        data["reweighting"].setdefault("max_zero_weight_fraction", 1.0)
    base_dir.mkdir(parents=True, exist_ok=True)
    path = base_dir / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def project_config(base_dir: Path, ntuples: Path, data: dict[str, Any] | None = None) -> Path:
    """A config (default: configs/demo.yaml) in ``base_dir`` reading ``ntuples``, with the
    outputs in ``output/`` and ``split-components/`` below ``base_dir``."""
    return write_config(base_dir, load_template() if data is None else data,
                        ntuple_dir=str(ntuples), out_dir="output",
                        components_dir="split-components")


def split_once(config: Config, label: str = "split") -> None:
    """The split stage in this process; a complete split is reused (and nothing printed)."""
    start = time.perf_counter()
    summary, _ = split_stage(config)
    if summary.skipped < len(summary.records):
        print(f"{label}: {time.perf_counter() - start:.1f} s", flush=True)


# -- processes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One run of a command in a child process.

    ``max_rss_mib``: the peak RSS of the largest single process, the command or any worker it
    waited for (not this process, see the module docstring). ``tree_pss_mib``: the peak of the
    whole process tree's memory, sampled (0 unless asked for).
    """

    cmd: tuple[str, ...]
    returncode: int
    wall_s: float
    cpu_s: float
    max_rss_mib: float
    tree_pss_mib: float
    stdout: str
    stderr: str

    def check(self, what: str | None = None) -> Measured:
        """Self, or exit this bench with the failure (exit code and the end of stderr)."""
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-30:])
            raise SystemExit(f"{what or ' '.join(self.cmd)} failed (exit {self.returncode}):\n"
                             f"{tail}")
        return self

    def last_json(self) -> dict[str, Any]:
        """The JSON object on the last line of stdout."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise SystemExit(f"{' '.join(self.cmd)} printed nothing")
        return json.loads(lines[-1])


def cli_env(**extra: str) -> dict[str, str]:
    """``os.environ`` with the working tree importable, plus ``extra``."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def run_measured(cmd: Sequence[str | Path], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, sample_pss: bool = False) -> Measured:
    """Run ``cmd`` (stdout and stderr captured) and measure it; see :class:`Measured`.

    The wall time is taken by the launcher from the command's start to its exit, so the
    launcher's own start-up is not in it.
    """
    cmd = tuple(map(str, cmd))
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, str(write_fd), *cmd],
                                env=cli_env() if env is None else env, cwd=cwd,
                                pass_fds=(write_fd,), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd) as report, _pss_sampler(proc.pid if sample_pss else None) as peak:
        stdout, stderr = proc.communicate()
        text = report.read()
    if proc.returncode != 0 or not text:
        return Measured(cmd, proc.returncode or 1, 0.0, 0.0, 0.0, 0.0, stdout,
                        f"the launcher failed:\n{stderr}")
    data = json.loads(text)
    return Measured(cmd, data["returncode"], data["wall_s"], data["cpu_s"],
                    data["max_rss_kib"] / 1024, peak[0], stdout, stderr)


def measure_in_child(script: str, *args: str | Path) -> dict[str, Any]:
    """``python SCRIPT --measure ARGS`` (a bench's own measuring mode, which prints a JSON
    object last) in a fresh process: that object, plus ``rss_mib``, the peak RSS of the process
    and its workers. Exits the bench if the child fails."""
    run = run_measured([sys.executable, script, "--measure", *args]).check()
    return {**run.last_json(), "rss_mib": run.max_rss_mib}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished (waited-for) children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(repeat: int, run: Callable[[], T], key: Callable[[T], float]) -> tuple[T, list[T]]:
    """``run()`` ``repeat`` times (at least once): the run with the smallest ``key``, and all."""
    runs = [run() for _ in range(max(1, repeat))]
    return min(runs, key=key), runs


@contextmanager
def _pss_sampler(pid: int | None) -> Iterator[list[float]]:
    """Samples :func:`tree_pss_mib` of ``pid`` every :data:`PSS_INTERVAL_S` while in the block;
    yields a one-item list that holds the peak (stays 0 if ``pid`` is None)."""
    peak = [0.0]
    if pid is None:
        yield peak
        return
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_pss_mib(pid))
            done.wait(PSS_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def tree_pss_mib(pid: int) -> float:
    """Memory of ``pid`` and all its descendants, MiB: the sum of their proportional set sizes
    (pages shared after fork counted once), 0 where /proc is unavailable."""
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        total += _pss_kib(p)
        todo += _children(p)
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
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


# -- output ----------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: left-aligned columns, a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    rule = "-+-".join("-" * w for w in widths)
    out = [" | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)), rule]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(text.rstrip() for text in out)


def ok(good: bool) -> str:
    return "yes" if good else "NO"


def write_summary(args: argparse.Namespace, text: str) -> None:
    """With ``--summary PATH``: ``{"summary": text}`` there, the bench's line in run_all.py."""
    if args.summary is not None:
        args.summary.write_text(json.dumps({"summary": text}) + "\n")
