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
from upp_grid.grid.download_records import Advance, ProgressFactory
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
    from upp_grid.stages.run import StageTime, after_split

    start = time.perf_counter()
    cat = write_catalogue(config)
    catalogue_time = StageTime("catalogue", time.perf_counter() - start)
    log.info("catalogue %s: %s", catalogue_path(config),
             ", ".join(f"{s} {cat.total(s)} jets" for s in SPLITS))
    if prepare_only:
        return Prepared(cat)
    bar = progress or _no_progress
    summary = after_split(config, cat, plots=plots, bar=bar, timings=(catalogue_time,))
    return Prepared(cat, summary)


def _no_progress(total: int, what: str, unit: str = "jets") -> AbstractContextManager[Advance]:
    return nullcontext(lambda n: None)
