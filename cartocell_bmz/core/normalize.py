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
    out = (x - mean) / (std + np.float32(eps))
    return np.asarray(out, dtype=np.float32)


__all__ = ["NORM_EPS", "zero_mean_unit_variance"]
