"""One call for notebooks: a numpy volume and a model in, probabilities and cells out.

Examples
--------
>>> from cartocell_bmz.run.segment import segment                      # doctest: +SKIP
>>> result = segment(volume, "happy-honeybee", spacing=(1.0, 0.5, 0.5))  # doctest: +SKIP
>>> result                                                         # doctest: +SKIP
Segmentation(shape=(64, 256, 256), spacing=(1.0, 0.5, 0.5), cells=212)
>>> result.voronoi.max()                                           # doctest: +SKIP
212
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cartocell_bmz.errors import InputError


@dataclass(frozen=True, repr=False)
class Segmentation:
    """The result of :func:`segment`.

    Attributes
    ----------
    probabilities : numpy.ndarray
        ``(3, Z, Y, X)`` float32, channels B, C, M.
    instances : numpy.ndarray
        ``(Z, Y, X)`` cell labels after the watershed (0 = background).
    voronoi : numpy.ndarray
        ``(Z, Y, X)`` cell labels after the Voronoi on the M mask (neighbours touch).
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in micrometres used by the post-processing.
    """

    probabilities: np.ndarray
    instances: np.ndarray
    voronoi: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def n_cells(self) -> int:
        """Number of cells after the Voronoi."""
        return int(len(np.unique(self.voronoi)) - (1 if (self.voronoi == 0).any() else 0))

    def __repr__(self) -> str:
        return f"Segmentation(shape={tuple(self.voronoi.shape)}, spacing={self.spacing}, cells={self.n_cells})"


def segment(
    volume: np.ndarray,
    model: Any,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    config: Any = None,
    weights: str | None = None,
    tile: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    trust: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Segmentation:
    """Segment the cells of a 3D cyst image with a BMZ CartoCell model.

    Tiled prediction of B, C, M probabilities (:mod:`cartocell_bmz.run.predictor`),
    then watershed by channels and Voronoi on the mask
    (:func:`cartocell_bmz.core.postprocess.postprocess`).

    Parameters
    ----------
    volume : numpy.ndarray
        ``(Z, Y, X)`` image.
    model : str, path-like, ResolvedModel or Predictor
        A package folder/zip/rdf.yaml, a name in ``model_packages/``, a BMZ id
        (``"happy-honeybee"``), or a loaded :class:`~cartocell_bmz.run.predictor.Predictor`
        (reuse it to segment many volumes without reloading).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres (distances of the Voronoi).
    config : PostprocessConfig, optional
        Post-processing settings (default thresholds: "auto").
    weights, tile, batch_size, device, trust :
        See :class:`~cartocell_bmz.run.predictor.Predictor`.
    progress : callable, optional
        ``progress(tiles_done, tiles_total)``.

    Returns
    -------
    Segmentation
    """
    from cartocell_bmz.core.postprocess import postprocess
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.run.predictor import Predictor

    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise InputError(f"segment needs a 3D volume (Z, Y, X), got an array of shape {volume.shape}.")
    if volume.dtype.kind not in "biuf":
        raise InputError(f"segment needs a numeric volume, got type {volume.dtype}.")
    if volume.dtype.kind == "f" and not np.isfinite(volume).all():
        raise InputError("the volume holds NaN or infinite values; clean it first.")
    spacing_t = check_spacing(spacing)
    if isinstance(model, Predictor):
        probs = model.predict(volume, progress=progress)
    else:
        with Predictor(model, weights=weights, tile=tile, batch_size=batch_size, device=device, trust=trust) as p:
            probs = p.predict(volume, progress=progress)
    instances, voronoi = postprocess(probs, spacing_t, config)
    return Segmentation(probabilities=probs, instances=instances, voronoi=voronoi, spacing=spacing_t)


__all__ = ["Segmentation", "segment"]
