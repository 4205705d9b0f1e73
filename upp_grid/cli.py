"""The ``upp-grid`` command line: parse arguments, call one library function, print.

Errors the user can fix (:class:`UppGridError`) are printed as one line with exit code 1;
``-v`` shows debug logs and the traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click

from upp_grid import __version__
from upp_grid.errors import ConfigError, UppGridError, is_disk_full, written_path

log = logging.getLogger("upp_grid")

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Preprocessing config (UPP's YAML language).",
)


def _setup_logging(verbose: bool) -> None:
    from upp_grid.console import log_handler

    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("upp_grid")
    root.handlers[:] = [log_handler(verbose)]
    root.setLevel(level)
    root.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="upp-grid")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Reweighted flavour-tagging training datasets from TDD ntuples, locally or on the grid."""
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _setup_logging(verbose)


def _load(config_path: Path):
    from upp_grid.config import load_config

    return load_config(config_path)


def _load_to_write(config_path: Path, *, components: bool = False, out: bool = False,
                   overwrite: bool = False):
    """The config, with its base_dir's writer lock held until the command ends, and the
    directories the command writes checked to be its own (:mod:`upp_grid.ownership`)."""
    from upp_grid.lock import writer_lock
    from upp_grid.ownership import check_components_dir, check_out_dir

    config = _load(config_path)
    click.get_current_context().with_resource(writer_lock(config.global_.base_dir))
    if components:
        check_components_dir(config, overwrite)
    if out:
        check_out_dir(config, overwrite)
    return config


OVERWRITE_OUT = click.option("--overwrite", is_flag=True, help="Replace the outputs of "
                             "another config in out_dir (which then belongs to this one).")


@cli.command("make-mock")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory to write the mock containers into.")
@click.option("--jets", "num_jets", default=100_000, show_default=True, type=click.IntRange(1),
              help="Total number of jets over all files.")
@click.option("--files", "num_files", default=3, show_default=True, type=click.IntRange(1),
              help="Number of files (alternating ttbar, Z').")
@click.option("--seed", default=42, show_default=True, type=int, help="Random seed.")
def make_mock_cmd(out_dir: Path, num_jets: int, num_files: int, seed: int) -> None:
    """Write deterministic mock TDD ntuples (jets + 40 tracks per jet)."""
    from upp_grid.mock import make_mock
    from upp_grid.progress import progress_bar

    with progress_bar(num_jets, "make-mock") as advance:
        paths = make_mock(out_dir, num_jets=num_jets, num_files=num_files, seed=seed,
                          progress=advance)
    for path in paths:
        click.echo(str(path))


@cli.command("check")
@CONFIG_OPTION
@click.option("--config-only", is_flag=True, help="Validate the config and print the plan "
              "without reading (or needing) the inputs.")
def check_cmd(config_path: Path, config_only: bool) -> None:
    """Validate the config and its inputs, then print the plan."""
    from upp_grid.check import check_inputs
    from upp_grid.report import print_plan

    try:
        config = _load(config_path)
    except ConfigError as err:
        if len(err.problems) == 1:
            raise
        for problem in err.problems:  # every problem, one line each
            click.echo(f"upp-grid: error: {problem}", err=True)
        sys.exit(1)
    if config_only:
        print_plan(config, None)
        click.echo(f"config OK: {config_path} (inputs not read: --config-only)")
        return
    report = check_inputs(config)
    print_plan(config, report)
    if len(report.problems) == 1:
        raise UppGridError(report.problems[0])
    for problem in report.problems:
        click.echo(f"upp-grid: error: {problem}", err=True)
    if report.problems:
        sys.exit(1)


@cli.command("split")
@CONFIG_OPTION
@click.option("--container", default=None, help="Only this container (a sample pattern as "
              "written in the config, or a sample name).")
@click.option("--files", default=None, help="Comma-separated input files (of --container).")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Processes (default: min(files, cores)).")
@click.option("--overwrite", is_flag=True, help="Redo inputs that are already split (and take "
              "over a components_dir another config split).")
def split_cmd(config_path: Path, container: str | None, files: str | None,
              workers: int | None, overwrite: bool) -> None:
    """Split every input file into split x region x sample x flavour component files."""
    from upp_grid.report import print_split_summary

    config = _load_to_write(config_path, components=True, overwrite=overwrite)
    file_list = [f for f in files.split(",") if f] if files else None
    summary, cat = _run_split(config, container, file_list, workers, overwrite)
    print_split_summary(config, summary, cat)


