"""Tiled prediction of B, C, M probabilities with any CartoCell BMZ model, through bioimageio.core.

bioimageio.core runs the model: its weight-format handling (pytorch_state_dict
or TorchScript), its pre- and post-processing.  This module adds what core
lacks for 3D cysts: tiling that works for every model, and statistics taken
from the whole image.

- Normalisation: the package's preprocessing (zero mean, unit variance for
  CartoCell models) is applied once to the whole volume by core, so its
  statistics are the whole image's, not each tile's.
- Tiles: fixed-size models get their fixed tile (80^3 for the six published
  models); models with parameterised sizes get the tile of ``min + n * step``
  voxels per axis that predicts the fewest voxels in all, among tiles of at
  most :data:`MAX_TILE_VOXELS` (or the one given).  Tile starts are aligned to the network's pooling factor, so
  each tile computes what a whole-volume prediction computes; a margin
  (at least the output halo the package declares) is dropped where tiles
  meet and neighbours are blended with a smooth window (:mod:`cartocell_bmz.core.tiling`).
  The package's halo is also mirrored around the volume, as core does for a
  whole-volume prediction.  Volumes smaller than a tile are mirror-padded.
- Tiles go through core's prediction pipeline in batches, without its
  preprocessing (already done) and with its postprocessing (the sigmoid of
  the published packages).  Packages exported by BiaPy 3.7 have no sigmoid
  step because their network applies it: with no sigmoid step the outputs are
  taken as probabilities (and checked to lie in [0, 1]).
- Channel order comes from the output's channel names when they say which is
  B, C and M, else it is B, C, M.
- Speed on CPU: the network's weights are put in channels-last (NDHWC)
  memory order once loaded (:func:`use_channels_last`); oneDNN's 3D
  convolutions then skip a layout reorder per layer: 1.3-1.7x faster per
  tile for the six architectures, same results to float rounding.
- Memory: the normalised volume, the ``(3, Z, Y, X)`` float32 output (which may
  be a memory map, filled as tiles finish) and one batch of tiles.

Examples
--------
>>> from cartocell_bmz.run.predictor import predict_probabilities   # doctest: +SKIP
>>> probs = predict_probabilities("happy-honeybee", volume)   # doctest: +SKIP
>>> probs.shape, probs.dtype                                  # doctest: +SKIP
((3, 64, 256, 256), dtype('float32'))
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from cartocell_bmz.errors import ConfigError, InputError, ModelError
from cartocell_bmz.layout import CHANNELS
from cartocell_bmz.core.tiling import TilePlan, accumulate, extract_tile, plan_tiles

#: Tile (z, y, x) on which the margins of a model with parameterised sizes are measured.
DEFAULT_TILE: tuple[int, int, int] = (32, 128, 128)
#: Largest tile (voxels) chosen for a model with parameterised sizes: about 0.6 GB of
#: activations for the tiny networks, 2 GB for the published network size.
MAX_TILE_VOXELS = 1 << 20
#: Largest change of a probability that tile edges may cause after blending, measured on
#: the probe images and shared between the axes (where edges meet, their effects add up);
#: margins and overlaps are chosen to meet it.  A quarter of the 0.01 the project promises:
#: the probes' change is the largest over one tile's centre, and over a whole volume the
#: largest change was up to 4.5x higher (residual U-Net look-alike, 80^3 tiles, 112 x 240
#: x 240 cyst: 0.0014 + 0.0009 on the texture probe at margins 16 and 18 in y and x,
#: 0.0104 where those edges meet).
EDGE_TOLERANCE = 0.0025
#: Blending ramp widths tried when margins are measured.
_OVERLAPS: tuple[int, ...] = (0, 2, 4, 6, 8, 12, 16)
#: Weight formats this runner can use (both through bioimageio.core's torch backends).
WEIGHT_FORMATS: tuple[str, ...] = ("pytorch_state_dict", "torchscript")

#: Words in an output channel's name that say which channel it is.
_CHANNEL_WORDS: dict[str, set[str]] = {
    "B": {"b", "f", "body", "bodies", "cellbody", "foreground", "binary", "fg"},
    "C": {"c", "contour", "contours", "boundary", "boundaries", "edge", "edges", "membrane"},
    "M": {"m", "mask", "region", "cellmask", "cellular"},
}


# --------------------------------------------------------------------------- model facts


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


def _kwargs_divisor(descr: Any) -> tuple[int, int, int] | None:
    """Pooling factor from U-Net style kwargs (``feature_maps``, ``z_down``) of the architecture."""
    w = descr.weights.pytorch_state_dict
    kwargs = dict(getattr(getattr(w, "architecture", None), "kwargs", None) or {}) if w is not None else {}
    fm, zd = kwargs.get("feature_maps"), kwargs.get("z_down")
    if not isinstance(fm, (list, tuple)) or not isinstance(zd, (list, tuple)) or len(zd) != len(fm) - 1:
        return None
    try:
        z = int(math.prod(int(v) for v in zd))
    except (TypeError, ValueError):
        return None
    yx = 2 ** len(zd)
    return (max(z, 1), yx, yx)


def _pow2_divisor(n: int, cap: int = 16) -> int:
    d = 1
    while d < cap and n % (2 * d) == 0:
        d *= 2
    return d


def tile_geometry(descr: Any, shape: Sequence[int] | None = None, tile: Sequence[int] | None = None) -> TileGeometry:
    """Tile, halo and alignment of a CartoCell model for a volume of ``shape``.

    Parameters
    ----------
    descr : bioimageio.spec.model.v0_5.ModelDescr
        A CartoCell-shaped description (see :func:`~cartocell_bmz.bmz.safety.check_cartocell_shape`).
    shape : sequence of int, optional
        Volume shape; tiles are not made larger than the volume needs.
    tile : sequence of int, optional
        Requested tile; must be valid for the model.

    Raises
    ------
    ConfigError
        If ``tile`` does not fit the model.
    ModelError
        If the output size cannot be worked out.
    """
    from bioimageio.spec.model import v0_5

    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes, out_axes = inp.axes[2:], out.axes[2:]
    halo = tuple(int(getattr(a, "halo", 0) or 0) for a in out_axes)
    if tile is not None:
        tile = tuple(int(t) for t in tile)
        if len(tile) != 3 or min(tile) < 1:
            raise ConfigError(f"--tile needs three positive sizes Z Y X, got {list(tile)}.")
    fixed = all(isinstance(a.size, int) for a in in_axes)
    kw_div = _kwargs_divisor(descr)
    chosen: list[int] = []
    align: list[int] = []
    for d, axis in enumerate(in_axes):
        size = axis.size
        if isinstance(size, int):
            if tile is not None and tile[d] != size:
                raise ConfigError(
                    f"model {descr.name!r} takes fixed tiles of {' x '.join(str(a.size) for a in in_axes)}; "
                    f"--tile {' '.join(map(str, tile))} cannot be used with it."
                )
            chosen.append(size)
            div = kw_div[d] if kw_div is not None and size % kw_div[d] == 0 else _pow2_divisor(size)
            align.append(div)
        elif isinstance(size, v0_5.ParameterizedSize):
            mn, st = int(size.min), int(size.step)
            if tile is not None:
                t = tile[d]
                if t < mn or (st == 0 and t != mn) or (st and (t - mn) % st):
                    valid = [mn + k * st for k in range(4)] if st else [mn]
                    raise ConfigError(
                        f"--tile {t} along {axis.id} does not fit model {descr.name!r}: it takes "
                        f"{mn} + n x {st} voxels ({', '.join(map(str, valid))}, ...)."
                    )
                chosen.append(t)
            else:
                want = DEFAULT_TILE[d]
                if shape is not None:
                    want = min(want, int(shape[d]) + 2 * halo[d])
                n = max(0, -(-(want - mn) // st)) if st else 0
                chosen.append(mn + n * st)
            align.append(st if st else _pow2_divisor(mn))
        elif isinstance(size, v0_5.SizeReference):
            raise ModelError(f"model {descr.name!r}: input axis {axis.id} refers to another tensor; cannot tile it.")
        else:  # pragma: no cover - spec guarantees one of the above
            raise ModelError(f"model {descr.name!r}: unsupported size of input axis {axis.id}.")
    tile_t = tuple(chosen)
    sizes = descr.get_output_tensor_sizes({inp.id: {a.id: s for a, s in zip(in_axes, tile_t)} | {
        inp.axes[0].id: 1, inp.axes[1].id: 1}})
    out_sizes = sizes[out.id]
    output: list[int] = []
    offset: list[int] = []
    for d, axis in enumerate(out_axes):
        o = out_sizes[axis.id]
        if not isinstance(o, int):
            raise ModelError(f"model {descr.name!r}: output axis {axis.id} has no fixed size; cannot tile it.")
        diff = tile_t[d] - o
        if diff < 0 or diff % 2:
            raise ModelError(
                f"model {descr.name!r}: output size {o} along {axis.id} does not sit centred in the input tile "
                f"{tile_t[d]}; cannot tile it."
            )
        output.append(o)
        offset.append(diff // 2)
        if 2 * halo[d] >= o:
            raise ModelError(f"model {descr.name!r}: the output halo {halo[d]} along {axis.id} leaves nothing of a {o} tile.")
    return TileGeometry(tile=tile_t, output=tuple(output), offset=tuple(offset), halo=halo,  # type: ignore[arg-type]
                        align=tuple(align), fixed=fixed)  # type: ignore[arg-type]


def _pick_device(device: str | None) -> str:
    import torch

    text = (device or "auto").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", text):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is available here; use --device cpu.")
        idx = int(text.split(":")[1]) if ":" in text else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s).")
        return text
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps: Apple's MPS is not available here; use --device cpu.")
        return text
    raise ConfigError(f"--device {device!r}: use auto, cpu, cuda or cuda:N.")


# --------------------------------------------------------------------------- edge margins


@dataclass(frozen=True)
class EdgeMargins:
    """Margins and blending ramps of a model's tiles, and how they were chosen.

    Attributes
    ----------
    tile : tuple of int
        Tile the margins are for.
    margin : tuple of int
        Voxels dropped at each side where tiles meet (the package's halo included).
    overlap : tuple of int
        Width of the blending ramp beyond the margins.
    error : tuple of float
        Largest expected change of a probability caused by tile edges after
        blending, per axis (``nan`` where not measured).
    profiles : tuple of tuple of float
        Per axis, the measured largest probability change at distance
        ``0, 1, 2, ...`` from a tile edge (empty where not measured).
    measured : bool
        Whether the margins were measured (else given by the user).
    floor : tuple of float
        Per axis, the part of the difference between two tiles that does not
        fade with the distance from their edges (the smallest difference over
        the farther half of the profile).  Margins cannot remove it: it comes
        from layers that pool over the whole tile, such as the global
        squeeze-and-excitation blocks of the published SE U-Net, ResUNet-SE and
        ResUNet++, whose output depends on the tile (and differs from a
        whole-volume prediction) by about this much.  With a local window
        (``se_window``, as in this project's packages) it is zero.
    """

    tile: tuple[int, int, int]
    margin: tuple[int, int, int]
    overlap: tuple[int, int, int]
    error: tuple[float, float, float]
    profiles: tuple[tuple[float, ...], ...] = ((), (), ())
    measured: bool = True
    floor: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def met(self) -> bool:
        """Whether the measured axes' errors, added up where their edges meet, stay within :data:`EDGE_TOLERANCE`."""
        return not (sum(e for e in self.error if not math.isnan(e)) > EDGE_TOLERANCE)

    @property
    def worst(self) -> float:
        """Expected change where the edges of all axes meet: the finite errors and the floors added up."""
        return sum(e for e in self.error if math.isfinite(e)) + sum(self.floor)


def probe_texture(shape: Sequence[int], seed: int = 0, spacing: Sequence[float] = (1.0, 0.5, 0.5),
                  cell_size: float = 6.0) -> np.ndarray:
    """A membrane-like test image filling ``shape``: the walls of random cells, blurred and noisy.

    Used to measure how far into a tile its edges change a model's output.
    Unlike a cyst, cell walls fill the whole volume, so every part of the
    tile carries signal.

    Examples
    --------
    >>> t = probe_texture((8, 32, 32))
    >>> t.shape, t.dtype.name, bool(t.std() > 0)
    ((8, 32, 32), 'float32', True)
    """
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing_a = np.asarray(spacing, np.float64)
    extent = np.asarray(shape) * spacing_a
    n = max(4, int(np.prod(extent) / cell_size**3 * 2))
    seeds = rng.uniform(0, 1, size=(n, 3)) * extent
    grid = np.stack(np.meshgrid(*[(np.arange(s) + 0.5) * sp for s, sp in zip(shape, spacing_a)], indexing="ij"), -1)
    dist, _ = cKDTree(seeds).query(grid.reshape(-1, 3), k=2)
    gap = (dist[:, 1] - dist[:, 0]).reshape(shape)
    wall = np.exp(-(gap / 0.6) ** 2)
    image = gaussian_filter(wall, sigma=(0.8, 0.6, 0.6)) * 800 + 100
    image += rng.normal(0, 25, size=shape)
    return image.astype(np.float32)


def probe_cyst(shape: Sequence[int], seed: int = 0, spacing: Sequence[float] = (1.0, 0.5, 0.5)) -> np.ndarray:
    """A synthetic day-10 cyst filling ``shape`` (:func:`cartocell_bmz.core.phantoms.make_cyst`).

    The second probe of the edge measurement: bright cell walls next to a dark
    lumen and background, the contrast of real data, which the membrane texture
    alone does not show.

    Examples
    --------
    >>> probe_cyst((4, 16, 24)).shape   # any shape, even below the generator's 8 voxels
    (4, 16, 24)
    """
    from cartocell_bmz.core.phantoms import make_cyst

    shape = tuple(int(s) for s in shape)
    big = tuple(max(8, s) for s in shape)  # the phantom generator needs 8 voxels per axis
    raw = make_cyst(big, tuple(spacing), stage="day10", seed=1000 + seed).raw.astype(np.float32)
    lo = [(b - s) // 2 for b, s in zip(big, shape)]
    return np.ascontiguousarray(raw[tuple(slice(o, o + s) for o, s in zip(lo, shape))])


def envelope(profile: Sequence[float]) -> np.ndarray:
    """Largest value at each distance and beyond (reverse running maximum).

    Examples
    --------
    >>> envelope([0.5, 0.1, 0.2, 0.0]).tolist()
    [0.5, 0.2, 0.2, 0.0]
    """
    p = np.asarray(profile, np.float64)
    return np.maximum.accumulate(p[::-1])[::-1] if p.size else p


def blended_edge_error(profile: Sequence[float], tile: int, margin: int, overlap: int, align: int) -> tuple[int, float]:
    """Stride and largest expected error of tiles with ``margin`` and ``overlap``.

    Three tiles in a row are blended as :mod:`cartocell_bmz.core.tiling` does; a
    tile's error at distance ``d`` from its nearest edge is the envelope of the
    measured ``profile`` (its last value beyond its end).

    Returns
    -------
    stride, error : int, float
        ``stride`` 0 when the tile keeps nothing.
    """
    from cartocell_bmz.core.tiling import axis_tiling

    stride = (tile - 2 * margin - overlap) // align * align
    if stride < align:
        return 0, float("inf")
    env = envelope(profile)
    if env.size == 0:
        return stride, float("nan")
    axis = axis_tiling(2 * stride + tile, tile, margin=margin, overlap=overlap, align=align)
    pos = np.arange(axis.starts[1], axis.starts[1] + tile)
    total = np.zeros(pos.size)
    for start, w in zip(axis.starts, axis.weights):
        rel = pos - start
        inside = (rel >= 0) & (rel < tile)
        d = np.minimum(rel, tile - 1 - rel)[inside]
        total[inside] += w[rel[inside]] * env[np.minimum(d, env.size - 1)]
    return stride, float(total.max())


def choose_margin(profile: Sequence[float], tile: int, align: int, minimum: int = 0,
                  tolerance: float = EDGE_TOLERANCE) -> tuple[int, int, float]:
    """Margin and overlap with the largest stride whose blended edge error meets ``tolerance``.

    Falls back to the smallest achievable error when none meets it.

    Examples
    --------
    >>> prof = [0.9, 0.5, 0.2, 0.05, 0.01, 0.002, 0.0, 0.0, 0.0, 0.0]
    >>> choose_margin(prof, 40, 1)
    (5, 0, 0.002)
    """
    best: tuple[int, int, int, float] | None = None  # stride, margin, overlap, error
    fallback: tuple[float, int, int, int] | None = None
    for margin in range(int(minimum), tile // 2):
        for overlap in _OVERLAPS:
            stride, err = blended_edge_error(profile, tile, margin, overlap, align)
            if stride == 0:
                continue
            if err <= tolerance:
                if best is None or stride > best[0] or (stride == best[0] and err < best[3]):
                    best = (stride, margin, overlap, err)
            elif fallback is None or err < fallback[0] or (err == fallback[0] and stride > fallback[3]):
                fallback = (err, margin, overlap, stride)
    if best is not None:
        return best[1], best[2], best[3]
    if fallback is not None:
        return fallback[1], fallback[2], fallback[0]
    return int(minimum), 0, float("inf")


def _valid_sizes(descr: Any, extent: Sequence[int]) -> list[list[int]]:
    """Per axis, the valid input sizes from the minimum up to the first one holding ``extent``."""
    from bioimageio.spec.model import v0_5

    out = []
    for axis, e in zip(descr.inputs[0].axes[2:], extent):
        size = axis.size
        if isinstance(size, int):
            out.append([size])
        elif isinstance(size, v0_5.ParameterizedSize):
            mn, st = int(size.min), int(size.step)
            top = mn if st == 0 or e <= mn else mn + -(-(e - mn) // st) * st
            out.append(list(range(mn, top + 1, st)) if st else [mn])
        else:  # pragma: no cover - refused by tile_geometry
            out.append([int(e)])
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


def _floor(profile: Sequence[float], tolerance: float) -> float:
    """The part of an edge profile that does not fade with distance (0 when it still fades).

    Examples
    --------
    >>> _floor([0.9, 0.3, 0.1, 0.05, 0.04, 0.04, 0.05, 0.04], 0.005)
    0.04
    >>> _floor([0.9, 0.5, 0.3, 0.2, 0.12, 0.08, 0.05, 0.03], 0.005)
    0.0
    """
    tail = list(profile[len(profile) // 2:])
    if not tail:
        return 0.0
    lo, hi = min(tail), max(tail)
    flat = hi - lo <= 0.3 * lo + tolerance / 2 and tail[-1] >= 0.7 * tail[0]
    return float(lo) if flat else 0.0


# --------------------------------------------------------------------------- the predictor


class Predictor:
    """A model loaded once, ready to predict any number of volumes.

    Parameters
    ----------
    model : str, path-like or ResolvedModel
        Anything :func:`~cartocell_bmz.bmz.resolve.resolve_model` accepts.
    weights : {None, "pytorch_state_dict", "torchscript"}
        Weight format; default pytorch_state_dict when present, else torchscript.
        TorchScript runs without importing the package's Python file.
    tile : (z, y, x), optional
        Tile for models with parameterised sizes (fixed-size models use theirs).
    overlap : int or (z, y, x), optional
        Width of the blending ramp between tiles; default measured with the margins.
    margin : int or (z, y, x), optional
        Voxels dropped where tiles meet (never less than the package's halo);
        default measured (:meth:`edge_margins`).
    batch_size : int
        Tiles per forward pass.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    trust, cache_dir :
        Passed to :func:`~cartocell_bmz.bmz.resolve.resolve_model`; measured
        margins are kept in ``<cache>/margins/``.
    tolerance : float
        Largest probability change tile edges may cause (:data:`EDGE_TOLERANCE`).
    max_tile_voxels : int
        Largest tile chosen for models with parameterised sizes (:data:`MAX_TILE_VOXELS`).

    Notes
    -----
    How far into a tile its edges change the output depends on the network
    and its weights, so it is measured once per model and tile size: two
    test images, a membrane texture (:func:`probe_texture`) and a synthetic
    cyst (:func:`probe_cyst`), are predicted by a tile and by the same tile
    shifted by a quarter of its size along each axis; where both cover the
    image, their largest difference at each distance from an edge is the
    edge's effect there.  Where edges of several axes meet their effects add
    up, so each measured axis gets an equal share of ``tolerance``; the margin
    and blending ramp with the largest stride whose blended error stays within
    that share are kept (and cached).

    Examples
    --------
    >>> with Predictor("happy-honeybee") as p:        # doctest: +SKIP
    ...     probs = p.predict(volume)
    """

    def __init__(
        self,
        model: Any,
        *,
        weights: str | None = None,
        tile: Sequence[int] | None = None,
        overlap: int | Sequence[int] | None = None,
        margin: int | Sequence[int] | None = None,
        batch_size: int = 1,
        device: str = "auto",
        trust: bool = False,
        cache_dir: Any = None,
        tolerance: float = EDGE_TOLERANCE,
        max_tile_voxels: int = MAX_TILE_VOXELS,
    ) -> None:
        from cartocell_bmz.bmz.resolve import resolve_model

        self.model = resolve_model(model, trust=trust, cache_dir=cache_dir)
        self.cache_dir = cache_dir
        descr = self.model.description
        if int(batch_size) < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.tile_request = tuple(int(t) for t in tile) if tile is not None else None
        self.overlap_request = None if overlap is None else _three(overlap, "--overlap")
        self.margin_request = None if margin is None else _three(margin, "margin")
        self.tolerance = float(tolerance)
        # validate the tile request early (shape-independent)
        tile_geometry(descr, None, self.tile_request)
        available = self.model.weight_formats
        if weights is None:
            usable = [w for w in WEIGHT_FORMATS if w in available]
            if not usable:
                raise ModelError(f"model {self.model.name}: has no pytorch_state_dict or torchscript weights ({', '.join(available)}).")
            weights = usable[0]
        if weights not in WEIGHT_FORMATS:
            raise ConfigError(f"--weights {weights!r}: use pytorch_state_dict or torchscript.")
        if weights not in available:
            raise ModelError(f"model {self.model.name}: has no {weights} weights (it has {', '.join(available)}).")
        if weights == "pytorch_state_dict":
            _check_architecture_hash(self.model)
        self.weights = weights
        self.device = _pick_device(device)
        out = descr.outputs[0]
        self.has_sigmoid = any(str(p.id) == "sigmoid" for p in out.postprocessing)
        self.order = channel_order([str(n) for n in out.axes[1].channel_names])
        self._pipeline = None
        self._checked_range = False
        self._margins: dict[tuple[int, int, int], EdgeMargins] = {}
        self._geometries: dict[tuple[int, ...], TileGeometry] = {}
        self.max_tile_voxels = int(max_tile_voxels)
        self._warned: set = set()
        self.geometry_fixed = True
        self._stat: dict = {}

    # -- lifecycle
    def _load(self):
        if self._pipeline is None:
            from bioimageio.core import create_prediction_pipeline

            try:
                self._pipeline = create_prediction_pipeline(
                    self.model.description, devices=[self.device], weights_format=self.weights
                )
            except Exception as exc:
                raise ModelError(f"model {self.model.name}: cannot load its {self.weights} weights ({_one_line(exc)}).") from None
            if self.device == "cpu":
                use_channels_last(self._pipeline)
            if self._pipeline.has_non_blockwise_postprocessing:
                raise ModelError(
                    f"model {self.model.name}: its postprocessing needs statistics of the whole output, "
                    "which tiled prediction cannot give."
                )
        return self._pipeline

    def close(self) -> None:
        """Free the model (GPU memory included)."""
        if self._pipeline is not None:
            try:
                self._pipeline.unload()
            finally:
                self._pipeline = None

    def __enter__(self) -> "Predictor":
        self._load()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- planning
    def geometry(self, shape: Sequence[int]) -> TileGeometry:
        """Tile geometry for a volume of ``shape``.

        Fixed-size models use their tile; with parameterised sizes the tile is
        the requested one or, by default, the one of at most ``max_tile_voxels``
        voxels that predicts the fewest voxels in all (:func:`cheapest_tile`),
        given the measured margins.
        """
        descr = self.model.description
        key = tuple(int(s) for s in shape)
        if key in self._geometries:
            return self._geometries[key]
        g = tile_geometry(descr, shape, self.tile_request)
        if not g.fixed and self.tile_request is None:
            border = tuple(o + h for o, h in zip(g.offset, g.halo))
            extent = tuple(s + 2 * b for s, b in zip(shape, border))
            sizes = _valid_sizes(descr, extent)
            whole = tuple(c[-1] for c in sizes)
            if math.prod(whole) <= self.max_tile_voxels:
                tile = whole  # one tile holds the volume: nothing to measure
            else:
                em = self.edge_margins(tile_geometry(descr, None, None))
                tile = cheapest_tile(extent, sizes, em.margin, em.overlap, g.align, self.max_tile_voxels)
            g = tile_geometry(descr, shape, tile)
        self._geometries[key] = g
        return g

    def edge_margins(self, geometry: TileGeometry) -> EdgeMargins:
        """Margins and blending ramps for tiles of ``geometry`` (measured once, then cached)."""
        g = geometry
        base = tuple(o + h for o, h in zip(g.offset, g.halo))
        if self.margin_request is not None:
            margin = tuple(o + max(h, m) for o, h, m in zip(g.offset, g.halo, self.margin_request))
            overlap = self.overlap_request or (4, 4, 4)
            return EdgeMargins(g.tile, margin, overlap, (float("nan"),) * 3, measured=False)  # type: ignore[arg-type]
        if not g.fixed and self.tile_request is None:
            g_ref = tile_geometry(self.model.description, None, None)  # margins are measured on one tile size
        else:
            g_ref = g
        if g_ref.tile in self._margins:
            found = self._margins[g_ref.tile]
        else:
            found = self._cached_margins(g_ref) or self._measure_margins(g_ref)
            self._margins[g_ref.tile] = found
        margin = tuple(max(b, m) for b, m in zip(base, found.margin))
        overlap = self.overlap_request or found.overlap
        if g.tile not in self._warned and (not found.met or sum(found.floor) > self.tolerance):
            self._warned.add(g.tile)
            self.geometry_fixed = g.fixed
            self._warn_unmet(found)
        return EdgeMargins(found.tile, margin, overlap, found.error, found.profiles, True, found.floor)  # type: ignore[arg-type]

    def _margins_file(self, g: TileGeometry):
        from cartocell_bmz.bmz.resolve import cache_root

        key = f"{self.model.rdf_sha256[:24]}-{self.weights}-{'x'.join(map(str, g.tile))}-{self.tolerance:g}.json"
        return cache_root(self.cache_dir) / "margins" / key

    def _cached_margins(self, g: TileGeometry) -> EdgeMargins | None:
        import json

        path = self._margins_file(g)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return EdgeMargins(
                tile=tuple(data["tile"]), margin=tuple(data["margin"]), overlap=tuple(data["overlap"]),  # type: ignore[arg-type]
                error=tuple(float("nan") if e is None else float(e) for e in data["error"]),  # type: ignore[arg-type]
                profiles=tuple(tuple(p) for p in data["profiles"]),
                floor=tuple(float(f) for f in data.get("floor", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _measure_margins(self, g: TileGeometry) -> EdgeMargins:
        """Measure how far tile edges reach into the output, choose margins (see the class notes)."""
        import json

        from cartocell_bmz.io.volumes import atomic_open

        tile = g.tile
        # a shift of a quarter tile lets edge effects be followed up to 3/8 of the tile from an edge
        shifts = tuple(max(a, t // 4 // a * a) if t >= 2 * a else 0 for t, a in zip(tile, g.align))
        shape = tuple(t + s for t, s in zip(tile, shifts))
        starts = [(0, 0, 0)] + [tuple(shifts[d] if i == d else 0 for i in range(3)) for d in range(3) if shifts[d]]
        # two probes: cell walls filling the tile, and a cyst (walls, lumen and dark background)
        frames_per_probe = []
        for probe in (probe_texture(shape, seed=0), probe_cyst(shape, seed=0)):
            norm = self.normalize(probe)
            blocks = np.stack([norm[tuple(slice(s, s + t) for s, t in zip(st, tile))] for st in starts])
            outs = np.concatenate([self.forward(blocks[i:i + self.batch_size])
                                   for i in range(0, len(blocks), self.batch_size)])
            frames_per_probe.append([self._frame(o, g) for o in outs])
        # the edges of a tile add up where they meet (a corner): each measured axis gets its share
        n_axes = max(1, sum(1 for s in shifts if s))
        tolerance = self.tolerance / n_axes
        profiles: list[tuple[float, ...]] = []
        margins: list[int] = []
        overlaps: list[int] = []
        errors: list[float] = []
        floors: list[float] = []
        k = 1
        for d in range(3):
            minimum = g.offset[d] + g.halo[d]
            if not shifts[d]:
                profiles.append(())
                margins.append(minimum)
                overlaps.append(0)
                errors.append(float("nan"))
                floors.append(0.0)
                continue
            s, t = shifts[d], tile[d]
            lo, hi = g.offset[d], g.offset[d] + g.output[d]
            centre = [slice(tt // 4, tt - tt // 4) for tt in tile]
            profile = []
            for dist in range(max(1, (t - s) // 2)):
                worst = 0.0
                for ia in (s + dist, t - 1 - dist):  # B's left edge region, A's right edge region
                    ib = ia - s
                    if not (lo <= ia < hi and lo <= ib < hi):
                        continue
                    sl_a, sl_b = list(centre), list(centre)
                    sl_a[d], sl_b[d] = ia, ib
                    for frames in frames_per_probe:
                        diff = np.abs(frames[0][(slice(None), *sl_a)] - frames[k][(slice(None), *sl_b)])
                        worst = max(worst, float(diff.max()) if diff.size else 0.0)
                profile.append(worst)
            k += 1
            floor = _floor(profile, tolerance)
            edge = [max(0.0, p - floor) for p in profile]
            m, o, err = choose_margin(edge, t, g.align[d], minimum, tolerance)
            floors.append(floor)
            profiles.append(tuple(round(p, 6) for p in profile))
            margins.append(m)
            overlaps.append(o)
            errors.append(err)
        found = EdgeMargins(tile, tuple(margins), tuple(overlaps), tuple(errors), tuple(profiles),  # type: ignore[arg-type]
                            floor=tuple(floors))  # type: ignore[arg-type]
        try:
            with atomic_open(self._margins_file(g)) as f:
                json.dump({"model": self.model.name, "weights": self.weights, "tile": list(tile),
                           "margin": list(found.margin), "overlap": list(found.overlap),
                           "error": [e if np.isfinite(e) else None for e in found.error],
                           "profiles": [list(p) for p in found.profiles], "floor": list(found.floor),
                           "tolerance": self.tolerance}, f)
        except Exception:  # a read-only cache only means measuring again next time
            pass
        return found

    def _warn_unmet(self, em: EdgeMargins) -> None:
        import sys

        print(
            f"warning: model {self.model.name}: its tile edges still change probabilities by up to {em.worst:.3f} "
            f"with tiles of {' x '.join(map(str, em.tile))}; results may differ that much from a whole-volume "
            "prediction" + ("; a larger --tile helps." if not self.geometry_fixed else "."),
            file=sys.stderr, flush=True,
        )

    @staticmethod
    def _frame(probs: np.ndarray, g: TileGeometry) -> np.ndarray:
        """An output ``(3, *output)`` placed in a tile-sized frame (zeros outside)."""
        if g.output == g.tile:
            return probs
        frame = np.zeros((probs.shape[0], *g.tile), np.float32)
        frame[(slice(None), *(slice(o, o + s) for o, s in zip(g.offset, g.output)))] = probs
        return frame

    def plan(self, shape: Sequence[int]) -> TilePlan:
        """The tiles used for a volume of ``shape`` (``(Z, Y, X)``)."""
        g = self.geometry(shape)
        border = tuple(o + h for o, h in zip(g.offset, g.halo))
        valid = tuple((o, o + s) for o, s in zip(g.offset, g.output))
        split = any(s + 2 * b > t for s, b, t in zip(shape, border, g.tile))
        if split:
            em = self.edge_margins(g)
            margin, overlap = em.margin, em.overlap
        else:  # one tile covers the volume: no edges to hide
            margin, overlap = border, (0, 0, 0)
        try:
            return plan_tiles(tuple(shape), g.tile, margin=margin, overlap=overlap, align=g.align,
                              border=border, valid=valid)
        except ValueError as exc:
            raise ConfigError(
                f"model {self.model.name}: tile {' x '.join(map(str, g.tile))} is too small for its halo "
                f"{g.halo} and alignment {g.align} ({exc}); give a larger --tile."
            ) from None

    # -- prediction
    def normalize(self, volume: np.ndarray) -> np.ndarray:
        """The volume after the package's preprocessing, statistics from the whole volume: ``(Z, Y, X)`` float32."""
        from bioimageio.core import Sample, Tensor

        pipeline = self._load()
        descr = self.model.description
        inp = descr.inputs[0]
        dims = tuple(a.id for a in inp.axes)
        data = np.asarray(volume, dtype=np.float32)[None, None]
        sample = Sample(members={inp.id: Tensor(data, dims=dims)}, stat={}, id=None)
        try:
            pipeline.apply_preprocessing(sample)
        except Exception as exc:
            raise ModelError(f"model {self.model.name}: its preprocessing failed ({_one_line(exc)}).") from None
        self._stat = sample.stat
        norm = sample.members[inp.id].transpose(dims).to_numpy()[0, 0]
        return np.ascontiguousarray(norm, dtype=np.float32)

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """Run a batch ``(N, Z, Y, X)`` of normalised tiles; returns ``(N, 3, z, y, x)`` probabilities in B, C, M order."""
        from bioimageio.core import Sample, Tensor

        pipeline = self._load()
        descr = self.model.description
        inp, out = descr.inputs[0], descr.outputs[0]
        dims = tuple(a.id for a in inp.axes)
        sample = Sample(members={inp.id: Tensor(np.ascontiguousarray(tiles[:, None], dtype=np.float32), dims=dims)},
                        stat=self._stat, id=None)
        try:
            result = pipeline.predict_sample_without_blocking(
                sample, skip_preprocessing=True, skip_input_padding=True, skip_output_cropping=True
            )
        except MemoryError:
            raise
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                raise MemoryError(str(exc)) from None
            raise ModelError(f"model {self.model.name}: prediction failed ({_one_line(exc)}).") from None
        probs = result.members[out.id].transpose(tuple(a.id for a in out.axes)).to_numpy()
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 5 or probs.shape[:2] != (tiles.shape[0], 3):
            raise ModelError(f"model {self.model.name}: returned an output of shape {probs.shape}, expected ({tiles.shape[0]}, 3, Z, Y, X).")
        if not self.has_sigmoid and not self._checked_range:
            lo, hi = float(probs.min()), float(probs.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ModelError(
                    f"model {self.model.name}: outputs range from {lo:.3g} to {hi:.3g}, not probabilities, and its "
                    "description has no sigmoid postprocessing step; the package is incomplete."
                )
            self._checked_range = True
        if self.order != (0, 1, 2):
            probs = probs[:, list(self.order)]
        return probs

    def predict(
        self,
        volume: np.ndarray,
        *,
        out: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Probabilities ``(3, Z, Y, X)`` float32 (B, C, M) of a ``(Z, Y, X)`` volume.

        Parameters
        ----------
        volume : numpy.ndarray
            3D image (any real dtype; finite).
        out : numpy.ndarray, optional
            ``(3, Z, Y, X)`` float32 array (e.g. a ``numpy.memmap``) to fill;
            it is zeroed first.
        progress : callable, optional
            Called as ``progress(tiles_done, tiles_total)`` after each batch.

        Notes
        -----
        A volume without contrast (every voxel equal, e.g. all zeros) gives
        zero probabilities without running the network: the whole-image
        normalisation maps it to zeros whatever its value, so the network
        would only show its bias and padding (measured: one cell filling the
        volume), not cells.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise InputError(f"a volume (Z, Y, X) is needed, got an array of shape {volume.shape}.")
        if volume.dtype.kind not in "biuf":
            raise InputError(f"volume has type {volume.dtype}; expected numbers.")
        plan = self.plan(volume.shape)
        g = self.geometry(volume.shape)
        if out is None:
            out = np.zeros((3, *volume.shape), np.float32)
        else:
            if out.shape != (3, *volume.shape) or out.dtype != np.float32:
                raise ValueError(f"out must be float32 of shape {(3, *volume.shape)}, got {out.dtype} {out.shape}")
            out[...] = 0
        if volume.size and volume.min() == volume.max():
            return out  # no contrast: it normalises to zeros whatever its value, and holds no cells
        norm = self.normalize(volume)
        tiles = list(plan.tiles())
        total = len(tiles)
        batch = np.empty((min(self.batch_size, total), *plan.tile), np.float32)
        for first in range(0, total, self.batch_size):
            group = tiles[first:first + self.batch_size]
            for i, tile in enumerate(group):
                extract_tile(norm, tile, out=batch[i])
            probs = self.forward(batch[:len(group)])
            for i, tile in enumerate(group):
                accumulate(out, self._frame(probs[i], g), tile)
            if progress is not None:
                progress(min(first + self.batch_size, total), total)
        return out


def use_channels_last(pipeline: Any) -> int:
    """Put the weights of the networks a bioimageio.core pipeline holds in channels-last order.

    On CPU, oneDNN runs 3D convolutions in channels-last (NDHWC) order; with
    weights in the default order it reorders data at every layer.  Converting the
    weights once makes each convolution's output channels-last too, so the
    whole forward pass stays in that order (measured on 80^3 tiles: 1.3-1.7x
    faster for the six architectures at the tiny preset, 1.4x for the published
    residual U-Net; outputs equal to within 1e-5).  Inputs need no change.

    Parameters
    ----------
    pipeline : bioimageio.core.PredictionPipeline
        A loaded pipeline with pytorch_state_dict or TorchScript weights.

    Returns
    -------
    int
        Number of networks converted (0 when the pipeline holds none that can
        be: another backend, or a core version that keeps its models elsewhere;
        prediction then runs unchanged).
    """
    import torch

    queue = getattr(getattr(getattr(pipeline, "_adapter", None), "_model_queue", None), "queue", None)
    converted = 0
    for item in list(queue or ()):
        model = item[1] if isinstance(item, tuple) and len(item) == 2 else None
        if isinstance(model, torch.nn.Module):
            try:
                model.to(memory_format=torch.channels_last_3d)
            except Exception:  # pragma: no cover - a module that cannot change layout runs as it is
                continue
            converted += 1
    return converted


def _check_architecture_hash(model: Any) -> None:
    """Refuse to import an architecture file whose sha256 the description does not declare.

    Every other file of the package was checked against its sha256 when it was
    resolved; Python code that cannot be checked is not run.
    """
    arch = model.description.weights.pytorch_state_dict.architecture
    source = getattr(arch, "source", None)
    if source is None or getattr(arch, "sha256", None) is not None:
        return  # an installed library (import_from), or a file with its hash
    name = getattr(source, "path", None) or str(source)
    other = ("run it with --weights torchscript (imports no Python file) or "
             if "torchscript" in model.weight_formats else "")
    raise ModelError(
        f"model {model.name}: its architecture file {name} has no sha256 in the description, so it cannot be "
        f"checked before it runs as Python code; {other}add the file's sha256 to the description."
    )


def _three(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    v = (int(value),) * 3 if np.isscalar(value) else tuple(int(x) for x in value)  # type: ignore[arg-type]
    if len(v) != 3 or min(v) < 0:
        raise ConfigError(f"{name} needs one or three non-negative sizes, got {value!r}.")
    return v  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:240] + ("..." if len(text) > 240 else "")


def predict_probabilities(
    model: Any,
    volume: np.ndarray,
    *,
    weights: str | None = None,
    tile: Sequence[int] | None = None,
    overlap: int | Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    out: np.ndarray | None = None,
    trust: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """B, C, M probabilities of a volume with a BMZ CartoCell model, tiled.

    Parameters
    ----------
    model : str, path-like, ResolvedModel or Predictor
        A model (see :func:`~cartocell_bmz.bmz.resolve.resolve_model`) or a loaded :class:`Predictor`.
    volume : numpy.ndarray
        ``(Z, Y, X)`` image.
    weights, tile, overlap, batch_size, device, trust :
        See :class:`Predictor`.
    out : numpy.ndarray, optional
        ``(3, Z, Y, X)`` float32 array to fill (e.g. a memory map).
    progress : callable, optional
        ``progress(done, total)`` after each batch of tiles.

    Returns
    -------
    numpy.ndarray
        ``(3, Z, Y, X)`` float32 probabilities in channel order B, C, M.
    """
    if isinstance(model, Predictor):
        return model.predict(volume, out=out, progress=progress)
    with Predictor(model, weights=weights, tile=tile, overlap=overlap, batch_size=batch_size, device=device,
                   trust=trust) as predictor:
        return predictor.predict(volume, out=out, progress=progress)


def predict_whole(predictor: Predictor, volume: np.ndarray, *, core: bool = False) -> np.ndarray:
    """Whole-volume prediction (no tiling), ``(3, Z, Y, X)`` in B, C, M order: the reference for tiling.

    Parameters
    ----------
    predictor : Predictor
        A loaded model.
    volume : numpy.ndarray
        ``(Z, Y, X)`` image.
    core : bool
        ``True``: bioimageio.core's own ``predict_sample_without_blocking``, which
        pads the raw image by the package's halo (symmetric) *before* computing the
        normalisation statistics, so they include the padding.  ``False``: the
        statistics of the image itself (as :meth:`Predictor.predict`), then mirror
        padding by the halo, one forward pass, the halo cropped.

    Memory grows with the volume (about 2 kB per voxel for the published network size).
    """
    from bioimageio.core import Sample, Tensor

    pipeline = predictor._load()
    descr = predictor.model.description
    inp, out = descr.inputs[0], descr.outputs[0]
    volume = np.asarray(volume, np.float32)
    if core:
        dims = tuple(a.id for a in inp.axes)
        sample = Sample(members={inp.id: Tensor(volume[None, None], dims=dims)}, stat={}, id=None)
        result = pipeline.predict_sample_without_blocking(sample)
        probs = result.members[out.id].transpose(tuple(a.id for a in out.axes)).to_numpy()[0]
        return np.ascontiguousarray(probs[list(predictor.order)], dtype=np.float32)
    g = predictor.geometry(volume.shape)
    pad = [o + h for o, h in zip(g.offset, g.halo)]
    norm = predictor.normalize(volume)
    if any(pad):
        from cartocell_bmz.core.tiling import reflect_index

        idx = [reflect_index(np.arange(-p, n + p), n) for p, n in zip(pad, volume.shape)]
        norm = norm[np.ix_(*idx)]
    probs = predictor.forward(norm[None])[0]
    crop = [h for h in g.halo]
    return np.ascontiguousarray(probs[(slice(None), *(slice(c, probs.shape[1 + d] - c) for d, c in enumerate(crop)))])


__all__ = [
    "DEFAULT_TILE",
    "EDGE_TOLERANCE",
    "MAX_TILE_VOXELS",
    "EdgeMargins",
    "Predictor",
    "TileGeometry",
    "WEIGHT_FORMATS",
    "blended_edge_error",
    "channel_order",
    "cheapest_tile",
    "choose_margin",
    "envelope",
    "predict_probabilities",
    "predict_whole",
    "probe_texture",
    "tile_geometry",
]
