"""Instance labels -> the three target channels B, C, M a CartoCell network learns.

* **C** (contours, "thick"): every voxel whose 6-neighbourhood (itself and its six
  face neighbours) holds more than one label, background included.  Between two
  touching cells this marks two voxels (one on each side); around a cell it also marks
  the background voxels that touch it.
* **B** (cell body) and **M** (cellular-region mask) depend on ``mode``:

  ============  =======================  ========================
  mode          B                        M
  ============  =======================  ========================
  ``cartocell`` ``labels > 0`` and not C  ``labels > 0``
  ``biapy37``   ``labels > 0``            ``(labels > 0) | C``
  ============  =======================  ========================

  ``cartocell`` (the default) is the definition of the BiaPy versions CartoCell was
  trained with: B leaves a gap of contour voxels between touching cells, so the
  flooded surface ``-B`` has a ridge there.  ``biapy37`` is BiaPy 3.7's definition;
  measured on synthetic cysts, its B has no ridge between touching cells and the
  watershed merges and misplaces cells (PQ@0.5 0.58 against 0.87).

No holes are filled.  Channel order follows :data:`cartocell_bmz.layout.CHANNELS`.
"""

from __future__ import annotations

import numpy as np

from cartocell_bmz.errors import ConfigError

#: Target definitions accepted by :func:`make_targets` (the first is the default).
TARGET_MODES: tuple[str, ...] = ("cartocell", "biapy37")


def contours(labels: np.ndarray) -> np.ndarray:
    """Thick contours: voxels whose 6-neighbourhood holds more than one label.

    Same result as ``skimage.segmentation.find_boundaries(labels, connectivity=1,
    mode="thick")`` for 3D volumes, computed with one comparison per axis.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` integer label volume, ``0`` for background.

    Returns
    -------
    numpy.ndarray
        Boolean ``(Z, Y, X)`` contour mask.

    Examples
    --------
    >>> lab = np.zeros((1, 1, 6), np.uint16); lab[0, 0, 1:3] = 1; lab[0, 0, 3:5] = 2
    >>> contours(lab).astype(int)[0, 0].tolist()
    [1, 1, 1, 1, 1, 1]
    >>> lab[0, 0, 1:5] = 1
    >>> contours(lab).astype(int)[0, 0].tolist()
    [1, 1, 0, 0, 1, 1]
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=bool)
    for axis in range(labels.ndim):
        n = labels.shape[axis]
        if n < 2:
            continue
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[axis] = slice(0, n - 1)
        hi[axis] = slice(1, n)
        diff = labels[tuple(lo)] != labels[tuple(hi)]
        out[tuple(lo)] |= diff
        out[tuple(hi)] |= diff
    return out


def make_targets(labels: np.ndarray, mode: str = "cartocell") -> np.ndarray:
    """Build the B, C, M target channels from an instance label volume.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` label volume of non-negative integers, ``0`` for background
        (and lumen).
    mode : {"cartocell", "biapy37"}
        Definition of B and M (see the module documentation).  ``cartocell``:
        B = cells minus contours, M = cells.  ``biapy37``: B = cells,
        M = cells or contours.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array ``(3, Z, Y, X)`` of 0/1 in channel order B, C, M.

    Raises
    ------
    ConfigError
        ``mode`` is not one of :data:`TARGET_MODES`.
    ValueError
        ``labels`` is not a 3D array of non-negative integers.

    Examples
    --------
    >>> lab = np.zeros((3, 3, 4), np.uint16); lab[:, :, :2] = 1; lab[:, :, 2:] = 2
    >>> t = make_targets(lab)
    >>> t.shape, t.dtype.name, t[:, 1, 1].tolist()
    ((3, 3, 3, 4), 'uint8', [[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1]])
    >>> make_targets(lab, mode="biapy37")[0, 1, 1].tolist()
    [1, 1, 1, 1]
    """
    if mode not in TARGET_MODES:
        raise ConfigError(f"target mode {mode!r} is unknown; choose one of {', '.join(TARGET_MODES)}.")
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3D (Z, Y, X) array, got shape {labels.shape}")
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must hold integers, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0")
    cells = labels > 0
    c = contours(labels)
    out = np.empty((3,) + labels.shape, dtype=np.uint8)
    if mode == "cartocell":
        np.logical_and(cells, ~c, out=out[0].view(bool))
        out[2] = cells
    else:
        out[0] = cells
        np.logical_or(cells, c, out=out[2].view(bool))
    out[1] = c
    return out