def _run_split(config, container=None, files=None, workers=None, overwrite=False):
    from upp_grid.progress import progress_bar
    from upp_grid.stages.split_local import split_stage

    with progress_bar(None, "split") as advance:
        return split_stage(config, container, files, workers, overwrite, progress=advance,
                           total=advance.set_total)


@cli.command("weights")
@CONFIG_OPTION
@click.option("--no-plots", is_flag=True, help="Skip the plots in <out_dir>/plots/.")
@OVERWRITE_OUT
def weights_cmd(config_path: Path, no_plots: bool, overwrite: bool) -> None:
    """Histogram the train classes and write <out_dir>/histograms.h5 and its report."""
    from upp_grid.report import print_weights_report

    config = _load_to_write(config_path, out=True, overwrite=overwrite)
    print_weights_report(_run_weights(config, plots=not no_plots))


def _run_weights(config, plots=True):
    from upp_grid.progress import progress_bar
    from upp_grid.stages.weights import planned_jets, weights_stage

    with progress_bar(planned_jets(config), "weights") as advance:
        _, pending = weights_stage(config, plots=plots, progress=advance)
    with pending, progress_bar(pending.planned, "plots", unit="plots",
                               enabled=pending.planned > 0) as advance:
        pending.wait(progress=advance)
    return pending.report


@cli.command("merge")
@CONFIG_OPTION
@click.option("--split", "split", default="all", show_default=True,
              type=click.Choice(["train", "val", "test", "all"]),
              help="Which split(s) to merge.")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Processes reading and threads compressing (default: every core).")
@OVERWRITE_OUT
def merge_cmd(config_path: Path, split: str, workers: int | None, overwrite: bool) -> None:
    """Shuffle a split's components into the final files, with weights attached."""
    from upp_grid.progress import progress_bar
    from upp_grid.report import print_merge_summary
    from upp_grid.stages.merge import merge_stage, merge_work, parse_splits

    config = _load_to_write(config_path, out=True, overwrite=overwrite)
    splits = parse_splits(split)
    with progress_bar(merge_work(config, splits), "merge") as advance:
        summary = merge_stage(config, splits, progress=advance, workers=workers)
    print_merge_summary(config, summary)


@cli.command("norm")
@CONFIG_OPTION
@click.option("--weighted", is_flag=True,
              help="Weight every entry by its jet's reweighting weight.")
@click.option("--weight", default=None,
              help="The jets weight field for --weighted (default: the first jets reweight).")
@OVERWRITE_OUT
def norm_cmd(config_path: Path, weighted: bool, weight: str | None, overwrite: bool) -> None:
    """Write norm_dict.yaml and class_dict.yaml from the merged train files."""
    from upp_grid.progress import progress_bar
    from upp_grid.report import print_norm_result
    from upp_grid.stages.merge import merged_files
    from upp_grid.stages.normalise import norm_stage

    config = _load_to_write(config_path, out=True, overwrite=overwrite)
    jets = sum(f.num_jets for f in merged_files(config, "train"))
    with progress_bar(jets, "norm") as advance:
        result = norm_stage(config, weighted=weighted or weight is not None, weight=weight,
                            progress=advance)
    print_norm_result(result)


@cli.command("verify")
@click.argument("out_dir", type=click.Path(path_type=Path))
def verify_cmd(out_dir: Path) -> None:
    """Check that every virtual file in OUT_DIR reads real data: each source found (absolute
    path, else next to the virtual file), of the rows mapped, and the counts as recorded."""
    from upp_grid.report import print_verify
    from upp_grid.stages.verify import verify_dir

    reports = verify_dir(out_dir)
    print_verify(reports)
    problems = [p for r in reports for p in r.problems]
    if len(problems) == 1:
        raise UppGridError(problems[0])
    for problem in problems:
        click.echo(f"upp-grid: error: {problem}", err=True)
    if problems:
        sys.exit(1)


@cli.command("run")
@CONFIG_OPTION
@click.option("--no-plots", is_flag=True, help="Skip the weights plots.")
@click.option("--split", "split", default="all", show_default=True,
              type=click.Choice(["train", "val", "test", "all"]),
              help="Which split(s) to merge (split, weights and norm run as always).")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Split processes (default: min(files, cores)) and merge workers "
                   "(default: every core).")
@click.option("--overwrite", is_flag=True, help="Redo inputs already split, and take over "
              "directories another config wrote.")
