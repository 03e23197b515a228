"""Typed errors for expected failures.

Every error a user can cause (a bad file, a bad value, a bad model package)
is raised as a subclass of :class:`CartoCellError` whose message is one
sentence naming the culprit and what to do.  The CLI prints that sentence on
stderr and exits with a non-zero code, never a traceback.
"""

from __future__ import annotations


class CartoCellError(Exception):
    """Base class of every expected, user-facing failure."""

    exit_code: int = 2


class InputError(CartoCellError):
    """A data file or folder given by the user cannot be used (wrong shape, unreadable, ...)."""


class ConfigError(CartoCellError):
    """An option or configuration value is invalid."""


class ModelError(CartoCellError):
    """A model package, id or training run cannot be resolved, verified or loaded."""


class OutputError(CartoCellError):
    """An output location cannot be written."""


class CartoCellWarning(UserWarning):
    """Something worth knowing that does not stop the work (a notice, a measured bound not met, ...).

    The library reports through :mod:`warnings` with this category, never by
    printing; the CLI shows these warnings on stderr, a notebook user can filter them
    (``warnings.simplefilter("ignore", CartoCellWarning)``).
    """


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An exception's message on one line, for a one-sentence error: whitespace collapsed, cut at ``limit``.

    Parameters
    ----------
    exc : BaseException
        The exception (from a library: pydantic, yaml, bioimageio, torch, ...).
    limit : int
        Most characters kept; a longer message ends with ``...``.

    Returns
    -------
    str
        The message, or the exception's type name when it has none.

    Examples
    --------
    >>> one_line(ValueError("first line\\n  second   line"))
    'first line second line'
    >>> one_line(KeyError())
    'KeyError'
    >>> one_line(RuntimeError("x" * 300), limit=5)
    'xxxxx...'
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:limit] + ("..." if len(text) > limit else "")
