"""Human-readable tables for the CLI (rich). Library code returns data; this renders it."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from upp_grid.check import CheckReport
from upp_grid.config import SPLITS, Config


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
        splits.add_column(col)
    for split in SPLITS:
        splits.add_row(split, ", ".join(str(c) for c in config.global_cuts[split]) or "-")
    con.print(splits)

    regions = Table(title="regions")
    for col in ("region", "cuts"):
        regions.add_column(col)
    for r in config.regions:
        regions.add_row(r.name, ", ".join(str(c) for c in r.cuts) or "-")
    con.print(regions)

    comps = Table(title=f"components ({len(config.components)})")
    for col in ("region", "sample", "flavours", "train/val/test cap"):
        comps.add_column(col)
    groups: dict[tuple[str, str], list] = {}
    for c in config.components:
        groups.setdefault((c.region.name, c.sample.name), []).append(c)
    for (region, sample), members in groups.items():
        first = members[0]
        caps = "/".join("all" if first.cap(s) < 0 else f"{first.cap(s):,}" for s in SPLITS)
        comps.add_row(region, sample, ", ".join(c.flavour.name for c in members), caps)
    con.print(comps)
    con.print("flavour_label: " + ", ".join(f"{i}={n}" for i, n in
                                            enumerate(config.flavour_names)))

    if report is not None:
        cont = Table(title="input containers")
        for col in ("sample", "pattern", "files", "jets"):
            cont.add_column(col)
        for rep in report.containers:
            cont.add_row(rep.container.sample, rep.container.pattern,
                         str(len(rep.container.files)), f"{rep.num_jets:,}")
        con.print(cont)

    if config.reweighting:
        rws = Table(title=f"reweights ({len(config.reweighting.reweights)})")
        for col in ("weight field", "bins", "overflow"):
            rws.add_column(col)
        for rw in config.reweighting.reweights:
            bins = " x ".join(f"{v}[{len(rw.edges(v)) - 1}]" for v in rw.reweight_vars)
            rws.add_row(rw.name, bins, "yes" if rw.add_overflow else "no")
        con.print(rws)
    else:
        con.print("reweighting: none configured")


def print_split_summary(config: Config, summary, cat) -> None:
    """Per-input bookkeeping (read = written + in no component) and catalogue totals."""
    con = _console()
    table = Table(title=f"split: {len(summary.records)} inputs ({summary.skipped} already done)")
    for col in ("input", "read", *SPLITS, "no component"):
        table.add_column(col, justify="right" if col != "input" else "left")
    totals = dict.fromkeys(("read", *SPLITS, "none"), 0)
    for rec in sorted(summary.records, key=lambda r: r.input):
        per = rec.per_split()
        table.add_row(Path(rec.input).name, f"{rec.jets_read:,}",
                      *(f"{per[s]:,}" for s in SPLITS), f"{rec.no_component:,}")
        totals["read"] += rec.jets_read
        totals["none"] += rec.no_component
        for s in SPLITS:
            totals[s] += per[s]
    table.add_row("[bold]total", *(f"{v:,}" for v in totals.values()))
    con.print(table)
    flav = Table(title=f"catalogue {config.global_.components_dir}/organised-components.yaml")
    flav.add_column("flavour")
    for s in SPLITS:
        flav.add_column(s, justify="right")
    for name in config.flavour_names:
        flav.add_row(name, *(f"{cat.num_jets[s][name]:,}" for s in SPLITS))
    con.print(flav)