def run_cmd(config_path: Path, no_plots: bool, split: str, workers: int | None,
            overwrite: bool) -> None:
    """Run split, weights, merge (train, val, test) and norm locally; resumes after a crash."""
    from upp_grid.progress import progress_bar
    from upp_grid.report import print_run_summary
    from upp_grid.stages.merge import parse_splits
    from upp_grid.stages.run import run_chain

    config = _load_to_write(config_path, components=True, out=True, overwrite=overwrite)
    print_run_summary(config, run_chain(config, plots=not no_plots, bar=progress_bar,
                                        splits=parse_splits(split), workers=workers,
                                        overwrite=overwrite))


@cli.command("download")
@CONFIG_OPTION
@click.option("--tag", required=True, help="The submission tag.")
@click.option("--backend", type=click.Choice(["rucio", "local"]), default=None,
              help="Where the outputs are (default: the tag's backend; rucio for PanDA).")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 50),
              help="Parallel file transfers (rucio: 5 per client; above 5, several clients "
                   "side by side).")
@click.option("--no-download", is_flag=True,
              help="Skip the transfer: prepare from files already downloaded and verified.")
@click.option("--prepare-only", is_flag=True,
              help="Write the catalogue only; no weights, merge or norm.")
@click.option("--allow-partial", is_flag=True,
              help="Prepare even if some inputs have no outputs (they are listed, and "
                   "recorded in <components_dir>/left-out-<tag>.yaml).")
@click.option("--rucio-user", default=None,
              help="Grid nickname for the dataset names when the tag has no state "
                   "(default: RUCIO_ACCOUNT).")
@click.option("--no-plots", is_flag=True, help="Skip the weights plots.")
def download_cmd(config_path: Path, tag: str, backend: str | None, threads: int,
                 no_download: bool, prepare_only: bool, allow_partial: bool,
                 rucio_user: str | None, no_plots: bool) -> None:
    """Download and verify a tag's grid outputs, then prepare them (catalogue, weights,
    merge, norm)."""
    from upp_grid.grid.download import DownloadOptions, download_and_prepare, summary_lines
    from upp_grid.progress import progress_bar
    from upp_grid.report import print_run_summary

    config = _load_to_write(config_path)
    options = DownloadOptions(tag, backend, threads, not no_download, prepare_only,
                              allow_partial, rucio_user, not no_plots)
    report = download_and_prepare(config, options, progress=progress_bar)
    for line in summary_lines(report):
        click.echo(line)
    if report.prepared.summary is not None:
        print_run_summary(config, report.prepared.summary)


STATE_OPTIONS = (
    click.option("-c", "--config", "config_path", default=None,
                 type=click.Path(path_type=Path, dir_okay=False),
                 help="Config whose base_dir holds the state (upp-grid.sqlite)."),
    click.option("--state", "state", default=None, type=click.Path(path_type=Path,
                                                                    dir_okay=False),
                 help="The state file (overrides -c)."),
)


def _state_options(func: Callable[..., None]) -> Callable[..., None]:
    """``-c CFG`` and ``--state DB``: where the state file is."""
    for option in reversed(STATE_OPTIONS):
        func = option(func)
    return func


@cli.command("submit")
@CONFIG_OPTION
@click.option("--tag", required=True, help="Names the submission (outDS, state, directory).")
@click.option("--backend", type=click.Choice(["panda", "local"]), default="panda",
              show_default=True, help="PanDA, or the same jobs in local processes.")
@click.option("--rucio-user", default=None,
              help="Grid nickname for dataset names (default: RUCIO_ACCOUNT, PANDA_NICKNAME).")
@click.option("--dryrun", is_flag=True,
              help="Build the sandbox and task parameters offline; submit nothing.")
@click.option("--force", is_flag=True,
              help="Submit containers of the tag again (each gets a new outDS).")
@click.option("--platform", default="el9", show_default=True,
              help="OS the jobs run on (prun --architecture @PLATFORM).")
@click.option("--container-image", default=None,
              help="Run the jobs in this image (prun --containerImage); code-only sandbox.")
@click.option("--gb-per-job", default=None, type=click.IntRange(1),
              help="Input GB per job (prun --nGBPerJob; default 10).")
@click.option("--files-per-job", default=None, type=click.IntRange(1, 200),
              help="Input files per job instead (prun --nFilesPerJob).")
@click.option("--dest-se", default=None,
              help="Write the outputs to this RSE (prun --destSE).")
@click.option("--allow-local-python", is_flag=True,
              help="PanDA: accept an env/ whose base Python is not under /cvmfs/.")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Local backend: jobs at a time (default: cores).")
@click.option("--state", default=None, type=click.Path(path_type=Path, dir_okay=False),
              help="State file (default: <base_dir>/upp-grid.sqlite).")
