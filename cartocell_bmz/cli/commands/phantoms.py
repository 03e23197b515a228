"""``cartocell-bmz phantoms``: write a synthetic CartoCell-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

from cartocell_bmz.core.phantoms import DEFAULT_COUNTS, DEFAULT_SHAPE, DEFAULT_SPACING


def command(
    out: Path = typer.Argument(..., help="Output folder (created)."),
    seed: int = typer.Option(0, help="Random seed: equal seeds give identical data."),
    n_train_m1: int = typer.Option(DEFAULT_COUNTS["train_M1"], "--n-train-m1", min=0, help="Volumes in train_M1."),
    n_validation: int = typer.Option(DEFAULT_COUNTS["validation"], "--n-validation", min=0, help="Volumes in validation."),
    n_train_m2: int = typer.Option(DEFAULT_COUNTS["train_M2"], "--n-train-m2", min=0, help="Volumes in train_M2."),
    n_test: int = typer.Option(DEFAULT_COUNTS["test"], "--n-test", min=0, help="Volumes in test."),
    shape: Tuple[int, int, int] = typer.Option(DEFAULT_SHAPE, "--shape", help="Volume size Z Y X in voxels."),
    spacing: Tuple[float, float, float] = typer.Option(
        DEFAULT_SPACING, "--spacing", help="Voxel size Z Y X in micrometres (z usually coarsest)."
    ),
    max_cells: Optional[int] = typer.Option(None, min=4, help="Cells of the largest (day-10) cyst; default from the size."),
    preview: bool = typer.Option(False, help="Also write PNG mid-slice previews to OUT/previews/."),
) -> None:
    """Generate synthetic 3D epithelial cysts in the CartoCell folder layout.

    Writes OUT/{train_M1,validation,train_M2,test}/{x,y}/ (raw membrane images and
    uint16 instance labels with their voxel size). Deterministic for a given seed.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.errors import ConfigError
    from cartocell_bmz.io.phantom_sets import make_dataset

    shape_t = tuple(shape)
    if len(shape_t) != 3 or min(shape_t) < 8:
        raise ConfigError(f"--shape needs three sizes Z Y X of at least 8 voxels, got {list(shape_t)}.")
    spacing_t = check_spacing(spacing, name="--spacing")
    config = PhantomConfig(
        seed=seed, shape=shape_t, spacing=spacing_t, max_cells=max_cells,
        counts={"train_M1": n_train_m1, "validation": n_validation, "train_M2": n_train_m2, "test": n_test},
    )
    with RichProgress(transient=True) as bar:
        # make_dataset reports progress(done, total) without a message: the bar says "phantoms"
        written = make_dataset(out, config, preview=preview,
                               progress=lambda done, total, message="": bar(done, total, message or "phantoms"))
    total = sum(len(v) for v in written.values())
    typer.echo(f"wrote {total} synthetic cysts to {out} ({', '.join(f'{k}: {len(v)}' for k, v in written.items())})")
