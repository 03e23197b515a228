"""Synthetic whole acquisitions: many cysts of several stages in one stack, with the truth.

A stack holds cysts of :func:`cartocell_bmz.core.phantoms.make_cyst` at random
positions, and the cases a cyst finder must tell apart:

* ``single`` -- one lumen, one cell layer, free and whole (the cysts to keep);
* ``touching`` -- two cysts whose walls touch over a small patch;
* ``two_lumens`` -- two cysts fused into one by a shared wall (one cellular region, two lumens);
* ``two_layers`` -- a cyst whose wall is two cells thick (a basal cell outside each apical one);
* ``cut`` -- a cyst cut by the stack border;
* ``debris`` -- a small ball of cells without lumen.

:func:`make_stack` is pure (arrays in memory);
:func:`cartocell_bmz.io.phantom_stacks.make_stacks` writes stacks and their truth table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cartocell_bmz.core.phantoms import STAGES, make_cyst, membrane_signal
from cartocell_bmz.core.spacing import check_spacing

#: Kinds of objects in a stack, and the reason a cyst finder should give for each.
KINDS: dict[str, str] = {
    "single": "kept",
    "touching": "touching another cyst",
    "two_lumens": "several lumens",
    "two_layers": "several layers",
    "cut": "cut by the stack border",
    "debris": "too small",
}
#: Default mix of objects per stack (a pair counts as one object of two cysts).
DEFAULT_MIX: dict[str, int] = {"single": 4, "touching": 1, "two_lumens": 1, "two_layers": 1, "cut": 1, "debris": 1}
DEFAULT_STACK_SHAPE: tuple[int, int, int] = (28, 160, 208)
DEFAULT_CYST_SHAPE: tuple[int, int, int] = (20, 48, 48)
DEFAULT_STACK_SPACING: tuple[float, float, float] = (1.0, 0.5, 0.5)
#: Voxels between a whole cyst and the stack faces (a prediction blurs a voxel or two past the cells).
FACE_GAP = 3
#: Voxels between the cells of two objects placed apart (predictions blur the walls of close cysts together).
OBJECT_GAP = 5

Box = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class TrueCyst:
    """One object of a synthetic stack.

    Attributes
    ----------
    index : int
        Its number in the stack (``1, 2, ...``).
    kind : str
        One of :data:`KINDS`.
    stage : str
        ``day4``, ``day7``, ``day10`` (``debris``: ``"-"``).
    box : tuple of 6 ints
        ``(z0, y0, x0, z1, y1, x1)``, half-open, of its cells inside the stack.
        A ``two_lumens`` cyst has one box for both parts.
    expected : str
        The reason a cyst finder should give (:data:`KINDS`).
    """

    index: int
    kind: str
    stage: str
    box: Box
    expected: str


@dataclass(frozen=True)
class Stack:
    """A synthetic acquisition.

    Attributes
    ----------
    raw : numpy.ndarray or None
        ``uint16`` membrane image ``(Z, Y, X)`` (``None`` when made without it).
    labels : numpy.ndarray
        ``uint32`` cell labels (unique over the stack), ``0`` background and lumens.
    cysts : list of TrueCyst
        The truth.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in micrometres.
    """

    raw: np.ndarray | None
    labels: np.ndarray
    cysts: list[TrueCyst]
    spacing: tuple[float, float, float]


def make_stack(
    shape: Sequence[int] = DEFAULT_STACK_SHAPE,
    spacing: Sequence[float] = DEFAULT_STACK_SPACING,
    *,
    cyst_shape: Sequence[int] = DEFAULT_CYST_SHAPE,
    mix: dict[str, int] | None = None,
    raw: bool = True,
    seed: int | np.random.SeedSequence = 0,
) -> Stack:
    """Make one synthetic multi-cyst acquisition.

    Parameters
    ----------
    shape : sequence of 3 ints
        Stack shape ``(Z, Y, X)``; its z should exceed ``cyst_shape``'s.
    spacing : sequence of 3 floats
        Voxel size in micrometres ``(z, y, x)``.
    cyst_shape : sequence of 3 ints
        Volume each cyst is made in (the largest cysts fill about 80 % of it).
    mix : dict, optional
        Objects per kind (:data:`KINDS`); default :data:`DEFAULT_MIX`.  Objects
        that find no free place (after many random tries) are left out.
    raw : bool
        Also make the membrane image (blur, background, noise); ``False`` is faster.
    seed : int or numpy.random.SeedSequence
        Equal seeds give identical stacks.

    Returns
    -------
    Stack

    Examples
    --------
    >>> s = make_stack((24, 96, 96), cyst_shape=(20, 40, 40), mix={"single": 2}, raw=False, seed=1)
    >>> [c.kind for c in s.cysts], s.labels.shape
    (['single', 'single'], (24, 96, 96))
    """
    shape = tuple(int(s) for s in shape)
    cyst_shape = tuple(int(s) for s in cyst_shape)
    if len(shape) != 3 or len(cyst_shape) != 3 or any(s < c for s, c in zip(shape, cyst_shape)):
        raise ValueError(f"stack shape {shape} must be 3 sizes at least the cyst shape {cyst_shape}")
    spacing = check_spacing(spacing)
    mix = dict(DEFAULT_MIX if mix is None else mix)
    unknown = set(mix) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kind(s) {sorted(unknown)}; kinds are {list(KINDS)}")
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    rng = np.random.default_rng(seq)
    kinds = [k for k, n in mix.items() for _ in range(int(n))]
    rng.shuffle(kinds)
    # pairs and cut cysts first: they need the most room
    kinds.sort(key=lambda k: {"touching": 0, "two_lumens": 0, "cut": 1}.get(k, 2))
    labels = np.zeros(shape, np.uint32)
    taken = np.zeros(shape, bool)
    cysts: list[TrueCyst] = []
    for n, kind in enumerate(kinds):
        obj_rng = np.random.default_rng(seq.spawn(1)[0])
        parts, local = _object(kind, cyst_shape, spacing, obj_rng)
        offset = _place(local > 0, taken, kind == "cut", obj_rng)
        if offset is None:
            continue
        _paste(labels, taken, local, offset, spacing)
        for stage, box in parts:
            z = _shift_clip(box, offset, shape)
            cysts.append(TrueCyst(len(cysts) + 1, kind, stage, z, KINDS[kind]))
    image = _image(labels, spacing, rng) if raw else None
    return Stack(raw=image, labels=labels, cysts=cysts, spacing=spacing)


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two boxes ``(z0, y0, x0, z1, y1, x1)`` (half-open).

    Examples
    --------
    >>> box_iou((0, 0, 0, 2, 2, 2), (0, 0, 1, 2, 2, 3))
    0.3333333333333333
    """
    lo = np.maximum(a[:3], b[:3])
    hi = np.minimum(a[3:], b[3:])
    inter = float(np.prod(np.clip(np.subtract(hi, lo), 0, None)))
    va = float(np.prod(np.subtract(a[3:], a[:3])))
    vb = float(np.prod(np.subtract(b[3:], b[:3])))
    return inter / (va + vb - inter) if va + vb - inter > 0 else 0.0


