"""Side by side: UPP 0.3.3's reweighting chain and ``upp-grid`` on the same mock input.

    env/bin/python bench/bench_vs_upp.py [--jets 1000000] [--workdir /tmp/upp-grid-bench]
                                         [--upp-venv DIR] [--keep] [--summary FILE]

Input: ``--jets`` mock jets from :mod:`upp_grid.mock` (3 files, 40 tracks per jet, seed 42),
made once under the workdir and shared with the other benches. Both tools get the same config,
the shape of UPP's reweighting integration test (configs/upp-rw-integration.yaml: two regions,
four flavours, six jets reweights and one tracks reweight, ``merge_num_proc: 1``) with
``num_jets_per_output_file: 1,000,000``; UPP's copy is the same data with UPP 0.3.3's key names
and without upp-grid's own keys.

Measured, each command in a fresh process under the launcher of bench/common.py (wall from
start to exit, CPU of the command and every worker it waited for, peak RSS of the largest
process):

* upp-grid: ``upp-grid run --no-plots`` from scratch (the whole chain), then from scratch again
  its stages one command each: ``split``, ``weights --no-plots``, ``merge --split all``, ``norm``;
* UPP 0.3.3 (installed once into its own venv, ``/tmp/upp-grid-bench/upp-0.3.3``, from PyPI):
  ``preprocess --split-components``, ``--rw``, ``--rwm --split train|val|test`` and ``--norm``,
  with every other stage off; its whole chain is the sum of its commands.

Each tool starts after one read of the whole input (the page cache as warm as memory allows:
all of it at 1M jets, part of the 22 GB at 10M).

Then one table: per stage the wall time, CPU % (CPU time / wall) and peak RSS of both, and how
many times faster upp-grid is; jets in the merged files of both (UPP's ``--rwm`` drops jets,
DESIGN.md §9); and the targets of issue 17 (whole chain 12x faster at 1M and 10x at 10M, merge
8x, merge CPU >= 180 % at 10M, peak RSS <= 400 MiB). The bench exits 1 if a command fails or
upp-grid's jets in != jets out; it prints, not enforces, the targets. Outputs are removed after
each tool (a 10M run needs about 22 GB for the input and 15 GB for either tool's outputs);
``--keep`` keeps them. One run, not the best of several: at 10M the two chains take minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import h5py

UPP_VERSION = "0.3.3"
UPP_CONFIG = common.REPO / "configs" / "upp-rw-integration.yaml"
PER_FILE = 1_000_000
UPP_OFF = ["--no-resample", "--no-merge", "--no-norm", "--no-plot", "--no-prep"]
# keys of upp-grid's own (UPP 0.3.3 refuses unknown keys) and UPP 0.3.3's names for ours
OURS_ONLY = {"global": ("components_dir",), "reweighting": ("max_zero_weight_fraction",)}
UPP_NAMES = {"global": {"num_jets_estimate": "num_global_objects_estimate",
                        "num_jets_per_output_file": "num_global_objects_per_output_file"},
             "reweighting": {"num_jets_estimate": "num_global_objects_estimate"}}
TARGETS = {"chain": {1_000_000: 12.0, 10_000_000: 10.0}, "merge": 8.0, "merge_cpu": 180.0,
           "rss_mib": 400.0}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Stage:
    """One stage of one tool: wall seconds, CPU seconds and peak RSS of its commands."""

    wall_s: float
    cpu_s: float
    rss_mib: float

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.wall_s if self.wall_s else 0.0

    @staticmethod
    def of(runs: list[common.Measured]) -> Stage:
        return Stage(sum(r.wall_s for r in runs), sum(r.cpu_s for r in runs),
                     max(r.max_rss_mib for r in runs))


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--upp-venv", type=Path, default=None,
                        help=f"UPP {UPP_VERSION}'s venv (default: "
                             f"{common.DEFAULT_WORKDIR}/upp-{UPP_VERSION}, also with --smoke; "
                             "made with pip if missing)")
    parser.add_argument("--keep", action="store_true",
                        help="keep both tools' outputs under <workdir>/vs-upp-<jets>")
    return common.run_bench(parser, argv, bench)


def bench(args: argparse.Namespace, work: Path) -> None:
    ntuples = common.ensure_ntuples(work, args.jets)
    upp = ensure_upp(args.upp_venv or common.DEFAULT_WORKDIR / f"upp-{UPP_VERSION}")
    base = work / f"vs-upp-{args.jets}"
    shutil.rmtree(base, ignore_errors=True)
    data = common.load_template(UPP_CONFIG)
    data["global"]["num_jets_per_output_file"] = PER_FILE
    ours = common.project_config(base / "upp-grid", ntuples, data)
    upp_cfg = upp_config(base / "upp", ntuples, common.load_template(ours))
    print(f"{args.jets:,} mock jets, {ntuples}", flush=True)
    warm(ntuples)
    mine, jets = run_ours(ours)
    if not args.keep:
        shutil.rmtree(base / "upp-grid")
    warm(ntuples)
    theirs, upp_jets = run_upp(upp, upp_cfg)
    if not args.keep:
        shutil.rmtree(base / "upp")
    report(args, mine, theirs, jets, upp_jets)


def warm(ntuples: Path) -> None:
    """Read the input once, so that each tool starts with the same page cache (the whole input
    at 1M jets; at 10M, 22 GB, only what the machine's memory keeps of it)."""
    for path in common.h5_files(ntuples):
        with open(path, "rb") as f:
            while f.read(64 * 2**20):
                pass


# -- UPP -------------------------------------------------------------------------------------
def ensure_upp(venv: Path) -> Path:
    """``preprocess`` of UPP :data:`UPP_VERSION` in ``venv``, installed there once."""
    exe = venv / "bin" / "preprocess"
    python = venv / "bin" / "python"
    if exe.is_file() and _upp_version(python) == UPP_VERSION:
        return exe
    print(f"installing umami-preprocessing=={UPP_VERSION} into {venv}", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q",
                    f"umami-preprocessing=={UPP_VERSION}"], check=True)
    return exe


