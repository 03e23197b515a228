"""Thresholds of the post-processing: checked values and Otsu's threshold of large volumes.

* :func:`check_threshold`, :func:`check_hole_size` -- a threshold is ``"auto"`` or a
  finite number, a hole size ``"auto"`` or a volume >= 0; anything else is a one-line
  :class:`~cartocell_bmz.errors.ConfigError` naming the field.
* :func:`otsu_threshold` -- Otsu's threshold of all values of an array, from a
  256-bin histogram over ``[min, max]`` built slab by slab (memory stays small);
  the threshold itself is :func:`skimage.filters.threshold_otsu` of that histogram,
  which is what BiaPy computes on the whole array.
* :func:`bin_indices` -- the histogram bin of every value (the watershed floods these
  levels), :func:`slabs` -- the slab split the histograms use.
"""

from __future__ import annotations

import math
from typing import Iterator, Literal, Union

import numpy as np

from cartocell_bmz.errors import ConfigError

Threshold = Union[float, Literal["auto"]]
AUTO = "auto"

#: CartoCell's manual thresholds (seed B, seed C, growth B) from its published configuration.
LEGACY_THRESHOLDS: tuple[float, float, float] = (0.2, 0.2, 0.25)
#: Number of histogram bins of Otsu's threshold (scikit-image's default).
N_BINS = 256


def check_threshold(value, name: str = "threshold") -> Threshold:
    """Return ``"auto"`` or a finite float; :class:`ConfigError` naming ``name`` otherwise.

    Examples
    --------
    >>> check_threshold("0.3"), check_threshold("AUTO")
    (0.3, 'auto')
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name} must be 'auto' or a number, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be 'auto' or a number, got {value!r}.")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number or 'auto', got {value!r}.")
    return float(value)


def check_hole_size(value) -> float | Literal["auto"]:
    """Return ``"auto"`` or a volume >= 0 in cubic micrometres; :class:`ConfigError` otherwise.

    Examples
    --------
    >>> check_hole_size("Auto"), check_hole_size(2)
    ('auto', 2.0)
    """
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"max_hole_size must be 'auto' or a volume >= 0 in cubic micrometres, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(out) or out < 0:
        raise ConfigError(f"max_hole_size must be 'auto' or a volume >= 0 in cubic micrometres, got {value!r}.")
    return out


def slabs(n: int, voxels_per_slab: int, slab_voxels: int = 1 << 18) -> Iterator[slice]:
    """Split ``range(n)`` into slices of about ``slab_voxels`` voxels (``voxels_per_slab`` per index).

    Examples
    --------
    >>> list(slabs(5, 100, slab_voxels=200))
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    step = max(1, slab_voxels // max(1, voxels_per_slab))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def bin_indices(x: np.ndarray, lo: float, hi: float, nbins: int = N_BINS) -> np.ndarray:
    """Histogram bin of each value (``nbins`` equal bins over ``[lo, hi]``), as ``uint8``/``uint16``.

    Requires ``hi > lo``; values outside ``[lo, hi]`` go to the first or last bin.

    Examples
    --------
    >>> bin_indices(np.array([0.0, 0.5, 1.0], np.float32), 0.0, 1.0).tolist()
    [0, 128, 255]
    """
    idx = (x - np.float32(lo)) * np.float32(nbins / (hi - lo))
    np.clip(idx, 0, nbins - 1, out=idx)
    return idx.astype(np.uint8 if nbins <= 256 else np.uint16)


def otsu_from_histogram(counts: np.ndarray, lo: float, hi: float) -> float:
    """Otsu's threshold (a bin centre) of a histogram of equal bins over ``[lo, hi]``.

    The histogram's first and last bins must be non-empty (true when ``lo`` and
    ``hi`` are the minimum and maximum of the values counted).
    """
    from skimage.filters import threshold_otsu

    counts = np.asarray(counts)
    centres = lo + (np.arange(counts.size) + 0.5) * ((hi - lo) / counts.size)
    return float(threshold_otsu(hist=(counts, centres)))


def otsu_threshold(x: np.ndarray, nbins: int = N_BINS, value_range: tuple[float, float] | None = None) -> float:
    """Otsu's threshold of all values of ``x`` (256 bins over ``[min, max]``, as scikit-image).

    The histogram is built slab by slab, so memory stays small for large volumes.
    A constant array returns its value.

    Examples
    --------
    >>> x = np.r_[np.full(100, 0.1), np.full(50, 0.9)].astype(np.float32)
    >>> 0.1 < otsu_threshold(x) < 0.9
    True
    """
    x = np.asarray(x)
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    if not hi > lo:
        return lo
    counts = np.zeros(nbins, np.int64)
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    for sl in slabs(flat.shape[0], flat.shape[1]):
        counts += np.bincount(bin_indices(flat[sl], lo, hi, nbins).ravel(), minlength=nbins)
    return otsu_from_histogram(counts, lo, hi)


def resolve_threshold(value: Threshold, x: np.ndarray, value_range=None, factor: float = 1.0) -> float:
    """``value`` as a float: ``"auto"`` is ``factor`` times Otsu's threshold of ``x``.

    Examples
    --------
    >>> resolve_threshold(0.25, np.zeros(3))
    0.25
    """
    if value == AUTO:
        return otsu_threshold(x, value_range=value_range) * factor
    return float(value)
