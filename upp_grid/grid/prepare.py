"""Prepare downloaded split outputs for training: the catalogue, then weights, merge and norm.

The same stage functions as ``upp-grid run`` after its split, so a grid download and a local
run of the same inputs give the same training files.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from upp_grid.config import SPLITS, Config
from upp_grid.grid.downloads import Advance, ProgressFactory
from upp_grid.stages.catalogue import Catalogue, catalogue_path, write_catalogue

if TYPE_CHECKING:
    from upp_grid.stages.run import RunSummary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What the prepare step wrote: the catalogue, and the chain's summary unless
    ``--prepare-only``."""

    catalogue: Catalogue
    summary: RunSummary | None = None


def prepare(config: Config, prepare_only: bool = False, plots: bool = True,
            progress: ProgressFactory | None = None) -> Prepared:
    """The catalogue, then (unless ``prepare_only``) weights, merge of every split and norm.

    The same stage functions as ``upp-grid run`` after its split.
    """
    from upp_grid.stages.merge import merge_stage, merge_work
    from upp_grid.stages.normalise import norm_stage
    from upp_grid.stages.run import RunSummary, StageTime
    from upp_grid.stages.weights import planned_jets, weights_stage

    bar = progress or _no_progress
    timings: list[StageTime] = []
    start = time.perf_counter()
    cat = write_catalogue(config)
    timings.append(StageTime("catalogue", time.perf_counter() - start))
    log.info("catalogue %s: %s", catalogue_path(config),
             ", ".join(f"{s} {cat.total(s)} jets" for s in SPLITS))
    if prepare_only:
        return Prepared(cat)
    start = time.perf_counter()
    with bar(planned_jets(config), "weights") as advance:
        weights = weights_stage(config, plots=plots, progress=advance)
    timings.append(StageTime("weights", time.perf_counter() - start))
    start = time.perf_counter()
    with bar(merge_work(config, SPLITS), "merge (read + write)") as advance:
        merged = merge_stage(config, SPLITS, progress=advance)
    timings.append(StageTime("merge", time.perf_counter() - start))
    start = time.perf_counter()
    with bar(cat.total("train"), "norm") as advance:
        norm = norm_stage(config, progress=advance)
    timings.append(StageTime("norm", time.perf_counter() - start))
    by_split = {r.split: r for r in merged.results}
    summary = RunSummary(
        jets_in={s: dict(cat.num_jets[s]) for s in SPLITS},
        jets_out={s: dict(by_split[s].jets_out) for s in SPLITS},
        files={s: tuple(f.path for f in by_split[s].files) for s in SPLITS},
        vds={s: by_split[s].vds for s in SPLITS},
        norm=norm, histograms=weights.histograms, timings=tuple(timings), split_skipped=0,
        merge_reused={s: by_split[s].reused for s in SPLITS})
    return Prepared(cat, summary)


def _no_progress(total: int, what: str, unit: str = "jets") -> AbstractContextManager[Advance]:
    return nullcontext(lambda n: None)