def _upp_version(python: Path) -> str | None:
    code = "import importlib.metadata as m; print(m.version('umami-preprocessing'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def upp_config(base_dir: Path, ntuples: Path, data: dict[str, Any]) -> Path:
    """``data`` (upp-grid's resolved config) as UPP 0.3.3 reads it, in ``base_dir``."""
    for section, keys in OURS_ONLY.items():
        for key in keys:
            data.get(section, {}).pop(key, None)
    for section, names in UPP_NAMES.items():
        block = data.get(section, {})
        for old, new in names.items():
            if old in block:
                block[new] = block.pop(old)
    data["global"].update(base_dir=str(base_dir), ntuple_dir=str(ntuples), out_dir="output")
    for sample in samples(data):  # UPP globs a pattern for files: name the containers instead
        sample["pattern"] = containers(ntuples, sample["pattern"])
    base_dir.mkdir(parents=True, exist_ok=True)
    path = base_dir / "config.yaml"
    path.write_text(json.dumps(data, indent=1))  # JSON is YAML: UPP's safe_load reads it
    return path


def samples(node: Any) -> list[dict[str, Any]]:
    """Every mapping with a ``pattern`` in ``node`` (samples, also inside components)."""
    if isinstance(node, list):
        return [s for item in node for s in samples(item)]
    if not isinstance(node, dict):
        return []
    return ([node] if "pattern" in node else []) + samples(list(node.values()))


def containers(ntuples: Path, patterns: str | list[str]) -> list[str]:
    """The container directories under ``ntuples`` that ``patterns`` match."""
    patterns = [patterns] if isinstance(patterns, str) else patterns
    return sorted({p.name for pattern in patterns for p in ntuples.glob(pattern) if p.is_dir()})


def run_upp(exe: Path, config: Path) -> tuple[dict[str, Stage], dict[str, int]]:
    def cmd(*extra: str) -> list[common.Measured]:
        what = f"UPP {' '.join(extra)}"
        print(f"  {what} ...", end=" ", flush=True)
        run = common.run_measured([exe, "--config", config, *extra], env=upp_env(exe),
                                  cwd=config.parent).check(what)
        print(f"{run.wall_s:.1f} s", flush=True)
        return [run]

    print(f"UPP {UPP_VERSION}:", flush=True)
    stages = {"split": Stage.of(cmd("--split", "train", "--split-components", *UPP_OFF)),
              "weights": Stage.of(cmd("--rw", *UPP_OFF))}
    stages["merge"] = Stage.of([r for s in SPLITS for r in cmd("--rwm", "--split", s, *UPP_OFF)])
    stages["norm"] = Stage.of(cmd("--norm", "--split", "train"))
    stages["whole chain"] = Stage(*(sum(getattr(s, f) for s in stages.values())
                                    for f in ("wall_s", "cpu_s")),
                                  max(s.rss_mib for s in stages.values()))
    out = config.parent / "output"
    return stages, {s: vds_jets(out / f"pp_output_{s}_vds.h5") for s in SPLITS}


