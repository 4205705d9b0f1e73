"""Where a merge's files go, and when: resume of an interrupted merge, and publication.

Files are written under ``<out_dir>/<split>/.staging/``. A file's completion record is its root
attributes (``merge_plan_hash``, ``merge_file_index``, ``jet_counts``) plus the staging
directory's ``plan.json``: a rerun with the same plan keeps every file whose record and counts
check out, and redoes the rest. Only when every file of every requested split is complete, and
the jets written per flavour (counted from the written ``flavour_label`` values) equal the
catalogue's, are stale files of an earlier run removed, the staged files renamed into place,
the virtual dataset (built from this plan's file list, never from a glob) written and verified
(:mod:`upp_grid.stages.verify`), and ``merge-record.json`` written last.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from upp_grid import __version__
from upp_grid.config import Config
from upp_grid.errors import BookkeepingError, InputError
from upp_grid.h5io import write_virtual_file
from upp_grid.inputs import FLAVOUR_LABEL
from upp_grid.stages.catalogue import Catalogue
from upp_grid.stages.merge_plan import MergePlan, SplitPaths
from upp_grid.stages.verify import verify_vds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputFile:
    path: Path
    num_jets: int
    jet_counts: Mapping[str, int]


# --------------------------------------------------------------------------- resume
def file_is_complete(path: Path, plan: MergePlan, index: int) -> bool:
    """True if ``path`` is output file ``index`` of ``plan``, with the planned counts."""
    try:
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            if (attrs.get("merge_plan_hash") != plan.plan_hash
                    or int(attrs.get("merge_file_index", -1)) != index):
                return False
            if json.loads(attrs["jet_counts"]) != dict(plan.file_counts[index]):
                return False
            return all(f[g.name].shape[0] == plan.file_sizes[index] for g in plan.groups)
    except (OSError, KeyError, ValueError, TypeError):
        return False


def prepare_staging(paths: SplitPaths, plan: MergePlan) -> list[int]:
    """Reset the staging area to ``plan`` and return the output files still to write."""
    marker = paths.staging / "plan.json"
    try:
        same = json.loads(marker.read_text()).get("plan_hash") == plan.plan_hash
    except (OSError, ValueError):
        same = False
    if not same and paths.staging.exists():
        log.info("%s: discarding staged files of a different plan", paths.staging)
        shutil.rmtree(paths.staging)
    paths.staging.mkdir(parents=True, exist_ok=True)
    for stale in paths.staging.glob(".*.tmp-*"):
        stale.unlink(missing_ok=True)
    _write_json(marker, {"plan_hash": plan.plan_hash, "split": plan.split,
                         "files": [paths.name(k) for k in range(len(plan.file_sizes))]})
    todo = []
    for k in range(len(plan.file_sizes)):
        if not any(file_is_complete(p, plan, k) for p in (paths.staged(k), paths.final(k))):
            paths.staged(k).unlink(missing_ok=True)
            todo.append(k)
    return todo


def already_merged(paths: SplitPaths, plan: MergePlan) -> bool:
    """True if ``plan`` was published completely by an earlier run."""
    try:
        record = json.loads(paths.record.read_text())
    except (OSError, ValueError):
        return False
    if record.get("plan_hash") != plan.plan_hash or not paths.vds.is_file():
        return False
    if not all(file_is_complete(paths.final(k), plan, k) for k in range(len(plan.file_sizes))):
        return False
    return not verify_vds(paths.vds).problems  # a virtual file pointing elsewhere is redone


# --------------------------------------------------------------------------- publish
def check_bookkeeping(plan: MergePlan, cat: Catalogue, counts: Sequence[Mapping[str, int]]
                      ) -> dict[str, int]:
    """Jets written per flavour must equal the catalogue's; returns the written counts."""
    out = {f: sum(c.get(f, 0) for c in counts) for f in cat.num_jets[plan.split]}
    expected = {f: int(n) for f, n in cat.num_jets[plan.split].items()}
    if out != expected:
        diff = {f: out[f] - expected[f] for f in out if out[f] != expected[f]}
        raise BookkeepingError(f"merge {plan.split}: jets written per flavour {out} differ from "
                               f"the catalogue's {expected} (difference {diff}); nothing "
                               "published")
    return out


