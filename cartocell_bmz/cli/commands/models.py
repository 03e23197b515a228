"""``cartocell-bmz models``: the models available here and the six published CartoCell models."""

from __future__ import annotations

from typing import Optional

import typer


def command(
    cache: Optional[str] = typer.Option(None, "--cache", help="cartocell-bmz cache folder (default "
                                                              "~/.cache/cartocell-bmz or $CARTOCELL_BMZ_CACHE)."),
) -> None:
    """List the local packages (model_packages/ and downloaded BMZ models) and the six published models.

    Each local package's own test-set figures (its rdf.yaml's
    config.cartocell_bmz.evaluation: the published ranking's columns on the test
    set it was evaluated on) are shown beside the list.

    The published test-set figures (60 images of the real CartoCell test set)
    are shown where the publication attributes them to a model (ranks 1 and
    6); ranks 2-5 are listed by rank.  Any of these names can be given to
    `cartocell-bmz predict --model`.
    """
    from rich.console import Console
    from rich.table import Table

    from cartocell_bmz.bmz.known_models import KNOWN_MODELS, PUBLISHED_COLUMNS, PUBLISHED_RANKING
    from cartocell_bmz.bmz.resolve import cached_packages, local_packages, model_packages_dir

    console = Console()
    def folders(title: str, key: str, found: dict) -> Table:
        table = Table(title=title, title_justify="left")
        table.add_column(key)
        table.add_column("where")
        for name, path in found.items():
            table.add_row(name, str(path))
        return table

    local = local_packages()
    if local:
        console.print(folders(f"Local packages ({model_packages_dir()})", "name", local))
        console.print(_evaluations(local))
    else:
        console.print(f"No packages in {model_packages_dir()}.")

    cached = cached_packages(cache)
    if cached:
        console.print(folders("Downloaded from the BioImage Model Zoo (run offline)", "id", cached))

    pub = Table(title="The six published CartoCell models (BioImage Model Zoo)", title_justify="left")
    for col in ("id", "", "architecture", "published rank", "downloaded"):
        pub.add_column(col)
    for m in KNOWN_MODELS.values():
        pub.add_row(m.id, m.emoji, m.architecture, str(m.rank) if m.rank else "2-5 (not attributed)",
                    "yes" if m.id in cached else "no")
    console.print(pub)
    ranking = Table(title="Published test-set figures (real CartoCell test set, 60 images)", title_justify="left")
    ranking.add_column("rank", justify="right")
    ranking.add_column("model")
    for col in PUBLISHED_COLUMNS:
        ranking.add_column(col, justify="right")
    for row in PUBLISHED_RANKING:
        ranking.add_row(str(row.rank), row.model_id or "?", *(f"{row.figures[c]:.3f}" for c in PUBLISHED_COLUMNS))
    console.print(ranking)


def _evaluations(local: dict):
    """The test-set figures each local package records, in the published ranking's columns."""
    from rich.table import Table

    from cartocell_bmz.bmz.known_models import RANKING_COLUMNS
    from cartocell_bmz.bmz.portable import read_evaluation
    from cartocell_bmz.errors import CartoCellError

    table = Table(title="Their test-set figures (config.cartocell_bmz.evaluation; synthetic test set, not the "
                        "published one)", title_justify="left")
    table.add_column("name")
    table.add_column("images", justify="right")
    for column, _, _ in RANKING_COLUMNS:
        table.add_column(column, justify="right")
    for name, path in local.items():
        try:
            evaluation = read_evaluation(path)
        except CartoCellError:
            evaluation = None
        if not evaluation:
            table.add_row(name, "-", *("-" for _ in RANKING_COLUMNS))
            continue
        figures = evaluation.get("figures") or {}
        table.add_row(name, str(evaluation.get("sample_count") or "?"),
                      *(f"{figures[c]:.3f}" if isinstance(figures.get(c), (int, float)) else "n/a"
                        for c, _, _ in RANKING_COLUMNS))
    return table
