"""Benchmark a grid job's one output: ``split.tar`` against one HDF5 file of groups.

    env/bin/python bench/bench_job_archive.py [--jets 300000] [--repeat 3] [--smoke]
                                              [--workdir DIR] [--summary FILE]

A job of 3 mock inputs (``--jets`` in all, 40 tracks per jet), sample ``ttbar`` of the demo
config. It runs the worker's split of each input (the part both formats share), then makes
the job's one output both ways, best of ``--repeat``:

* **tar** (what upp-grid ships, :func:`upp_grid.grid.job_archive.pack`): the component files
  as they are, uncompressed tar, provenance first;
* **HDF5 groups**: one file with a group per input and component, each dataset copied with
  ``H5Ocopy`` (``h5py.Group.copy``: raw chunks, no recompression), the cheapest HDF5 way.

Reports the time of each (and as a share of the split), the size against the component
files, and the time to unpack the tar again on the download side (with its checks).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import common
import h5py

from upp_grid.config import load_config
from upp_grid.grid.job_archive import InputProvenance, Provenance, pack, unit_name, unpack
from upp_grid.stages.split import split_file, split_hash


def h5_groups(out: Path, work: Path) -> int:
    with h5py.File(out, "w") as dst:
        for unit in sorted(work.iterdir()):
            group = dst.create_group(unit.name)
            for path in sorted(unit.glob("*.h5")):
                with h5py.File(path, "r") as src:
                    target = group.create_group(path.stem)
                    for name in src:
                        src.copy(src[name], target, name=name)
    return out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = common.bench_parser(__doc__)
    parser.set_defaults(jets=300_000)
    return common.run_bench(parser, argv, report)


def report(args: argparse.Namespace, work: Path) -> None:
    jets = 3000 if args.smoke else args.jets
    ntuples = common.ensure_ntuples(work, jets, 3)
    config = load_config(common.project_config(work / "job", ntuples))
    inputs = common.h5_files(ntuples)
    split_dir = work / "job" / "units"
    shutil.rmtree(split_dir, ignore_errors=True)
    start = time.perf_counter()
    items = []
    for path in inputs:
        record = split_file(config, path, split_dir / unit_name(path.name), ["ttbar"])
        items.append(InputProvenance(path.name, (0, record.jets_read), record.jets_read,
                                     record.no_component, dict(sorted(record.outputs.items())),
                                     record.input_size))
    split_s = time.perf_counter() - start
    provenance = Provenance(tuple(items), ("ttbar",), config.config_hash, split_hash(config))
    components = sum(p.stat().st_size for p in split_dir.rglob("*.h5"))
    tar = work / "job" / "split.tar"
    h5 = work / "job" / "split.h5"

    def timed(run):
        t = time.perf_counter()
        size = run()
        return time.perf_counter() - t, size

    tar_s, tar_size = common.best_of(args.repeat, lambda: timed(lambda: pack(tar, split_dir,
                                                                              provenance)),
                                     key=lambda r: r[0])[0]
    h5_s, h5_size = common.best_of(args.repeat, lambda: timed(lambda: h5_groups(h5, split_dir)),
                                   key=lambda r: r[0])[0]
    unpacked = work / "job" / "unpacked"
    unpack_s, _ = common.best_of(
        args.repeat, lambda: timed(lambda: unpack(tar, unpacked, config.jets_name)),
        key=lambda r: r[0])[0]
    n_files = sum(1 for _ in split_dir.rglob("*.h5"))
    print(f"\njob of {len(inputs)} inputs, {jets:,} jets, {n_files} component files "
          f"({components / 2**20:.1f} MiB); split {split_s:.2f} s; best of {args.repeat}")
    rows = [("tar (shipped)", f"{tar_s:.3f} s", f"{100 * tar_s / split_s:.1f} % of the split",
             f"{tar_size / 2**20:.1f} MiB ({100 * (tar_size / components - 1):+.2f} %)"),
            ("HDF5 groups (H5Ocopy)", f"{h5_s:.3f} s", f"{100 * h5_s / split_s:.1f} % of the split",
             f"{h5_size / 2**20:.1f} MiB ({100 * (h5_size / components - 1):+.2f} %)"),
            ("unpack tar + checks", f"{unpack_s:.3f} s", "download side", "")]
    print(common.table(("output", "time", "share", "size vs components"), rows))
    common.write_summary(args, f"tar {tar_s:.3f} s / {tar_size / 2**20:.1f} MiB, HDF5 groups "
                               f"{h5_s:.3f} s / {h5_size / 2**20:.1f} MiB, split {split_s:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