def publish(paths: SplitPaths, plan: MergePlan, attrs: Mapping[str, Any],
            jets_name: str, flavour_names: Sequence[str]) -> tuple[OutputFile, ...]:
    """Replace the split's published files by this plan's, then write the VDS and record."""
    paths.record.unlink(missing_ok=True)  # first: a crash from here on leaves no claim
    paths.vds.unlink(missing_ok=True)
    keep = {paths.name(k) for k in range(len(plan.file_sizes))}
    pattern = re.compile(rf"pp_output_{plan.split}(-full)?_\d+\.h5$")  # and pre-0.2 names
    for old in paths.split_dir.glob(f"pp_output_{plan.split}*.h5"):
        if pattern.fullmatch(old.name) and old.name not in keep:
            log.info("removing stale output %s", old)
            old.unlink()
    for k in range(len(plan.file_sizes)):
        if paths.staged(k).exists():
            paths.staged(k).replace(paths.final(k))
    files = tuple(OutputFile(paths.final(k), n, plan.file_counts[k])
                  for k, n in enumerate(plan.file_sizes))
    totals = {f: sum(o.jet_counts[f] for o in files) for f in flavour_names}
    vds_attrs = {**attrs, "unique_jets": sum(totals.values()), "jet_counts": json.dumps(totals),
                 "merge_plan_hash": plan.plan_hash, "num_files": len(files)}
    write_virtual_file(paths.vds, [(o.path, o.num_jets) for o in files],
                       {g.name: (g.dtype, g.shape) for g in plan.groups}, vds_attrs,
                       {jets_name: {FLAVOUR_LABEL: list(flavour_names)}})
    problems = verify_vds(paths.vds).problems
    if problems:
        raise BookkeepingError(problems[0])
    _write_json(paths.record, {
        "plan_hash": plan.plan_hash, "split": plan.split, "version": __version__,
        "config": attrs.get("config_path", ""), "config_hash": attrs.get("config_hash", ""),
        "histograms_hash": attrs.get("histograms_hash", ""),
        "catalogue_hash": attrs.get("catalogue_hash", ""),
        "vds": str(paths.vds), "jet_counts": totals,
        "files": [{"path": str(o.path), "num_jets": o.num_jets,
                   "jet_counts": dict(o.jet_counts)} for o in files]})
    shutil.rmtree(paths.staging, ignore_errors=True)
    return files


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def merge_record(config: Config, split: str) -> dict[str, Any]:
    """The ``merge-record.json`` of a completed merge of ``split`` by this config.

    Raises
    ------
    InputError
        No completed merge, or one made by another config (the line says what to rerun).
    """
    paths = SplitPaths(config.global_.out_dir, split)
    try:
        record = json.loads(paths.record.read_text())
    except FileNotFoundError:
        raise InputError(f"{paths.record}: no completed merge of {split} "
                         f"(run `upp-grid merge -c CFG --split {split}`)") from None
    except ValueError as err:
        raise InputError(f"{paths.record}: unreadable merge record: {err}") from None
    if record.get("config_hash") != config.config_hash:
        raise InputError(f"{paths.split_dir}: merged with another config "
                         f"({record.get('config') or 'unknown'}), not {config.path}: rerun "
                         f"`upp-grid merge -c CFG --split {split}`")
    return record


def merged_files(config: Config, split: str) -> tuple[OutputFile, ...]:
    """The files a completed merge of ``split`` by this config published."""
    record = merge_record(config, split)
    return tuple(OutputFile(Path(f["path"]), int(f["num_jets"]), f["jet_counts"])
                 for f in record["files"])

