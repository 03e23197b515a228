"""From B, C, M probabilities to cells: watershed by channels, then a mask-bounded Voronoi.

Two pure functions on arrays and one that chains them:

* :func:`watershed_by_channels` -- marker-controlled watershed.  Seeds are
  ``(B > tB) & (C < tC)`` inside the growth mask, labelled with 6-connectivity, seeds of at most
  ``min_seed_size`` voxels are dropped; the seeds flood the surface ``-B``
  (optionally smoothed, as BiaPy 3.7 does) with 6-connectivity inside the growth
  mask ``B > tG``.  "auto" thresholds are Otsu's over the whole volume
  (``tB = Otsu(B)``, ``tC = Otsu(C)``, ``tG = Otsu(B) / 2``), as in BiaPy; CartoCell's
  manual values are :data:`LEGACY_THRESHOLDS`.
* :func:`voronoi_on_mask` -- makes neighbouring cells touch inside the cellular
  region: territory ``M > Otsu(M)`` with small holes filled but never the lumen;
  every territory voxel reachable from a cell takes the label of the nearest cell in
  physical units (``spacing``).
* :func:`postprocess` -- both, driven by a :class:`PostprocessConfig`.

The flooding is a hierarchical-queue (Meyer) watershed on ``-B`` quantised to 256
levels, run by vectorised waves over flat indices: it floods only the voxels that
need it, so it is several times faster than a heap-based watershed on the whole
volume and needs less memory.  Inside one level the flood advances breadth-first
(like the first-in first-out order of a heap watershed on an 8-bit image); a voxel
reached by several cells in the same wave joins the smallest label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, Sequence, Union

import numpy as np

from cartocell_bmz.errors import ConfigError

Threshold = Union[float, Literal["auto"]]
AUTO = "auto"

#: CartoCell's manual thresholds (seed B, seed C, growth B) from its published configuration.
LEGACY_THRESHOLDS: tuple[float, float, float] = (0.2, 0.2, 0.25)
#: Number of grey levels of the flooded surface.
N_LEVELS = 256
#: Fraction of the median cell volume below which an enclosed hole of the territory is
#: filled when ``max_hole_size="auto"``.
AUTO_HOLE_FRACTION = 0.5


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of the post-processing (watershed and Voronoi), validated on creation.

    Attributes
    ----------
    seed_b_threshold : float or "auto"
        Seeds need ``B > seed_b_threshold``; "auto" = Otsu(B).
    seed_c_threshold : float or "auto"
        Seeds need ``C < seed_c_threshold``; "auto" = Otsu(C).
    growth_threshold : float or "auto"
        Cells grow only where ``B > growth_threshold``; "auto" = Otsu(B) / 2.
    min_seed_size : int
        Seeds of at most this many voxels are discarded (CartoCell: 5).
    mask_threshold : float or "auto"
        Voronoi territory is ``M > mask_threshold``; "auto" = Otsu(M).
    max_hole_size : float or "auto"
        Holes of the territory (background pieces it encloses) of at most this
        volume in cubic micrometres are filled before the Voronoi; the largest
        enclosed hole (the lumen) is never filled, whatever its size.  "auto" =
        half the median cell volume (a hole smaller than half a cell is a gap in the
        prediction, not a lumen); ``0`` fills nothing.
    clear_border : bool
        Remove cells that touch the volume border after the Voronoi.
    smooth : bool
        Smooth the flooded surface with a Gaussian (sigma 1 voxel along the finest
        axis, the same physical width on the others, truncated at 1 sigma), as
        BiaPy 3.7 does.  Off by default, as in CartoCell.

    Examples
    --------
    >>> PostprocessConfig().seed_b_threshold
    'auto'
    >>> PostprocessConfig.legacy().growth_threshold
    0.25
    >>> PostprocessConfig(min_seed_size=-1)
    Traceback (most recent call last):
    ...
    cartocell_bmz.errors.ConfigError: min_seed_size must be a whole number >= 0, got -1.
    """

    seed_b_threshold: Threshold = AUTO
    seed_c_threshold: Threshold = AUTO
    growth_threshold: Threshold = AUTO
    min_seed_size: int = 5
    mask_threshold: Threshold = AUTO
    max_hole_size: float | Literal["auto"] = AUTO
    clear_border: bool = False
    smooth: bool = False

    def __post_init__(self) -> None:
        for name in ("seed_b_threshold", "seed_c_threshold", "growth_threshold", "mask_threshold"):
            object.__setattr__(self, name, check_threshold(getattr(self, name), name))
        size = self.min_seed_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ConfigError(f"min_seed_size must be a whole number >= 0, got {size!r}.")
        object.__setattr__(self, "min_seed_size", int(size))
        object.__setattr__(self, "max_hole_size", check_hole_size(self.max_hole_size))
        for name in ("clear_border", "smooth"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")
            object.__setattr__(self, name, bool(getattr(self, name)))

    @classmethod
    def legacy(cls, **overrides) -> "PostprocessConfig":
        """CartoCell's manual thresholds (0.2, 0.2, 0.25); other fields as given."""
        tb, tc, tg = LEGACY_THRESHOLDS
        values = {"seed_b_threshold": tb, "seed_c_threshold": tc, "growth_threshold": tg}
        values.update(overrides)
        return cls(**values)

    def as_dict(self) -> dict:
        """The settings as a plain dictionary (for JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    """Return ``"auto"`` or a volume >= 0 in cubic micrometres; :class:`ConfigError` otherwise."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"max_hole_size must be 'auto' or a volume >= 0 in cubic micrometres, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(out) or out < 0:
        raise ConfigError(f"max_hole_size must be 'auto' or a volume >= 0 in cubic micrometres, got {value!r}.")
    return out


# --------------------------------------------------------------------------- helpers


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        out = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ConfigError(f"spacing must be three positive numbers (z, y, x), got {spacing!r}.") from None
    if len(out) != 3 or not all(math.isfinite(s) and s > 0 for s in out):
        raise ConfigError(f"spacing must be three positive numbers (z, y, x), got {spacing!r}.")
    return out  # type: ignore[return-value]


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 4 or probs.shape[0] != 3:
        raise ValueError(f"probabilities must be a (3, Z, Y, X) array in channel order B, C, M, got shape {probs.shape}")
    if probs.dtype.kind not in "fiub":
        raise ValueError(f"probabilities must be real numbers, got dtype {probs.dtype}")
    if probs.dtype.kind != "f":
        probs = probs.astype(np.float32)
    return probs


def _slabs(n: int, voxels_per_slab: int, slab_voxels: int = 1 << 18):
    step = max(1, slab_voxels // max(1, voxels_per_slab))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _value_range(x: np.ndarray) -> tuple[float, float]:
    return float(x.min()), float(x.max())


def otsu_threshold(x: np.ndarray, nbins: int = 256, value_range: tuple[float, float] | None = None) -> float:
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
    lo, hi = value_range if value_range is not None else _value_range(x)
    if not hi > lo:
        return lo
    counts = np.zeros(nbins, np.int64)
    flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    for sl in _slabs(flat.shape[0], flat.shape[1]):
        counts += np.bincount(_bin_index(flat[sl], lo, hi, nbins).ravel(), minlength=nbins)
    return _otsu_from_counts(counts, lo, hi)


def _bin_index(x: np.ndarray, lo: float, hi: float, nbins: int = 256) -> np.ndarray:
    """Histogram bin of each value (``nbins`` equal bins over ``[lo, hi]``), as ``uint8``/``uint16``."""
    idx = (x - np.float32(lo)) * np.float32(nbins / (hi - lo))
    np.clip(idx, 0, nbins - 1, out=idx)
    return idx.astype(np.uint8 if nbins <= 256 else np.uint16)


def _otsu_from_counts(counts: np.ndarray, lo: float, hi: float) -> float:
    """Otsu's threshold (a bin centre) from a histogram over ``[lo, hi]``."""
    nbins = counts.size
    counts = counts.astype(np.float64)
    centers = lo + (np.arange(nbins) + 0.5) * ((hi - lo) / nbins)
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centers) / np.maximum(w1, 1e-300)
    m2 = (np.cumsum((counts * centers)[::-1]) / np.maximum(w2[::-1], 1e-300))[::-1]
    variance = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[:-1][np.argmax(variance)])


