"""The voxel size ``spacing``: one check for every entry point.

A spacing is three positive, finite sizes ``(z, y, x)`` in micrometres.  Functions,
the notebook API and the CLI all call :func:`check_spacing`, so a bad value fails
with the same one-sentence :class:`~cartocell_bmz.errors.ConfigError` everywhere.
"""

from __future__ import annotations

import math
from typing import Sequence

from cartocell_bmz.errors import ConfigError

Spacing = tuple[float, float, float]


def check_spacing(spacing: Sequence[float], *, name: str = "spacing") -> Spacing:
    """Return ``spacing`` as three floats, or raise :class:`ConfigError` naming ``name``.

    Parameters
    ----------
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres; every size must be finite and > 0.
    name : str
        How the value is called in the error message (``"--spacing"`` for the CLI).

    Returns
    -------
    tuple of 3 floats

    Raises
    ------
    ConfigError
        Not three numbers, or one of them is zero, negative, infinite or NaN.

    Examples
    --------
    >>> check_spacing([2, 0.5, "0.5"])
    (2.0, 0.5, 0.5)
    >>> check_spacing((1, 0, 1))
    Traceback (most recent call last):
    ...
    cartocell_bmz.errors.ConfigError: spacing needs three positive sizes Z Y X in micrometres, got [1, 0, 1].
    """
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(_message(name, spacing)) from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(_message(name, spacing))
    return values  # type: ignore[return-value]


def _message(name: str, spacing) -> str:
    try:
        shown = repr(list(spacing))
    except TypeError:
        shown = repr(spacing)
    return f"{name} needs three positive sizes Z Y X in micrometres, got {shown}."
