"""``cartocell-bmz phantoms``: write a synthetic CartoCell-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

from cartocell_bmz.core.phantoms import DEFAULT_COUNTS, DEFAULT_SHAPE, DEFAULT_SPACING
from cartocell_bmz.core.stack_phantoms import (
    DEFAULT_CYST_SHAPE, DEFAULT_MIX, DEFAULT_STACK_SHAPE, DEFAULT_STACK_SPACING,
)
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
    shape: Optional[Tuple[int, int, int]] = typer.Option(
        None, "--shape", help=f"Volume size Z Y X in voxels (default {' '.join(map(str, DEFAULT_SHAPE))}; "
                              f"with --stack {' '.join(map(str, DEFAULT_STACK_SHAPE))})."),
    spacing: Optional[Tuple[float, float, float]] = typer.Option(
        None, "--spacing", help=f"Voxel size Z Y X in micrometres, z usually coarsest (default "
                                f"{' '.join(map(str, DEFAULT_SPACING))}; with --stack "
                                f"{' '.join(map(str, DEFAULT_STACK_SPACING))})."
    ),
    max_cells: Optional[int] = typer.Option(None, min=4, help="Cells of the largest (day-10) cyst; default from the size."),
    preview: bool = typer.Option(False, help="Also write PNG mid-slice previews to OUT/previews/ (with --optics cartocell also acquisitions.png: both acquisitions side by side)."),
    optics: str = typer.Option(
        "simple", "--optics",
        help="'simple': one camera model for every split (the benchmark's embedded data). 'cartocell': the paper's two "
             "acquisitions, train_M1/validation high-resolution stacks averaged down, train_M2/test direct "
             "low-resolution ones (PSF long in z, few photons, depth attenuation, haze, uneven staining), more of them.",
    ),
    stack: bool = typer.Option(
        False, "--stack", help="Write whole acquisitions instead, to test `crop`: OUT/x/stack_NNN.tif (many cysts "
                               "of several stages, some touching, with two lumens or two cell layers, cut by the "
                               "border, debris), OUT/y/ (cell labels), OUT/cysts.csv (true boxes and classes)."),
    n_stacks: int = typer.Option(3, "--n-stacks", min=1, help="With --stack: number of stacks."),
    cyst_shape: Tuple[int, int, int] = typer.Option(
        DEFAULT_CYST_SHAPE, "--cyst-shape", help="With --stack: volume each cyst is made in, Z Y X."),
    mix: Optional[str] = typer.Option(
        None, "--mix", help="With --stack: objects per stack as KIND=N,... (default "
                            + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()) + ")."),
) -> None:
    """Generate synthetic 3D epithelial cysts in the CartoCell folder layout.

    Writes OUT/{train_M1,validation,train_M2,test}/{x,y}/ (raw membrane images and
    uint16 instance labels with their voxel size). Deterministic for a given seed.
    With --stack: whole multi-cyst acquisitions and their true cyst boxes and
    classes instead (OUT/x/, OUT/y/, OUT/cysts.csv), to test `crop`.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.errors import ConfigError
    from cartocell_bmz.io.phantom_sets import default_counts, make_dataset

    if stack:
        from cartocell_bmz.cli.commands.phantoms_stack import write_stacks

        write_stacks(out, n_stacks=n_stacks, seed=seed, shape=shape or DEFAULT_STACK_SHAPE,
                     spacing=spacing or DEFAULT_STACK_SPACING, cyst_shape=cyst_shape, mix=mix)
        return
    shape_t = tuple(shape or DEFAULT_SHAPE)
    if len(shape_t) != 3 or min(shape_t) < 8:
        raise ConfigError(f"--shape needs three sizes Z Y X of at least 8 voxels, got {list(shape_t)}.")
    spacing_t = check_spacing(spacing or DEFAULT_SPACING, name="--spacing")
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
