"""The CLI's frame around every command (cartocell_bmz/cli/app.py): errors and warnings as one-line messages."""

from __future__ import annotations

import warnings

import typer
from typer.testing import CliRunner

from cartocell_bmz.cli.app import friendly
from cartocell_bmz.errors import CartoCellWarning, InputError


def _app(body) -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("go")(friendly(body))
    app.command("other")(lambda: None)  # two commands: "go" is a subcommand
    return app


def test_cartocell_warnings_show_as_their_message_alone_each_time():
    def body() -> None:
        for _ in range(2):
            warnings.warn("notice: model x runs code from x.py;\n pass --trust", CartoCellWarning)
        typer.echo("done")

    result = CliRunner().invoke(_app(body), ["go"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["notice: model x runs code from x.py; pass --trust"] * 2
    assert result.stdout == "done\n"


def test_other_warnings_keep_pythons_display_and_errors_stay_one_line():
    def body() -> None:
        warnings.warn("from a library", UserWarning)
        raise InputError("in.tif: not a volume.")

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = CliRunner().invoke(_app(body), ["go"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == "error: in.tif: not a volume."
    assert "from a library" not in result.stderr and [str(w.message) for w in seen] == ["from a library"]