@click.argument("prun_args", nargs=-1, type=click.UNPROCESSED)
def submit_cmd(config_path: Path, tag: str, backend: str, rucio_user: str | None,
               dryrun: bool, force: bool, platform: str, container_image: str | None,
               gb_per_job: int | None, files_per_job: int | None, dest_se: str | None,
               allow_local_python: bool, workers: int | None, state: Path | None,
               prun_args: tuple[str, ...]) -> None:
    """Split on the grid: one task per input container, jobs of about 10 GB of input, one
    output per job.

    Extra prun options go after `--`, e.g. `-- --site ANALY_X`.
    """
    from upp_grid.grid.submit import SubmitRequest, submit
    from upp_grid.grid.tables import format_submit
    from upp_grid.grid.tasks import DEFAULT_GB_PER_JOB, TaskOptions

    if gb_per_job is not None and files_per_job is not None:
        raise UppGridError("--gb-per-job and --files-per-job exclude each other")
    _load_to_write(config_path)  # the sandbox, state and local store are under base_dir
    options = TaskOptions(platform, container_image,
                          None if files_per_job else (gb_per_job or DEFAULT_GB_PER_JOB),
                          files_per_job, dest_se)
    result = submit(SubmitRequest(config_path, tag, backend, rucio_user, dryrun, force,
                                  workers, tuple(prun_args), state, options,
                                  allow_local_python))
    click.echo(format_submit(result))
    if result.problem:
        raise UppGridError(result.problem)


@cli.command("status")
@_state_options
@click.option("--tag", default=None, help="Only this tag.")
@click.option("--failed", is_flag=True,
              help="List the failed jobs: id, inputs, error code, diagnostic, log.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_cmd(config_path: Path | None, state: Path | None, tag: str | None,
               failed: bool, as_json: bool) -> None:
    """Refresh and show the tasks (and local jobs) of every tag."""
    import json

    from upp_grid.grid.control import state_path, status
    from upp_grid.grid.tables import format_status

    report = status(state_path(config_path, state), tag, failed)
    for warning in report.warnings:
        click.echo(f"upp-grid: warning: {warning}", err=True)
    click.echo(json.dumps(report.as_dict(), indent=1) if as_json else format_status(report))


@cli.command("retry")
@_state_options
@click.option("--tag", required=True, help="The submission tag.")
@click.option("--memory", "memory_mb", default=None, type=click.IntRange(1),
              help="New memory per core in MB (JEDI ramCount).")
@click.option("--site", default=None, help="Run the retried jobs at this site.")
@click.option("--excluded-site", "excluded_sites", multiple=True,
              help="Do not run at this site (repeatable).")
@click.option("--gb-per-job", default=None, type=click.IntRange(1),
              help="New input GB per job (JEDI nGBPerJob).")
@click.option("--workers", default=None, type=click.IntRange(1),
              help="Local backend: jobs at a time (default: cores).")
def retry_cmd(config_path: Path | None, state: Path | None, tag: str, memory_mb: int | None,
              site: str | None, excluded_sites: tuple[str, ...], gb_per_job: int | None,
              workers: int | None) -> None:
    """Retry failed, partial and aborted tasks, optionally with new parameters (local
    backend: rerun the failed jobs)."""
    from upp_grid.grid.backend import RetryParams
    from upp_grid.grid.control import retry, state_path
    from upp_grid.grid.tables import format_status

    params = RetryParams(memory_mb, site, tuple(excluded_sites), gb_per_job)
    report = retry(state_path(config_path, state), tag, workers, params)
    click.echo(f"retried: {', '.join(report.acted_on) or 'nothing'}")
    click.echo(format_status(report))
    if report.problem:
        raise UppGridError(report.problem)


@cli.command("kill")
@_state_options
@click.option("--tag", required=True, help="The submission tag.")
def kill_cmd(config_path: Path | None, state: Path | None, tag: str) -> None:
    """Kill the active tasks of a tag, each on its own."""
    from upp_grid.grid.control import kill, state_path
    from upp_grid.grid.tables import format_status

    report = kill(state_path(config_path, state), tag)
    click.echo(f"killed: {', '.join(report.acted_on) or 'nothing'}")
    click.echo(format_status(report))
    if report.refused:
        raise UppGridError(report.problem or "a kill was refused")


@cli.command("replicate")
@_state_options
@click.option("--tag", required=True, help="The submission tag.")
@click.option("--rse", required=True, help="Where to keep the outputs (an RSE or expression).")
@click.option("--lifetime", "lifetime_days", default=None, type=click.FloatRange(min=0.01),
              help="Days the rule keeps them (default: no expiry).")
