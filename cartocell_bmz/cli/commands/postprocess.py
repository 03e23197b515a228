"""``cartocell-bmz postprocess``: probabilities -> cells (watershed) -> touching cells (Voronoi)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer


def command(
    probs: Path = typer.Option(..., "--probs", help="Folder of probability TIFFs (C, Z, Y, X) with 3 channels B, C, M."),
    out: Path = typer.Option(..., "--out", help="Output folder (created)."),
    spacing: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--spacing", help="Voxel size Z Y X in micrometres; default: read from each file (1 1 1 if absent)."
    ),
    seed_b: Optional[str] = typer.Option(None, "--seed-b", help="Seeds need B above this: 'auto' (Otsu) or a number."),
    seed_c: Optional[str] = typer.Option(None, "--seed-c", help="Seeds need C below this: 'auto' (Otsu) or a number."),
    growth: Optional[str] = typer.Option(None, "--growth", help="Cells grow where B is above this: 'auto' (Otsu/2) or a number."),
    mask: str = typer.Option("auto", "--mask", help="Voronoi territory is M above this: 'auto' (Otsu) or a number."),
    legacy: bool = typer.Option(
        False, "--legacy", help="Use CartoCell's manual thresholds (seed B 0.2, seed C 0.2, growth 0.25) where not given."
    ),
    min_seed_size: int = typer.Option(5, "--min-seed-size", min=0, help="Discard seeds of at most this many voxels."),
    max_hole_size: str = typer.Option(
        "auto", "--max-hole-size",
        help="Fill holes of the territory up to this volume in cubic micrometres ('auto': half the median cell); "
        "the lumen is never filled.",
    ),
    clear_border: bool = typer.Option(False, "--clear-border", help="Remove cells touching the volume border."),
    smooth: bool = typer.Option(False, "--smooth", help="Smooth the flooded surface (Gaussian, as BiaPy 3.7)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose outputs already exist."),
) -> None:
    """Turn B, C, M probability volumes into cells: watershed, then a 3D Voronoi inside the cyst.

    Reads every TIFF of --probs (C, Z, Y, X; channels B, C, M) and writes, under the same file name and voxel size, OUT/per_image_instances/ (cells from the marker-controlled watershed) and OUT/per_image_post_processing/ (cells grown by a Voronoi in micrometres over the cellular region M until neighbours touch; the lumen stays empty). Images whose two outputs exist are skipped unless --overwrite.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.core.postprocess import LEGACY_THRESHOLDS, PostprocessConfig, check_hole_size, check_threshold
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.errors import ConfigError
    from cartocell_bmz.run.batch import postprocess_folder

    fallback = LEGACY_THRESHOLDS if legacy else ("auto", "auto", "auto")
    try:
        config = PostprocessConfig(
            seed_b_threshold=check_threshold(seed_b if seed_b is not None else fallback[0], "--seed-b"),
            seed_c_threshold=check_threshold(seed_c if seed_c is not None else fallback[1], "--seed-c"),
            growth_threshold=check_threshold(growth if growth is not None else fallback[2], "--growth"),
            mask_threshold=check_threshold(mask, "--mask"),
            min_seed_size=min_seed_size,
            max_hole_size=check_hole_size(max_hole_size),
            clear_border=clear_border,
            smooth=smooth,
        )
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("max_hole_size", "--max-hole-size", 1)) from None
    vox = check_spacing(spacing, name="--spacing") if spacing is not None else None

    with RichProgress() as progress:
        summary = postprocess_folder(probs, out, spacing=vox, config=config, resume=not overwrite, progress=progress)
    for image in summary.images:
        typer.echo(str(image))
    typer.echo(str(summary))
