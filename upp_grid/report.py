"""Human-readable tables for the CLI (rich). Library code returns data; this renders it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from upp_grid.check import CheckReport
from upp_grid.config import AUTO_JETS, INCLUSIVE, SPLITS, Config


def _console() -> Console:
    con = Console(highlight=False, stderr=False)
    if not con.is_terminal:
        con = Console(highlight=False, width=140)
    return con


def print_plan(config: Config, report: CheckReport | None = None) -> None:
    """Print components, splits, input containers and reweights of ``config``."""
    con = _console()
    con.print(f"[bold]config[/bold] {config.path}  (hash {config.config_hash[:12]})")
    g = config.global_
    con.print(f"ntuples {g.ntuple_dir}\ncomponents {g.components_dir}\noutput {g.out_dir}")

    splits = Table(title="splits")
    for col in ("split", "cuts"):
        splits.add_column(col, overflow="fold")
    for split in SPLITS:
        splits.add_row(split, ", ".join(str(c) for c in config.global_cuts[split]) or "-")
    con.print(splits)
    con.print(test_rule(config))

    regions = Table(title="regions")
    for col in ("region", "cuts"):
        regions.add_column(col, overflow="fold")
    for r in config.regions:
        regions.add_row(r.name, ", ".join(str(c) for c in r.cuts) or "-")
    con.print(regions)

    comps = Table(title=f"components ({len(config.components)})")
    for col in ("region", "sample", "flavours", "train/val/test cap"):
        comps.add_column(col, overflow="fold")
    groups: dict[tuple[str, str], list] = {}
    for c in config.components:
        groups.setdefault((c.region.name, c.sample.name), []).append(c)
    for (region, sample), members in groups.items():
        first = members[0]
        caps = "/".join(_cap(first.cap(s)) for s in SPLITS)
        comps.add_row(region, sample, ", ".join(c.flavour.name for c in members), caps)
    con.print(comps)
    con.print("flavour_label: " + ", ".join(f"{i}={n}" for i, n in
                                            enumerate(config.flavour_names)))

    if report is not None:
        cont = Table(title="input containers")
        for col in ("sample", "pattern", "files", "jets"):
            cont.add_column(col, overflow="fold")
        for rep in report.containers:
            cont.add_row(rep.container.sample, rep.container.pattern,
                         str(len(rep.container.files)), f"{rep.num_jets:,}")
        con.print(cont)
        if report.nonfinite:
            found = ", ".join(f"{k} {n:,}" for k, n in sorted(report.nonfinite.items()))
            con.print(f"[yellow]NaN/inf in the first chunk of the inputs[/yellow]: {found} "
                      f"(global.nan_policy: {config.global_.nan_policy})")

    if config.reweighting:
        rws = Table(title=f"reweights ({len(config.reweighting.reweights)})")
        for col in ("weight field", "bins", "overflow"):
            rws.add_column(col, overflow="fold")
        for rw in config.reweighting.reweights:
            bins = " x ".join(f"{v}[{len(rw.edges(v)) - 1}]" for v in rw.reweight_vars)
            rws.add_row(rw.name, bins, "yes" if rw.add_overflow else "no")
        con.print(rws)
    else:
        con.print("reweighting: none configured")


def print_split_summary(config: Config, summary, cat) -> None:
    """Per-input bookkeeping (read = written + in no component) and catalogue totals."""
    con = _console()
    inputs = summary.by_input()
    parts = "" if len(summary.records) == len(inputs) else f" in {len(summary.records)} parts"
    table = Table(title=f"split: {len(inputs)} inputs{parts} "
                        f"({summary.skipped} already done)")
    for col in ("input", "read", *SPLITS, "no component"):
        table.add_column(col, justify="right" if col != "input" else "left", overflow="fold")
    totals = dict.fromkeys(("read", *SPLITS, "none"), 0)
    for rec in inputs:
        per = rec.per_split()
        table.add_row(Path(rec.input).name, f"{rec.jets_read:,}",
                      *(f"{per[s]:,}" for s in SPLITS), f"{rec.no_component:,}")
        totals["read"] += rec.jets_read
        totals["none"] += rec.no_component
        for s in SPLITS:
            totals[s] += per[s]
    table.add_row("[bold]total", *(f"{v:,}" for v in totals.values()))
    con.print(table)
    dropped = sum(rec.nonfinite_dropped for rec in inputs)
    if dropped:
        con.print(f"of the jets in no component, {dropped:,} had NaN/inf in a cut or jets "
                  "reweight variable")
    found: dict[str, int] = {}
    for rec in inputs:
        for key, n in rec.nonfinite.items():
            found[key] = found.get(key, 0) + n
    if found:
        con.print("NaN/inf in the jets written: "
                  + ", ".join(f"{k} {n:,}" for k, n in sorted(found.items())))
    flav = Table(title=f"catalogue {config.global_.components_dir}/organised-components.yaml")
    flav.add_column("flavour", overflow="fold")
    for s in SPLITS:
        flav.add_column(s, justify="right", overflow="fold")
    for name in config.flavour_names:
        flav.add_row(name, *(f"{cat.num_jets[s][name]:,}" for s in SPLITS))
    con.print(flav)
    con.print(test_rule(config))
    if config.auto_counts:
        from upp_grid.stages.catalogue import solve_auto_counts

        solved = solve_auto_counts(config, cat)
        auto = Table(title="num_jets: auto, solved as UPP solves it (not applied: every jet is "
                     "kept and reweighted)")
        auto.add_column("component", overflow="fold")
        for s in SPLITS:
            auto.add_column(s, justify="right", overflow="fold")
        for name in dict.fromkeys(n for s in SPLITS for n in solved[s]):
            auto.add_row(name, *(f"{solved[s][name]:,}" if name in solved[s] else "-"
                                 for s in SPLITS))
        con.print(auto)


if TYPE_CHECKING:
    from upp_grid.stages.verify import VdsReport
    from upp_grid.stages.weights_report import WeightsReport


def print_weights_tables(report: WeightsReport) -> None:
    """One table per reweight: its bins, and per class the entries, zero weights and weights."""
    con = _console()
    for rw in report.reweights:
        title = (f"{rw.name}: {rw.populated_bins:,} populated / {rw.zeroed_bins:,} zeroed / "
                 f"{rw.empty_bins:,} empty of {rw.bins:,} bins, "
                 f"flatness 1 ± {rw.flatness_max_deviation:.1e}")
        table = Table(title=title, title_justify="left")
        for col in (rw.class_var, "entries", "populated", "zeroed", "out of range", "NaN",
                    "weight 0", "weight min", "median", "max"):
            table.add_column(col, justify="left" if col == rw.class_var else "right",
                             overflow="fold")
        for c in rw.classes:
            share = f"{100 * c.zero_fraction:.2f} %"
            table.add_row(f"{c.label} {c.name}" if c.name != str(c.label) else c.name,
                          f"{c.entries:,}", f"{c.populated:,}", f"{c.zeroed:,}",
                          f"{c.out_of_range:,}", f"{c.nan:,}",
                          share if c.zero_fraction < 0.001 else f"[yellow]{share}",
                          f"{c.weight_min:.4g}", f"{c.weight_median:.4g}",
                          f"{c.weight_max:.4g}")
        con.print(table)


def print_weights_report(report: WeightsReport) -> None:
    """Per reweight: bins populated/zeroed/empty, flatness, and per class entries and weights.

    Entries are jets (jet groups) or valid tracks (track groups). ``zeroed`` entries are in
    bins where another class is empty; ``out of range`` entries have no bin (no overflow);
    ``NaN`` entries have NaN in a reweight variable; ``weight 0`` is the share of all three.
    """
    con = _console()
    print_weights_tables(report)
    t = report.timings
    sampled = sum(f.jets for files in report.sample.values() for f in files)
    con.print(f"histogrammed {sampled:,} train jets in {t.histogram_s:.2f} s; stage "
              f"{t.total_s:.2f} s")
    con.print(f"plots: {len(report.plots)} files, drawn in the background in {t.plots_s:.2f} s; "
              f"waited {t.plots_wait_s:.2f} s")
    con.print(f"wrote {report.histograms}\nwrote {report.report}")


if TYPE_CHECKING:
    from upp_grid.stages.merge import MergeSummary
    from upp_grid.stages.normalise import NormResult
    from upp_grid.stages.run import RunSummary


def _in_out_table(title: str, flavours: tuple[str, ...], jets_in: dict, jets_out: dict,
                  splits: tuple[str, ...]) -> Table:
    """Jets per flavour and split: catalogue (in) and written (out)."""
    table = Table(title=title, title_justify="left")
    table.add_column("flavour", overflow="fold")
    for s in splits:
        table.add_column(f"{s} in", justify="right", overflow="fold")
        table.add_column(f"{s} out", justify="right", overflow="fold")
    for name in (*flavours, "total"):
        cells = []
        for s in splits:
            n_in = sum(jets_in[s].values()) if name == "total" else jets_in[s][name]
            n_out = sum(jets_out[s].values()) if name == "total" else jets_out[s][name]
            cells += [f"{n_in:,}", f"{n_out:,}" if n_out == n_in else f"[red]{n_out:,}"]
        table.add_row(f"[bold]{name}" if name == "total" else name, *cells)
    return table


def _cap(value: int) -> str:
    return "auto" if value == AUTO_JETS else "all" if value < 0 else f"{value:,}"


def test_rule(config: Config) -> str:
    """Which jets the test split holds: UPP's rule (no region cuts) or the region cuts."""
    if config.global_.test_region_cuts:
        return ("test split: split, region and flavour cuts, per component "
                "(global.test_region_cuts: true)")
    samples = len(config.samples)
    return (f"test split: split and flavour cuts, no region cuts (UPP's rule): one component "
            f"per sample and flavour (region '{INCLUSIVE}', {samples} sample(s)), each jet once; "
            "global.test_region_cuts: true applies the region cuts")