def _resolve(value: Threshold, x: np.ndarray, value_range=None, factor: float = 1.0) -> float:
    if value == AUTO:
        return otsu_threshold(x, value_range=value_range) * factor
    return float(value)


def _neighbour_offsets(shape: Sequence[int]) -> np.ndarray:
    """Flat index offsets of the six face neighbours in a C-ordered array of ``shape``."""
    sz = shape[1] * shape[2]
    sy = shape[2]
    return np.array([-sz, sz, -sy, sy, -1, 1], dtype=np.int64)


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box of the True voxels, or None when there are none."""
    z = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if z.size == 0:
        return None
    plane = mask[z[0] : z[-1] + 1].any(axis=0)
    y = np.flatnonzero(plane.any(axis=1))
    x = np.flatnonzero(plane.any(axis=0))
    return (slice(int(z[0]), int(z[-1]) + 1), slice(int(y[0]), int(y[-1]) + 1), slice(int(x[0]), int(x[-1]) + 1))


def _label_dtype(n: int):
    return np.uint16 if n < np.iinfo(np.uint16).max else np.uint32


# --------------------------------------------------------------------------- watershed


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
        ``(Z, Y, X)`` labels ``1..n`` (sequential), ``uint16`` when ``n < 65535``,
        else ``uint32``; ``0`` outside the cells.

    Examples
    --------
    >>> p = np.zeros((3, 8, 8, 16), np.float32)
    >>> p[0, 1:7, 1:7, 1:7] = p[0, 1:7, 1:7, 9:15] = 0.9
    >>> lab = watershed_by_channels(p, config=PostprocessConfig.legacy())
    >>> lab.dtype.name, int(lab.max()), int((lab == 1).sum()), int((lab == 2).sum())
    ('uint16', 2, 216, 216)
    """
    from scipy import ndimage as ndi

    config = config or PostprocessConfig()
    spacing = _check_spacing(spacing)
    probs = _check_probs(probs)
    b, c = probs[0], probs[1]
    shape = b.shape
    lo, hi = _value_range(b)

    # Padded working arrays (one voxel of background on every side), so that the six
    # face neighbours of any voxel inside are valid flat indices.
    pshape = tuple(n + 2 for n in shape)
    inner = (slice(1, -1),) * 3

    # Pass 1: flooding level of every voxel (0 = highest B, where the flood starts);
    # without smoothing the same 256 bins give Otsu's histogram of B.
    level = np.full(pshape, N_LEVELS - 1, np.uint8)
    counts = np.zeros(N_LEVELS, np.int64)
    if config.smooth:
        sigma = [min(spacing) / s for s in spacing]
        surface = ndi.gaussian_filter(b.astype(np.float32), sigma=sigma, truncate=1.0, mode="nearest")
        s_lo, s_hi = _value_range(surface)
    else:
        surface, s_lo, s_hi = b, lo, hi
    for sl in _slabs(shape[0], shape[1] * shape[2]):
        psl = (slice(sl.start + 1, sl.stop + 1),) + inner[1:]
        if s_hi > s_lo:
            idx = _bin_index(surface[sl], s_lo, s_hi, N_LEVELS)
            level[psl] = (N_LEVELS - 1) - idx
        if not config.smooth and hi > lo:
            counts += np.bincount(idx.ravel(), minlength=N_LEVELS)
    del surface
    if AUTO in (config.seed_b_threshold, config.growth_threshold):
        otsu_b = _otsu_from_counts(counts, lo, hi) if (not config.smooth and hi > lo) else otsu_threshold(b, value_range=(lo, hi))
    t_seed_b = otsu_b if config.seed_b_threshold == AUTO else float(config.seed_b_threshold)
    t_grow = otsu_b / 2 if config.growth_threshold == AUTO else float(config.growth_threshold)
    t_seed_c = _resolve(config.seed_c_threshold, c)

    # Pass 2: growth mask and seeds.
    growth = np.zeros(pshape, bool)
    seeds = np.zeros(pshape, bool)
    for sl in _slabs(shape[0], shape[1] * shape[2]):
        psl = (slice(sl.start + 1, sl.stop + 1),) + inner[1:]
        g = b[sl] > t_grow
        growth[psl] = g
        g &= b[sl] > t_seed_b
        g &= c[sl] < t_seed_c
        seeds[psl] = g

    labels = np.empty(pshape, np.int32)
    n = ndi.label(seeds, structure=ndi.generate_binary_structure(3, 1), output=labels)
    flat = labels.reshape(-1)
    seed_idx = np.flatnonzero(seeds)
    # Only seed voxels with a free growth neighbour start the flood.
    edge = np.zeros(pshape, bool)
    for axis in range(3):
        lo_, hi_ = [slice(None)] * 3, [slice(None)] * 3
        lo_[axis], hi_[axis] = slice(0, -1), slice(1, None)
        lo_, hi_ = tuple(lo_), tuple(hi_)
        edge[lo_] |= growth[hi_] & ~seeds[hi_]
        edge[hi_] |= growth[lo_] & ~seeds[lo_]
    del seeds
    if n:
        ids = flat[seed_idx]
        sizes = np.bincount(ids, minlength=n + 1)
        keep = sizes > config.min_seed_size
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
        _flood(flat, free, level.reshape(-1), start, _neighbour_offsets(pshape))
    return labels[inner].astype(_label_dtype(n))


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


