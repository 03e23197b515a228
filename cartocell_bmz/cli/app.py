"""The ``cartocell-bmz`` command line: one command per job.

Each command lives in ``cartocell_bmz/commands/<name>.py`` as a thin layer that
parses options, calls the library and writes files.  Command modules import only
light modules at import time, so ``cartocell-bmz --help`` never imports torch or
bioimageio.  Expected failures (:class:`~cartocell_bmz.errors.CartoCellError`)
become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import warnings
from typing import Callable, Iterator, Optional

import typer

from cartocell_bmz import __version__
from cartocell_bmz.errors import CartoCellError, CartoCellWarning

#: Command name -> module in ``cartocell_bmz.cli.commands`` (function ``command``).
COMMANDS: dict[str, str] = {
    "phantoms": "phantoms",
    "postprocess": "postprocess",
    "evaluate": "evaluate",
    "train": "train",
    "pseudo-label": "pseudo_label",
    "pipeline": "pipeline",
    "package": "package",
    "validate": "validate",
    "predict": "predict",
    "benchmark": "benchmark",
    "models": "models",
    "measure": "measure",
    "crop": "crop",
    "analyse": "analyse",
}

app = typer.Typer(
    name="cartocell-bmz",
    help="CartoCell 3D cyst cell segmentation with BioImage Model Zoo models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def fail(message: str, code: int = 2) -> None:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def warnings_on_stderr() -> Iterator[None]:
    """Show every :class:`~cartocell_bmz.errors.CartoCellWarning` as its message alone, one line on stderr.

    The library reports notices and unmet bounds as warnings; a user of the CLI sees
    each one (not only the first from a place), without Python's file and line prefix.
    Other warnings are shown as before.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("always", CartoCellWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CartoCellWarning):
                typer.echo(" ".join(str(message).split()), err=True)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def friendly(func: Callable) -> Callable:
    """Turn expected failures of a command into one stderr line and a non-zero exit; warnings into lines."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            with warnings_on_stderr():
                return func(*args, **kwargs)
        except CartoCellError as exc:
            fail(" ".join(str(exc).split()), exc.exit_code)
        except KeyboardInterrupt:
            typer.echo("interrupted; finished outputs are kept, rerun to continue.", err=True)
            raise typer.Exit(130)
        except MemoryError:
            fail("out of memory; use smaller tiles (--tile) or a smaller batch.", 3)

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cartocell-bmz {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """CartoCell 3D cyst cell segmentation with BioImage Model Zoo models."""


def _register() -> None:
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"cartocell_bmz.cli.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"cartocell_bmz.cli.commands.{module}":
                continue  # command not built yet
            raise
        app.command(name, help=mod.command.__doc__)(friendly(mod.command))


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CartoCellError as exc:  # raised outside a command (e.g. in a callback)
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
