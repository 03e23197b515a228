"""``cartocell-bmz crop``: find the whole single cysts of acquisitions and crop them into the CartoCell layout."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from cartocell_bmz.core.cysts import MIN_LUMEN_UM3, MIN_VOLUME_UM3, TOUCH_GAP_UM
from cartocell_bmz.engine.plan import SCHEDULER_HELP, WORKERS_HELP


def command(
    stacks: List[Path] = typer.Argument(..., help="TIFF stacks (Z, Y, X) or OME-Zarr images of whole acquisitions."),
    model: str = typer.Option(..., "--model", "-m", help="A name in model_packages/, a package folder, .zip or "
                                                          "rdf.yaml, a BioImage Model Zoo id, or a training run."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: x/ (the crops) and candidates.csv."),
    spacing: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--spacing", help="Voxel size Z Y X in micrometres (default: read from each file)."),
    threshold: float = typer.Option(0.5, "--threshold", min=0.0, max=1.0,
                                    help="M and C probability above which a voxel is cellular (a cell contour)."),
    margin: float = typer.Option(3.0, "--margin", min=0.0, help="Margin around each kept cyst, in µm."),
    min_volume: float = typer.Option(MIN_VOLUME_UM3, "--min-volume", min=0.0,
                                     help="Smallest cellular volume of a cyst, µm³ (smaller: too small)."),
    min_lumen: float = typer.Option(MIN_LUMEN_UM3, "--min-lumen", min=0.0, help="Smallest lumen, µm³."),
    touch_gap: float = typer.Option(TOUCH_GAP_UM, "--touch-gap", min=0.0,
                                    help="Cysts closer than this (µm) to another are touching (0: only merged ones)."),
    block: Tuple[int, int, int] = typer.Option(
        (64, 256, 256), "--block", help="Prediction block Z Y X in voxels (memory grows with it)."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Weight format: pytorch_state_dict, torchscript or onnx "
                                "(default: the first of these the package has)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    tile: Optional[Tuple[int, int, int]] = typer.Option(
        None, "--tile", help="Tile Z Y X for models with parameterised sizes (fixed-size models use theirs)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Tiles per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Crop finished stacks again."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    trust: bool = typer.Option(
        False, "--trust", help="Do not show the notice about the code a package from outside model_packages/ runs."),
) -> None:
    """Crop whole acquisitions into single cysts: predict each stack tiled, find its cysts, keep the good ones.

    A cyst is a connected cellular region (M channel) around an enclosed lumen.
    Kept: whole (not cut by the stack border), large enough, free (not touching
    another cyst), one lumen, one cell layer. Writes OUT/x/STACK_cyst_NNN.tif
    (the raw image of each kept cyst with a margin, with its voxel size) and
    OUT/candidates.csv (every candidate: stack, box z0 y0 x0 z1 y1 x1, volume,
    lumens, layer fraction, kept or the reason it is rejected). Stacks are read
    lazily and predicted in blocks, so memory is bounded by the blocks and the
    cysts, not by the stack. Each stack's candidates go to OUT/stacks/STACK.json
    after its crops: a rerun skips the stacks finished with the same settings.
    """
    from collections import Counter

    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.errors import ConfigError
    from cartocell_bmz.run.crop import CANDIDATES_CSV, CropSettings, crop_stacks

    if min(block) < 1:
        raise ConfigError(f"--block needs three sizes Z Y X of at least 1 voxel, got {list(block)}.")
    settings = CropSettings(threshold=threshold, margin_um=margin, min_volume=min_volume, min_lumen=min_lumen,
                            touch_gap=touch_gap, block=tuple(block))
    with RichProgress() as progress:
        rows = crop_stacks(model, stacks, out, settings=settings, spacing=tuple(spacing) if spacing else None,
                           weights=weights, tile=tuple(tile) if tile else None, batch_size=batch_size,
                           device=device, trust=trust, overwrite=overwrite, scheduler=scheduler, workers=workers,
                           progress=progress)
    reasons = Counter(r["reason"] for r in rows if not r["kept"])
    kept = sum(1 for r in rows if r["kept"])
    rejected = ", ".join(f"{k}: {v}" for k, v in reasons.most_common())
    typer.echo(f"{len(stacks)} stack(s), {len(rows)} candidate(s): kept {kept} (crops in {Path(out) / 'x'})"
               + (f"; rejected {rejected}" if rejected else "") + f"; table in {Path(out) / CANDIDATES_CSV}")
