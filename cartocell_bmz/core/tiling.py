"""Tiles for predicting a large volume piece by piece (pure numpy).

A network sees a volume through tiles of a fixed size.  Predictions near a
tile's edge lack context, so each tile keeps only its centre (a *margin* is
dropped on every side that touches another tile) and neighbouring tiles
overlap a little more, where their predictions are blended with a smooth
raised-cosine window.  At the borders of the volume nothing is dropped: there
the whole-volume prediction lacks context too, so a tile reproduces it.

Tile starts lie on a grid of ``align`` voxels (the network's pooling factor)
counted from the volume origin, so every tile pools exactly as a prediction of
the whole volume would: away from tile edges the two agree to rounding.

The blending weights are separable, ``w(z, y, x) = wz(z) wy(y) wx(x)``, and
normalised per axis so that the weights of all tiles sum to one at every
voxel.  Tiles can therefore be added into the output as they are produced,
without a weight volume and without a final division: memory stays bounded by
the output and one tile.

Volumes smaller than a tile, and the few voxels a grid-aligned last tile
reaches past the volume, are filled by mirror (``reflect``) indexing, without
padding a copy of the volume.

Examples
--------
>>> plan = plan_tiles((20, 50, 50), (16, 32, 32), margin=(2, 4, 4), overlap=(2, 4, 4), align=(1, 4, 4))
>>> plan.n_tiles, plan.grid
(8, (2, 2, 2))
>>> vol = np.random.default_rng(0).random((20, 50, 50), dtype=np.float32)
>>> out = np.zeros((1, 20, 50, 50), np.float32)
>>> for t in plan.tiles():
...     accumulate(out, extract_tile(vol, t)[None], t)
>>> bool(np.allclose(out[0], vol, atol=1e-6))
True
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class AxisTiling:
    """How one axis of a volume is cut into tiles.

    Attributes
    ----------
    size : int
        Length of the volume along the axis.
    tile : int
        Length of a tile.
    starts : tuple of int
        First voxel of each tile in volume coordinates; negative or
        ``start + tile > size`` where a tile reaches past the volume (mirrored).
    weights : tuple of numpy.ndarray
        Per tile, ``tile`` blending weights (float32), zero in the dropped
        margins and past the volume, normalised so that all tiles' weights sum
        to one at every voxel of the volume.
    """

    size: int
    tile: int
    starts: tuple[int, ...]
    weights: tuple[np.ndarray, ...]

    @property
    def n(self) -> int:
        """Number of tiles along the axis."""
        return len(self.starts)

    def kept(self, i: int) -> tuple[slice, slice]:
        """``(in_tile, in_volume)`` slices of tile ``i``'s voxels with a non-zero weight."""
        nz = np.flatnonzero(self.weights[i])
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        start = self.starts[i]
        return slice(lo, hi), slice(start + lo, start + hi)


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan`.

    Attributes
    ----------
    index : tuple of int
        Position of the tile in the grid ``(iz, iy, ix)``.
    start : tuple of int
        First voxel in volume coordinates (may be negative: mirrored voxels).
    size : tuple of int
        Tile shape.
    src : tuple of slice
        Part of the tile's prediction that is kept (tile coordinates).
    dst : tuple of slice
        Where that part goes in the volume.
    weights : tuple of numpy.ndarray
        The 1D normalised weights of the kept part, one per axis.
    """

    index: Triple
    start: Triple
    size: Triple
    src: tuple[slice, slice, slice]
    dst: tuple[slice, slice, slice]
    weights: tuple[np.ndarray, np.ndarray, np.ndarray]

    def window(self) -> np.ndarray:
        """The 3D blending weights of the kept part, ``float32``."""
        wz, wy, wx = self.weights
        return (wz[:, None, None] * wy[None, :, None] * wx[None, None, :]).astype(np.float32, copy=False)


@dataclass(frozen=True)
class TilePlan:
    """Tiles covering a 3D volume, with their blending weights.

    Attributes
    ----------
    shape : tuple of int
        Volume shape ``(Z, Y, X)``.
    tile : tuple of int
        Tile shape.
    axes : tuple of AxisTiling
        Per-axis tilings; the tiles are their Cartesian product.
    """

    shape: Triple
    tile: Triple
    axes: tuple[AxisTiling, AxisTiling, AxisTiling]

    @property
    def grid(self) -> Triple:
        """Number of tiles along each axis."""
        return tuple(a.n for a in self.axes)  # type: ignore[return-value]

    @property
    def n_tiles(self) -> int:
        """Total number of tiles."""
        return math.prod(self.grid)

    @property
    def efficiency(self) -> float:
        """Volume voxels per predicted tile voxel (1.0: no overlap, no padding)."""
        return math.prod(self.shape) / (self.n_tiles * math.prod(self.tile))

    def tiles(self) -> Iterator[Tile]:
        """Iterate over the tiles in C order (x fastest)."""
        kept = [[a.kept(i) for i in range(a.n)] for a in self.axes]
        for idx in itertools.product(*(range(a.n) for a in self.axes)):
            src = tuple(kept[d][i][0] for d, i in enumerate(idx))
            dst = tuple(kept[d][i][1] for d, i in enumerate(idx))
            weights = tuple(self.axes[d].weights[i][src[d]] for d, i in enumerate(idx))
            yield Tile(
                index=tuple(idx),  # type: ignore[arg-type]
                start=tuple(self.axes[d].starts[i] for d, i in enumerate(idx)),  # type: ignore[arg-type]
                size=self.tile,
                src=src,  # type: ignore[arg-type]
                dst=dst,  # type: ignore[arg-type]
                weights=weights,  # type: ignore[arg-type]
            )


def ramp(n: int) -> np.ndarray:
    """Raised-cosine ramp of ``n`` values rising from near 0 to near 1 (all > 0).

    Examples
    --------
    >>> np.round(ramp(4), 3)
    array([0.038, 0.309, 0.691, 0.962])
    """
    if n <= 0:
        return np.zeros(0, np.float64)
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(np.pi * (k + 0.5) / n)


def axis_tiling(
    size: int,
    tile: int,
    *,
    margin: int = 0,
    overlap: int = 0,
    align: int = 1,
    border: int = 0,
    valid: tuple[int, int] | None = None,
) -> AxisTiling:
    """Cut one axis of ``size`` voxels into tiles of ``tile`` voxels.

    Parameters
    ----------
    size : int
        Length of the volume along the axis (>= 1).
    tile : int
        Tile length (>= 1).
    margin : int
        Voxels dropped at each tile side that touches another tile.
    overlap : int
        Width of the blending ramp between neighbouring tiles, beyond the margins.
    align : int
        Tile starts are multiples of ``align`` counted from ``-border``.
    border : int
        Voxels of mirrored context added before the volume (and at least as
        many after it), whose predictions are dropped: the package's halo.
    valid : (int, int), optional
        ``(lo, hi)``: only tile positions ``lo <= i < hi`` hold a prediction
        (a model whose output is smaller than its input); default the whole tile.

    Returns
    -------
    AxisTiling

    Raises
    ------
    ValueError
        If the tile is too small for its margins, overlap and alignment.

    Examples
    --------
    >>> t = axis_tiling(100, 40, margin=4, overlap=8, align=4)
    >>> t.starts
    (0, 24, 48, 60)
    >>> bool(np.allclose(sum(np.bincount(np.arange(s, s + 40).clip(0, 99), w, 100)
    ...                      for s, w in zip(t.starts, t.weights)), 1.0))
    True
    """
    size, tile, margin, overlap, align, border = (int(v) for v in (size, tile, margin, overlap, align, border))
    if size < 1 or tile < 1 or align < 1 or min(margin, overlap, border) < 0:
        raise ValueError(f"bad tiling parameters size={size} tile={tile} margin={margin} "
                         f"overlap={overlap} align={align} border={border}")
    lo_valid, hi_valid = valid if valid is not None else (0, tile)
    if not 0 <= lo_valid < hi_valid <= tile:
        raise ValueError(f"valid output range {valid} does not fit a tile of {tile}")
    extent = size + 2 * border
    if extent <= tile:
        padded_starts = [0]
    else:
        stride = (tile - 2 * margin - overlap) // align * align
        if stride < 1:
            raise ValueError(
                f"a tile of {tile} voxels cannot keep anything after dropping {margin} voxels at "
                f"each side, blending over {overlap} and aligning to {align}; use a larger tile"
            )
        n = -(-(extent - tile) // stride) + 1
        last = -(-(extent - tile) // align) * align
        padded_starts = [i * stride for i in range(n - 1)] + [last]
    # a tile holding no voxel of the volume (possible in a wide border) is of no use
    starts = tuple(s - border for s in padded_starts if s - border < size and s - border + tile > 0)
    n = len(starts)

    raw: list[np.ndarray] = []
    for i, start in enumerate(starts):
        w = np.zeros(tile, np.float64)
        lo = lo_valid if i == 0 else max(lo_valid, margin)
        hi = hi_valid if i == n - 1 else min(hi_valid, tile - margin)
        if hi <= lo:
            raise ValueError(f"tile {i} keeps no voxel (margin {margin} too large for tile {tile})")
        w[lo:hi] = 1.0
        r = min(overlap, (hi - lo) // 2)
        if r > 0:
            if i > 0:
                w[lo:lo + r] = ramp(r)
            if i < n - 1:
                w[hi - r:hi] = ramp(r)[::-1]
        # nothing is kept outside the volume
        pos = np.arange(start, start + tile)
        w[(pos < 0) | (pos >= size)] = 0.0
        raw.append(w)

    total = np.zeros(size, np.float64)
    for start, w in zip(starts, raw):
        a, b = max(start, 0), min(start + tile, size)
        total[a:b] += w[a - start:b - start]
    if not (total > 0).all():
        gap = int(np.flatnonzero(total <= 0)[0])
        raise ValueError(f"tiles leave voxel {gap} of {size} uncovered (tile {tile}, margin {margin}, "
                         f"overlap {overlap}, align {align}, border {border}, valid {valid})")
    weights = []
    for start, w in zip(starts, raw):
        norm = np.zeros(tile, np.float64)
        a, b = max(start, 0), min(start + tile, size)
        norm[a - start:b - start] = w[a - start:b - start] / total[a:b]
        weights.append(norm.astype(np.float32))
    return AxisTiling(size=size, tile=tile, starts=starts, weights=tuple(weights))


def plan_tiles(
    shape: Sequence[int],
    tile: Sequence[int],
    *,
    margin: Sequence[int] | int = 0,
    overlap: Sequence[int] | int = 0,
    align: Sequence[int] | int = 1,
    border: Sequence[int] | int = 0,
    valid: Sequence[tuple[int, int]] | None = None,
) -> TilePlan:
    """Tiles of shape ``tile`` covering a volume of ``shape`` (see :func:`axis_tiling`).

    Scalars apply to all three axes.

    Examples
    --------
    >>> plan_tiles((80, 80, 80), (80, 80, 80)).n_tiles
    1
    >>> plan_tiles((10, 20, 20), (16, 32, 32)).axes[0].starts   # smaller than a tile
    (0,)
    """

    def _three(v, name):
        v = (v,) * 3 if np.isscalar(v) else tuple(v)
        if len(v) != 3:
            raise ValueError(f"{name} needs 3 values (z, y, x), got {v}")
        return v

    shape, tile = _three(shape, "shape"), _three(tile, "tile")
    margin, overlap = _three(margin, "margin"), _three(overlap, "overlap")
    align, border = _three(align, "align"), _three(border, "border")
    valid = tuple(valid) if valid is not None else (None, None, None)
    axes = tuple(
        axis_tiling(shape[d], tile[d], margin=margin[d], overlap=overlap[d], align=align[d],
                    border=border[d], valid=valid[d])
        for d in range(3)
    )
    return TilePlan(shape=tuple(int(s) for s in shape), tile=tuple(int(t) for t in tile), axes=axes)  # type: ignore[arg-type]


def reflect_index(index: np.ndarray, size: int) -> np.ndarray:
    """Map indices outside ``[0, size)`` back inside by mirroring (numpy's ``reflect``).

    Examples
    --------
    >>> reflect_index(np.arange(-3, 8), 5)
    array([3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1])
    >>> reflect_index(np.arange(-2, 3), 1)
    array([0, 0, 0, 0, 0])
    """
    index = np.asarray(index)
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    m = np.mod(index, period)
    return np.where(m < size, m, period - m)


def extract_tile(volume: np.ndarray, tile: Tile, *, out: np.ndarray | None = None) -> np.ndarray:
    """The ``tile.size`` block of ``volume`` (``(..., Z, Y, X)``) at ``tile.start``, mirrored past its borders."""
    shape = volume.shape[-3:]
    inside = all(0 <= s and s + n <= size for s, n, size in zip(tile.start, tile.size, shape))
    if inside:
        block = volume[(..., *(slice(s, s + n) for s, n in zip(tile.start, tile.size)))]
    else:
        idx = [reflect_index(np.arange(s, s + n), size) for s, n, size in zip(tile.start, tile.size, shape)]
        block = volume[(..., *np.ix_(*idx))]
    if out is not None:
        out[...] = block
        return out
    return np.ascontiguousarray(block)


def accumulate(out: np.ndarray, prediction: np.ndarray, tile: Tile) -> None:
    """Add a tile's blended prediction ``(C, *tile.size)`` into ``out`` ``(C, Z, Y, X)`` in place.

    ``out`` must start at zero; after every tile of a plan has been added it
    holds the blended prediction (the weights sum to one at every voxel).
    """
    part = prediction[(slice(None), *tile.src)]
    window = tile.window()
    for c in range(out.shape[0]):
        out[(c, *tile.dst)] += part[c] * window


__all__ = ["AxisTiling", "Tile", "TilePlan", "accumulate", "axis_tiling", "extract_tile", "plan_tiles",
           "ramp", "reflect_index"]