# --------------------------------------------------------------------------- Voronoi


def voronoi_on_mask(
    instances: np.ndarray,
    mask_prob: np.ndarray,
    *,
    threshold: Threshold = AUTO,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    max_hole_size: float | Literal["auto"] = AUTO,
    clear_border: bool = False,
) -> np.ndarray:
    """Grow cells over the cellular region until neighbours touch (a 3D Voronoi in physical units).

    1. Territory = ``mask_prob > threshold`` ("auto": Otsu).  Background pieces it
       encloses (6-connected, not touching the volume border) of at most
       ``max_hole_size`` cubic micrometres are added to it; the largest enclosed
       piece -- the lumen of a cyst -- never is.
    2. Cells are cut to the territory: voxels of cells outside it are removed.  A
       cell's own voxels inside the territory never change label.
    3. Every other territory voxel whose territory piece (6-connected component)
       holds a cell takes the label of the nearest cell voxel of the same piece, by
       Euclidean distance in micrometres (``spacing``).  Equidistant cells: the
       smaller label wins.  Territory pieces without any cell stay 0.
    4. With ``clear_border``, cells that touch the volume border are then removed.

    Labels are kept as given (no relabelling), so a cell removed in step 2 or 4
    leaves its id unused.

    Parameters
    ----------
    instances : numpy.ndarray
        ``(Z, Y, X)`` cell labels (e.g. from :func:`watershed_by_channels`).
    mask_prob : numpy.ndarray
        ``(Z, Y, X)`` probability of the cellular region (channel M).
    threshold : float or "auto"
        Territory threshold; "auto" = Otsu(mask_prob).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres.
    max_hole_size : float or "auto"
        Largest enclosed hole filled, in cubic micrometres; "auto" = half the median
        volume of the cells (cut to the territory); ``0`` fills nothing.
    clear_border : bool
        Remove cells touching the volume border at the end.

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` labels, the dtype of ``instances`` when unsigned, else ``uint32``.

    Examples
    --------
    >>> lab = np.zeros((1, 1, 9), np.uint16); lab[0, 0, 1] = 1; lab[0, 0, 6] = 2
    >>> m = np.zeros((1, 1, 9), np.float32); m[0, 0, :8] = 1
    >>> voronoi_on_mask(lab, m, threshold=0.5)[0, 0].tolist()
    [1, 1, 1, 1, 2, 2, 2, 2, 0]
    >>> voronoi_on_mask(lab, m, threshold=0.5, spacing=(1, 1, 0.5))[0, 0].tolist()
    [1, 1, 1, 1, 2, 2, 2, 2, 0]
    """
    from scipy import ndimage as ndi

    spacing = _check_spacing(spacing)
    threshold = check_threshold(threshold, "threshold")
    max_hole_size = check_hole_size(max_hole_size)
    instances = np.asarray(instances)
    mask_prob = np.asarray(mask_prob)
    if instances.ndim != 3:
        raise ValueError(f"instances must be a 3D (Z, Y, X) array, got shape {instances.shape}")
    if instances.dtype.kind not in "iub":
        raise ValueError(f"instances must hold integer labels, got dtype {instances.dtype}")
    if mask_prob.shape != instances.shape:
        raise ValueError(f"mask_prob shape {mask_prob.shape} differs from instances shape {instances.shape}")
    out_dtype = instances.dtype if instances.dtype.kind == "u" and instances.dtype != np.bool_ else np.uint32
    if instances.dtype.kind == "i" and instances.size and instances.min() < 0:
        raise ValueError("instances must be >= 0")

    t = _resolve(threshold, mask_prob)
    territory = mask_prob > t
    result = np.zeros(instances.shape, out_dtype)
    box = _bbox(territory)
    if box is None:
        return result
    territory = territory[box]
    work_dtype = out_dtype
    if instances.size and np.iinfo(out_dtype).max <= np.iinfo(np.uint32).max and instances.max() == np.iinfo(out_dtype).max:
        work_dtype = np.uint64 if out_dtype == np.uint32 else np.uint32  # keep the top value free as "no cell"
    cells = instances[box].astype(work_dtype, copy=True)
    cells[~territory] = 0
    voxel_volume = float(np.prod(spacing))
    structure = ndi.generate_binary_structure(3, 1)

    # 1. Fill enclosed holes up to max_hole_size (never the largest: the lumen).
    if max_hole_size == AUTO or max_hole_size > 0:
        _fill_small_holes(territory, cells, max_hole_size, voxel_volume, structure)

    # 2-3. Territory pieces holding cells; unknown voxels get the nearest cell.
    comp = np.empty(territory.shape, np.int32)
    n_comp = ndi.label(territory, structure=structure, output=comp)
    cells_flat = cells.reshape(-1)
    comp_flat = comp.reshape(-1)
    cell_idx = np.flatnonzero(cells_flat)
    if cell_idx.size:
        live = np.zeros(n_comp + 1, bool)
        live[comp_flat[cell_idx]] = True
        live[0] = False
        unknown_idx = np.flatnonzero(territory & (cells == 0))
        n_live = int(live.sum())
        if n_live < n_comp:
            unknown_idx = unknown_idx[live[comp_flat[unknown_idx]]]
        if unknown_idx.size:
            cells_flat[unknown_idx] = _nearest_labels(
                cells_flat, comp_flat if n_live > 1 else None, unknown_idx, territory.shape, spacing
            )
    result[box] = cells  # same values, back in the output type
    if clear_border:
        _clear_border(result)
    return result


