"""Finding whole cysts in an acquisition: candidates, their lumens, layers and the reason to keep or reject.

A cyst is a connected cellular region (the M channel, or a label volume's
foreground) around an enclosed lumen.  :func:`find_cysts` finds every
candidate and classifies it; only cysts that are whole, free, large enough,
with one lumen and one cell layer are kept (those are what CartoCell's models
are trained on).  The reasons, in the order they are tested, are
:data:`REASONS`.

- *cut by the stack border*: the region reaches a face of the stack;
- *too small*: cellular volume below ``min_volume`` (µm³);
- *no lumen*: no enclosed background larger than ``min_lumen`` (µm³);
- *touching another cyst*: one region with several lumens whose parts (each
  lumen's nearest cells) meet over a small patch only, or a region closer than
  ``touch_gap`` µm to another one;
- *several lumens*: several lumens in one region sharing a wide wall;
- *several layers*: with ``contours`` given (the C channel above its
  threshold), too few straight rays from the lumen out through the wall cross at
  most two contours (a one-cell wall shows its apical and its basal surface, a
  two-layer wall also the membrane between the layers: :func:`single_layer_rays`);
  else, with ``cells`` given, most of the wall's cells do not reach both the
  lumen and the outside.

Examples
--------
>>> import numpy as np
>>> z, y, x = np.ogrid[-10:11, -10:11, -10:11]
>>> r = np.sqrt(z**2 + y**2 + x**2)
>>> shell = np.pad((r <= 9) & (r >= 5), 3)
>>> [(c.reason, c.lumens) for c in find_cysts(shell, spacing=(1, 1, 1), min_volume=10)]
[('kept', 1)]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from cartocell_bmz.core.spacing import check_spacing

KEPT = "kept"
#: Reasons a candidate is rejected, in the order they are tested.
REASONS: tuple[str, ...] = (
    "cut by the stack border", "too small", "no lumen", "touching another cyst", "several lumens", "several layers",
)
#: Defaults (µm, µm³ and fractions); ``crop`` exposes them as options.
MIN_VOLUME_UM3 = 300.0
MIN_LUMEN_UM3 = 5.0
TOUCH_GAP_UM = 0.0
#: Shared wall of two lumens' parts, relative to the smaller part's size (voxels / voxels^(2/3)): below it, touching.
FUSED_CONTACT = 0.45
#: Fraction of the wall (voxels) in cells that reach both lumen and outside: below it, several layers.
SINGLE_LAYER_FRACTION = 0.5
#: Fraction of the rays through the wall that cross at most two contours: below it, several layers.
#: Measured with synthetic-unet on 3 synthetic stacks: 0.95-1.00 on 12 single-layer cysts, 0.45-0.49 on 3 two-layer ones.
SINGLE_LAYER_RAYS = 0.75
#: Rays cast from the lumen (Fibonacci sphere) and their step (µm) for :func:`single_layer_rays`.
LAYER_RAYS, RAY_STEP_UM = 300, 0.25

Box = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class CystRules:
    """The limits that decide a candidate's reason (see the module's list).

    Attributes
    ----------
    min_volume, min_lumen : float
        Smallest cellular volume of a cyst and smallest lumen, in µm³.
    touch_gap : float
        Regions closer than this (µm) to another region are touching (0: only regions that merge).
    fused_contact, single_layer, single_layer_rays : float
        See :data:`FUSED_CONTACT`, :data:`SINGLE_LAYER_FRACTION` and :data:`SINGLE_LAYER_RAYS`.
    """

    min_volume: float = MIN_VOLUME_UM3
    min_lumen: float = MIN_LUMEN_UM3
    touch_gap: float = TOUCH_GAP_UM
    fused_contact: float = FUSED_CONTACT
    single_layer: float = SINGLE_LAYER_FRACTION
    single_layer_rays: float = SINGLE_LAYER_RAYS


@dataclass(frozen=True)
class Candidate:
    """One cyst candidate.

    Attributes
    ----------
    box : tuple of 6 ints
        ``(z0, y0, x0, z1, y1, x1)`` (half-open) of its cells.
    volume_um3 : float
        Cellular volume.
    lumens : int
        Enclosed lumens found in its region.
    layer_fraction : float
        With contours: the fraction of rays through its wall that cross at most two contours;
        else the fraction of its wall in cells that reach both lumen and outside; ``nan`` without either.
    reason : str
        ``"kept"`` or one of :data:`REASONS`.
    """

    box: Box
    volume_um3: float
    lumens: int
    layer_fraction: float
    reason: str

    @property
    def kept(self) -> bool:
        """Whether the cyst is kept."""
        return self.reason == KEPT


def find_cysts(
    mask: np.ndarray,
    *,
    spacing: Sequence[float],
    cells: np.ndarray | None = None,
    contours: np.ndarray | None = None,
    rules: CystRules | None = None,
    **limits: float,
) -> list[Candidate]:
    """Find and classify the cyst candidates of a cellular mask.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(Z, Y, X)`` bool: the cellular region (M channel above its threshold, or labels > 0).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres.
    cells : numpy.ndarray, optional
        Cell labels of the same shape (true cells, or cell bodies of the B channel);
        used for the layer test when ``contours`` are not given.
    contours : numpy.ndarray, optional
        Bool, same shape: the cell contours (C channel above its threshold), for the
        ray layer test (:func:`single_layer_rays`).  Without ``cells`` and ``contours``
        the layers are not tested.
    rules : CystRules, optional
        The limits (default: ``CystRules()``).
    **limits : float
        Fields of :class:`CystRules` to change (``min_volume=10``, ``touch_gap=2.0``, ...).

    Returns
    -------
    list of Candidate
        Sorted by box (z0, y0, x0).  A region with several lumens that only touch
        gives one candidate per lumen.
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be (Z, Y, X), got shape {mask.shape}")
    for name, extra in (("cells", cells), ("contours", contours)):
        if extra is not None and np.shape(extra) != mask.shape:
            raise ValueError(f"{name} {np.shape(extra)} and mask {mask.shape} differ in shape")
    spacing = check_spacing(spacing)
    unknown = sorted(set(limits) - set(CystRules.__dataclass_fields__))
    if unknown:
        raise TypeError(f"find_cysts() got unknown limits {unknown}; CystRules has {list(CystRules.__dataclass_fields__)}")
    rules = replace(rules or CystRules(), **limits)
    regions, _ = ndi.label(mask)
    grow = region_pad(spacing, rules.touch_gap)
    out: list[Candidate] = []
    for index, sl in enumerate(ndi.find_objects(regions), start=1):
        if sl is None:
            continue
        pad = tuple(slice(max(0, s.start - g), min(m, s.stop + g)) for s, g, m in zip(sl, grow, mask.shape))
        inside = regions[pad]
        region = inside == index
        out.extend(classify_region(
            region, origin=tuple(s.start for s in pad), shape=mask.shape, spacing=spacing,
            cells=None if cells is None else np.where(region, cells[pad], 0),
            contours=None if contours is None else np.asarray(contours[pad], bool),
            others=(inside > 0) & ~region if rules.touch_gap > 0 else None, rules=rules,
        ))
    return sorted(out, key=lambda c: c.box)


