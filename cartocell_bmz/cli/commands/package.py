"""``cartocell-bmz package``: training run -> BioImage Model Zoo model package."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer


def command(
    run: Path = typer.Argument(..., help="Training run folder written by `cartocell-bmz train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Package to write: a .zip file, or a folder with --format folder."),
    format: str = typer.Option("zip", "--format", help="zip (what the BioImage Model Zoo accepts) or folder."),
    name: Optional[str] = typer.Option(
        None, "--name", help="Package name; default 'cartocell-bmz synthetic <architecture>'."
    ),
    description: Optional[str] = typer.Option(None, "--description", help="One-paragraph description; default derived from the run."),
    author: Optional[List[str]] = typer.Option(
        None, "--author", help="Author name; repeat for several. Default 'cartocell-bmz developers'."
    ),
    license: str = typer.Option("CC-BY-4.0", "--license", help="SPDX licence id of the package."),
    version: str = typer.Option("0.1.0", "--version", help="Package version."),
    test_figures: Optional[str] = typer.Option(
        None, "--test-figures",
        help="Test-set figures for the documentation's Validation section: a JSON file (e.g. evaluate's summary.json) or an inline JSON object.",
    ),
    test_volume: Optional[Path] = typer.Option(
        None, "--test-volume",
        help="Raw TIFF of a held-out cyst for the test tensors, the halo measurement and the cover; default a synthetic cyst.",
    ),
    halo: Optional[Tuple[int, int, int]] = typer.Option(
        None, "--halo", help="Output halo Z Y X instead of measuring it (multiples of half the network's divisor)."
    ),
) -> None:
    """Package a training run as a BioImage Model Zoo model (bioimageio spec 0.5).

    Writes state-dict and TorchScript weights, the self-contained architecture
    file, test tensors computed by bioimageio.core, a cover, documentation.md
    and an rdf.yaml with parameterised input sizes, a measured halo, whole-image
    normalisation, sigmoid postprocessing and channel names B_cell_body,
    C_contours, M_mask. Builds offline; rebuilding the same run gives the same
    weights and rdf.yaml. Check the result with `cartocell-bmz validate`.
    """
    from cartocell_bmz.bmz.export import PackageMetadata, build_package, read_figures, read_run

    figures = read_figures(test_figures) if test_figures is not None else None
    status = read_run(run).status
    if not status.get("finished"):
        typer.echo(
            f"note: {run} has not finished training (epoch {status.get('epoch', '?')} of {status.get('epochs', '?')}); "
            "packaging its best checkpoint so far.",
            err=True,
        )
    metadata = PackageMetadata(
        name=name,
        description=description,
        authors=tuple(author) if author else PackageMetadata.authors,
        license=license,
        version=version,
        halo=tuple(halo) if halo else None,  # type: ignore[arg-type]
    )
    typer.echo(f"packaging {run} (measuring the halo, exporting TorchScript, computing test tensors) ...", err=True)
    path = build_package(run, out, format=format, metadata=metadata, test_volume=test_volume, validation_figures=figures)
    typer.echo(f"wrote {path}; check it with: cartocell-bmz validate {path}")
