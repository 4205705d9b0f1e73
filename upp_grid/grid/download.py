"""``upp-grid download``: fetch a tag's grid outputs, verify them, and prepare the training files.

Flow
----
1. **Find the outputs** (:mod:`upp_grid.grid.outputs`): the tag's tasks and output containers
   from the state DB, or derived from the config, the tag and the user.
2. **List** every output container (``DIDClient.list_files``: sizes and adler32) from the source
   (:mod:`upp_grid.grid.sources`: rucio or the local store). Missing containers are an error
   that lists them all with the reason the state DB gives.
3. **Fetch** the files not yet verified and **verify** each (:mod:`upp_grid.grid.transfer`);
   every verified file is recorded (:mod:`upp_grid.grid.download_records`), so a rerun fetches
   nothing twice. A file still bad after the retries fails the command, naming the dataset
   and the file.
4. **Completeness.** From the provenance each job output records: an input covered by two jobs
   is an error naming it; inputs without outputs (a failed job, a task that is not done) are
   listed, and the command refuses to prepare without them unless ``--allow-partial``. Loss is
   never silent.
5. **Prepare** (:mod:`upp_grid.grid.prepare`): the catalogue (``organised-components.yaml``),
   then, unless ``--prepare-only``, weights, merge (train, val, test) and norm, locally.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from upp_grid.config import SPLITS, Config
from upp_grid.fsutil import human_bytes
from upp_grid.grid.download_records import (
    DownloadError,
    ProgressFactory,
    Wanted,
    check_layout,
    download_user,
    more_listed,
    staging_dir,
    verified_downloads,
)
from upp_grid.grid.outputs import TagOutputs, find_incomplete, find_outputs, list_outputs
from upp_grid.grid.prepare import Prepared, prepare
from upp_grid.grid.sources import default_backend, open_source
from upp_grid.grid.state import StateDB, default_state_path
from upp_grid.grid.transfer import RetryPolicy, TransferResult, transfer

log = logging.getLogger(__name__)


class PartialOutputsError(DownloadError):
    """Inputs without outputs: preparing would silently lose their jets."""


@dataclass(frozen=True)
class DownloadOptions:
    """The options of ``upp-grid download``."""

    tag: str
    backend: str | None = None  #: ``rucio`` / ``local``; None: the tag's backend (rucio)
    threads: int = 4
    download: bool = True  #: False: ``--no-download``
    prepare_only: bool = False
    allow_partial: bool = False
    user: str | None = None  #: ``--rucio-user``
    plots: bool = True
    policy: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass(frozen=True)
class DownloadReport:
    """What ``download`` did, for the CLI's summary."""

    tag: str
    source: str
    containers: int
    files: int
    bytes: int
    transfer: TransferResult | None
    incomplete: tuple[str, ...]
    prepared: Prepared


def download_and_prepare(config: Config, options: DownloadOptions,
                         progress: ProgressFactory | None = None) -> DownloadReport:
    """``upp-grid download``: find, list, fetch and verify the tag's outputs, then prepare.

    ``progress(total, what, unit)`` gives a context manager yielding ``advance(n)``
    (:func:`upp_grid.progress.progress_bar`).

    Raises
    ------
    MissingOutputsError, DownloadError, PartialOutputsError, RucioConfigError
        One line each, naming the container (dataset) and the file.
    """
    components_dir = config.global_.components_dir
    with StateDB(default_state_path(config)) as state:
        # a tag downloaded before names its user: its files' scope
        user = options.user or download_user(state, options.tag)
        outputs = find_outputs(config, options.tag, state, user)
        if options.download:
            wanted, result, description = _fetch(outputs, options, state, components_dir,
                                                  progress, config.jets_name)
        else:
            wanted = verified_downloads(state, options.tag)
            result, description = None, "files downloaded before (--no-download)"
    incomplete = tuple(find_incomplete(outputs, wanted, config))
    _check_complete(incomplete, options.allow_partial)
    check_layout(components_dir, options.tag, (w.dest for w in wanted))
    prepared = prepare(config, options.prepare_only, options.plots, progress)
    return DownloadReport(options.tag, description, outputs.containers, len(wanted),
                          sum(w.remote.size for w in wanted), result, incomplete, prepared)


def _fetch(outputs: TagOutputs, options: DownloadOptions, state: StateDB, components_dir: Path,
           progress: ProgressFactory | None, jets_name: str
           ) -> tuple[list[Wanted], TransferResult, str]:
    """List the tag's containers and fetch what is not verified yet; raise on failures."""
    sub = outputs.submission
    backend = options.backend or default_backend(sub)
    if sub is not None and backend != default_backend(sub):
        log.warning("tag %s ran on the %s backend; reading %s as asked", options.tag,
                    sub.backend, backend)
    source = open_source(backend, options.tag, sub, outputs.state_path)
    wanted = list_outputs(outputs, source, components_dir, options.policy)
    log.info("%s: %d output containers, %d files (%s) in %s", options.tag, outputs.containers,
             len(wanted), human_bytes(sum(w.remote.size for w in wanted)), source.description)
    staging = staging_dir(components_dir, options.tag)
    result = transfer(options.tag, wanted, source, state, staging, options.threads,
                      options.policy, progress, jets_name)
    _raise_failures(result)
    return wanted, result, source.description


def _raise_failures(result: TransferResult) -> None:
    if not result.failures:
        return
    first = next(iter(result.failures.values()))
    more = more_listed(len(result.failures), "files failed")
    raise DownloadError(f"{first}{more}; the other files are verified and kept")


def _check_complete(incomplete: Sequence[str], allow_partial: bool) -> None:
    for line in incomplete:
        log.warning("incomplete: %s", line)
    if incomplete and not allow_partial:
        raise PartialOutputsError(f"inputs without outputs: {incomplete[0]}"
                                  f"{more_listed(len(incomplete))}; the downloaded files are "
                                  "kept; finish the tasks (`upp-grid retry`) or pass "
                                  "--allow-partial to prepare without them")


def summary_lines(report: DownloadReport) -> list[str]:
    """The command's summary for the user, a few plain lines."""
    lines = [f"download {report.tag}: {report.containers} output containers, {report.files} "
             f"files, {human_bytes(report.bytes)} from {report.source}"]
    t = report.transfer
    if t is not None:
        lines.append(f"  fetched and verified now: {t.fetched} files "
                     f"({human_bytes(t.bytes_fetched)}); verified before: "
                     f"{t.already + t.adopted}")
    for line in report.incomplete:
        lines.append(f"  WARNING inputs without outputs (--allow-partial): {line}")
    cat = report.prepared.catalogue
    lines.append("catalogue: " + ", ".join(f"{s} {cat.total(s):,} jets" for s in SPLITS))
    return lines