def print_merge_summary(config: Config, summary: MergeSummary) -> None:
    """Jets in and out per split and flavour, and the files and VDS written."""
    con = _console()
    splits = tuple(r.split for r in summary.results)
    by = {r.split: r for r in summary.results}
    con.print(_in_out_table("merge: jets per flavour (catalogue in, written out)",
                            config.flavour_names, {s: by[s].jets_in for s in splits},
                            {s: by[s].jets_out for s in splits}, splits))
    for r in summary.results:
        sizes = sorted({f.num_jets for f in r.files})
        con.print(f"{r.split}: {len(r.files)} files of {', '.join(f'{n:,}' for n in sizes)} "
                  f"jets ({r.reused} kept from an earlier run) in {r.files[0].path.parent}; "
                  f"VDS {r.vds}")
    con.print(f"merge took {summary.seconds:.1f} s")


def print_norm_result(result: NormResult) -> None:
    """How many jets and entries the norm used, and where it wrote."""
    con = _console()
    how = f"weighted by {result.weight}" if result.weight else "unweighted"
    entries = ", ".join(f"{g} {n:,}" for g, n in result.entries.items())
    con.print(f"norm ({how}) over {result.num_jets:,} train jets in {len(result.files)} files; "
              f"entries used: {entries}")
    if result.nonfinite:
        left = ", ".join(f"{k} {n:,}" for k, n in sorted(result.nonfinite.items()))
        con.print(f"NaN/inf left out of the statistics: {left}")
    con.print(f"wrote {result.norm_path}\nwrote {result.class_path}")


