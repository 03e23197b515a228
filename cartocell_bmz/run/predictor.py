"""Tiled prediction of B, C, M probabilities with any CartoCell model: a BMZ package or a training run.

A backend (:mod:`cartocell_bmz.run.backends`) runs the model: a BMZ package
through bioimageio.core (its weight formats, pre- and post-processing), or a
training run's network through plain torch.  The :class:`Predictor` adds what
neither has for 3D cysts, the same way for both: tiling that works for every
model, and statistics taken from the whole image.

- Normalisation: the model's preprocessing (zero mean, unit variance for
  CartoCell models, computed as bioimageio.core computes it) is applied once to
  the whole volume, so its statistics are the whole image's, not each tile's.
- Tiles: fixed-size models get their fixed tile (80^3 for the six published
  models); models with parameterised sizes (training runs: multiples of the
  network's divisor) get the tile of ``min + n * step`` voxels per axis that
  predicts the fewest voxels in all, among tiles of at most
  :data:`~cartocell_bmz.run.geometry.MAX_TILE_VOXELS` (or the one given).  Tile
  starts are aligned to the network's pooling factor, so each tile computes
  what a whole-volume prediction computes; a margin (at least the output halo
  a package declares) is dropped where tiles meet and neighbours are blended
  with a smooth window (:mod:`cartocell_bmz.core.tiling`).  The margins are
  measured once per model and tile (:mod:`cartocell_bmz.run.margins`).  A
  package's halo is also mirrored around the volume, as core does for a
  whole-volume prediction.  Volumes smaller than a tile are mirror-padded.
- Tiles go through the backend in batches; packages exported by BiaPy 3.7 have
  no sigmoid step because their network applies it: with no sigmoid step the
  outputs are taken as probabilities (and checked to lie in [0, 1]).
- Channel order comes from a package's output channel names when they say
  which is B, C and M, else it is B, C, M.
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
import warnings
from typing import Any, Callable, Sequence

import numpy as np

from cartocell_bmz.core.tiling import TilePlan, accumulate, extract_tile, plan_tiles
from cartocell_bmz.engine.memory import release_free_memory
from cartocell_bmz.errors import CartoCellWarning, ConfigError, InputError
from cartocell_bmz.run.geometry import (
    MAX_TILE_VOXELS, TileGeometry, cheapest_tile, frame_output, tile_geometry, valid_sizes,
)
from cartocell_bmz.run.margins import (
    EDGE_TOLERANCE, EdgeMargins, margins_path, measure_margins, read_margins, write_margins,
)


class Predictor:
    """A model loaded once, ready to predict any number of volumes.

    Parameters
    ----------
    model : str, path-like, ResolvedModel, TrainingRun or Backend
        A training run folder (``model.json``, ``checkpoints/``), or anything
        :func:`~cartocell_bmz.bmz.resolve.resolve_model` accepts, or a
        :class:`~cartocell_bmz.run.backends.Backend`.
    weights : {None, "pytorch_state_dict", "torchscript"}
        Weight format of a package; default pytorch_state_dict when present, else
        torchscript.  TorchScript runs without importing the package's Python file.
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
        Largest probability change tile edges may cause (:data:`~cartocell_bmz.run.margins.EDGE_TOLERANCE`).
    max_tile_voxels : int
        Largest tile chosen for models with parameterised sizes (:data:`~cartocell_bmz.run.geometry.MAX_TILE_VOXELS`).
    checkpoint : {"best", "last"}
        Which weights of a training run.

    Notes
    -----
    How far into a tile its edges change the output depends on the network
    and its weights, so it is measured once per model and tile size
    (:func:`~cartocell_bmz.run.margins.measure_margins`).  Where edges of several
    axes meet their effects add up, so each measured axis gets an equal share
    of ``tolerance``; the margin and blending ramp with the largest stride whose
    blended error stays within that share are kept (and cached).

    Examples
    --------
    >>> with Predictor("happy-honeybee") as p:        # doctest: +SKIP
    ...     probs = p.predict(volume)
    >>> with Predictor("runs/M1") as p:               # doctest: +SKIP
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
        checkpoint: str = "best",
    ) -> None:
        from cartocell_bmz.run.backends import open_backend

        if int(batch_size) < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.tile_request = tuple(int(t) for t in tile) if tile is not None else None
        self.overlap_request = None if overlap is None else _three(overlap, "--overlap")
        self.margin_request = None if margin is None else _three(margin, "margin")
        self.tolerance = float(tolerance)
        self.max_tile_voxels = int(max_tile_voxels)
        self.cache_dir = cache_dir
        self.backend = open_backend(model, weights=weights, device=device, trust=trust, cache_dir=cache_dir,
                                    checkpoint=checkpoint)
        tile_geometry(self.backend.sizes, None, self.tile_request)  # refuse a bad tile before any work
        self._margins: dict[tuple[int, int, int], EdgeMargins] = {}
        self._geometries: dict[tuple[int, ...], TileGeometry] = {}
        self._warned: set = set()

    @property
    def model(self) -> Any:
        """What is predicted with: the resolved package, or the :class:`~cartocell_bmz.train.run.TrainingRun`."""
        return self.backend.model

    @property
    def name(self) -> str:
        """The model's name."""
        return self.backend.name

    @property
    def weights(self) -> str:
        """The weights that run (a package's weight format, or ``run-best`` / ``run-last``)."""
        return self.backend.weights

    @property
    def device(self) -> str:
        """Where the network runs."""
        return self.backend.device

    # -- lifecycle
    def close(self) -> None:
        """Free the model (GPU memory included)."""
        self.backend.close()

    def __enter__(self) -> "Predictor":
        self.backend.load()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- planning
    def geometry(self, shape: Sequence[int]) -> TileGeometry:
        """Tile geometry for a volume of ``shape``.

        Fixed-size models use their tile; with parameterised sizes the tile is
        the requested one or, by default, the one of at most ``max_tile_voxels``
        voxels that predicts the fewest voxels in all
        (:func:`~cartocell_bmz.run.geometry.cheapest_tile`), given the measured margins.
        """
        key = tuple(int(s) for s in shape)
        if key in self._geometries:
            return self._geometries[key]
        sizes = self.backend.sizes
        g = tile_geometry(sizes, shape, self.tile_request)
        if not g.fixed and self.tile_request is None:
            extent = tuple(s + 2 * b for s, b in zip(shape, g.border))
            valid = valid_sizes(sizes, extent)
            whole = tuple(c[-1] for c in valid)
            if math.prod(whole) <= self.max_tile_voxels:
                tile = whole  # one tile holds the volume: nothing to measure
            else:
                em = self.edge_margins(tile_geometry(sizes, None, None))
                tile = cheapest_tile(extent, valid, em.margin, em.overlap, g.align, self.max_tile_voxels)
            g = tile_geometry(sizes, shape, tile)
        self._geometries[key] = g
        return g

    def edge_margins(self, geometry: TileGeometry) -> EdgeMargins:
        """Margins and blending ramps for tiles of ``geometry`` (measured once, then cached)."""
        g = geometry
        if self.margin_request is not None:
            margin = tuple(o + max(h, m) for o, h, m in zip(g.offset, g.halo, self.margin_request))
            overlap = self.overlap_request or (4, 4, 4)
            return EdgeMargins(g.tile, margin, overlap, (float("nan"),) * 3, measured=False)  # type: ignore[arg-type]
        if not g.fixed and self.tile_request is None:
            g_ref = tile_geometry(self.backend.sizes, None, None)  # margins are measured on one tile size
        else:
            g_ref = g
        if g_ref.tile in self._margins:
            found = self._margins[g_ref.tile]
        else:
            found = self._cached_margins(g_ref)
            self._margins[g_ref.tile] = found
        margin = tuple(max(b, m) for b, m in zip(g.border, found.margin))
        overlap = self.overlap_request or found.overlap
        if g.tile not in self._warned and (not found.met or sum(found.floor) > self.tolerance):
            self._warned.add(g.tile)
            warnings.warn(
                f"model {self.name}: its tile edges still change probabilities by up to {found.worst:.3f} "
                f"with tiles of {' x '.join(map(str, found.tile))}; results may differ that much from a "
                "whole-volume prediction" + ("; a larger --tile helps." if not g.fixed else "."),
                CartoCellWarning, stacklevel=3,
            )
        return EdgeMargins(found.tile, margin, overlap, found.error, found.profiles, True, found.floor)  # type: ignore[arg-type]

    def _cached_margins(self, g: TileGeometry) -> EdgeMargins:
        """Margins of ``g`` from the cache, else measured (and cached when the backend has a fingerprint)."""
        fingerprint = self.backend.fingerprint
        path = None
        if fingerprint is not None:
            path = margins_path(self.cache_dir, fingerprint, self.weights, g.tile, self.tolerance)
            found = read_margins(path)
            if found is not None:
                return found
        found = self._measure_margins(g)
        if path is not None:
            write_margins(path, found, model=self.name, weights=self.weights, tolerance=self.tolerance)
        return found

    def _measure_margins(self, g: TileGeometry) -> EdgeMargins:
        """Measure how far tile edges reach into the output, choose margins (see the class notes)."""
        return measure_margins(self.normalize, self.forward, g, batch_size=self.batch_size, tolerance=self.tolerance)

    def plan(self, shape: Sequence[int]) -> TilePlan:
        """The tiles used for a volume of ``shape`` (``(Z, Y, X)``)."""
        g = self.geometry(shape)
        border = g.border
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
                f"model {self.name}: tile {' x '.join(map(str, g.tile))} is too small for its halo "
                f"{g.halo} and alignment {g.align} ({exc}); give a larger --tile."
            ) from None

    # -- prediction
    def normalize(self, volume: np.ndarray) -> np.ndarray:
        """The volume after the model's preprocessing, statistics from the whole volume: ``(Z, Y, X)`` float32."""
        return self.backend.normalize(volume)

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """Run a batch ``(N, Z, Y, X)`` of normalised tiles; returns ``(N, 3, z, y, x)`` probabilities in B, C, M order."""
        return self.backend.forward(tiles)

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
        self.plan(volume.shape)  # a tile that cannot be used is an error even for a blank volume
        out = self._output(volume.shape, out)
        if volume.size and volume.min() == volume.max():
            return out  # no contrast: it normalises to zeros whatever its value, and holds no cells
        return self.predict_normalized(self.normalize(volume), out=out, progress=progress)

    def predict_normalized(
        self,
        image: np.ndarray,
        *,
        out: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Blended outputs ``(3, Z, Y, X)`` float32 of an image already normalised (:meth:`normalize`).

        Parameters are those of :meth:`predict`; ``out`` is zeroed first.
        """
        plan = self.plan(image.shape)
        g = self.geometry(image.shape)
        out = self._output(image.shape, out)
        tiles = list(plan.tiles())
        total = len(tiles)
        batch = np.empty((min(self.batch_size, total), *plan.tile), np.float32)
        for first in range(0, total, self.batch_size):
            group = tiles[first:first + self.batch_size]
            for i, tile in enumerate(group):
                extract_tile(image, tile, out=batch[i])
            probs = self.forward(batch[:len(group)])
            for i, tile in enumerate(group):
                accumulate(out, frame_output(probs[i], g), tile)
            if progress is not None:
                progress(min(first + self.batch_size, total), total)
        batch = probs = None  # freed before the trim below
        release_free_memory()  # the tiles' activations: else the heap fragments over volumes of changing shapes
        return out

    @staticmethod
    def _output(shape: Sequence[int], out: np.ndarray | None) -> np.ndarray:
        """``out`` checked and zeroed, or a new zero array ``(3, *shape)``."""
        if out is None:
            return np.zeros((3, *shape), np.float32)
        if out.shape != (3, *shape) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 of shape {(3, *shape)}, got {out.dtype} {out.shape}")
        out[...] = 0
        return out


def _three(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    v = (int(value),) * 3 if np.isscalar(value) else tuple(int(x) for x in value)  # type: ignore[arg-type]
    if len(v) != 3 or min(v) < 0:
        raise ConfigError(f"{name} needs one or three non-negative sizes, got {value!r}.")
    return v  # type: ignore[return-value]


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
    """B, C, M probabilities of a volume with a CartoCell model (a BMZ package or a training run), tiled.

    Parameters
    ----------
    model : str, path-like, ResolvedModel or Predictor
        A model (see :class:`Predictor`) or a loaded :class:`Predictor`.
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
        ``(Z, Y, X)`` image; its shape must suit the network.
    core : bool
        ``True`` (packages only): bioimageio.core's own ``predict_sample_without_blocking``,
        which pads the raw image by the package's halo (symmetric) *before* computing the
        normalisation statistics, so they include the padding.  ``False``: the
        statistics of the image itself (as :meth:`Predictor.predict`), then mirror
        padding by the halo, one forward pass, the halo cropped.

    Memory grows with the volume (about 2 kB per voxel for the published network size).
    """
    volume = np.asarray(volume, np.float32)
    if core:
        whole = getattr(predictor.backend, "predict_core", None)
        if whole is None:
            raise ConfigError(f"model {predictor.name}: core=True needs a BMZ package (bioimageio.core runs it).")
        return whole(volume)
    g = predictor.geometry(volume.shape)
    pad = g.border
    norm = predictor.normalize(volume)
    if any(pad):
        from cartocell_bmz.core.tiling import reflect_index

        idx = [reflect_index(np.arange(-p, n + p), n) for p, n in zip(pad, volume.shape)]
        norm = norm[np.ix_(*idx)]
    probs = predictor.forward(norm[None])[0]
    crop = g.halo
    return np.ascontiguousarray(probs[(slice(None), *(slice(c, probs.shape[1 + d] - c) for d, c in enumerate(crop)))])


__all__ = ["Predictor", "predict_probabilities", "predict_whole"]
