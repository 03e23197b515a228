"""Random 3D patches and their augmentation, for training (pure numpy).

A training patch is cut from a normalised image and its target channels
(B, C, M) and augmented with the CartoCell set: rotation in the yx plane (by
any angle or by multiples of 90 degrees), flips on z, y and x, elastic
deformation and a brightness / contrast shift.  Rotation and elastic
deformation are one resampling: the output grid is mapped into a larger
region of the volume, so that rotated corners show real image rather than
padding.  Every random choice comes from the :class:`numpy.random.Generator`
passed in, so equal seeds give equal patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: Rotation modes of :class:`Augmentations`.
ROTATIONS: tuple[str, ...] = ("any", "90", "none")


@dataclass(frozen=True)
class Augmentations:
    """Which augmentations a training run applies, and how strongly.

    Attributes
    ----------
    enabled : bool
        Master switch; ``False`` gives plain random crops.
    rotation : {"any", "90", "none"}
        Rotation in the yx plane by a uniform random angle, by a random multiple
        of 90 degrees (180 degrees only when y and x differ), or none.
    flip : bool
        Random flips along z, y and x (each with probability 1/2).
    elastic : bool
        Smooth random deformation (probability ``p_elastic``).
    elastic_alpha : float
        Typical displacement of the elastic deformation, in voxels (yx; half in z).
    elastic_sigma : float
        Smoothness of the deformation field, in voxels (yx; half in z).
    brightness : bool
        Random brightness shift and contrast scale of the normalised image
        (probability ``p_brightness``).
    brightness_shift : float
        Largest additive shift, in units of the image standard deviation.
    contrast_range : float
        Largest relative contrast change (``0.15`` scales by 0.85-1.15).
    p_elastic, p_brightness : float
        Probabilities of the elastic and brightness augmentations.
    """

    enabled: bool = True
    rotation: str = "any"
    flip: bool = True
    elastic: bool = True
    elastic_alpha: float = 2.0
    elastic_sigma: float = 6.0
    brightness: bool = True
    brightness_shift: float = 0.15
    contrast_range: float = 0.15
    p_elastic: float = 0.5
    p_brightness: float = 0.5

    def problems(self) -> list[str]:
        """One message per invalid field (empty when valid)."""
        out = []
        if self.rotation not in ROTATIONS:
            out.append(f"augment.rotation must be one of {', '.join(ROTATIONS)}, got {self.rotation!r}")
        for name in ("elastic_alpha", "elastic_sigma", "brightness_shift", "contrast_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                out.append(f"augment.{name} must be a number >= 0, got {value!r}")
        if isinstance(self.elastic_sigma, (int, float)) and self.elastic_sigma == 0 and self.elastic:
            out.append("augment.elastic_sigma must be > 0 when elastic deformation is on")
        if isinstance(self.contrast_range, (int, float)) and self.contrast_range >= 1:
            out.append(f"augment.contrast_range must be below 1, got {self.contrast_range!r}")
        for name in ("p_elastic", "p_brightness"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                out.append(f"augment.{name} must be a probability in [0, 1], got {value!r}")
        for name in ("enabled", "flip", "elastic", "brightness"):
            if not isinstance(getattr(self, name), bool):
                out.append(f"augment.{name} must be true or false, got {getattr(self, name)!r}")
        return out

    @property
    def resamples(self) -> bool:
        """Whether patches need a resampling (arbitrary rotation or elastic)."""
        return self.enabled and (self.rotation == "any" or (self.elastic and self.p_elastic > 0))


def random_patch(
    image: np.ndarray,
    targets: np.ndarray,
    patch: Sequence[int],
    rng: np.random.Generator,
    *,
    augment: Augmentations | None = None,
    foreground: np.ndarray | None = None,
    foreground_bias: float = 0.9,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one (augmented) random patch from an image and its targets.

    Parameters
    ----------
    image : numpy.ndarray
        ``float32`` ``(Z, Y, X)`` normalised image, at least ``patch`` in every axis.
    targets : numpy.ndarray
        ``uint8`` ``(3, Z, Y, X)`` target channels.
    patch : sequence of 3 ints
        Patch size ``(z, y, x)``.
    rng : numpy.random.Generator
        Source of every random choice.
    augment : Augmentations, optional
        Augmentations to apply; ``None`` or disabled gives a plain crop.
    foreground : numpy.ndarray, optional
        Flat indices of foreground voxels; with probability ``foreground_bias``
        the patch is centred on one of them (clamped to the volume).
    foreground_bias : float
        Probability of a foreground-centred patch.

    Returns
    -------
    image_patch : numpy.ndarray
        ``float32`` ``(z, y, x)``.
    target_patch : numpy.ndarray
        ``float32`` ``(3, z, y, x)`` of 0 and 1.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(size=(8, 20, 20)).astype(np.float32)
    >>> tgt = (img > 0).astype(np.uint8)[None].repeat(3, 0)
    >>> x, y = random_patch(img, tgt, (4, 8, 8), rng)
    >>> x.shape, y.shape, bool(((x > 0) == (y[0] > 0.5)).all())
    ((4, 8, 8), (3, 4, 8, 8), True)
    """
    augment = augment or Augmentations(enabled=False)
    shape = np.asarray(image.shape)
    patch = np.asarray([int(p) for p in patch])
    if (patch > shape).any():
        raise ValueError(f"patch {tuple(patch)} is larger than the volume {tuple(shape)}")
    if foreground is not None and len(foreground) and rng.random() < foreground_bias:
        centre = np.asarray(np.unravel_index(int(foreground[rng.integers(len(foreground))]), image.shape), float)
    else:
        centre = np.asarray([rng.uniform(p / 2, s - p / 2) for p, s in zip(patch, shape)], float)

    if augment.resamples:
        x, y = _resampled_patch(image, targets, patch, centre, rng, augment)
    else:
        start = np.clip(np.round(centre - patch / 2).astype(int), 0, shape - patch)
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch))
        x = image[sl].astype(np.float32, copy=True)
        y = targets[(slice(None),) + sl].astype(np.float32)

    if augment.enabled:
        if augment.rotation == "90":
            k = int(rng.integers(4)) if patch[1] == patch[2] else 2 * int(rng.integers(2))
            x = np.rot90(x, k, axes=(1, 2))
            y = np.rot90(y, k, axes=(2, 3))
        if augment.flip:
            for axis in range(3):
                if rng.random() < 0.5:
                    x = np.flip(x, axis)
                    y = np.flip(y, axis + 1)
        if augment.brightness and rng.random() < augment.p_brightness:
            scale = 1.0 + rng.uniform(-augment.contrast_range, augment.contrast_range)
            shift = rng.uniform(-augment.brightness_shift, augment.brightness_shift)
            x = x * np.float32(scale) + np.float32(shift)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32)