def print_run_summary(config: Config, summary: RunSummary) -> None:
    """The end of ``run``: jets in/out per split and flavour, files, time per stage."""
    con = _console()
    if summary.weights is not None:
        print_weights_tables(summary.weights)
    splits = tuple(summary.jets_out)
    con.print(_in_out_table("run: jets per flavour (catalogue in, merged out)",
                            config.flavour_names, summary.jets_in, summary.jets_out, splits))
    files = Table(title="files written", title_justify="left")
    for col in ("split", "files", "directory", "virtual dataset", "kept from earlier run"):
        files.add_column(col, overflow="fold")
    for s in splits:
        paths = summary.files[s]
        files.add_row(s, str(len(paths)), str(paths[0].parent) if paths else "-",
                      str(summary.vds[s]), str(summary.merge_reused[s]))
    con.print(files)
    times = Table(title="time per stage", title_justify="left")
    times.add_column("stage", overflow="fold")
    times.add_column("seconds", justify="right", overflow="fold")
    for t in summary.timings:
        times.add_row(t.stage, f"{t.seconds:.1f}")
    times.add_row("[bold]total", f"{summary.seconds:.1f}")
    con.print(times)
    if any(t.stage == "split" for t in summary.timings) and summary.split_skipped:
        con.print(f"split: {summary.split_skipped} inputs already split by an earlier run")
    if summary.plots:
        where = Path(os.path.commonpath([str(Path(p).parent) for p in summary.plots]))
        con.print(f"plots: {len(summary.plots)} files under {where}")
    con.print(f"histograms {summary.histograms}")
    if summary.norm is None:
        con.print("norm: not run (train not merged: run --split train or all)")
        return
    if summary.norm.nonfinite:
        left = ", ".join(f"{k} {n:,}" for k, n in sorted(summary.norm.nonfinite.items()))
        con.print(f"NaN/inf left out of the statistics: {left}")
    con.print(f"norm {summary.norm.norm_path} "
              f"({summary.norm.num_jets:,} train jets)\nclasses {summary.norm.class_path}")


def print_verify(reports: Sequence[VdsReport]) -> None:
    """One row per virtual file: jets mapped, sources, and whether every source resolved."""
    table = Table(title="virtual files")
    for col in ("file", "jets", "sources", "status"):
        table.add_column(col, justify="right" if col in ("jets", "sources") else "left",
                         overflow="fold")
    for r in reports:
        status = "[green]ok" if not r.problems else f"[red]{len(r.problems)} problem(s)"
        table.add_row(str(r.path), f"{r.jets:,}", str(r.sources), status)
    _console().print(table)
