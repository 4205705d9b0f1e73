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
4. **Completeness.** The files of every input container come from rucio (``list_files`` on
   the inDS), so no state DB is needed. From the provenance each job output records, every
   input file must be covered by exactly one job: inputs covered twice are an error naming
   each; inputs without outputs (a failed job, a task that is not done) are listed by name,
   and the command refuses to prepare without them unless ``--allow-partial``, which records
   what was left out (``<components_dir>/left-out-<tag>.yaml`` and the state DB). Loss is
   never silent.
5. **Lifetime.** Output containers whose files are only on scratch disks with no rule keeping
   them are warned about, with their expiry (:mod:`upp_grid.grid.output_lifetime`).
6. **Prepare** (:mod:`upp_grid.grid.prepare`): the catalogue (``organised-components.yaml``),
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
from upp_grid.grid.output_lifetime import tag_lifetime_warnings
from upp_grid.grid.outputs import (
    TagOutputs,
    find_incomplete,
    find_outputs,
    input_files,
    list_outputs,
    record_left_out,
)
from upp_grid.grid.prepare import Prepared, prepare
from upp_grid.grid.rucio import RucioSource
from upp_grid.grid.sources import Source, default_backend, open_source
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
    warnings: tuple[str, ...] = ()  #: outputs that expire on scratch disks


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
    warnings: list[str] = []
    with StateDB(default_state_path(config)) as state:
        # a tag downloaded before names its user: its files' scope
        user = options.user or download_user(state, options.tag)
        outputs = find_outputs(config, options.tag, state, user)
        source = None
        if options.download:
            source = _source(outputs, options)
            wanted, result = _fetch(outputs, options, source, state, components_dir,
                                    progress, config.jets_name)
            description = source.description
            warnings = _lifetime_warnings(outputs, source, state)
        else:
            wanted = verified_downloads(state, options.tag)
            result, description = None, "files downloaded before (--no-download)"
        inputs = input_files(outputs, source, state)
        incomplete = tuple(find_incomplete(outputs, wanted, inputs))
        _check_complete(incomplete, options.allow_partial)
        record_left_out(state, components_dir, options.tag, incomplete)
    if not options.download:  # a download checked before fetching (_fetch)
        check_layout(components_dir, options.tag, (w.dest for w in wanted))
    prepared = prepare(config, options.prepare_only, options.plots, progress)
    return DownloadReport(options.tag, description, outputs.containers, len(wanted),
                          sum(w.remote.size for w in wanted), result, incomplete, prepared,
                          tuple(warnings))


def _source(outputs: TagOutputs, options: DownloadOptions) -> Source:
    sub = outputs.submission
    backend = options.backend or default_backend(sub)
    if sub is not None and backend != default_backend(sub):
        log.warning("tag %s ran on the %s backend; reading %s as asked", options.tag,
                    sub.backend, backend)
    return open_source(backend, options.tag, sub, outputs.state_path)


def _fetch(outputs: TagOutputs, options: DownloadOptions, source: Source, state: StateDB,
           components_dir: Path, progress: ProgressFactory | None, jets_name: str
           ) -> tuple[list[Wanted], TransferResult]:
    """List the tag's containers and fetch what is not verified yet; raise on failures."""
    wanted = list_outputs(outputs, source, components_dir, options.policy)
    check_layout(components_dir, options.tag, (w.dest for w in wanted), before_fetch=True)
    log.info("%s: %d output containers, %d files (%s) in %s", options.tag, outputs.containers,
             len(wanted), human_bytes(sum(w.remote.size for w in wanted)), source.description)
    staging = staging_dir(components_dir, options.tag)
    result = transfer(options.tag, wanted, source, state, staging, options.threads,
                      options.policy, progress, jets_name)
    _raise_failures(result)
    return wanted, result


def _lifetime_warnings(outputs: TagOutputs, source: Source, state: StateDB) -> list[str]:
    """Output containers only on scratch disks with no rule keeping them (rucio only)."""
    if not isinstance(source, RucioSource):
        return []
    lines = tag_lifetime_warnings(outputs, source, state)
    for line in lines:
        log.warning("%s", line)
    return lines


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
        raise PartialOutputsError(f"incomplete outputs: {incomplete[0]}"
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
        lines.append(f"  WARNING left out (--allow-partial): {line}")
    for line in report.warnings:
        lines.append(f"  WARNING {line}")
    cat = report.prepared.catalogue
    lines.append("catalogue: " + ", ".join(f"{s} {cat.total(s):,} jets" for s in SPLITS))
    return lines
