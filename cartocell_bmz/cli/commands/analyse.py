"""``cartocell-bmz analyse``: a lab's stacks end to end, crop -> predict -> measure, in one command.

The crop and prediction options are ``crop``'s own (one home for their help texts).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import List, Optional, Tuple

import typer

from cartocell_bmz.cli.commands import crop as _crop
from cartocell_bmz.cli.commands import measure as _measure

_CROP = inspect.signature(_crop.command).parameters
_MEASURE = inspect.signature(_measure.command).parameters


def command(
    stacks: List[Path] = _CROP["stacks"].default,
    model: str = _CROP["model"].default,
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: crop/, predict/, measure/ and analysis.json."),
    spacing: Optional[Tuple[float, float, float]] = _CROP["spacing"].default,
    group: Optional[str] = _MEASURE["group"].default,
    threshold: float = _CROP["threshold"].default,
    margin: float = _CROP["margin"].default,
    min_volume: float = _CROP["min_volume"].default,
    min_lumen: float = _CROP["min_lumen"].default,
    touch_gap: float = _CROP["touch_gap"].default,
    block: Tuple[int, int, int] = _CROP["block"].default,
    weights: Optional[str] = _CROP["weights"].default,
    device: str = _CROP["device"].default,
    tile: Optional[Tuple[int, int, int]] = _CROP["tile"].default,
    batch_size: int = _CROP["batch_size"].default,
    plots: bool = _MEASURE["plots"].default,
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo every step instead of resuming."),
    scheduler: Optional[str] = _CROP["scheduler"].default,
    workers: Optional[int] = _CROP["workers"].default,
    trust: bool = _CROP["trust"].default,
) -> None:
    """Whole acquisitions to morphology in one command: crop the single cysts, segment them, measure every cell.

    Runs `crop` (OUT/crop/: the kept cysts in x/ and candidates.csv with every candidate and why it was rejected), `predict` on the crops (OUT/predict/: probabilities, watershed cells, Voronoi cells) and `measure` on the cells (OUT/measure/: cells.csv, neighbours.csv, cysts.csv, groups.csv with --group, and the figures), then writes OUT/analysis.json. Each crop keeps its stack's name (STACK_cyst_NNN.tif), so --group 'day(\\d+)' groups cysts by a day in the stack names. A rerun resumes: finished stacks, volumes and cysts are not done again.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.errors import ConfigError
    from cartocell_bmz.phases.acquisitions import MEASURE_DIR, analyse_stacks
    from cartocell_bmz.run.crop import CropSettings

    if min(block) < 1:
        raise ConfigError(f"--block needs three sizes Z Y X of at least 1 voxel, got {list(block)}.")
    settings = CropSettings(threshold=threshold, margin_um=margin, min_volume=min_volume, min_lumen=min_lumen,
                            touch_gap=touch_gap, block=tuple(block))
    with RichProgress() as progress:
        summary = analyse_stacks(
            model, stacks, out, settings=settings, spacing=tuple(spacing) if spacing else None, group=group,
            weights=weights, tile=tuple(tile) if tile else None, batch_size=batch_size, device=device, trust=trust,
            plots=plots, overwrite=overwrite, scheduler=scheduler, workers=workers, progress=progress,
        )
    if summary.kept:
        _measure.print_cysts(summary.tables.cysts, out / MEASURE_DIR, grouped=group is not None)
    for message in summary.failed:
        typer.echo(f"not segmented: {message}", err=True)
    typer.echo(str(summary))
