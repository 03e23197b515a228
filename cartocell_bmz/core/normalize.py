"""Zero-mean, unit-variance normalisation, computed exactly as bioimageio.core computes it.

Training (:mod:`cartocell_bmz.train.loop`), prediction with a training run
(:mod:`cartocell_bmz.run.backends`) and the halo measurement of a package
(:mod:`cartocell_bmz.bmz.export`) all normalise with :func:`zero_mean_unit_variance`,
and a package normalises through bioimageio.core's ``zero_mean_unit_variance``
preprocessing over the whole image; the two give the same bits.

bioimageio.core 0.11 (``stat_calculators.MeanVarStdCalculator`` and
``proc_ops.ZeroMeanUnitVariance``) works on the float32 tensor: the mean is a
float32 mean, the variance the float32 ``einsum`` of the centred values with
themselves divided by the voxel count (no Bessel correction), and the result
``(x - mean) / (std + eps)`` with ``eps`` added to the standard deviation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: bioimageio's default epsilon of ``zero_mean_unit_variance`` (added to the standard deviation).
NORM_EPS = 1e-6


def zero_mean_unit_variance(image: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """``(image - mean) / (std + eps)`` over the whole image, as ``float32``.

    The statistics are those bioimageio.core computes for a package's
    preprocessing (float32 mean; float32 sum of squared deviations over the
    voxel count), so a training run and the package exported from it see the
    same normalised input.  An image without contrast becomes zeros.

    Parameters
    ----------
    image : numpy.ndarray
        Any real array (converted to ``float32`` first, as a package's
        ``ensure_dtype`` step does).
    eps : float
        Added to the standard deviation.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the image's shape.

    Examples
    --------
    >>> x = zero_mean_unit_variance(np.arange(10, dtype=np.uint16).reshape(1, 2, 5))
    >>> x.dtype.name, round(float(x.mean()), 6), round(float(x.std()), 4)
    ('float32', 0.0, 1.0)
    >>> zero_mean_unit_variance(np.full((2, 3), 7.0)).tolist()
    [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    x = np.asarray(image, dtype=np.float32)
    if x.size == 0:
        return x.copy()
    flat = x.reshape(-1)
    mean = flat.mean()
    centred = flat - mean
    std = np.sqrt(np.einsum("i,i->", centred, centred) / centred.size)
    return apply_zero_mean_unit_variance(x, mean, std, eps)


def chunked_mean_std(image: Any, *, planes: int = 16) -> tuple[np.float32, np.float32]:
    """Mean and standard deviation of a large image read ``planes`` z-planes at a time (two passes).

    The sums are float64 (first pass the mean, second the squared deviations
    from it, over the voxel count, no Bessel correction), so the result is the
    exact mean and standard deviation rounded to float32; the float32 figures of
    :func:`zero_mean_unit_variance` agree with them to float32 rounding.

    Parameters
    ----------
    image : array-like
        ``(Z, ...)`` anything sliced along its first axis to numpy arrays (an
        array, a memory map, :class:`cartocell_bmz.io.stacks.LazyStack`).
    planes : int
        Planes per chunk (memory: ``planes`` planes as float64).

    Returns
    -------
    (numpy.float32, numpy.float32)
        Mean and standard deviation.

    Examples
    --------
    >>> x = np.arange(24, dtype=np.uint16).reshape(4, 2, 3)
    >>> m, s = chunked_mean_std(x, planes=3)
    >>> float(m), round(float(s), 4), bool(s == np.float32(x.std()))
    (11.5, 6.9222, True)
    """
    n_planes = int(image.shape[0])
    step = max(1, int(planes))
    count = int(np.prod(image.shape, dtype=np.int64))
    if count == 0:
        return np.float32(0.0), np.float32(0.0)
    total = 0.0
    for z in range(0, n_planes, step):
        total += float(np.sum(np.asarray(image[z:z + step]), dtype=np.float64))
    mean = total / count
    squares = 0.0
    for z in range(0, n_planes, step):
        centred = np.asarray(image[z:z + step], dtype=np.float64) - mean
        flat = centred.reshape(-1)
        squares += float(np.dot(flat, flat))
    return np.float32(mean), np.float32(np.sqrt(squares / count))


def apply_zero_mean_unit_variance(block: np.ndarray, mean: float, std: float, eps: float = NORM_EPS) -> np.ndarray:
    """``(block - mean) / (std + eps)`` in float32, with statistics of the whole image (:func:`chunked_mean_std`).

    The same arithmetic as :func:`zero_mean_unit_variance` (float32 operands), so
    a block normalised with the whole image's float32 statistics is that part of
    the whole normalised image.

    Examples
    --------
    >>> x = np.arange(10, dtype=np.uint16).reshape(1, 2, 5)
    >>> m, s = chunked_mean_std(x)
    >>> bool(np.array_equal(apply_zero_mean_unit_variance(x[:, :1], m, s), zero_mean_unit_variance(x)[:, :1]))
    True
    """
    x = np.asarray(block, dtype=np.float32)
    out = (x - np.float32(mean)) / (np.float32(std) + np.float32(eps))
    return np.asarray(out, dtype=np.float32)


__all__ = ["NORM_EPS", "zero_mean_unit_variance", "chunked_mean_std", "apply_zero_mean_unit_variance"]
