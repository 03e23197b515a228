"""``cartocell-bmz pseudo-label``: segment unlabelled cysts into a new training set."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

from cartocell_bmz.engine.plan import SCHEDULER_HELP, WORKERS_HELP


def command(
    model: str = typer.Option(..., "--model", help="Training run folder (or a BMZ package, through the runner)."),
    input: Path = typer.Option(..., "--input", help="Folder of raw volumes, e.g. DATA/train_M2/x."),
    out: Path = typer.Option(..., "--out", help="Output training set: OUT/x (raw) and OUT/y (pseudo-labels)."),
    spacing: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--spacing", help="Voxel size Z Y X in micrometres for every volume (default: each file's own)."
    ),
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu' or 'cuda[:N]'."),
    fresh: bool = typer.Option(False, "--fresh", help="Redo every volume instead of keeping finished ones."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Predict B, C, M on every raw volume, run watershed + Voronoi, and write the cells as labels.

    OUT becomes a training set (OUT/x, OUT/y with the same file names) for 'cartocell-bmz train --train OUT'. Finished volumes are kept, so an interrupted run continues when started again.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.phases.pseudo_label import pseudo_label

    with RichProgress(transient=True) as progress:
        summary = pseudo_label(model, input, out, spacing=tuple(spacing) if spacing else None, device=device,
                               fresh=fresh, progress=progress, scheduler=scheduler, workers=workers)
    typer.echo(str(summary))
