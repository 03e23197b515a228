"""``cartocell-bmz validate``: bioimageio.core's test of a model package, per weight format."""

from __future__ import annotations

from typing import Optional

import typer


def command(
    package: str = typer.Argument(
        ..., help="Model package: a folder, a .zip or an rdf.yaml (offline), or a BMZ id (needs the network)."
    ),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="Test only this weight format (pytorch_state_dict, torchscript, onnx, ...)."
    ),
    device: Optional[str] = typer.Option(None, "--device", help="Device to test on (cpu, cuda); default cuda if available."),
    consumers: bool = typer.Option(
        False, "--consumers", help="One line per consumer: bioimageio.core per weight format (run here), BiaPy 3.7.1, "
                                   "ilastik, deepImageJ (their rules): reads / runs / why not."),
) -> None:
    """Test a BMZ model package with bioimageio.core, every weight format.

    Checks the description (fields, file hashes, test tensors), then for each
    weight format reproduces the test output from the test input and runs
    inference at the sizes the description allows. Prints a pass/fail table and
    exits with code 1 when any check fails.
    """
    from rich.console import Console
    from rich.table import Table

    from cartocell_bmz.bmz.validate import all_passed, validate_package

    console = Console(stderr=False)
    if consumers:
        _consumers(console, package, device)
        return
    with console.status(f"testing {package} with bioimageio.core ..."):
        rows = validate_package(package, weights=weights, devices=[device] if device else None)
    table = Table(title=f"bioimageio.core test of {package}", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("tests", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("first error", overflow="fold")
    for row in rows:
        table.add_row(
            row.check,
            "[green]passed[/green]" if row.passed else "[red]FAILED[/red]",
            str(row.n_tests),
            f"{row.seconds:.1f}",
            row.error or "",
        )
    console.print(table)
    if not all_passed(rows):
        raise typer.Exit(1)


def _consumers(console, package: str, device: Optional[str]) -> None:
    """Print one verdict per consumer; exit 1 when bioimageio.core's test fails."""
    from rich.markup import escape

    from cartocell_bmz.bmz.consumers import consumer_verdicts

    with console.status(f"testing {package} for every consumer ..."):
        verdicts = consumer_verdicts(package, devices=[device] if device else None)
    for v in verdicts:
        colour = "green" if v.reads and v.runs is not False else "red"
        console.print(f"[{colour}]{escape(str(v))}[/{colour}]", soft_wrap=True)
    if any(v.consumer.startswith("bioimageio.core") and not (v.reads and v.runs is not False) for v in verdicts):
        raise typer.Exit(1)
