"""``cartocell-bmz predict``: segment cysts with any CartoCell model of the BioImage Model Zoo."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from cartocell_bmz.engine.plan import SCHEDULER_HELP, WORKERS_HELP


def command(
    inputs: List[str] = typer.Argument(..., help="TIFF volume(s), folder(s) or glob pattern(s) (quote globs)."),
    model: str = typer.Option(
        ..., "--model", "-m",
        help="A name in model_packages/, a package folder, .zip or rdf.yaml, or a BioImage Model Zoo id "
             "(e.g. happy-honeybee; downloaded once, then run offline).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (per_image/, per_image_instances/, "
                                                       "per_image_post_processing/)."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Weight format: pytorch_state_dict, torchscript or onnx (the last two run without importing "
                                "the package's Python code; onnx through onnxruntime). Default: pytorch_state_dict, "
                                "then torchscript, then onnx (onnxruntime is slower than torch on CPU)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    tile: Optional[Tuple[int, int, int]] = typer.Option(
        None, "--tile", help="Tile Z Y X for models with parameterised sizes (fixed-size models use theirs)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Tiles per forward pass."),
    spacing: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--spacing", help="Voxel size Z Y X in micrometres (default: read from each file)."),
    gt: Optional[Path] = typer.Option(
        None, "--gt", help="Folder of ground-truth labels (same file names): also write instance_associations/ "
                           "and the metrics."),
    float16: bool = typer.Option(False, "--float16", help="Store probabilities as float16 (half the disk space)."),
    measure: bool = typer.Option(
        False, "--measure", help="Then measure every segmented cyst of OUT/per_image_post_processing/ into "
                                 "OUT/measure/: cells.csv, neighbours.csv, cysts.csv and plots, as "
                                 "`cartocell-bmz measure` (cysts measured before from the same file are read back)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute finished outputs too."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    trust: bool = typer.Option(
        False, "--trust", help="Do not show the notice about the code a package from outside model_packages/ runs."),
) -> None:
    """Segment 3D cysts: tiled B, C, M prediction with a BMZ model, watershed, then Voronoi.

    Writes the BiaPy-style tree OUT/per_image/ (probabilities, channels B, C, M),
    OUT/per_image_instances/ (cells after the watershed) and
    OUT/per_image_post_processing/ (cells after the Voronoi), named like the
    inputs, with their voxel size. With --measure, every cyst of
    OUT/per_image_post_processing/ is then measured into OUT/measure/ (per-cell
    morphology, neighbours, scutoids, in µm; see `cartocell-bmz measure`).
    Volumes already finished in OUT are skipped and cysts already measured are
    read back unless --overwrite, so an interrupted run continues where it stopped.
    Several volumes run on a local Dask cluster (--scheduler), each written by one
    worker with the bytes of a run in one process; a killed worker loses only
    the volume it was on.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.errors import OutputError
    from cartocell_bmz.layout import MEASURE_DIR, VORONOI_DIR
    from cartocell_bmz.run.batch import predict_folder

    tables_dir = Path(out) / MEASURE_DIR
    if measure and tables_dir.exists() and not tables_dir.is_dir():  # found now, not after the predictions
        raise OutputError(f"{tables_dir}: is a file, but predict --measure writes its tables there; "
                          "move it or choose another --out.")
    tables = None
    with RichProgress() as progress:
        summary = predict_folder(
            model, inputs, out, gt=gt, spacing=tuple(spacing) if spacing else None, float16=float16,
            overwrite=overwrite, weights=weights, tile=tuple(tile) if tile else None, batch_size=batch_size,
            device=device, trust=trust, scheduler=scheduler, workers=workers, progress=progress,
        )
        if measure:
            from cartocell_bmz.measure.api import measure_files

            tables = measure_files([Path(out) / VORONOI_DIR], tables_dir, overwrite=overwrite, scheduler=scheduler,
                                   workers=workers, progress=progress)
    typer.echo(str(summary))
    if tables is not None:
        typer.echo(f"measured {len(tables.cysts)} cyst(s), {len(tables.cells)} cells; tables in {tables_dir}: "
                   "cells.csv, neighbours.csv, cysts.csv")
