"""How far tile edges reach into a model's output, and the margins that hide them.

The effect of a tile's edges on a network's output depends on the network
and its weights, so it is measured (:func:`measure_margins`): two probe
images, a membrane texture (:func:`probe_texture`) and a synthetic cyst
(:func:`probe_cyst`), are predicted by a tile and by the same tile shifted by
a quarter of its size along each axis; where both cover the image, their
largest difference at each distance from an edge is the edge's effect there
(the edge *profile*).  :func:`choose_margin` then picks, per axis, the margin
dropped where tiles meet and the blending ramp beyond it with the largest
stride whose blended error (:func:`blended_edge_error`) stays within the
tolerance.  Measurements are cached per model, weights, tile and tolerance
(:func:`margins_path`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cartocell_bmz.run.geometry import TileGeometry, frame_output

#: Largest change of a probability that tile edges may cause after blending, as the runner
#: measures it on the probe images, shared between the axes (where edges meet, their effects
#: add up); margins and overlaps are chosen to meet it.  A quarter of the 0.01 the project
#: promises: the probes' change is the largest over one tile's centre, and over a whole volume
#: the largest change was up to 4.5x higher (residual U-Net look-alike, 80^3 tiles, 112 x 240
#: x 240 cyst: 0.0014 + 0.0009 on the texture probe at margins 16 and 18 in y and x, 0.0104
#: where those edges meet).
EDGE_TOLERANCE = 0.0025
#: Largest difference between blocked and whole-volume probabilities that the halo written into
#: a package may leave, as packaging measures it (:func:`cartocell_bmz.bmz.export.choose_halo`):
#: bioimageio.core's blocks of the smallest size a package allows, on a real test volume,
#: against the whole-volume prediction.  Half of the 0.01 the project promises: a measurement
#: over the whole test volume, so it needs less headroom than the probes' :data:`EDGE_TOLERANCE`.
HALO_TOLERANCE = 0.005
#: Blending ramp widths tried when margins are chosen.
_OVERLAPS: tuple[int, ...] = (0, 2, 4, 6, 8, 12, 16)


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


# --------------------------------------------------------------------------- probes


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


# --------------------------------------------------------------------------- choosing margins


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


# --------------------------------------------------------------------------- measuring


def _probe_frames(normalize: Callable[[np.ndarray], np.ndarray], forward: Callable[[np.ndarray], np.ndarray],
                  g: TileGeometry, shifts: Sequence[int], batch_size: int) -> list[list[np.ndarray]]:
    """Per probe, the framed outputs of the unshifted tile and of the tile shifted along each shifted axis."""
    tile = g.tile
    shape = tuple(t + s for t, s in zip(tile, shifts))
    starts = [(0, 0, 0)] + [tuple(shifts[d] if i == d else 0 for i in range(3)) for d in range(3) if shifts[d]]
    frames = []
    # two probes: cell walls filling the tile, and a cyst (walls, lumen and dark background)
    for probe in (probe_texture(shape, seed=0), probe_cyst(shape, seed=0)):
        norm = normalize(probe)
        blocks = np.stack([norm[tuple(slice(s, s + t) for s, t in zip(st, tile))] for st in starts])
        outs = np.concatenate([forward(blocks[i:i + batch_size]) for i in range(0, len(blocks), batch_size)])
        frames.append([frame_output(o, g) for o in outs])
    return frames


def _edge_profile(frames: list[list[np.ndarray]], g: TileGeometry, d: int, shift: int, k: int) -> list[float]:
    """Largest difference between the unshifted tile and shifted tile ``k`` at each distance from an edge along ``d``."""
    t = g.tile[d]
    lo, hi = g.offset[d], g.offset[d] + g.output[d]
    centre = [slice(tt // 4, tt - tt // 4) for tt in g.tile]
    profile = []
    for dist in range(max(1, (t - shift) // 2)):
        worst = 0.0
        for ia in (shift + dist, t - 1 - dist):  # B's left edge region, A's right edge region
            ib = ia - shift
            if not (lo <= ia < hi and lo <= ib < hi):
                continue
            sl_a, sl_b = list(centre), list(centre)
            sl_a[d], sl_b[d] = ia, ib
            for probe in frames:
                diff = np.abs(probe[0][(slice(None), *sl_a)] - probe[k][(slice(None), *sl_b)])
                worst = max(worst, float(diff.max()) if diff.size else 0.0)
        profile.append(worst)
    return profile


def measure_margins(normalize: Callable[[np.ndarray], np.ndarray], forward: Callable[[np.ndarray], np.ndarray],
                    g: TileGeometry, *, batch_size: int = 1, tolerance: float = EDGE_TOLERANCE) -> EdgeMargins:
    """Measure how far tile edges reach into a model's output and choose margins (see the module notes).

    Parameters
    ----------
    normalize : callable
        Raw ``(Z, Y, X)`` image -> normalised ``float32`` image (the model's preprocessing).
    forward : callable
        Normalised tiles ``(N, *g.tile)`` -> outputs ``(N, C, *g.output)``.
    g : TileGeometry
        The tile measured.
    batch_size : int
        Tiles per forward pass.
    tolerance : float
        Bound on the blended error where the edges of every measured axis meet
        (each measured axis gets an equal share).

    Returns
    -------
    EdgeMargins
    """
    # a shift of a quarter tile lets edge effects be followed up to 3/8 of the tile from an edge
    shifts = tuple(max(a, t // 4 // a * a) if t >= 2 * a else 0 for t, a in zip(g.tile, g.align))
    frames = _probe_frames(normalize, forward, g, shifts, batch_size)
    # the edges of a tile add up where they meet (a corner): each measured axis gets its share
    share = tolerance / max(1, sum(1 for s in shifts if s))
    profiles: list[tuple[float, ...]] = []
    margins, overlaps, errors, floors = [], [], [], []
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
        profile = _edge_profile(frames, g, d, shifts[d], k)
        k += 1
        floor = _floor(profile, share)
        m, o, err = choose_margin([max(0.0, p - floor) for p in profile], g.tile[d], g.align[d], minimum, share)
        floors.append(floor)
        profiles.append(tuple(round(p, 6) for p in profile))
        margins.append(m)
        overlaps.append(o)
        errors.append(err)
    return EdgeMargins(g.tile, tuple(margins), tuple(overlaps), tuple(errors), tuple(profiles),  # type: ignore[arg-type]
                       floor=tuple(floors))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the cache


def margins_path(cache_dir: str | os.PathLike | None, fingerprint: str, weights: str, tile: Sequence[int],
                 tolerance: float) -> Path:
    """Where the margins of a model (``fingerprint``, ``weights``) for ``tile`` are cached."""
    from cartocell_bmz.bmz.resolve import cache_root

    key = f"{fingerprint[:24]}-{weights}-{'x'.join(map(str, tile))}-{tolerance:g}.json"
    return cache_root(cache_dir) / "margins" / key


def read_margins(path: Path) -> EdgeMargins | None:
    """Cached margins, or ``None`` when there are none (or they cannot be read)."""
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return EdgeMargins(
            tile=tuple(data["tile"]), margin=tuple(data["margin"]), overlap=tuple(data["overlap"]),  # type: ignore[arg-type]
            error=tuple(float("nan") if e is None else float(e) for e in data["error"]),  # type: ignore[arg-type]
            profiles=tuple(tuple(p) for p in data["profiles"]),
            floor=tuple(float(f) for f in data.get("floor", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_margins(path: Path, found: EdgeMargins, *, model: str, weights: str, tolerance: float) -> None:
    """Cache measured margins of ``model`` (its ``weights``) for ``tolerance``; a read-only cache is no error."""
    import json

    from cartocell_bmz.io.volumes import atomic_open

    try:
        with atomic_open(path) as f:
            json.dump({"model": model, "weights": weights, "tile": list(found.tile),
                       "margin": list(found.margin), "overlap": list(found.overlap),
                       "error": [e if np.isfinite(e) else None for e in found.error],
                       "profiles": [list(p) for p in found.profiles], "floor": list(found.floor),
                       "tolerance": tolerance}, f)
    except Exception:  # a read-only cache only means measuring again next time
        pass


__all__ = [
    "EDGE_TOLERANCE",
    "HALO_TOLERANCE",
    "EdgeMargins",
    "blended_edge_error",
    "choose_margin",
    "envelope",
    "margins_path",
    "measure_margins",
    "probe_cyst",
    "probe_texture",
    "read_margins",
    "write_margins",
]