# --------------------------------------------------------------------------- objects


def _object(kind: str, cyst_shape, spacing, rng: np.random.Generator):
    """The labels of one object in its own volume, and ``[(stage, local box), ...]`` of its cysts."""
    stages = list(STAGES)
    if kind == "debris":
        return _debris(cyst_shape, spacing, rng)
    if kind == "two_layers":  # a day-4 wall is too thin to show two layers of cells
        stages = stages[1:]
    stage = stages[int(rng.integers(len(stages)))]
    a = make_cyst(cyst_shape, spacing, stage=stage, seed=int(rng.integers(2**31))).labels.astype(np.uint32)
    if kind == "two_layers":
        a = _two_layers(a, spacing)
    if kind not in ("touching", "two_lumens"):
        return [(stage, _bbox(a > 0))], a
    stage_b = stages[int(rng.integers(len(stages)))]
    b = make_cyst(cyst_shape, spacing, stage=stage_b, seed=int(rng.integers(2**31))).labels.astype(np.uint32)
    b[b > 0] += a.max()
    return _pair(a, b, stage, stage_b, fused=kind == "two_lumens", rng=rng)


def _debris(cyst_shape, spacing, rng):
    """A ball of one or two cells, 2-3 micrometres in radius."""
    local = np.zeros(tuple(max(8, s // 3) for s in cyst_shape), np.uint32)
    grids = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(local.shape, spacing)],
                        indexing="ij", sparse=True)
    r = np.sqrt(sum(g**2 for g in grids))
    local[r <= rng.uniform(2.0, 3.0)] = 1
    local[(local > 0) & (grids[2] > 0)] = 2
    return [("-", _bbox(local > 0))], local


def _two_layers(labels: np.ndarray, spacing) -> np.ndarray:
    """A second, basal layer of cells outside the wall, as thick as it: each cell gets one on top of it.

    The wall doubles in thickness (as in a real multilayered cyst) and a membrane
    runs between the layers, so the apical cells touch only the lumen and the
    basal ones only the outside.  The volume grows by the wall's thickness.
    """
    from scipy import ndimage as ndi

    shell = labels > 0
    thickness = 2.0 * float(ndi.distance_transform_edt(shell, sampling=spacing).max())
    pad = [int(np.ceil(thickness / s)) + 1 for s in spacing]
    labels = np.pad(labels, [(p, p) for p in pad])
    hull = ndi.binary_fill_holes(labels > 0)
    dist, idx = ndi.distance_transform_edt(~hull, sampling=spacing, return_indices=True)
    outer = ~hull & (dist <= thickness)
    out = labels.copy()
    out[outer] = labels[tuple(i[outer] for i in idx)] + labels.max()
    return out


def _pair(a, b, stage_a, stage_b, *, fused: bool, rng):
    """Two cysts side by side along x: touching over a small patch, or fused by a shared wall."""
    from scipy import ndimage as ndi

    ma, mb = a > 0, b > 0
    dy = int(rng.integers(-2, 3))
    width = a.shape[2]
    # first shift (from far apart) at which the walls touch
    contact = width
    for dx in range(width, 0, -1):
        if (ndi.binary_dilation(ma, iterations=1, border_value=0)[:, :, dx:] & _shift(mb, dy)[:, :, : width - dx]).any():
            contact = dx
            break
    hull_a = ndi.binary_fill_holes(ma)
    ext_a = _bbox(hull_a)
    dx = contact - (max(2, int(round(0.3 * (ext_a[5] - ext_a[2])))) if fused else 0)
    shape = (a.shape[0], a.shape[1] + abs(dy), width + dx)
    out = np.zeros(shape, np.uint32)
    ya, yb = (0, dy) if dy >= 0 else (-dy, 0)
    out[:, ya:ya + a.shape[1], :width] = a
    region_b = out[:, yb:yb + b.shape[1], dx:dx + width]
    region_b[mb & (region_b == 0)] = b[mb & (region_b == 0)]
    if fused:  # the lens where both hulls meet is cells: two lumens, one shared wall
        hull = np.zeros(shape, bool), np.zeros(shape, bool)
        hull[0][:, ya:ya + a.shape[1], :width] = hull_a
        hull[1][:, yb:yb + b.shape[1], dx:dx + width] = ndi.binary_fill_holes(mb)
        lens = hull[0] & hull[1] & (out == 0)
        _, idx = ndi.distance_transform_edt(out == 0, return_indices=True)
        out[lens] = out[tuple(i[lens] for i in idx)]
        return [(f"{stage_a}+{stage_b}", _bbox(out > 0))], out
    box_a = _offset(_bbox(ma), (0, ya, 0))
    box_b = _offset(_bbox(mb), (0, yb, dx))
    return [(stage_a, box_a), (stage_b, box_b)], out


def _shift(mask: np.ndarray, dy: int) -> np.ndarray:
    """``mask`` moved by ``dy`` along y, filled with ``False``."""
    out = np.zeros_like(mask)
    if dy >= 0:
        out[:, dy:] = mask[:, : mask.shape[1] - dy]
    else:
        out[:, :dy] = mask[:, -dy:]
    return out


# --------------------------------------------------------------------------- placing


def _place(mask: np.ndarray, taken: np.ndarray, cut: bool, rng, tries: int = 400):
    """A random offset where the object's cells (kept OBJECT_GAP voxels from others) fit; ``None`` if none found."""
    from scipy import ndimage as ndi

    box = _bbox(mask)
    lo, hi = np.array(box[:3]), np.array(box[3:])
    shape = np.array(taken.shape)
    gap = ndi.binary_dilation(np.pad(mask, OBJECT_GAP), iterations=OBJECT_GAP)  # beyond the object's own volume
    low, high = -lo + FACE_GAP, shape - hi - FACE_GAP + 1  # cells FACE_GAP voxels from every face
    for _ in range(tries):
        axis = 1 + int(rng.integers(2)) if cut else -1
        if any(high[d] <= low[d] for d in range(3) if d != axis):
            return None
        off = np.array([rng.integers(low[d], high[d]) if d != axis else 0 for d in range(3)])
        if cut:  # one y or x side out by 25-50 % of the cyst
            out = int(round(rng.uniform(0.25, 0.5) * (hi[axis] - lo[axis])))
            off[axis] = -lo[axis] - out if rng.random() < 0.5 else shape[axis] - hi[axis] + out
        if _overlap(mask.shape, off, taken.shape)[0] is None:
            continue
        src, dst = _overlap(gap.shape, off - OBJECT_GAP, taken.shape)
        if not (gap[src] & taken[dst]).any():
            return tuple(int(o) for o in off)
    return None


def _overlap(local_shape, offset, shape):
    """Slices of the local volume and of the stack where they overlap (``None, None`` when they do not)."""
    src, dst = [], []
    for n, o, s in zip(local_shape, offset, shape):
        a, b = max(0, o), min(s, o + n)
        if b <= a:
            return None, None
        src.append(slice(a - o, b - o))
        dst.append(slice(a, b))
    return tuple(src), tuple(dst)


def _paste(labels, taken, local, offset, spacing) -> None:
    src, dst = _overlap(local.shape, offset, labels.shape)
    piece = local[src]
    cells = piece > 0
    base = int(labels.max())
    labels[dst][cells] = piece[cells] + base
    taken[dst] |= cells


def _shift_clip(box: Box, offset, shape) -> Box:
    lo = [min(max(b + o, 0), s) for b, o, s in zip(box[:3], offset, shape)]
    hi = [min(max(b + o, 0), s) for b, o, s in zip(box[3:], offset, shape)]
    return (*lo, *hi)  # type: ignore[return-value]


def _bbox(mask: np.ndarray) -> Box:
    idx = np.argwhere(mask)
    if not len(idx):
        return (0, 0, 0, 0, 0, 0)
    return (*(int(v) for v in idx.min(0)), *(int(v) + 1 for v in idx.max(0)))  # type: ignore[return-value]


def _offset(box: Box, offset) -> Box:
    return (*(b + o for b, o in zip(box[:3], offset)), *(b + o for b, o in zip(box[3:], offset)))  # type: ignore[return-value]


def _image(labels: np.ndarray, spacing, rng) -> np.ndarray:
    """Membrane image of the stack: anisotropic blur, background, Poisson and read noise, 12 bits."""
    from scipy import ndimage as ndi

    signal = membrane_signal(labels.astype(np.int64), rng)
    sigma = (0.7 / spacing[0], 0.25 / spacing[1], 0.25 / spacing[2])
    signal = ndi.gaussian_filter(signal, sigma=sigma)
    peak, background = rng.uniform(250, 450), rng.uniform(8, 20)
    photons = rng.poisson(np.clip(signal, 0, None) / max(float(signal.max()), 1e-9) * peak + background)
    image = photons + rng.normal(scale=3.0, size=labels.shape)
    return np.clip(np.round(image * 8), 0, 4095).astype(np.uint16)


__all__ = ["KINDS", "DEFAULT_MIX", "TrueCyst", "Stack", "make_stack", "box_iou"]
