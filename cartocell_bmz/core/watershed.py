"""Watershed by channels: cells from the B and C probabilities by marker-controlled flooding.

* :func:`watershed_by_channels` -- seeds are ``(B > tB) & (C < tC)`` inside the growth
  mask ``B > tG``, labelled with 6-connectivity; seeds of at most ``min_seed_size``
  voxels are dropped; the seeds flood the surface ``-B`` (optionally smoothed, as
  BiaPy 3.7 does) with 6-connectivity inside the growth mask.  "auto" thresholds are
  Otsu's over the whole volume (``tB = Otsu(B)``, ``tC = Otsu(C)``, ``tG = Otsu(B) / 2``),
  as in BiaPy.
* :func:`flood` -- the flooding alone, on any integer surface: the counterpart of
  ``skimage.segmentation.watershed(levels, markers, mask=mask, connectivity=1)``.

The flooding is a hierarchical-queue (Meyer) watershed on ``-B`` quantised to 256
levels (the bins of Otsu's histogram), run by vectorised waves over flat indices: it
floods only the voxels that need it and starts from the seed voxels on a seed's
border.  Inside one level the flood advances breadth-first (like the first-in
first-out order of a heap watershed on an 8-bit image); a voxel reached by several
cells in the same wave joins the smallest label.

:func:`flood` is kept rather than ``skimage.segmentation.watershed`` because it is
measured faster: ``benchmarks/bench_postprocess.py`` times both on the same seeds,
quantised surface and mask with 6-connectivity; on 128 x 384 x 384 voxels (380 cells,
2 threads) ours takes 1.02 s and 167 MiB, scikit-image's 4.86 s and 406 MiB (4.75x
slower), and the two give the same label to 99.87% of the flooded voxels (the others
are plateau ties).  See benchmarks/README.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from cartocell_bmz.core.labels import label_dtype
from cartocell_bmz.core.spacing import check_spacing
from cartocell_bmz.core.thresholds import AUTO, N_BINS, bin_indices, otsu_from_histogram, otsu_threshold, resolve_threshold, slabs

if TYPE_CHECKING:
    from cartocell_bmz.core.postprocess import PostprocessConfig

#: Number of grey levels of the flooded surface (the bins of Otsu's histogram).
N_LEVELS = N_BINS


def check_probabilities(probs: np.ndarray) -> np.ndarray:
    """``probs`` as a real ``(3, Z, Y, X)`` array (integers become ``float32``); ``ValueError`` otherwise.

    Examples
    --------
    >>> check_probabilities(np.zeros((3, 2, 2, 2), np.uint8)).dtype.name
    'float32'
    """
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[0] != 3:
        raise ValueError(f"probabilities must be a (3, Z, Y, X) array in channel order B, C, M, got shape {probs.shape}")
    if probs.dtype.kind not in "fiub":
        raise ValueError(f"probabilities must be real numbers, got dtype {probs.dtype}")
    if probs.dtype.kind != "f":
        probs = probs.astype(np.float32)
    return probs


def watershed_by_channels(
    probs: np.ndarray,
    *,
    config: PostprocessConfig | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> np.ndarray:
    """Instances from B, C, M probabilities by marker-controlled watershed.

    Parameters
    ----------
    probs : numpy.ndarray
        ``(3, Z, Y, X)`` probabilities in channel order B, C, M (M is not used here).
    config : PostprocessConfig, optional
        Thresholds, ``min_seed_size`` and ``smooth``; default ``PostprocessConfig()``
        (Otsu thresholds).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres; used by ``smooth`` (the Gaussian has
        the same physical width along every axis).  Seeds, flooding and
        ``min_seed_size`` work on voxels and face neighbours, as in BiaPy.

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` labels ``1..n`` (sequential) in
        :func:`~cartocell_bmz.core.labels.label_dtype` of ``n`` (``uint16`` up to
        65535 cells); ``0`` outside the cells.

    Examples
    --------
    >>> from cartocell_bmz.core.postprocess import PostprocessConfig
    >>> p = np.zeros((3, 8, 8, 16), np.float32)
    >>> p[0, 1:7, 1:7, 1:7] = p[0, 1:7, 1:7, 9:15] = 0.9
    >>> lab = watershed_by_channels(p, config=PostprocessConfig.legacy())
    >>> lab.dtype.name, int(lab.max()), int((lab == 1).sum()), int((lab == 2).sum())
    ('uint16', 2, 216, 216)
    """
    from scipy import ndimage as ndi

    if config is None:
        from cartocell_bmz.core.postprocess import PostprocessConfig

        config = PostprocessConfig()
    spacing = check_spacing(spacing)
    probs = check_probabilities(probs)
    b, c = probs[0], probs[1]
    # Padded working arrays (one voxel of background on every side), so that the six
    # face neighbours of any voxel inside are valid flat indices.
    level, otsu_b = _levels(b, config.smooth, spacing, need_otsu=AUTO in (config.seed_b_threshold, config.growth_threshold))
    t_seed_b = otsu_b if config.seed_b_threshold == AUTO else float(config.seed_b_threshold)
    t_grow = otsu_b / 2 if config.growth_threshold == AUTO else float(config.growth_threshold)
    t_seed_c = resolve_threshold(config.seed_c_threshold, c)

    growth = np.zeros(level.shape, bool)
    seeds = np.zeros(level.shape, bool)
    for sl, psl in _padded_slabs(b.shape):
        g = b[sl] > t_grow
        growth[psl] = g
        g &= b[sl] > t_seed_b
        g &= c[sl] < t_seed_c
        seeds[psl] = g

    labels = np.empty(level.shape, np.int32)
    n = ndi.label(seeds, structure=ndi.generate_binary_structure(3, 1), output=labels)
    n = _grow(labels, seeds, growth, level, min_size=config.min_seed_size if n else 0)
    return labels[(slice(1, -1),) * 3].astype(label_dtype(n))


def flood(levels: np.ndarray, markers: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Marker-controlled watershed of an 8-bit surface, 6-connected, by a hierarchical queue.

    The counterpart of ``skimage.segmentation.watershed(levels, markers, mask=mask,
    connectivity=1)``: the same result except where two cells reach a voxel on the
    same plateau (here the smaller label wins, in skimage the first one queued).

    Parameters
    ----------
    levels : numpy.ndarray
        ``(Z, Y, X)`` ``uint8`` surface; level 0 floods first.
    markers : numpy.ndarray
        ``(Z, Y, X)`` integer seeds (> 0), 0 elsewhere.
    mask : numpy.ndarray, optional
        ``(Z, Y, X)`` boolean: only these voxels are flooded (default: all).

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` ``int32`` labels.

    Examples
    --------
    >>> levels = np.array([[[0, 1, 5, 1, 0, 0]]], np.uint8)
    >>> flood(levels, np.array([[[1, 0, 0, 0, 0, 2]]]))[0, 0].tolist()
    [1, 1, 1, 2, 2, 2]
    """
    levels = np.asarray(levels)
    markers = np.asarray(markers)
    if levels.ndim != 3 or levels.dtype != np.uint8 or markers.shape != levels.shape:
        raise ValueError(f"flood needs a 3D uint8 surface and markers of its shape, got {levels.dtype} {levels.shape} and {markers.shape}")
    inner = (slice(1, -1),) * 3
    level = np.pad(levels, 1, constant_values=N_LEVELS - 1)
    labels = np.pad(markers.astype(np.int32), 1)
    seeds = labels > 0
    growth = np.zeros(level.shape, bool)
    growth[inner] = True if mask is None else np.asarray(mask, bool)
    growth |= seeds
    _grow(labels, seeds, growth, level)
    return labels[inner]


def _levels(b: np.ndarray, smooth: bool, spacing, *, need_otsu: bool) -> tuple[np.ndarray, float]:
    """Padded flooding level of every voxel (0 = highest B) and Otsu(B) when ``need_otsu``.

    Without smoothing the same 256 bins give Otsu's histogram of B.
    """
    from scipy import ndimage as ndi

    lo, hi = float(b.min()), float(b.max())
    level = np.full(tuple(n + 2 for n in b.shape), N_LEVELS - 1, np.uint8)
    counts = np.zeros(N_LEVELS, np.int64)
    if smooth:
        sigma = [min(spacing) / s for s in spacing]
        surface = ndi.gaussian_filter(b.astype(np.float32), sigma=sigma, truncate=1.0, mode="nearest")
        s_lo, s_hi = float(surface.min()), float(surface.max())
    else:
        surface, s_lo, s_hi = b, lo, hi
    if s_hi > s_lo:
        for sl, psl in _padded_slabs(b.shape):
            idx = bin_indices(surface[sl], s_lo, s_hi, N_LEVELS)
            level[psl] = (N_LEVELS - 1) - idx
            if not smooth:
                counts += np.bincount(idx.ravel(), minlength=N_LEVELS)
    del surface
    otsu_b = float("nan")
    if need_otsu:
        otsu_b = otsu_from_histogram(counts, lo, hi) if (not smooth and hi > lo) else otsu_threshold(b, value_range=(lo, hi))
    return level, otsu_b


def _padded_slabs(shape):
    """Pairs of z-slabs of a volume and the same slabs of its padded copy."""
    for sl in slabs(shape[0], shape[1] * shape[2]):
        yield sl, (slice(sl.start + 1, sl.stop + 1), slice(1, -1), slice(1, -1))


def _grow(labels: np.ndarray, seeds: np.ndarray, growth: np.ndarray, level: np.ndarray, min_size: int = 0) -> int:
    """Flood the padded ``labels`` (seeds labelled, 0 elsewhere) over ``growth``, in place.

    With ``min_size``, seeds of at most that many voxels are dropped first and the
    others renumbered ``1..n``.  ``seeds`` and ``growth`` are used up.  Returns the
    number of seeds kept (the largest label when no seed is dropped).
    """
    flat = labels.reshape(-1)
    seed_idx = np.flatnonzero(seeds)
    # Only seed voxels with a free growth neighbour start the flood.
    edge = np.zeros(labels.shape, bool)
    for axis in range(3):
        lo_, hi_ = [slice(None)] * 3, [slice(None)] * 3
        lo_[axis], hi_[axis] = slice(0, -1), slice(1, None)
        lo_, hi_ = tuple(lo_), tuple(hi_)
        edge[lo_] |= growth[hi_] & ~seeds[hi_]
        edge[hi_] |= growth[lo_] & ~seeds[lo_]
    del seeds
    ids = flat[seed_idx]
    n = int(ids.max()) if ids.size else 0
    if min_size and n:
        sizes = np.bincount(ids, minlength=n + 1)
        keep = sizes > min_size
        keep[0] = False
        lut = np.zeros(n + 1, np.int32)
        n = int(keep.sum())
        lut[keep] = np.arange(1, n + 1, dtype=np.int32)
        ids = lut[ids]
        flat[seed_idx] = ids
        seed_idx = seed_idx[ids > 0]
    if n:
        free = growth.reshape(-1)
        free[seed_idx] = False  # growth voxels still to flood
        start = seed_idx[edge.reshape(-1)[seed_idx]]
        del edge
        _flood(flat, free, level.reshape(-1), start, _neighbour_offsets(labels.shape))
    return n


def _neighbour_offsets(shape: Sequence[int]) -> np.ndarray:
    """Flat index offsets of the six face neighbours in a C-ordered array of ``shape``."""
    sz = shape[1] * shape[2]
    sy = shape[2]
    return np.array([-sz, sz, -sy, sy, -1, 1], dtype=np.int64)


def _flood(labels: np.ndarray, free: np.ndarray, level: np.ndarray, seed_idx: np.ndarray, offsets: np.ndarray) -> None:
    """Hierarchical-queue flooding of ``labels`` (flat, padded) in place.

    ``labels`` holds the seeds (> 0) and 0 elsewhere; ``free`` marks the voxels that
    may still be flooded (cleared as they are reached).  As in a heap watershed, a
    voxel takes its label when a labelled neighbour reaches it, and spreads further
    when the flood gets to its own level.  Each wave takes all the voxels waiting at
    the current level at once; a voxel reached by several cells in the same wave
    joins the smallest label.  Newly reached voxels at or below the current level
    form the next wave, the others wait in the bucket of their level.
    """
    buckets: list[list[np.ndarray]] = [[] for _ in range(N_LEVELS)]

    def reach(current: np.ndarray, h: int) -> np.ndarray:
        parent = labels[current]
        found, found_lab = [], []
        for off in offsets:
            q = current + off
            f = free[q]
            found.append(q[f])
            found_lab.append(parent[f])
        cand = np.concatenate(found)
        if cand.size == 0:
            return cand
        lab = np.concatenate(found_lab)
        # One entry per voxel: stamp, read back, the last writer wins the slot ...
        stamp = -np.arange(1, cand.size + 1, dtype=np.int32)
        labels[cand] = stamp
        winner = -labels[cand] - 1
        first = winner == np.arange(cand.size)
        if not first.all():
            # ... and takes the smallest label that reached the voxel.
            np.minimum.at(lab, winner[~first], lab[~first])
            cand, lab = cand[first], lab[first]
        labels[cand] = lab
        free[cand] = False
        lev = level[cand]
        now = lev <= h
        if now.all():
            return cand
        later, lev_later = cand[~now], lev[~now]
        order = np.argsort(lev_later, kind="stable")
        later = later[order]
        counts = np.bincount(lev_later, minlength=N_LEVELS)
        ends = np.cumsum(counts)
        for lv in np.flatnonzero(counts):
            buckets[lv].append(later[ends[lv] - counts[lv] : ends[lv]])
        return cand[now]

    current = reach(seed_idx, 0)
    h = 0
    while True:
        while current.size == 0:
            if buckets[h]:
                current = np.concatenate(buckets[h]) if len(buckets[h]) > 1 else buckets[h][0]
                buckets[h] = []
                break
            h += 1
            if h >= N_LEVELS:
                return
        current = reach(current, h)