def region_pad(spacing: Sequence[float], touch_gap: float = TOUCH_GAP_UM) -> tuple[int, int, int]:
    """Voxels to read around a region's box for :func:`classify_region`: one, or ``touch_gap`` µm.

    Examples
    --------
    >>> region_pad((1.0, 0.5, 0.5), 2.0)
    (2, 4, 4)
    """
    return tuple(max(1, int(np.ceil(touch_gap / s))) for s in spacing)  # type: ignore[return-value]


def classify_region(
    region: np.ndarray,
    *,
    origin: Sequence[int],
    shape: Sequence[int],
    spacing: Sequence[float],
    cells: np.ndarray | None = None,
    contours: np.ndarray | None = None,
    others: np.ndarray | None = None,
    rules: CystRules | None = None,
) -> list[Candidate]:
    """The candidate(s) of one connected cellular region, seen in a box of the stack.

    Parameters
    ----------
    region : numpy.ndarray
        Bool box holding the whole region, with :func:`region_pad` voxels around
        it where the stack allows.
    origin : sequence of 3 ints
        Position of the box in the stack.
    shape : sequence of 3 ints
        Shape of the whole stack (a region reaching a face is cut by the border).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in µm.
    cells : numpy.ndarray, optional
        Cell labels in the box (0 outside the region), for the layer test without ``contours``.
    contours : numpy.ndarray, optional
        Bool: the cell contours in the box, for the ray layer test (:func:`single_layer_rays`).
    others : numpy.ndarray, optional
        Bool: other regions' voxels in the box (for ``touch_gap``).
    rules : CystRules, optional
        The limits (default: ``CystRules()``).

    Returns
    -------
    list of Candidate
        One, or one per lumen for a region of several lumens that only touch.
    """
    spacing = check_spacing(spacing)
    r = rules or CystRules()
    near = bool(r.touch_gap > 0 and others is not None and _near(region, others, spacing, r.touch_gap))
    region = np.asarray(region, bool)
    if contours is not None:
        def layers(lumen):
            return single_layer_rays(region, lumen, np.asarray(contours, bool), spacing), r.single_layer_rays
    elif cells is not None:
        def layers(lumen):
            return _layer_fraction(region, lumen, cells), r.single_layer
    else:
        layers = None
    return _classify(region, tuple(int(o) for o in origin), tuple(int(s) for s in shape),
                     float(np.prod(spacing)), r, near, layers)