def upp_env(exe: Path) -> dict[str, str]:
    """A clean environment for UPP: its venv first on PATH, not our code on PYTHONPATH."""
    env = {k: v for k, v in common.cli_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{exe.parent}:{env.get('PATH', '')}"
    return env


# -- upp-grid --------------------------------------------------------------------------------
def run_ours(config: Path) -> tuple[dict[str, Stage], dict[str, int]]:
    def cmd(*args: str) -> common.Measured:
        what = f"upp-grid {' '.join(args)}"
        print(f"  {what} ...", end=" ", flush=True)
        run = common.run_measured([sys.executable, "-m", "upp_grid", *args, "-c", config]
                                  ).check(what)
        print(f"{run.wall_s:.1f} s", flush=True)
        return run

    def clean() -> None:
        for d in ("split-components", "output"):
            shutil.rmtree(config.parent / d, ignore_errors=True)

    print("upp-grid:", flush=True)
    clean()
    stages = {"whole chain": Stage.of([cmd("run", "--no-plots")])}
    jets = check_jets(config)
    clean()
    for stage, args in (("split", ("split",)), ("weights", ("weights", "--no-plots")),
                        ("merge", ("merge", "--split", "all")), ("norm", ("norm",))):
        stages[stage] = Stage.of([cmd(*args)])
    if check_jets(config) != jets:
        raise SystemExit("upp-grid: the stages one by one wrote other jet counts than `run`")
    return stages, jets


def check_jets(config: Path) -> dict[str, int]:
    """Jets in the merged files per split; exits if they differ from the catalogue's."""
    from upp_grid.config import load_config
    from upp_grid.stages.catalogue import read_catalogue

    cfg = load_config(config)
    cat = read_catalogue(cfg)
    out = {s: vds_jets(cfg.global_.out_dir / f"pp_output_{s}_vds.h5") for s in SPLITS}
    for s in SPLITS:
        if out[s] != cat.total(s):
            raise SystemExit(f"upp-grid {s}: jets in {cat.total(s)} != jets out {out[s]}")
    return out


def vds_jets(path: Path) -> int:
    """Rows of the jets in a merged split's virtual file (0 if there is none)."""
    if not path.is_file():
        return 0
    with h5py.File(path, "r") as f:
        return len(f["jets"])


# -- report ----------------------------------------------------------------------------------
def report(args: argparse.Namespace, ours: dict[str, Stage], upp: dict[str, Stage],
           jets: dict[str, int], upp_jets: dict[str, int]) -> None:
    rows = []
    for stage in ("split", "weights", "merge", "norm", "whole chain"):
        a, b = ours[stage], upp[stage]
        rows.append((stage, f"{a.wall_s:.1f} s", f"{a.cpu_pct:.0f} %", f"{a.rss_mib:.0f} MiB",
                     f"{b.wall_s:.1f} s", f"{b.cpu_pct:.0f} %", f"{b.rss_mib:.0f} MiB",
                     f"{b.wall_s / a.wall_s:.1f}x"))
    print(f"\n{args.jets:,} mock jets, 3 files, 40 tracks per jet; UPP's reweighting "
          "integration shape (7 reweights)")
    print(common.table(("stage", "upp-grid", "CPU", "peak RSS", f"UPP {UPP_VERSION}", "CPU",
                        "peak RSS", "faster"), rows))
    print("merge: upp-grid `merge --split all`; UPP its three `--rwm` runs. whole chain: "
          "upp-grid `run --no-plots`; UPP the sum of its commands")
    print("jets out per split: upp-grid " + ", ".join(f"{s} {jets[s]:,}" for s in SPLITS)
          + " (= jets in); UPP " + ", ".join(f"{s} {upp_jets[s]:,}" for s in SPLITS))
    chain = upp["whole chain"].wall_s / ours["whole chain"].wall_s
    merge = upp["merge"].wall_s / ours["merge"].wall_s
    rss = max(s.rss_mib for s in ours.values())
    want_chain = TARGETS["chain"].get(args.jets)
    checks = [("whole chain vs UPP", f"{chain:.1f}x",
               f">= {want_chain:.0f}x" if want_chain else "(1M: 12x, 10M: 10x)",
               common.ok(chain >= want_chain) if want_chain else ""),
              ("merge vs UPP's three --rwm", f"{merge:.1f}x", f">= {TARGETS['merge']:.0f}x",
               common.ok(merge >= TARGETS["merge"])),
              ("merge CPU", f"{ours['merge'].cpu_pct:.0f} %",
               f">= {TARGETS['merge_cpu']:.0f} % (at 10M)",
               common.ok(ours["merge"].cpu_pct >= TARGETS["merge_cpu"])
               if args.jets >= 10_000_000 else ""),
              ("peak RSS, largest process", f"{rss:.0f} MiB", f"<= {TARGETS['rss_mib']:.0f} MiB",
               common.ok(rss <= TARGETS["rss_mib"]))]
    print("\n" + common.table(("target", "measured", "target", "met"), checks))
    common.write_summary(args, f"{args.jets:,} jets: whole chain {chain:.1f}x, merge {merge:.1f}x "
                               f"faster than UPP {UPP_VERSION}; merge CPU "
                               f"{ours['merge'].cpu_pct:.0f} %, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    sys.exit(main())
