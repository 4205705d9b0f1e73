"""The ``upp-grid`` command line: parse arguments, call one library function, print.

Errors the user can fix (:class:`UppGridError`) are printed as one line with exit code 1;
``-v`` shows debug logs and the traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from upp_grid import __version__
from upp_grid.errors import ConfigError, UppGridError

log = logging.getLogger("upp_grid")

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Preprocessing config (UPP's YAML language).",
)


def _setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)-7s %(message)s" if verbose
                                           else "%(message)s"))
    root = logging.getLogger("upp_grid")
    root.handlers[:] = [handler]
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
def check_cmd(config_path: Path) -> None:
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
@click.option("--overwrite", is_flag=True, help="Redo inputs that are already split.")
def split_cmd(config_path: Path, container: str | None, files: str | None,
              workers: int | None, overwrite: bool) -> None:
    """Split every input file into split x region x sample x flavour component files."""
    from upp_grid.report import print_split_summary

    config = _load(config_path)
    file_list = [Path(f) for f in files.split(",") if f] if files else None
    summary, cat = _run_split(config, container, file_list, workers, overwrite)
    print_split_summary(config, summary, cat)


def _run_split(config, container=None, files=None, workers=None, overwrite=False):
    from upp_grid.progress import progress_bar
    from upp_grid.stages.split_local import pending_units, split_stage

    todo = sum(u.num_jets for u in pending_units(config, container, files, overwrite)[0])
    with progress_bar(todo, "split") as advance:
        return split_stage(config, container, files, workers, overwrite, progress=advance)


@cli.command("weights")
@CONFIG_OPTION
@click.option("--no-plots", is_flag=True, help="Skip the plots in <out_dir>/plots/.")
def weights_cmd(config_path: Path, no_plots: bool) -> None:
    """Histogram the train classes and write <out_dir>/histograms.h5 and its report."""
    from upp_grid.report import print_weights_report

    config = _load(config_path)
    print_weights_report(_run_weights(config, plots=not no_plots))


def _run_weights(config, plots=True):
    from upp_grid.progress import progress_bar
    from upp_grid.stages.weights import planned_jets, weights_stage

    with progress_bar(planned_jets(config), "weights") as advance:
        return weights_stage(config, plots=plots, progress=advance)


@cli.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False),
              default=Path("upp-grid-demo"), show_default=True,
              help="Where the mock ntuples and all outputs go.")
@click.option("--jets", "num_jets", default=200_000, show_default=True, type=click.IntRange(1000),
              help="Mock jets to generate.")
@click.option("--seed", default=42, show_default=True, type=int)
def demo_cmd(workdir: Path, num_jets: int, seed: int) -> None:
    """Make mock data in WORKDIR and run every stage on the bundled demo config."""
    from upp_grid.check import check_inputs
    from upp_grid.demo import write_demo_config
    from upp_grid.mock import make_mock
    from upp_grid.progress import progress_bar
    from upp_grid.report import print_plan

    config_path = write_demo_config(workdir)
    config = _load(config_path)
    ntuples = config.global_.ntuple_dir
    if not any(ntuples.glob("*/*.h5")):
        with progress_bar(num_jets, "make-mock") as advance:
            make_mock(ntuples, num_jets=num_jets, num_files=3, seed=seed, progress=advance)
    report = check_inputs(config)
    print_plan(config, report)
    if report.problems:
        raise UppGridError(report.problems[0])
    from upp_grid.report import print_split_summary

    summary, cat = _run_split(config)
    print_split_summary(config, summary, cat)
    from upp_grid.report import print_weights_report

    print_weights_report(_run_weights(config))
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
        click.echo(f"upp-grid: error: {err}", err=True)
        sys.exit(1)
    except Exception as err:  # last resort, still one line
        if verbose:
            raise
        click.echo(f"upp-grid: internal error: {type(err).__name__}: {err} "
                   "(rerun with -v for the traceback)", err=True)
        sys.exit(2)