def _fill_small_holes(territory, cells, max_hole_size, voxel_volume, structure) -> None:
    """Add enclosed background pieces of at most ``max_hole_size`` um^3 to ``territory`` (in place)."""
    from scipy import ndimage as ndi

    holes = np.empty(territory.shape, np.int32)
    n = ndi.label(~territory, structure=structure, output=holes)
    if n < 2:
        return
    faces = [holes[0], holes[-1], holes[:, 0], holes[:, -1], holes[:, :, 0], holes[:, :, -1]]
    outside = np.unique(np.concatenate([f.ravel() for f in faces]))
    if n - np.count_nonzero(outside) < 2:  # at most one enclosed piece: the lumen
        return
    sizes = np.zeros(n + 1, np.int64)
    flat = holes.reshape(holes.shape[0], -1)
    for sl in _slabs(flat.shape[0], flat.shape[1]):
        sizes += np.bincount(flat[sl].ravel(), minlength=n + 1)
    sizes[outside] = 0
    sizes[0] = 0
    enclosed = np.flatnonzero(sizes)
    if max_hole_size == AUTO:
        cell_sizes = np.bincount(cells[cells > 0])
        cell_sizes = cell_sizes[cell_sizes > 0]
        if cell_sizes.size == 0:
            return
        limit = AUTO_HOLE_FRACTION * float(np.median(cell_sizes)) * voxel_volume
    else:
        limit = float(max_hole_size)
    fill = np.zeros(n + 1, bool)
    fill[enclosed] = sizes[enclosed] * voxel_volume <= limit
    fill[enclosed[np.argmax(sizes[enclosed])]] = False  # the lumen
    if fill.any():
        territory |= fill[holes]


