"""How a model is tiled: the input sizes it takes, the tile chosen for a volume, its channel order.

A backend (:mod:`cartocell_bmz.run.backends`) describes the sizes its model
takes as a :class:`ModelSizes` (per axis: a fixed size, or ``min + n * step``;
the output halo; the pooling factor when known).  :func:`tile_geometry` turns
that into the :class:`TileGeometry` of a volume, :func:`valid_sizes` and
:func:`cheapest_tile` pick the tile that predicts the fewest voxels.  Nothing
here runs a network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from cartocell_bmz.errors import ConfigError, ModelError
from cartocell_bmz.layout import CHANNELS

#: Tile (z, y, x) on which the margins of a model with parameterised sizes are measured.
DEFAULT_TILE: tuple[int, int, int] = (32, 128, 128)
#: Largest tile (voxels) chosen for a model with parameterised sizes: about 0.6 GB of
#: activations for the tiny networks, 2 GB for the published network size.
MAX_TILE_VOXELS = 1 << 20

#: Words in an output channel's name that say which channel it is.
_CHANNEL_WORDS: dict[str, set[str]] = {
    "B": {"b", "f", "body", "bodies", "cellbody", "foreground", "binary", "fg"},
    "C": {"c", "contour", "contours", "boundary", "boundaries", "edge", "edges", "membrane"},
    "M": {"m", "mask", "region", "cellmask", "cellular"},
}


@dataclass(frozen=True)
class AxisSize:
    """The sizes one spatial input axis of a model takes.

    Attributes
    ----------
    id : str
        Axis name (``"z"``, ``"y"`` or ``"x"``).
    min, step : int
        Valid sizes ``min + n * step`` (``step`` 0: ``min`` only).
    fixed : bool
        Whether the model declares one size (``min``) rather than a parameterised one.
    halo : int
        Output halo the model declares along the axis (dropped from every tile).
    divisor : int, optional
        The network's pooling factor along the axis, when known.

    Examples
    --------
    >>> AxisSize("y", 36, 4).align, AxisSize("z", 80, fixed=True).align
    (4, 16)
    """

    id: str
    min: int
    step: int = 0
    fixed: bool = False
    halo: int = 0
    divisor: int | None = None

    @property
    def align(self) -> int:
        """Tile starts are multiples of this: the pooling factor (or the step, or a power of two of the size)."""
        if self.fixed:
            return self.divisor if self.divisor and self.min % self.divisor == 0 else pow2_divisor(self.min)
        return self.step if self.step else pow2_divisor(self.min)

    def valid(self, size: int) -> bool:
        """Whether ``size`` is one of the sizes the axis takes."""
        if self.fixed or self.step == 0:
            return size == self.min
        return size >= self.min and (size - self.min) % self.step == 0


@dataclass(frozen=True)
class ModelSizes:
    """The input sizes a model takes, axis by axis, and how large its output is.

    Attributes
    ----------
    name : str
        The model's name (for messages).
    axes : tuple of 3 AxisSize
        The ``z, y, x`` input axes.
    output_size : callable, optional
        Input tile ``(z, y, x)`` -> output tile; ``None``: the same size.
    """

    name: str
    axes: tuple[AxisSize, AxisSize, AxisSize]
    output_size: Callable[[tuple[int, int, int]], tuple[int, int, int]] | None = None

    @property
    def fixed(self) -> bool:
        """Whether every axis takes one fixed size."""
        return all(a.fixed for a in self.axes)


@dataclass(frozen=True)
class TileGeometry:
    """How a model is tiled.

    Attributes
    ----------
    tile : tuple of int
        Input tile (z, y, x).
    output : tuple of int
        Output tile size (equal to ``tile`` for same-size models).
    offset : tuple of int
        Where the output starts inside the input tile ((tile - output) / 2).
    halo : tuple of int
        Output halo declared by the package (dropped).
    align : tuple of int
        Tile starts are multiples of this (the network's pooling factor).
    fixed : bool
        Whether the model takes only one tile size.
    """

    tile: tuple[int, int, int]
    output: tuple[int, int, int]
    offset: tuple[int, int, int]
    halo: tuple[int, int, int]
    align: tuple[int, int, int]
    fixed: bool

    @property
    def border(self) -> tuple[int, int, int]:
        """Voxels of input beyond the kept output on each side: ``offset + halo``."""
        return tuple(o + h for o, h in zip(self.offset, self.halo))  # type: ignore[return-value]


def pow2_divisor(n: int, cap: int = 16) -> int:
    """Largest power of two up to ``cap`` dividing ``n``.

    Examples
    --------
    >>> pow2_divisor(80), pow2_divisor(36), pow2_divisor(15)
    (16, 4, 1)
    """
    d = 1
    while d < cap and n % (2 * d) == 0:
        d *= 2
    return d


def channel_order(names: Sequence[str]) -> tuple[int, int, int]:
    """Indices of B, C and M among a model's output channels, from their names.

    Names that say which channel is which (``B``/``C``/``M``, ``cell_body``,
    ``contours``, ``mask``, BiaPy's ``F``...) decide; anything else (e.g.
    ``channel0..2``) means the CartoCell order B, C, M.

    Examples
    --------
    >>> channel_order(["channel0", "channel1", "channel2"])
    (0, 1, 2)
    >>> channel_order(["mask", "cell_body", "contours"])
    (1, 2, 0)
    >>> channel_order(["B", "M", "C"])
    (0, 2, 1)
    """
    found: dict[str, int] = {}
    for i, name in enumerate(names):
        tokens = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
        words = set(tokens) | {"".join(tokens)}
        hits = [ch for ch, vocab in _CHANNEL_WORDS.items() if words & vocab]
        if len(hits) == 1 and hits[0] not in found:
            found[hits[0]] = i
    if len(found) == 3:
        return tuple(found[c] for c in CHANNELS)  # type: ignore[return-value]
    return (0, 1, 2)


def _checked_tile(sizes: ModelSizes, tile: Sequence[int]) -> tuple[int, int, int]:
    """A requested tile, refused with a one-line message when the model cannot take it."""
    t = tuple(int(v) for v in tile)
    if len(t) != 3 or min(t) < 1:
        raise ConfigError(f"--tile needs three positive sizes Z Y X, got {list(t)}.")
    for d, axis in enumerate(sizes.axes):
        if axis.valid(t[d]):
            continue
        if axis.fixed:
            raise ConfigError(
                f"model {sizes.name!r} takes fixed tiles of {' x '.join(str(a.min) for a in sizes.axes)}; "
                f"--tile {' '.join(map(str, t))} cannot be used with it."
            )
        mn, st = axis.min, axis.step
        valid = [mn + k * st for k in range(4)] if st else [mn]
        raise ConfigError(
            f"--tile {t[d]} along {axis.id} does not fit model {sizes.name!r}: it takes "
            f"{mn} + n x {st} voxels ({', '.join(map(str, valid))}, ...)."
        )
    return t  # type: ignore[return-value]


def tile_geometry(sizes: ModelSizes, shape: Sequence[int] | None = None,
                  tile: Sequence[int] | None = None) -> TileGeometry:
    """Tile, halo and alignment of a model for a volume of ``shape``.

    Parameters
    ----------
    sizes : ModelSizes
        What the model takes (a backend's ``sizes``).
    shape : sequence of int, optional
        Volume shape; tiles are not made larger than the volume needs.
    tile : sequence of int, optional
        Requested tile; must be valid for the model.  Default: the fixed size,
        or the valid size nearest above :data:`DEFAULT_TILE` (cut to the volume).

    Raises
    ------
    ConfigError
        If ``tile`` does not fit the model.
    ModelError
        If the output does not sit centred in the tile, or the halo leaves nothing.

    Examples
    --------
    >>> s = ModelSizes("m", (AxisSize("z", 8, 1), AxisSize("y", 16, 4), AxisSize("x", 16, 4)))
    >>> tile_geometry(s, (20, 50, 300)).tile
    (20, 52, 128)
    """
    halo = tuple(a.halo for a in sizes.axes)
    if tile is not None:
        chosen = _checked_tile(sizes, tile)
    else:
        picked = []
        for d, axis in enumerate(sizes.axes):
            if axis.fixed:
                picked.append(axis.min)
                continue
            want = DEFAULT_TILE[d] if shape is None else min(DEFAULT_TILE[d], int(shape[d]) + 2 * halo[d])
            n = max(0, -(-(want - axis.min) // axis.step)) if axis.step else 0
            picked.append(axis.min + n * axis.step)
        chosen = tuple(picked)  # type: ignore[assignment]
    out_sizes = sizes.output_size(chosen) if sizes.output_size is not None else chosen
    output: list[int] = []
    offset: list[int] = []
    for d, axis in enumerate(sizes.axes):
        o, diff = int(out_sizes[d]), chosen[d] - int(out_sizes[d])
        if diff < 0 or diff % 2:
            raise ModelError(
                f"model {sizes.name!r}: output size {o} along {axis.id} does not sit centred in the input tile "
                f"{chosen[d]}; cannot tile it."
            )
        if 2 * halo[d] >= o:
            raise ModelError(f"model {sizes.name!r}: the output halo {halo[d]} along {axis.id} leaves nothing of a {o} tile.")
        output.append(o)
        offset.append(diff // 2)
    return TileGeometry(tile=chosen, output=tuple(output), offset=tuple(offset),  # type: ignore[arg-type]
                        halo=halo, align=tuple(a.align for a in sizes.axes), fixed=sizes.fixed)  # type: ignore[arg-type]


def valid_sizes(sizes: ModelSizes, extent: Sequence[int]) -> list[list[int]]:
    """Per axis, the valid input sizes from the minimum up to the first one holding ``extent``.

    Examples
    --------
    >>> s = ModelSizes("m", (AxisSize("z", 80, fixed=True), AxisSize("y", 16, 8), AxisSize("x", 16, 8)))
    >>> valid_sizes(s, (100, 30, 16))
    [[80], [16, 24, 32], [16]]
    """
    out = []
    for axis, e in zip(sizes.axes, extent):
        mn, st = axis.min, axis.step
        if axis.fixed or st == 0:
            out.append([mn])
            continue
        top = mn if e <= mn else mn + -(-(int(e) - mn) // st) * st
        out.append(list(range(mn, top + 1, st)))
    return out


def cheapest_tile(
    extent: Sequence[int],
    sizes: Sequence[Sequence[int]],
    margin: Sequence[int],
    overlap: Sequence[int],
    align: Sequence[int],
    max_voxels: int,
) -> tuple[int, int, int]:
    """The tile predicting the fewest voxels in all, among tiles of at most ``max_voxels``.

    Parameters
    ----------
    extent : sequence of 3 int
        Volume size plus its mirrored border on both sides.
    sizes : three sequences of int
        Valid tile sizes per axis.
    margin, overlap, align : sequence of 3 int
        As in :func:`cartocell_bmz.core.tiling.axis_tiling`.
    max_voxels : int
        Largest tile volume.

    Examples
    --------
    >>> cheapest_tile((100, 300, 300), [range(8, 101, 4), range(16, 301, 8), range(16, 301, 8)],
    ...             (6, 12, 12), (0, 0, 0), (1, 4, 4), 1 << 20)
    (100, 80, 120)
    """
    per_axis = []
    for e, cand, m, o, a in zip(extent, sizes, margin, overlap, align):
        t = np.asarray(list(cand), np.float64)
        stride = np.floor((t - 2 * m - o) / a) * a
        with np.errstate(divide="ignore", invalid="ignore"):
            n = np.where(e <= t, 1.0, np.where(stride >= a, np.ceil((e - t) / np.maximum(stride, 1)) + 1, np.inf))
        per_axis.append((t, n * t))
    (tz, cz), (ty, cy), (tx, cx) = per_axis
    vol = tz[:, None, None] * ty[None, :, None] * tx[None, None, :]
    cost = cz[:, None, None] * cy[None, :, None] * cx[None, None, :]
    cost = np.where(vol <= max_voxels, cost, np.inf)
    if not np.isfinite(cost).any():
        i = (0, 0, 0)  # even the smallest tiles are too large or too small: take the smallest
    else:
        best = cost.min()
        ok = np.flatnonzero(cost.ravel() <= best * (1 + 1e-9))
        i = np.unravel_index(ok[np.argmin(vol.ravel()[ok])], cost.shape)
    return (int(tz[i[0]]), int(ty[i[1]]), int(tx[i[2]]))


def frame_output(probs: np.ndarray, g: TileGeometry) -> np.ndarray:
    """An output ``(C, *output)`` placed in a tile-sized frame (zeros outside)."""
    if g.output == g.tile:
        return probs
    frame = np.zeros((probs.shape[0], *g.tile), np.float32)
    frame[(slice(None), *(slice(o, o + s) for o, s in zip(g.offset, g.output)))] = probs
    return frame


__all__ = [
    "DEFAULT_TILE",
    "MAX_TILE_VOXELS",
    "AxisSize",
    "ModelSizes",
    "TileGeometry",
    "channel_order",
    "cheapest_tile",
    "frame_output",
    "pow2_divisor",
    "tile_geometry",
    "valid_sizes",
]