def _near(region: np.ndarray, others: np.ndarray, spacing, gap: float) -> bool:
    """Whether another region lies within ``gap`` µm of ``region``."""
    from scipy import ndimage as ndi

    if not others.any():
        return False
    dist = ndi.distance_transform_edt(~region, sampling=spacing)
    return bool((others & (dist <= gap)).any())


def _classify(region, origin, shape, voxel, r: CystRules, near: bool, layers):
    """Candidates of one connected region (in a box padded by one voxel); ``layers(lumen)`` gives (fraction, limit)."""
    from scipy import ndimage as ndi

    box = _offset(_bbox(region), origin)
    volume = float(region.sum()) * voxel

    def one(reason, lumens=0, frac=float("nan"), b=box, v=volume):
        return Candidate(b, round(v, 3), lumens, frac, reason)

    if any(b == 0 for b in box[:3]) or any(b == s for b, s in zip(box[3:], shape)):
        return [one("cut by the stack border")]
    if volume < r.min_volume:
        return [one("too small")]
    holes = ndi.binary_fill_holes(region) & ~region
    lumens, n = ndi.label(holes)
    if n:
        sizes = np.bincount(lumens.ravel())[1:] * voxel
        big = np.flatnonzero(sizes >= r.min_lumen) + 1
        lumens = np.where(np.isin(lumens, big), np.searchsorted(big, lumens) + 1, 0) if len(big) < n else lumens
        n = len(big)
    if n == 0:
        return [one("no lumen")]
    frac, limit = layers(lumens > 0) if layers is not None else (float("nan"), 0.0)
    if near:
        return [one("touching another cyst", n, frac)]
    if n == 1:
        return [one("several layers" if frac < limit else KEPT, 1, frac)]
    parts, contact = _split_by_lumen(region, lumens, n)
    if contact >= r.fused_contact:
        return [one("several lumens", n, frac)]
    found = []
    for k in range(1, n + 1):
        piece = parts == k
        found.append(one("touching another cyst", 1, frac, _offset(_bbox(piece), origin), float(piece.sum()) * voxel))
    return found


