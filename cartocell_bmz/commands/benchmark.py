"""``cartocell-bmz benchmark``: rank models on a test set; tables, plots and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def command(
    models: Optional[List[str]] = typer.Option(
        None, "--models", "-m",
        help="Model to rank (repeat, or comma-separate): a name in model_packages/, a package folder, zip or "
             "rdf.yaml, or a BMZ id; 'published' = the six published CartoCell models. "
             "Default: every package in model_packages/.",
    ),
    test: Optional[Path] = typer.Option(
        None, "--test", help="Test folder with x/ (images) and y/ (ground-truth labels, same file names). "
                             "Default: the embedded synthetic test set, written to OUT/test_set/.",
    ),
    out: Path = typer.Option(Path("cartocell_benchmark"), "--out", "-o", help="Output folder."),
    published: bool = typer.Option(
        False, "--published", help="Add the published figures (real CartoCell test set) as labelled reference rows."
    ),
    scheduler: str = typer.Option(
        "local", "--scheduler",
        help="'local' (a Dask cluster sized to this machine), 'sync' (one task after the other, for debugging) "
             "or the address of a running Dask scheduler (tcp://host:8786).",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Worker processes of the local cluster (default: sized to cores and memory)."
    ),
    device: str = typer.Option("cpu", "--device", help="Device of the predictions: cpu, cuda or auto."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute every output instead of reusing them."),
    trust: bool = typer.Option(
        False, "--trust", help="Do not show the notice about the code a package from outside model_packages/ runs."
    ),
) -> None:
    """Rank models on a test set: predict, post-process and evaluate every model on every image.

    Writes OUT/<model>/ (predictions, per-image metrics), OUT/ranking.csv,
    ranking.md, ranking.json, per_image.csv, plots/*.png and report.html
    (opens offline). Models are ranked by the mean of IoU B, IoU C, IoU M,
    F1@0.5, PQ@0.5, MTS@0.5, F1@0.75 and PQ@0.75, each averaged over test
    images; equal scores share a rank. Finished outputs are reused, so a
    rerun only computes what is missing.
    """
    import functools

    from cartocell_bmz.benchmark import run_benchmark
    from cartocell_bmz.resolve import resolve_model

    result = run_benchmark(
        models, test, out, published=published, scheduler=scheduler, workers=workers,
        overwrite=overwrite, device=device, resolver=functools.partial(resolve_model, trust=trust),
        show_progress=True,
    )
    _print_table(result)


def _print_table(result) -> None:
    import math

    from rich.console import Console
    from rich.table import Table

    from cartocell_bmz.ranking import COLUMN_NAMES, SOURCE_BENCHMARK

    table = Table(title=f"Ranking on {result.test_dir} ({len({r['image'] for r in result.per_image})} test images)")
    for name in ("rank", "model", "score", *COLUMN_NAMES):
        table.add_column(name, justify="left" if name == "model" else "right")

    def num(v: float) -> str:
        return f"{v:.3f}" if math.isfinite(v) else "–"

    for r in list(result.ranking) + list(result.published):
        style = None if r.source == SOURCE_BENCHMARK else "dim italic"
        model = r.model if r.source == SOURCE_BENCHMARK else f"{r.model} [published, real test set]"
        table.add_row("–" if r.rank is None else str(r.rank), model, num(r.score),
                      *(num(r.values[c]) for c in COLUMN_NAMES), style=style)
    console = Console()
    console.print(table)
    how = "synchronously" if result.scheduler == "sync" else (
        f"on a local Dask cluster of {result.workers} worker(s)" if result.scheduler == "local"
        else f"on the Dask cluster at {result.scheduler}")
    console.print(
        f"{result.n_tasks} model x image task(s) {how}, {result.n_reused} reused, in {result.seconds:.1f} s.\n"
        f"Report: {result.files.html}\nTables: {result.files.ranking_csv}, {result.files.ranking_md}",
        highlight=False,
    )
