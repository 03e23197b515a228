"""``cartocell-bmz benchmark``: rank models on a test set; tables, plots and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cartocell_bmz.bench.benchmark import DEFAULT_OUT


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
    out: Path = typer.Option(DEFAULT_OUT, "--out", "-o", help="Output folder."),
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
    images; equal scores share a rank. Beside the ranking, never in its score,
    OUT/morphology.csv and morphology.md set each model's cells against the
    ground truth's: mean apical and basal neighbours, scutoid fraction and
    median cell volume (value, mean absolute error, bias). Finished outputs
    are reused, so a rerun only computes what is missing.
    """
    import functools

    from cartocell_bmz.bench.benchmark import run_benchmark
    from cartocell_bmz.bmz.resolve import resolve_model
    from cartocell_bmz.cli.progress import RichProgress

    with RichProgress(transient=True) as progress:
        result = run_benchmark(
            models, test, out, published=published, scheduler=scheduler, workers=workers,
            overwrite=overwrite, device=device, resolver=functools.partial(resolve_model, trust=trust),
            progress=progress,
        )
    _print_table(result)


def _print_table(result) -> None:
    import math

    from rich.console import Console
    from rich.table import Table

    from cartocell_bmz.bench.ranking import COLUMN_NAMES, SOURCE_PUBLISHED

    def num(v: float) -> str:
        return f"{v:.3f}" if math.isfinite(v) else "–"

    def table(title: str, rows) -> Table:
        t = Table(title=title, title_justify="left")
        t.add_column("rank", justify="right", no_wrap=True)
        t.add_column("model", no_wrap=True)
        for name in ("score", *COLUMN_NAMES):
            t.add_column(name, justify="right", no_wrap=True)
        for r in rows:
            t.add_row("–" if r.rank is None else str(r.rank), r.model, num(r.score),
                      *(num(r.values[c]) for c in COLUMN_NAMES))
        return t

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console = Console(width=max(console.width, 160))
    n_images = len({r["image"] for r in result.per_image})
    console.print(table(f"Ranking on {result.test_dir} ({n_images} test images; score = mean of the 8 columns)",
                        result.ranking))
    if result.published:
        console.print(table(f"Reference only: {SOURCE_PUBLISHED}, 60 cysts, not comparable with the rows above",
                            result.published), style="dim")
    if result.morphology:
        console.print(_morphology_table(result.morphology))
    computed = result.n_tasks - result.n_reused
    if computed == 0:
        how = "all reused from an earlier run"
    else:
        where = "synchronously" if result.scheduler == "sync" else (
            f"on a local Dask cluster of {result.workers} worker(s)" if result.scheduler == "local"
            else f"on the Dask cluster at {result.scheduler}")
        how = f"{computed} computed {where}, {result.n_reused} reused"
    console.print(
        f"{result.n_tasks} model x image tasks ({how}) in {result.seconds:.1f} s.\n"
        f"Report: {result.files.html}\nTables: {result.files.ranking_csv}, {result.files.ranking_md}"
        + (f", {result.files.morphology_csv}" if result.files.morphology_csv else ""),
        highlight=False, soft_wrap=True,
    )


def _morphology_table(rows):
    from rich.table import Table

    from cartocell_bmz.bench.morphology import COMPARED, cell_texts, feature_label

    t = Table(title="Morphology against the ground truth (not in the score): mean over test images "
                    "(err: mean absolute error, bias: mean signed error; volume errors relative)", title_justify="left")
    t.add_column("model", no_wrap=True)
    for name in COMPARED:
        t.add_column(feature_label(name), justify="right", no_wrap=True)
    for r in rows:
        t.add_row(r.model, *cell_texts(r))
    return t
