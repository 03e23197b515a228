"""The CLI's progress bars: one rich adapter for the library's ``progress=`` callbacks.

Every long-running library function reports ``progress(done, total, message="")``
(the protocol of :mod:`cartocell_bmz.io.progress`); a command draws those events with::

    with RichProgress() as progress:
        summary = predict_folder(..., progress=progress)

Each run of events (one library call) gets its own bar, described by the latest
message; the bar ends when ``done`` reaches ``total`` (or when the ``with`` block
exits, on an error or Ctrl-C).  Nothing is drawn before the first event.
"""

from __future__ import annotations

from typing import Any


class RichProgress:
    """A rich progress bar per run of ``progress(done, total, message="")`` events.

    Parameters
    ----------
    transient : bool
        Remove each bar from the terminal when it ends (for commands that print a table after).
    console : rich.console.Console, optional
        Where to draw (default: rich's console on stdout).

    Examples
    --------
    >>> import io
    >>> from rich.console import Console
    >>> screen = io.StringIO()
    >>> with RichProgress(console=Console(file=screen, width=40)) as progress:
    ...     for done in range(3):
    ...         progress(done, 2, "a.tif")
    >>> screen.getvalue().split()[::2]
    ['a.tif', '2/2']
    """

    def __init__(self, *, transient: bool = False, console: Any = None) -> None:
        self.transient = transient
        self.console = console
        self._bar: Any = None
        self._task: Any = None
        self._done = 0
        self._total = 0

    def __enter__(self) -> "RichProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._end()

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if total <= 0:
            return  # nothing to count: no bar
        if self._bar is not None and (done < self._done or total != self._total):
            self._end()  # another run began before this one reached its total
        if self._bar is None:
            self._start(total, message)
        self._done, self._total = done, total
        self._bar.update(self._task, completed=done, total=total, **({"description": message} if message else {}))
        if done >= total:
            self._end()

    def _start(self, total: int, message: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), transient=self.transient, console=self.console)
        self._bar.start()
        self._task = self._bar.add_task(message, total=total)

    def _end(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        self._bar = self._task = None
        self._done = self._total = 0


__all__ = ["RichProgress"]
