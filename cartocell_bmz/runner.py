"""Tiled prediction of B, C, M probabilities with any CartoCell BMZ model, through bioimageio.core.

bioimageio.core runs the model: its weight-format handling (pytorch_state_dict
or TorchScript), its pre- and post-processing.  This module adds what core
lacks for 3D cysts: tiling that works for every model, and statistics taken
from the whole image.

- Normalisation: the package's preprocessing (zero mean, unit variance for
  CartoCell models) is applied once to the whole volume by core, so its
  statistics are the whole image's, not each tile's.
- Tiles: fixed-size models get their fixed tile (80^3 for the six published
  models); models with parameterised sizes get a tile chosen from
  ``min + n * step`` (default about :data:`DEFAULT_TILE`, never larger than the
  volume needs).  Tile starts are aligned to the network's pooling factor, so
  each tile computes what a whole-volume prediction computes; a margin
  (at least the output halo the package declares) is dropped where tiles
  meet and neighbours are blended with a smooth window (:mod:`cartocell_bmz.tiling`).
  The package's halo is also mirrored around the volume, as core does for a
  whole-volume prediction.  Volumes smaller than a tile are mirror-padded.
- Tiles go through core's prediction pipeline in batches, without its
  preprocessing (already done) and with its postprocessing (the sigmoid of
  the published packages).  Packages exported by BiaPy 3.7 have no sigmoid
  step because their network applies it: with no sigmoid step the outputs are
  taken as probabilities (and checked to lie in [0, 1]).
- Channel order comes from the output's channel names when they say which is
  B, C and M, else it is B, C, M.
- Memory: the normalised volume, the ``(3, Z, Y, X)`` float32 output (which may
  be a memory map, filled as tiles finish) and one batch of tiles.

Examples
--------
>>> from cartocell_bmz.runner import predict_probabilities   # doctest: +SKIP
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
from cartocell_bmz.tiling import TilePlan, accumulate, extract_tile, plan_tiles

#: Default tile (z, y, x) for models with parameterised sizes (about 0.5 M voxels).
DEFAULT_TILE: tuple[int, int, int] = (32, 128, 128)
#: Voxels dropped where tiles meet, beyond what the output halo already drops.
DEFAULT_MARGIN = 4
#: Width of the blending ramp between neighbouring tiles.
DEFAULT_OVERLAP = 8
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
        A CartoCell-shaped description (see :func:`~cartocell_bmz.package_safety.check_cartocell_shape`).
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


# --------------------------------------------------------------------------- the predictor


class Predictor:
    """A model loaded once, ready to predict any number of volumes.

    Parameters
    ----------
    model : str, path-like or ResolvedModel
        Anything :func:`~cartocell_bmz.resolve.resolve_model` accepts.
    weights : {None, "pytorch_state_dict", "torchscript"}
        Weight format; default pytorch_state_dict when present, else torchscript.
        TorchScript runs without importing the package's Python file.
    tile : (z, y, x), optional
        Tile for models with parameterised sizes (fixed-size models use theirs).
    overlap : int or (z, y, x), optional
        Width of the blending ramp between tiles (default :data:`DEFAULT_OVERLAP`).
    margin : int or (z, y, x), optional
        Voxels dropped where tiles meet beyond the package's halo (default :data:`DEFAULT_MARGIN`).
    batch_size : int
        Tiles per forward pass.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    trust, cache_dir :
        Passed to :func:`~cartocell_bmz.resolve.resolve_model`.

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
    ) -> None:
        from cartocell_bmz.resolve import resolve_model

        self.model = resolve_model(model, trust=trust, cache_dir=cache_dir)
        descr = self.model.description
        if int(batch_size) < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.tile_request = tuple(int(t) for t in tile) if tile is not None else None
        self.overlap = _three(DEFAULT_OVERLAP if overlap is None else overlap, "--overlap")
        self.margin = _three(DEFAULT_MARGIN if margin is None else margin, "margin")
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
        self.weights = weights
        self.device = _pick_device(device)
        out = descr.outputs[0]
        self.has_sigmoid = any(str(p.id) == "sigmoid" for p in out.postprocessing)
        self.order = channel_order([str(n) for n in out.axes[1].channel_names])
        self._pipeline = None
        self._checked_range = False

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
        """Tile geometry for a volume of ``shape``."""
        return tile_geometry(self.model.description, shape, self.tile_request)

    def plan(self, shape: Sequence[int]) -> TilePlan:
        """The tiles used for a volume of ``shape`` (``(Z, Y, X)``)."""
        g = self.geometry(shape)
        margin = tuple(o + h + m for o, h, m in zip(g.offset, g.halo, self.margin))
        border = tuple(o + h for o, h in zip(g.offset, g.halo))
        valid = tuple((o, o + s) for o, s in zip(g.offset, g.output))
        overlap = tuple(min(ov, max(0, (t - 2 * mg) // 3)) for ov, t, mg in zip(self.overlap, g.tile, margin))
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
        sample = Sample(members={inp.id: Tensor(tiles[:, None].astype(np.float32, copy=False), dims=dims)},
                        stat=getattr(self, "_stat", {}), id=None)
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
        norm = self.normalize(volume)
        tiles = list(plan.tiles())
        total = len(tiles)
        batch = np.empty((min(self.batch_size, total), *plan.tile), np.float32)
        frame = None
        lo = g.offset
        for first in range(0, total, self.batch_size):
            group = tiles[first:first + self.batch_size]
            for i, tile in enumerate(group):
                extract_tile(norm, tile, out=batch[i])
            probs = self.forward(batch[:len(group)])
            for i, tile in enumerate(group):
                if g.output != g.tile:
                    if frame is None:
                        frame = np.zeros((3, *plan.tile), np.float32)
                    frame[(slice(None), *(slice(o, o + s) for o, s in zip(lo, g.output)))] = probs[i]
                    accumulate(out, frame, tile)
                else:
                    accumulate(out, probs[i], tile)
            if progress is not None:
                progress(min(first + self.batch_size, total), total)
        return out


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
        A model (see :func:`~cartocell_bmz.resolve.resolve_model`) or a loaded :class:`Predictor`.
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


def predict_whole(predictor: Predictor, volume: np.ndarray) -> np.ndarray:
    """bioimageio.core's own whole-volume prediction (no tiling), ``(3, Z, Y, X)`` in B, C, M order.

    The reference tiled prediction is compared with; its memory grows with the volume.
    """
    from bioimageio.core import Sample, Tensor

    pipeline = predictor._load()
    descr = predictor.model.description
    inp, out = descr.inputs[0], descr.outputs[0]
    dims = tuple(a.id for a in inp.axes)
    sample = Sample(members={inp.id: Tensor(np.asarray(volume, np.float32)[None, None], dims=dims)}, stat={}, id=None)
    result = pipeline.predict_sample_without_blocking(sample)
    probs = result.members[out.id].transpose(tuple(a.id for a in out.axes)).to_numpy()[0]
    return np.ascontiguousarray(probs[list(predictor.order)], dtype=np.float32)


__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "Predictor",
    "TileGeometry",
    "WEIGHT_FORMATS",
    "channel_order",
    "predict_probabilities",
    "predict_whole",
    "tile_geometry",
]