def _split_by_lumen(region: np.ndarray, lumens: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Each cellular voxel to its nearest lumen; the widest shared wall of two parts, relative to their size."""
    from scipy import ndimage as ndi

    _, idx = ndi.distance_transform_edt(lumens == 0, return_indices=True)
    parts = np.where(region, lumens[tuple(idx)], 0)
    sizes = np.bincount(parts.ravel(), minlength=n + 1)
    worst = 0.0
    for axis in range(3):
        a = np.moveaxis(parts, axis, 0)
        lo, hi = a[:-1], a[1:]
        meet = (lo > 0) & (hi > 0) & (lo != hi)
        if not meet.any():
            continue
        pairs = np.stack([np.minimum(lo[meet], hi[meet]), np.maximum(lo[meet], hi[meet])], 1)
        keys, counts = np.unique(pairs, axis=0, return_counts=True)
        for (i, j), c in zip(keys, counts):
            worst = max(worst, c / max(min(sizes[i], sizes[j]), 1) ** (2 / 3))
    return parts, float(worst)


def _layer_fraction(region: np.ndarray, lumen: np.ndarray, cells: np.ndarray) -> float:
    """Fraction of the wall's voxels in cells that touch both the lumen and the outside."""
    from scipy import ndimage as ndi

    outside = ~(region | ndi.binary_fill_holes(region))
    near_in = ndi.binary_dilation(lumen) & region
    near_out = ndi.binary_dilation(outside) & region
    labels = np.where(region, cells, 0).astype(np.int64)
    top = int(labels.max())
    if top == 0:
        return 0.0
    inner = np.zeros(top + 1, bool)
    outer = np.zeros(top + 1, bool)
    inner[np.unique(labels[near_in])] = True
    outer[np.unique(labels[near_out])] = True
    both = inner & outer
    both[0] = False
    sizes = np.bincount(labels.ravel(), minlength=top + 1)
    return float(sizes[both].sum() / max(sizes[1:].sum(), 1))


def single_layer_rays(
    region: np.ndarray,
    lumen: np.ndarray,
    contours: np.ndarray,
    spacing: Sequence[float],
    *,
    rays: int = LAYER_RAYS,
    step: float = RAY_STEP_UM,
) -> float:
    """Fraction of straight rays from the lumen out through the wall that cross at most two contours.

    Rays leave the lumen's deepest point in ``rays`` directions spread evenly
    over the sphere (a Fibonacci lattice, in µm) and are sampled every ``step``
    µm at the nearest voxel.  A ray's wall runs from its first voxel of
    ``region`` to its first voxel outside the cyst (neither region nor an
    enclosed hole); the contours it crosses are the runs of ``contours`` voxels
    on it.  Through a wall one cell thick a ray crosses two contours (the apical
    and the basal surface, or fewer where the contours are faint); through a
    wall of two layers it also crosses the membrane between them.

    Parameters
    ----------
    region : numpy.ndarray
        Bool ``(Z, Y, X)``: the cyst's cellular region.
    lumen : numpy.ndarray
        Bool, same shape: its lumen (the enclosed background).
    contours : numpy.ndarray
        Bool, same shape: the cell contours (C channel above its threshold).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in µm.
    rays, step : int, float
        Number of rays and their sampling step (µm).

    Returns
    -------
    float
        The fraction, among rays that leave the cyst inside the box; ``nan`` when none does.

    Examples
    --------
    >>> import numpy as np
    >>> z, y, x = np.ogrid[-16:17, -16:17, -16:17]
    >>> r = np.sqrt(z**2 + y**2 + x**2)
    >>> wall = (r >= 5) & (r <= 14)
    >>> one = wall & ((r < 6) | (r > 13))                  # apical and basal surfaces
    >>> two = one | (wall & (np.abs(r - 9.5) < 0.75))      # and a membrane between two layers
    >>> [round(single_layer_rays(wall, r < 5, c, (1, 1, 1)), 2) for c in (one, two)]
    [1.0, 0.05]
    """
    from scipy import ndimage as ndi

    region = np.asarray(region, bool)
    lumen = np.asarray(lumen, bool)
    contours = np.asarray(contours, bool) & region
    if not lumen.any():
        return float("nan")
    spacing = np.asarray(check_spacing(spacing), float)
    shape = np.asarray(region.shape)
    depth = ndi.distance_transform_edt(lumen, sampling=spacing)
    start = np.asarray(np.unravel_index(int(np.argmax(depth)), region.shape), float)
    outside = ~(region | ndi.binary_fill_holes(region))
    i = np.arange(int(rays)) + 0.5
    polar, azimuth = np.arccos(1 - 2 * i / int(rays)), np.pi * (1 + 5**0.5) * i
    unit = np.stack([np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], 1)
    length = float(np.sqrt(((shape * spacing) ** 2).sum()))
    t = np.arange(0.0, length, float(step))
    points = np.rint(start + t[None, :, None] * (unit / spacing)[:, None, :]).astype(np.int64)  # (rays, steps, 3)
    inside = np.all((points >= 0) & (points < shape), axis=2)
    points = np.minimum(np.maximum(points, 0), shape - 1)
    idx = tuple(points[..., k] for k in range(3))
    in_region, is_out, on_contour = region[idx] & inside, outside[idx] | ~inside, contours[idx] & inside
    one_layer = crossing = 0
    for k in range(len(unit)):
        enter = np.flatnonzero(in_region[k])
        if not len(enter):
            continue
        leave = np.flatnonzero(is_out[k, enter[0]:])
        if not len(leave) or not inside[k, enter[0] + leave[0]]:
            continue  # leaves the box before leaving the cyst
        c = on_contour[k, enter[0]:enter[0] + leave[0]]
        ridges = int(c[0]) + int(np.count_nonzero(c[1:] & ~c[:-1]))
        crossing += 1
        one_layer += ridges <= 2
    return one_layer / crossing if crossing else float("nan")


def crop_box(box: Sequence[int], margin: Sequence[int], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """Slices of ``box`` grown by ``margin`` voxels per axis, clipped to ``shape``.

    Examples
    --------
    >>> crop_box((2, 2, 2, 5, 5, 5), (1, 3, 3), (10, 6, 10))
    (slice(1, 6, None), slice(0, 6, None), slice(0, 8, None))
    """
    return tuple(slice(max(0, int(b) - int(m)), min(int(s), int(e) + int(m)))  # type: ignore[return-value]
                 for b, e, m, s in zip(box[:3], box[3:], margin, shape))


def _bbox(mask: np.ndarray) -> Box:
    idx = np.argwhere(mask)
    if not len(idx):
        return (0, 0, 0, 0, 0, 0)
    return (*(int(v) for v in idx.min(0)), *(int(v) + 1 for v in idx.max(0)))  # type: ignore[return-value]


def _offset(box: Box, origin) -> Box:
    return (*(b + o for b, o in zip(box[:3], origin)), *(b + o for b, o in zip(box[3:], origin)))  # type: ignore[return-value]


__all__ = ["KEPT", "REASONS", "Candidate", "CystRules", "find_cysts",
           "classify_region", "region_pad", "single_layer_rays", "crop_box"]