def _resampled_patch(image, targets, patch, centre, rng, augment: Augmentations):
    """Rotate (yx) and elastically deform a patch in one resampling.

    The output grid (centred on ``centre``) is rotated about its centre, a
    smooth random displacement is added, and image (linear) and targets
    (nearest) are sampled from a region just large enough to hold the mapped
    grid; beyond the volume the region is mirrored.
    """
    from scipy import ndimage as ndi

    shape = np.asarray(image.shape)
    grid = np.meshgrid(*[np.arange(p, dtype=np.float32) - (p - 1) / 2 for p in patch], indexing="ij", sparse=False)
    gz, gy, gx = grid
    if augment.enabled and augment.rotation == "any":
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
        gy, gx = c * gy - s * gx, s * gy + c * gx
    if augment.enabled and augment.elastic and rng.random() < augment.p_elastic:
        sigma = np.array([augment.elastic_sigma / 2, augment.elastic_sigma, augment.elastic_sigma])
        alpha = np.array([augment.elastic_alpha / 2, augment.elastic_alpha, augment.elastic_alpha])
        disp = []
        for a in alpha:
            field = ndi.gaussian_filter(rng.normal(size=tuple(patch)).astype(np.float32), sigma, mode="reflect")
            field *= np.float32(a / (field.std() + 1e-6))
            disp.append(field)
        gz, gy, gx = gz + disp[0], gy + disp[1], gx + disp[2]
    coords = [gz, gy, gx]
    # Keep the centre where the whole patch fits when the volume allows it.
    half_extent = np.asarray([np.abs(g).max() for g in coords])
    lo_c = np.minimum(half_extent, shape / 2 - 0.5)
    centre = np.clip(centre, lo_c, shape - 1 - lo_c)
    # Region of the volume that holds the mapped grid (plus one voxel for interpolation).
    lo = np.floor(centre - half_extent).astype(int) - 1
    hi = np.ceil(centre + half_extent).astype(int) + 2
    region_lo = np.clip(lo, 0, shape)
    region_hi = np.clip(hi, 0, shape)
    sl = tuple(slice(a, b) for a, b in zip(region_lo, region_hi))
    local = [g + np.float32(c - o) for g, c, o in zip(coords, centre, region_lo)]
    x = ndi.map_coordinates(image[sl], local, order=1, mode="mirror").astype(np.float32)
    y = np.stack(
        [ndi.map_coordinates(targets[ch][sl], local, order=0, mode="mirror") for ch in range(targets.shape[0])]
    ).astype(np.float32)
    return x, y
