"""Synthetic 3D epithelial cysts: raw membrane images with known instance labels.

A cyst is a hollow, roughly ellipsoidal monolayer of cells around a lumen.  Cells
are radial columns that span the shell from the inner (apical) to the outer
(basal) surface and tile it without gaps; they come from a weighted Voronoi
partition of jittered points on the mid-surface, so they vary in size and shape.
The raw image shows cell outlines (membrane signal) with per-cell and smooth
uneven brightness, anisotropic optical blur (stronger in z), background and
Poisson + Gaussian noise.

Everything is deterministic given a seed.  :func:`make_cyst` is pure (arrays in
memory, no files); :func:`cartocell_bmz.io.phantom_sets.make_dataset` writes a
dataset of them in the CartoCell folder layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from cartocell_bmz.core.optics import Acquisition, acquire, to_detector
from cartocell_bmz.core.spacing import check_spacing

#: Cyst stages imitating 4-, 7- and 10-day cysts: (relative size, relative cell count).
STAGES: dict[str, tuple[float, float]] = {"day4": (0.62, 0.45), "day7": (0.8, 0.7), "day10": (0.95, 1.0)}

#: Default number of volumes per split (small: demo and tests stay fast on 2 cores).
DEFAULT_COUNTS: dict[str, int] = {"train_M1": 4, "validation": 2, "train_M2": 8, "test": 4}
#: Default low-resolution volume shape (z, y, x) and voxel size (micrometres).
DEFAULT_SHAPE: tuple[int, int, int] = (40, 96, 96)
DEFAULT_SPACING: tuple[float, float, float] = (1.0, 0.5, 0.5)


@dataclass(frozen=True)
class Cyst:
    """One synthetic cyst.

    Attributes
    ----------
    raw : numpy.ndarray
        ``uint16`` ``(Z, Y, X)`` membrane image.
    labels : numpy.ndarray
        ``uint16`` instance labels, ``0`` for background and lumen.
    spacing : tuple of float
        Voxel size in micrometres ``(z, y, x)``.
    stage : str
        ``day4``, ``day7`` or ``day10``.
    """

    raw: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    stage: str


@dataclass
class PhantomConfig:
    """Parameters of a synthetic dataset (saved as ``dataset.json``).

    :func:`cartocell_bmz.io.phantom_sets.make_dataset` writes a dataset from them.
    """

    seed: int = 0
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    spacing: tuple[float, float, float] = DEFAULT_SPACING
    counts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_COUNTS))
    #: Cells on the largest (day10) cyst; ``None`` picks it from the volume size.
    max_cells: int | None = None
    #: Oversampling of ``train_M1`` (made at high resolution, then downsampled).
    m1_oversampling: int = 2


def default_max_cells(shape: Sequence[int], spacing: Sequence[float]) -> int:
    """Cell count of a day-10 cyst that keeps cells about 13 lateral voxels wide."""
    extent = np.asarray(shape, float) * np.asarray(spacing, float)
    semi = 0.42 * extent
    # Knud Thomsen's approximation of an ellipsoid's surface area.
    p = 1.6075
    a, b, c = semi
    area = 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)
    cell_width = 13.0 * float(min(spacing[1:]))
    return int(max(6, round(area / (cell_width**2 * 0.9))))


# --------------------------------------------------------------------------- core


def make_cyst(
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    *,
    stage: str = "day7",
    max_cells: int | None = None,
    oversampling: int = 1,
    acquisition: Acquisition | None = None,
    seed: int | np.random.SeedSequence = 0,
) -> Cyst:
    """Make one synthetic cyst.

    Parameters
    ----------
    shape : sequence of 3 ints
        Volume shape ``(Z, Y, X)`` of the result.
    spacing : sequence of 3 floats
        Voxel size in micrometres ``(z, y, x)``; z is usually the coarsest.
    stage : {"day4", "day7", "day10"}
        Cyst size and cell count class.
    max_cells : int, optional
        Cell count of a ``day10`` cyst; default from :func:`default_max_cells`.
    oversampling : int
        Make the cyst at ``oversampling`` times the resolution, then downsample
        (labels by nearest neighbour, raw by block mean), like CartoCell's
        high-resolution phase-1 data.  Ignored with ``acquisition``.
    acquisition : Acquisition, optional
        Image the cyst with this acquisition model (:func:`cartocell_bmz.core.optics.acquire`,
        e.g. :data:`~cartocell_bmz.core.optics.HIGH_RESOLUTION` or
        :data:`~cartocell_bmz.core.optics.LOW_RESOLUTION`; its ``oversampling`` replaces
        ``oversampling``).  ``None`` (default): the original simple camera model, whose
        images are unchanged.
    seed : int or numpy.random.SeedSequence
        Random seed; equal seeds give identical cysts.

    Returns
    -------
    Cyst

    Examples
    --------
    >>> c = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), stage="day4", seed=3)
    >>> c.labels.shape, c.labels.dtype.name, int(c.labels.max()) > 5
    ((16, 48, 48), 'uint16', True)
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {sorted(STAGES)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {shape}")
    spacing = check_spacing(spacing)
    rng = np.random.default_rng(seed)
    f = int(oversampling)
    hi_shape = tuple(s * f for s in shape)
    hi_spacing = tuple(s / f for s in spacing)
    size, count = STAGES[stage]
    n_cells = max_cells or default_max_cells(shape, spacing)
    n_cells = max(4, int(round(n_cells * count * rng.uniform(0.85, 1.15))))

    if acquisition is not None:
        return _acquired_cyst(shape, spacing, stage, size, n_cells, acquisition, rng)
    labels = _cyst_labels(hi_shape, hi_spacing, size, n_cells, rng)
    raw = _membrane_image(labels, hi_spacing, rng)
    if f > 1:
        labels = labels[f // 2 :: f, f // 2 :: f, f // 2 :: f]
        raw = raw.reshape(shape[0], f, shape[1], f, shape[2], f).mean(axis=(1, 3, 5))
    labels = _one_component_per_cell(labels)
    raw = _camera(raw, spacing, rng)
    return Cyst(raw=raw, labels=labels, spacing=spacing, stage=stage)


def _acquired_cyst(shape, spacing, stage, size, n_cells, acquisition: Acquisition, rng) -> Cyst:
    """A cyst imaged by :func:`cartocell_bmz.core.optics.acquire` on its (oversampled) grid."""
    f = tuple(int(v) for v in acquisition.oversampling)
    hi_shape = tuple(s * k for s, k in zip(shape, f))
    hi_spacing = tuple(s / k for s, k in zip(spacing, f))
    labels = _cyst_labels(hi_shape, hi_spacing, size, n_cells, rng)
    image = acquire(membrane_signal(labels, rng), hi_spacing, acquisition, rng)
    raw = to_detector(image, f)
    labels = _one_component_per_cell(labels[f[0] // 2 :: f[0], f[1] // 2 :: f[1], f[2] // 2 :: f[2]])
    return Cyst(raw=raw, labels=labels, spacing=spacing, stage=stage)


def membrane_signal(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise-free, unblurred membrane signal of a label volume (the object an acquisition images).

    Cell outlines (inner boundaries of every cell) at brightness 1 and the outer
    surface of the shell at 0.8, each cell scaled by its own staining (uniform
    0.6-1.4), plus a faint cytoplasm (5 %).

    Parameters
    ----------
    labels : numpy.ndarray
        Instance labels ``(Z, Y, X)``.
    rng : numpy.random.Generator
        Source of the per-cell staining.

    Returns
    -------
    numpy.ndarray
        ``float32`` signal of the same shape.
    """
    from skimage.segmentation import find_boundaries

    membrane = find_boundaries(labels, connectivity=1, mode="inner").astype(np.float32)
    membrane = np.maximum(membrane, find_boundaries(labels > 0, connectivity=1, mode="outer") * 0.8)
    per_cell = np.concatenate([[1.0], rng.uniform(0.6, 1.4, int(labels.max()))]).astype(np.float32)
    return (membrane * per_cell[labels] + 0.05 * (labels > 0) * per_cell[labels]).astype(np.float32)


def _cyst_labels(shape, spacing, size, n_cells, rng) -> np.ndarray:
    from scipy.spatial import cKDTree

    extent = np.asarray(shape) * np.asarray(spacing)
    semi = 0.42 * extent * size * rng.uniform(0.9, 1.0, 3)
    semi = np.minimum(semi, 0.45 * extent)
    center = extent / 2 + rng.uniform(-0.03, 0.03, 3) * extent
    # Shell thickness: a columnar epithelium about 5 z-voxels thick but at most 40% of the radius.
    thickness = min(max(5 * spacing[0] / size, 0.22 * semi.min()), 0.4 * semi.min())

    zz, yy, xx = (
        (np.arange(n) + 0.5) * s - c for n, s, c in zip(shape, spacing, center)
    )
    pz, py, px = np.meshgrid(zz, yy, xx, indexing="ij", sparse=True)
    q = np.stack(np.broadcast_arrays(pz / semi[0], py / semi[1], px / semi[2]), axis=-1)
    r = np.linalg.norm(q, axis=-1)
    u = q / np.maximum(r, 1e-9)[..., None]
    # Roughly ellipsoidal: low-frequency wobble of the radius with the direction.
    wobble = np.zeros(shape)
    for _ in range(4):
        k = rng.normal(size=3)
        k *= rng.uniform(1.0, 2.5) / np.linalg.norm(k)
        wobble += rng.uniform(0.02, 0.05) * np.cos(u @ k + rng.uniform(0, 2 * np.pi))
    r = r / (1 + wobble)
    inner = 1 - thickness / semi.mean()
    shell = (r <= 1.0) & (r >= inner)

    # Cell centres: a jittered Fibonacci sphere, randomly rotated, with additive weights.
    i = np.arange(n_cells) + 0.5
    phi = np.arccos(1 - 2 * i / n_cells)
    theta = np.pi * (1 + 5**0.5) * i
    pts = np.stack([np.cos(phi), np.sin(phi) * np.sin(theta), np.sin(phi) * np.cos(theta)], 1)
    step = np.sqrt(4 * np.pi / n_cells)
    pts += rng.normal(scale=0.28 * step, size=pts.shape)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    pts = pts @ rot.T
    weights = rng.uniform(-0.22, 0.22, n_cells) * step

    idx = np.flatnonzero(shell)
    tree = cKDTree(pts)
    k = min(8, n_cells)
    dist, near = tree.query(u.reshape(-1, 3)[idx], k=k)
    dist = dist.reshape(len(idx), k) - weights[near.reshape(len(idx), k)]
    owner = near.reshape(len(idx), k)[np.arange(len(idx)), dist.argmin(1)]
    labels = np.zeros(shape, np.int32)
    labels.flat[idx] = owner + 1
    return labels


def _one_component_per_cell(labels: np.ndarray) -> np.ndarray:
    """Keep each cell's largest 6-connected piece; give stray pieces to the nearest cell.

    Returns sequential ``uint16`` labels (empty cells dropped).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential

    labels = labels.astype(np.int32, copy=True)
    shell = labels > 0
    for _ in range(10):
        stray = np.zeros(labels.shape, bool)
        for lab, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            cell = labels[sl] == lab
            comp, n = ndi.label(cell)
            if n > 1:
                sizes = np.bincount(comp.ravel())
                sizes[0] = 0
                stray[sl] |= cell & (comp != sizes.argmax())
        if not stray.any():
            break
        labels[stray] = 0
        _, (iz, iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
        labels[stray] = labels[iz[stray], iy[stray], ix[stray]]
    labels[~shell] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.uint16)


def _membrane_image(labels: np.ndarray, spacing, rng) -> np.ndarray:
    """Noise-free membrane signal with per-cell and smooth uneven brightness, blurred."""
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    membrane = find_boundaries(labels, connectivity=1, mode="inner").astype(np.float32)
    # Outer surface of the shell also shows membrane.
    membrane = np.maximum(membrane, find_boundaries(labels > 0, connectivity=1, mode="outer") * 0.8)
    n = int(labels.max())
    per_cell = np.concatenate([[1.0], rng.uniform(0.6, 1.4, n)]).astype(np.float32)
    cyto = 0.05 * (labels > 0) * per_cell[labels]
    field = ndi.gaussian_filter(rng.normal(size=labels.shape), sigma=[max(2.0, s / 4) for s in labels.shape])
    field = 1.0 + 0.35 * field / (np.abs(field).max() + 1e-9)
    signal = (membrane * per_cell[labels] + cyto) * field
    # Anisotropic optical blur: PSF sigma 0.7 um axially, 0.25 um laterally.
    sigma = (0.7 / spacing[0], 0.25 / spacing[1], 0.25 / spacing[2])
    return ndi.gaussian_filter(signal.astype(np.float32), sigma=sigma)


def _camera(signal: np.ndarray, spacing, rng) -> np.ndarray:
    """Background, Poisson shot noise, Gaussian read noise, 12-bit range, as uint16."""
    peak = rng.uniform(250, 450)
    background = rng.uniform(8, 20)
    photons = rng.poisson(np.clip(signal, 0, None) / max(float(signal.max()), 1e-9) * peak + background)
    image = photons + rng.normal(scale=3.0, size=signal.shape)
    return np.clip(np.round(image * 8), 0, 4095).astype(np.uint16)
