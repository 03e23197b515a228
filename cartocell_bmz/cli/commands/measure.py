"""``cartocell-bmz measure``: per-cell morphology and packing of segmented cysts."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from cartocell_bmz.core.morphology import DEFAULT_CONTACT_THRESHOLD
from cartocell_bmz.engine.plan import SCHEDULER_HELP, WORKERS_HELP


def command(
    labels: List[Path] = typer.Argument(
        ..., help="Label TIFFs (Z, Y, X), folders of them (per_image_post_processing/, a dataset's y/) or glob patterns."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (created)."),
    spacing: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--spacing", help="Voxel size Z Y X in micrometres for every file; default: read from each file (1 1 1 if absent)."
    ),
    group: Optional[str] = typer.Option(
        None, "--group", help=r"Regular expression whose first group in each file name is its condition, e.g. 'day(\d+)'."
    ),
    contact_threshold: float = typer.Option(
        DEFAULT_CONTACT_THRESHOLD, "--contact-threshold",
        help="Two cells are neighbours when their contact is at least this share of the lateral area of each.",
    ),
    main_cyst: bool = typer.Option(
        False, "--main-cyst", help="Measure only each volume's largest connected group of cells "
        "(leaves out pieces of neighbouring cysts in a crop's margin)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG figures."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Measure again the cysts already measured in OUT."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Measure every cell of segmented cysts: volume, areas, height, neighbours, scutoids, shape.

    Writes OUT/cells.csv (one row per cell; lengths in µm, areas µm², volumes µm³), OUT/neighbours.csv (one row per touching pair: contact area, apical and basal contact), OUT/cysts.csv (one row per cyst: cell counts, lumen, areas, polygon distributions, scutoid fraction, means), OUT/groups.csv (with --group), OUT/measure_params.json and the figures OUT/measure_summary.png and OUT/measure_montage.png. The lumen is the background the cells enclose, apical the cell surface facing it, basal the surface facing the outside. Cysts already measured in OUT from the same file with the same parameters are read back, not measured again.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.measure.api import measure_files

    with RichProgress(transient=True) as progress:
        tables = measure_files(
            labels, out, spacing=spacing, group=group, contact_threshold=contact_threshold, main_cyst=main_cyst,
            overwrite=overwrite, plots=plots, scheduler=scheduler, workers=workers, progress=progress,
        )
    print_cysts(tables.cysts, out, grouped=group is not None)


def print_cysts(cysts, out: Path, grouped: bool) -> None:
    """The table of measured cysts (and the group lines) on the screen."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    columns = [("cells", "cells", "{:.0f}"), ("valid", "valid_cells", "{:.0f}"),
               ("apical", "mean_apical_neighbours", "{:.2f}"), ("basal", "mean_basal_neighbours", "{:.2f}"),
               ("scutoid", "scutoid_fraction", "{:.2f}"), ("volume", "median_volume", "{:.0f}"),
               ("lumen", "lumen_fraction", "{:.2f}")]
    table = Table(title=f"{len(cysts)} cyst(s)", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True,
                  caption="apical, basal: mean neighbours of the valid cells; scutoid: their share; "
                  "volume: median (µm³); lumen: share of the cyst's volume")
    table.add_column("cyst", no_wrap=True)
    if grouped:
        table.add_column("group", no_wrap=True)
    for name, _, _ in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for row in cysts.to_dict("records"):
        values = [fmt.format(row[key]) if row[key] == row[key] else "-" for _, key, fmt in columns]
        table.add_row(str(row["cyst"]), *([str(row["group"])] if grouped else []), *values)
    console = Console()
    console.print(table)
    if grouped and len(cysts):
        from cartocell_bmz.measure.api import summarise_groups

        for row in summarise_groups(cysts).to_dict("records"):
            console.print(f"group {row['group']}: {row['cysts']} cyst(s), scutoids {row['scutoid_fraction']:.2f}, "
                          f"neighbours apical {row['mean_apical_neighbours']:.2f} basal {row['mean_basal_neighbours']:.2f}")
    console.print(f"wrote {out}")
