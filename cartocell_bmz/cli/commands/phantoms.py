"""``cartocell-bmz phantoms``: write a synthetic CartoCell-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

from cartocell_bmz.core.phantoms import DEFAULT_COUNTS, DEFAULT_SHAPE, DEFAULT_SPACING
from cartocell_bmz.io.phantom_sets import CARTOCELL_COUNTS, OPTICS_KINDS


def _count_help(split: str) -> str:
    return f"Volumes in {split} (default {DEFAULT_COUNTS[split]}, or {CARTOCELL_COUNTS[split]} with --optics cartocell)."


def command(
    out: Path = typer.Argument(..., help="Output folder (created)."),
    seed: int = typer.Option(0, help="Random seed: equal seeds give identical data."),
    n_train_m1: Optional[int] = typer.Option(None, "--n-train-m1", min=0, help=_count_help("train_M1")),
    n_validation: Optional[int] = typer.Option(None, "--n-validation", min=0, help=_count_help("validation")),
    n_train_m2: Optional[int] = typer.Option(None, "--n-train-m2", min=0, help=_count_help("train_M2")),
    n_test: Optional[int] = typer.Option(None, "--n-test", min=0, help=_count_help("test")),
    shape: Tuple[int, int, int] = typer.Option(DEFAULT_SHAPE, "--shape", help="Volume size Z Y X in voxels."),
    spacing: Tuple[float, float, float] = typer.Option(
        DEFAULT_SPACING, "--spacing", help="Voxel size Z Y X in micrometres (z usually coarsest)."
    ),
    max_cells: Optional[int] = typer.Option(None, min=4, help="Cells of the largest (day-10) cyst; default from the size."),
    preview: bool = typer.Option(False, help="Also write PNG mid-slice previews to OUT/previews/ (with --optics cartocell also acquisitions.png: both acquisitions side by side)."),
    optics: str = typer.Option(
        "simple", "--optics",
        help="'simple': one camera model for every split (the benchmark's embedded data). 'cartocell': the paper's two "
             "acquisitions, train_M1/validation high-resolution stacks averaged down, train_M2/test direct "
             "low-resolution ones (PSF long in z, few photons, depth attenuation, haze, uneven staining), more of them.",
    ),
) -> None:
    """Generate synthetic 3D epithelial cysts in the CartoCell folder layout.

    Writes OUT/{train_M1,validation,train_M2,test}/{x,y}/ (raw membrane images and
    uint16 instance labels with their voxel size). Deterministic for a given seed.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.errors import ConfigError
    from cartocell_bmz.io.phantom_sets import default_counts, make_dataset

    shape_t = tuple(shape)
    if len(shape_t) != 3 or min(shape_t) < 8:
        raise ConfigError(f"--shape needs three sizes Z Y X of at least 8 voxels, got {list(shape_t)}.")
    spacing_t = check_spacing(spacing, name="--spacing")
    if optics not in OPTICS_KINDS:
        raise ConfigError(f"--optics {optics!r} is not known; choose one of {', '.join(OPTICS_KINDS)}.")
    counts = default_counts(optics)
    given = {"train_M1": n_train_m1, "validation": n_validation, "train_M2": n_train_m2, "test": n_test}
    counts.update({split: n for split, n in given.items() if n is not None})
    config = PhantomConfig(seed=seed, shape=shape_t, spacing=spacing_t, max_cells=max_cells, counts=counts)
    with RichProgress(transient=True) as bar:
        # make_dataset reports progress(done, total) without a message: the bar says "phantoms"
        written = make_dataset(out, config, preview=preview, optics=optics,
                               progress=lambda done, total, message="": bar(done, total, message or "phantoms"))
    total = sum(len(v) for v in written.values())
    typer.echo(f"wrote {total} synthetic cysts to {out} ({', '.join(f'{k}: {len(v)}' for k, v in written.items())})")
