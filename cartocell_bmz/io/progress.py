"""Progress reporting: the one callback protocol of every long-running library function.

A library function that works through many items (volumes, tiles, benchmark tasks,
epochs) takes ``progress=None``; when given a callable it calls it as::

    progress(done: int, total: int, message: str = "") -> None

- ``done`` items of ``total`` are finished; ``message`` is one short line saying what
  is being worked on (a file name, ``"b.tif: tiles 3/12"``), ``""`` allowed.
- A *run* is the events of one call: it starts with ``done == 0``, ``done`` never
  decreases, ``total`` stays the same, and the last event has ``done == total``
  (a run cut short by an error simply stops).  The same ``done`` may be reported again
  with a new ``message`` (the next item, or sub-steps of the current one: :func:`nested`).
- One callback may be handed to several functions one after the other: each call is
  a new run (an event after ``done == total``, or with a lower ``done`` or another
  ``total``, begins the next run).
- A callback must be cheap and must not raise.  A plain ``progress(done, total)``
  call is valid (the message defaults to ``""``), so a callback written for this
  protocol also takes the tile reports of :class:`~cartocell_bmz.run.predictor.Predictor`.

The library never prints and never draws bars: the CLI passes
:class:`cartocell_bmz.cli.progress.RichProgress`, a notebook may pass any function,
e.g. ``lambda done, total, message="": print(done, total, message)``.  This module imports
nothing (no rich); ``core``, which may not import ``io``, needs none of it: it calls
``progress(done, total, message)`` and annotates ``progress: Callable[..., None] | None``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol, Sequence, TypeVar

T = TypeVar("T")


class ProgressCallback(Protocol):
    """Type of a ``progress=`` argument: ``progress(done, total, message="")``."""

    def __call__(self, done: int, total: int, message: str = "") -> None: ...


def report(progress: ProgressCallback | None, done: int, total: int, message: str = "") -> None:
    """Send one event to ``progress`` (nothing when it is ``None``).

    Examples
    --------
    >>> report(None, 1, 2, "ignored")
    >>> report(lambda d, t, m="": print(d, t, m), 1, 2, "a.tif")
    1 2 a.tif
    """
    if progress is not None:
        progress(int(done), int(total), message)


def nested(progress: ProgressCallback | None, done: int, total: int, message: str) -> ProgressCallback | None:
    """A callback for the sub-steps of one item that reports them on the outer run.

    The outer counter stays at ``done`` of ``total``; each sub-step event
    ``(d, t, m)`` becomes the message ``"MESSAGE: m d/t"``.

    Examples
    --------
    >>> inner = nested(lambda d, t, m="": print(d, t, m), 2, 5, "b.tif")
    >>> inner(3, 12, "tiles")
    2 5 b.tif: tiles 3/12
    >>> nested(None, 2, 5, "b.tif") is None
    True
    """
    if progress is None:
        return None

    def inner(sub_done: int, sub_total: int, sub_message: str = "") -> None:
        what = f"{sub_message} " if sub_message else ""
        progress(int(done), int(total), f"{message}: {what}{sub_done}/{sub_total}")

    return inner


def steps(
    items: Sequence[T] | Iterable[T],
    progress: ProgressCallback | None,
    *,
    describe: Callable[[T], str] = str,
    finished: str = "",
) -> Iterator[tuple[int, T]]:
    """Iterate ``(index, item)`` over ``items`` while reporting one run to ``progress``.

    Reports ``(i, n, describe(item))`` before each item and ``(n, n, finished)``
    after the last one.

    Examples
    --------
    >>> events = []
    >>> for i, name in steps(["a.tif", "b.tif"], lambda *e: events.append(e), finished="done"):
    ...     pass
    >>> events
    [(0, 2, 'a.tif'), (1, 2, 'b.tif'), (2, 2, 'done')]
    """
    items = list(items)
    total = len(items)
    for i, item in enumerate(items):
        report(progress, i, total, describe(item))
        yield i, item
    report(progress, total, total, finished)


__all__ = ["ProgressCallback", "nested", "report", "steps"]