#: Radius of the vectorised nearest-cell search, in voxels of the coarsest axis (or
#: RING_FINE voxels of the finest axis if larger); farther voxels use a KD-tree.
RING_COARSE, RING_FINE = 2.0, 4.0


def _ring_offsets(spacing) -> list[np.ndarray]:
    """Integer offsets ``(k, 3)`` within a small physical radius, grouped by distance, nearest first."""
    sz, sy, sx = spacing
    radius = max(RING_COARSE * max(spacing), RING_FINE * min(spacing))
    rz, ry, rx = (int(radius // s) for s in spacing)
    dz, dy, dx = np.meshgrid(
        np.arange(-rz, rz + 1), np.arange(-ry, ry + 1), np.arange(-rx, rx + 1), indexing="ij"
    )
    d2 = (dz * sz) ** 2 + (dy * sy) ** 2 + (dx * sx) ** 2
    keep = (d2 > 0) & (d2 <= radius**2 * (1 + 1e-12))
    offs = np.stack([dz[keep], dy[keep], dx[keep]], 1)
    d2 = d2[keep]
    order = np.lexsort((offs[:, 2], offs[:, 1], offs[:, 0], d2))
    offs, d2 = offs[order], d2[order]
    groups = []
    start = 0
    for i in range(1, len(d2) + 1):
        if i == len(d2) or d2[i] > d2[start] * (1 + 1e-9):
            groups.append(offs[start:i])
            start = i
    return groups


def _nearest_labels(cells_flat, comp_flat, unknown_idx, shape, spacing) -> np.ndarray:
    """Label of the nearest cell voxel (same territory piece) for each unknown voxel.

    Offsets within a small radius are tried nearest first, a group of equidistant
    offsets at a time, vectorised over the unknown voxels (the smallest label among
    equidistant hits wins); voxels with no cell within that radius are solved exactly
    with a KD-tree of the cells' surface voxels.
    """
    Z, Y, X = shape
    out = np.zeros(unknown_idx.size, cells_flat.dtype)
    big = np.iinfo(cells_flat.dtype).max
    groups = _ring_offsets(spacing)
    reach = np.abs(np.concatenate(groups)).max(0)
    p = unknown_idx
    z, rem = np.divmod(p, Y * X)
    y, x = np.divmod(rem, X)
    edge = (z < reach[0]) | (z >= Z - reach[0]) | (y < reach[1]) | (y >= Y - reach[1]) | (x < reach[2]) | (x >= X - reach[2])
    active = np.arange(p.size)
    for offs in groups:
        if active.size == 0:
            break
        flat_off = offs[:, 0] * (Y * X) + offs[:, 1] * X + offs[:, 2]
        rows_per_chunk = max(1, (1 << 22) // len(offs))
        found_all = []
        for start in range(0, active.size, rows_per_chunk):
            act = active[start : start + rows_per_chunk]
            pa = p[act]
            q = pa[:, None] + flat_off[None, :]
            at_edge = np.flatnonzero(edge[act])
            if at_edge.size:
                e = act[at_edge]
                valid = np.ones((e.size, len(offs)), bool)
                for coord, size, col in ((z, Z, 0), (y, Y, 1), (x, X, 2)):
                    c = coord[e][:, None] + offs[None, :, col]
                    valid &= (c >= 0) & (c < size)
                q[at_edge] = np.where(valid, q[at_edge], pa[at_edge, None])  # an unknown voxel holds no cell
            lab = cells_flat[q]
            hit = lab > 0
            if comp_flat is not None:
                hit &= comp_flat[q] == comp_flat[pa][:, None]
            best = np.where(hit, lab, big).min(1)
            found = best != big
            out[act[found]] = best[found]
            found_all.append(~found)
        active = active[np.concatenate(found_all)]
    if active.size > WINDOW_SEARCH_MAX:
        out[active] = _nearest_by_tree(cells_flat, comp_flat, p[active], shape, spacing)
    elif active.size:
        radius = float(np.sqrt((((reach + 1) * np.asarray(spacing)) ** 2).min()))
        out[active] = _nearest_by_window(cells_flat, comp_flat, p[active], shape, spacing, radius)
    return out


#: Up to this many voxels left after the ring search are solved one by one in growing
#: windows; more use a KD-tree of all the cells' surface voxels.
WINDOW_SEARCH_MAX = 2000


def _nearest_by_window(cells_flat, comp_flat, points, shape, spacing, radius: float) -> np.ndarray:
    """Exact nearest cell for a few voxels: search a box around each, doubling it until a cell lies within reach."""
    cells = cells_flat.reshape(shape)
    comp = comp_flat.reshape(shape) if comp_flat is not None else None
    sp = np.asarray(spacing, float)
    size = np.asarray(shape)
    out = np.zeros(points.size, cells_flat.dtype)
    for i, (pz, py, px) in enumerate(np.stack(np.unravel_index(points, shape), 1)):
        centre = np.array([pz, py, px])
        r = max(radius, float(sp.max()))
        while True:
            half = np.ceil(r / sp).astype(int)
            lo = np.maximum(centre - half, 0)
            hi = np.minimum(centre + half + 1, size)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            sub = cells[box]
            hit = sub > 0
            if comp is not None:
                hit &= comp[box] == comp[pz, py, px]
            whole = bool((lo == 0).all() and (hi == size).all())
            if hit.any():
                where = np.argwhere(hit)
                d2 = ((((where + lo) - centre) * sp) ** 2).sum(1)
                best = d2.min()
                if best <= r * r or whole:
                    out[i] = sub[tuple(where[d2 <= best * (1 + 1e-9) + 1e-12].T)].min()
                    break
            elif whole:
                break
            r *= 2
    return out


def _nearest_by_tree(cells_flat, comp_flat, points, shape, spacing) -> np.ndarray:
    """Exact nearest cell (smallest label among equidistant ones) with KD-trees."""
    from scipy.spatial import cKDTree

    cells = cells_flat.reshape(shape)
    filled = cells > 0
    inner = filled.copy()
    for axis in range(3):
        n = shape[axis]
        if n < 2:
            continue
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, n - 1), slice(1, n)
        inner[tuple(a)] &= filled[tuple(b)]
        inner[tuple(b)] &= filled[tuple(a)]
    surface = np.flatnonzero(filled & ~inner)
    sp = np.asarray(spacing, float)
    out = np.zeros(points.size, cells_flat.dtype)
    if comp_flat is None:
        groups = [(np.arange(points.size), surface)]
    else:
        pc = comp_flat[points]
        sc = comp_flat[surface]
        order = np.argsort(sc, kind="stable")
        surface, sc = surface[order], sc[order]
        groups = []
        for c in np.unique(pc):
            lo, hi = np.searchsorted(sc, [c, c + 1])
            groups.append((np.flatnonzero(pc == c), surface[lo:hi]))
    for which, surf in groups:
        if surf.size == 0:
            continue
        tree = cKDTree(np.stack(np.unravel_index(surf, shape), 1) * sp)
        pts = np.stack(np.unravel_index(points[which], shape), 1) * sp
        k = min(8, surf.size)
        dist, near = tree.query(pts, k=k, workers=-1)
        dist = dist.reshape(len(pts), k)
        near = near.reshape(len(pts), k)
        labs = cells_flat[surf[near]]
        tol = dist[:, :1] * (1 + 1e-9) + 1e-12
        tied = dist <= tol
        big = np.iinfo(cells_flat.dtype).max
        choice = np.where(tied, labs, big).min(1)
        # More equidistant candidates than k: ask the tree for all of them.
        crowded = np.flatnonzero(tied[:, -1]) if k > 1 else np.empty(0, int)
        for i in crowded:
            hits = tree.query_ball_point(pts[i], tol[i, 0])
            choice[i] = cells_flat[surf[hits]].min()
        out[which] = choice
    return out


def _clear_border(labels: np.ndarray) -> None:
    """Set to 0 (in place) every label that touches a face of the volume."""
    faces = np.concatenate([
        labels[0].ravel(), labels[-1].ravel(), labels[:, 0].ravel(), labels[:, -1].ravel(),
        labels[:, :, 0].ravel(), labels[:, :, -1].ravel(),
    ])
    touching = np.unique(faces)
    touching = touching[touching > 0]
    if touching.size == 0:
        return
    top = int(labels.max())
    if top <= 1 << 24:
        drop = np.zeros(top + 1, bool)
        drop[touching] = True
        labels[drop[labels]] = 0
    else:
        labels[np.isin(labels, touching)] = 0


# --------------------------------------------------------------------------- both


def postprocess(
    probs: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    config: PostprocessConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Watershed by channels, then Voronoi on the M mask.

    Parameters
    ----------
    probs : numpy.ndarray
        ``(3, Z, Y, X)`` probabilities in channel order B, C, M.
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres.
    config : PostprocessConfig, optional
        Settings; default ``PostprocessConfig()``.

    Returns
    -------
    instances, voronoi : numpy.ndarray
        Labels after the watershed and after the Voronoi (same dtype).
    """
    config = config or PostprocessConfig()
    probs = _check_probs(probs)
    instances = watershed_by_channels(probs, config=config, spacing=spacing)
    voronoi = voronoi_on_mask(
        instances, probs[2], threshold=config.mask_threshold, spacing=spacing,
        max_hole_size=config.max_hole_size, clear_border=config.clear_border,
    )
    return instances, voronoi