@click.option("--rucio-user", default=None,
              help="Grid nickname, when the tag is not in the state DB (default: RUCIO_ACCOUNT).")
def replicate_cmd(config_path: Path | None, state: Path | None, tag: str, rse: str,
                  lifetime_days: float | None, rucio_user: str | None) -> None:
    """Keep a tag's grid outputs beyond the 14-day scratch lifetime: one rucio replication
    rule per output container, recorded in the state DB."""
    from upp_grid.grid.control import replicate

    report = replicate(state, config_path, tag, rse, lifetime_days, rucio_user)
    for rule in report.rules:
        what = "rule" if rule.created else "rule existed"
        click.echo(f"{rule.container}: {what} {rule.rule_id} to {rule.rse}")
    life = f"for {lifetime_days:g} days" if lifetime_days else "with no expiry"
    click.echo(f"{len(report.rules)} output container(s) of tag '{tag}' kept on {rse} {life} "
               "(transfers run in rucio: `rucio rule-info <id>` follows one)")


@cli.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("upp-grid-demo"), show_default=True,
              help="Where the mock ntuples and all outputs go.")
@click.option("--jets", "num_jets", default=200_000, show_default=True,
              type=click.IntRange(50_000),
              help="Mock jets to generate (fewer leave the demo's reweighting bins empty).")
@click.option("--seed", default=42, show_default=True, type=int)
def demo_cmd(workdir: Path, num_jets: int, seed: int) -> None:
    """Make mock data in WORKDIR and run every stage on the bundled demo config."""
    import json
    import shutil

    from upp_grid.check import check_inputs
    from upp_grid.demo import write_demo_config
    from upp_grid.fsutil import write_json_atomic
    from upp_grid.mock import make_mock
    from upp_grid.progress import progress_bar
    from upp_grid.report import print_plan

    config_path = write_demo_config(workdir)
    config = _load_to_write(config_path, components=True, out=True)
    ntuples = config.global_.ntuple_dir
    wanted = {"jets": num_jets, "seed": seed, "files": 3}
    marker = ntuples / ".upp-grid-mock.json"
    try:
        made = json.loads(marker.read_text())
    except (OSError, ValueError):
        made = None
    if made != wanted or not any(ntuples.glob("*/*.h5")):
        if ntuples.exists():
            log.info("%s: mock data of %s, remade for --jets %d --seed %d", ntuples,
                     made or "unknown size", num_jets, seed)
            shutil.rmtree(ntuples)
        with progress_bar(num_jets, "make-mock") as advance:
            make_mock(ntuples, num_jets=num_jets, num_files=3, seed=seed, progress=advance)
        write_json_atomic(marker, wanted)
    report = check_inputs(config)
    print_plan(config, report)
    if report.problems:
        raise UppGridError(report.problems[0])
    from upp_grid.report import print_run_summary
    from upp_grid.stages.run import run_chain

    print_run_summary(config, run_chain(config, bar=progress_bar))
    click.echo(f"demo done: rerun any stage with -c {config_path}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: one-line errors, exit codes, tracebacks only with ``-v``."""
    args = list(sys.argv[1:] if argv is None else argv)
    # -v/--verbose is accepted anywhere before a `--` (which starts pass-through options)
    end = args.index("--") if "--" in args else len(args)
    verbose = any(a in ("-v", "--verbose") for a in args[:end])
    args = [a for a in args[:end] if a not in ("-v", "--verbose")] + args[end:]
    if verbose:
        args.insert(0, "-v")
    try:
        cli.main(args=args, prog_name="upp-grid", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("upp-grid: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("upp-grid: interrupted", err=True)
        sys.exit(130)
    except UppGridError as err:
        if verbose:
            raise
        click.echo(f"upp-grid: error: {err}", err=True)
        sys.exit(1)
    except OSError as err:
        if verbose:
            raise
        if is_disk_full(err):
            command = next((a for a in args if not a.startswith("-")), "upp-grid")
            where = written_path(err) or "its outputs"
            click.echo(f"upp-grid: error: {command}: no space left on device writing {where}; "
                       "free some space and rerun (complete outputs are kept, partial ones "
                       "were removed)", err=True)
            sys.exit(1)
        click.echo(f"upp-grid: error: {err}", err=True)
        sys.exit(1)
    except Exception as err:  # last resort, still one line
        if verbose:
            raise
        click.echo(f"upp-grid: internal error: {type(err).__name__}: {err} "
                   "(rerun with -v for the traceback)", err=True)
        sys.exit(2)
