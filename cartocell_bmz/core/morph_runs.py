"""Runs of a label volume: the x-rows cut where the label changes, and what they give.

A *run* is a maximal stretch of one label along x in one row ``(z, y)``; the runs of a
row tile it.  They come for free from the x-faces of
:func:`~cartocell_bmz.core.morph_surface.face_list` (already sorted row by row) and
stand in for the voxels everywhere a whole-volume pass would cost more:

* :func:`classify_background` -- outside, lumen and pockets of the background;
* :func:`run_components` -- connected pieces (6- or 26-connected) of each label, by
  a union of the runs that overlap in neighbouring rows (a sparse graph, solved by
  :func:`scipy.sparse.csgraph.connected_components`);
* :func:`run_moments` -- voxel count, sums and second moments per label, in closed form
  per run;
* :func:`convex_voxels` -- voxels whose centre lies in the convex hull of a label's voxel
  centres (the convex volume, as MATLAB's and scikit-image's ``convex_image``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cartocell_bmz.core.morph_surface import LUMEN, OUTSIDE, POCKET


@dataclass(frozen=True)
class Runs:
    """The runs of a ``(Z, Y, X)`` volume, sorted by row then start.

    Attributes
    ----------
    shape : tuple of int
        Volume shape ``(Z, Y, X)``.
    row : numpy.ndarray
        ``int64`` row ``z * Y + y``.
    start, stop : numpy.ndarray
        ``int64`` first and last x of the run (inclusive).
    code : numpy.ndarray
        Label of the run.
    """

    shape: tuple[int, int, int]
    row: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    code: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def find(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Index of the run holding each voxel ``(z, y, x)``."""
        nx = self.shape[2]
        key = self.row * nx + self.start
        return np.searchsorted(key, (z.astype(np.int64) * self.shape[1] + y) * nx + x, side="right") - 1


def runs_from_x_faces(volume: np.ndarray, face_pos: np.ndarray, upper_code: np.ndarray) -> Runs:
    """Runs of ``volume`` from its x-faces.

    Parameters
    ----------
    volume : numpy.ndarray
        ``(Z, Y, X)`` labels (only its first x slice is read).
    face_pos : numpy.ndarray
        ``(F, 3)`` index ``(z, y, x)`` of the voxel below each x-face, sorted by row then x
        (as :func:`numpy.flatnonzero` yields them).
    upper_code : numpy.ndarray
        Label of the voxel above each x-face (at ``x + 1``).

    Returns
    -------
    Runs
    """
    nz, ny, nx = volume.shape
    rows = nz * ny
    face_row = face_pos[:, 0].astype(np.int64) * ny + face_pos[:, 1]
    # Each row starts with a run at x = 0; every x-face starts the next one.
    row = np.concatenate([np.arange(rows, dtype=np.int64), face_row])
    start = np.concatenate([np.zeros(rows, np.int64), face_pos[:, 2].astype(np.int64) + 1])
    code = np.concatenate([volume[:, :, 0].reshape(-1), upper_code])
    order = np.lexsort((start, row))
    row, start, code = row[order], start[order], code[order]
    stop = np.empty_like(start)
    stop[:-1] = start[1:] - 1
    last = np.append(row[1:] != row[:-1], True)
    stop[last] = nx - 1
    return Runs(shape=(nz, ny, nx), row=row, start=start, stop=stop, code=code)


def run_components(runs: Runs, keep: np.ndarray, *, full: bool) -> np.ndarray:
    """Connected pieces of the runs in ``keep``, joined when the same label touches.

    Parameters
    ----------
    runs : Runs
    keep : numpy.ndarray
        Boolean per run: the runs to label.
    full : bool
        26-connectivity (diagonal touches join) if true, else 6-connectivity.

    Returns
    -------
    numpy.ndarray
        ``int64`` piece per run (``-1`` where not kept); pieces never mix labels.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nz, ny, nx = runs.shape
    grow = 1 if full else 0
    steps = [(0, 1), (1, -1), (1, 0), (1, 1)] if full else [(0, 1), (1, 0)]
    kept = np.flatnonzero(keep)
    z, y = np.divmod(runs.row[kept], ny)
    key = runs.row * nx + runs.start
    heads, tails = [], []
    for dz, dy in steps:
        ok = (z + dz < nz) & (y + dy >= 0) & (y + dy < ny)
        src = kept[ok]
        other = (z[ok] + dz) * ny + y[ok] + dy
        lo = np.maximum(runs.start[src] - grow, 0)
        hi = np.minimum(runs.stop[src] + grow, nx - 1)
        first = np.searchsorted(key, other * nx + lo, side="right") - 1
        last = np.searchsorted(key, other * nx + hi, side="right") - 1
        count = last - first + 1
        head = np.repeat(src, count)
        tail = np.repeat(first - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
        same = runs.code[head] == runs.code[tail]
        heads.append(head[same])
        tails.append(tail[same])
    index = np.full(len(runs), -1, np.int64)
    index[kept] = np.arange(len(kept))
    head, tail = index[np.concatenate(heads)], index[np.concatenate(tails)]
    good = (head >= 0) & (tail >= 0)
    graph = coo_matrix((np.ones(int(good.sum()), np.int8), (head[good], tail[good])), shape=(len(kept), len(kept)))
    _, piece = connected_components(graph, directed=False)
    out = np.full(len(runs), -1, np.int64)
    out[kept] = piece
    return out


def classify_background(runs: Runs, volume: np.ndarray, volume_sides, n: int) -> dict:
    """Split the background runs (code 0) into outside, lumen and pockets.

    The background's 6-connected pieces that reach a side of ``volume`` are the
    outside, the largest other piece is the lumen, smaller ones are pockets.  On a side
    that is the border of the whole volume (``volume_sides``), a cyst cut there would let
    its lumen leak out, so the side gets a *lid*: the background the cells enclose within
    that side's slice (2D hole filling) is no way out.  A side that is not the volume's
    border (a crop with only background beyond) is open.

    Parameters
    ----------
    runs : Runs
        Runs of ``volume`` (cells ``1..n``, background 0).
    volume : numpy.ndarray
        ``(Z, Y, X)`` labels (only its six side slices are read).
    volume_sides : sequence of 6 bools
        Sides z low, z high, y low, y high, x low, x high: whether each is the volume's border.
    n : int
        Number of cells; classes are ``n + LUMEN``, ``n + OUTSIDE``, ``n + POCKET``.

    Returns
    -------
    dict
        ``run_class`` (class of each run, 0 for cells), ``lumen_volume_vox``,
        ``pocket_volume_vox``, ``pockets`` (count) and ``lidded`` (a lid kept an enclosed
        piece closed).
    """
    from scipy import ndimage as ndi

    nz, ny, nx = runs.shape
    is_bg = runs.code == 0
    comp = run_components(runs, is_bg, full=False)
    bg_idx = np.flatnonzero(is_bg)
    z, y = np.divmod(runs.row[bg_idx], ny)
    s, e = runs.start[bg_idx], runs.stop[bg_idx]
    out = np.zeros(len(bg_idx), bool)
    under_lid = np.zeros(len(bg_idx), bool)
    for side in range(6):
        axis, high = divmod(side, 2)
        end = volume.shape[axis] - 1 if high else 0
        touch = [z == end, y == end, (e == end) if high else (s == end)][axis]
        if not volume_sides[side]:
            out |= touch
            continue
        cells_side = np.take(volume, end, axis=axis) > 0
        lid = ndi.binary_fill_holes(cells_side) & ~cells_side
        if axis == 2:
            covered = lid[z, y]
            open_ = touch & ~covered
        else:
            row_of = y if axis == 0 else z
            csum = np.concatenate([np.zeros((lid.shape[0], 1), np.int64), np.cumsum(lid, axis=1)], axis=1)
            n_lid = np.where(touch, csum[row_of, np.minimum(e + 1, nx)] - csum[row_of, s], 0)
            open_ = touch & (n_lid < e - s + 1)
            covered = touch & (n_lid > 0)
        out |= open_
        under_lid |= covered
    n_comp = int(comp[bg_idx].max()) + 1 if len(bg_idx) else 0
    comp_out = np.zeros(n_comp, bool)
    comp_out[comp[bg_idx][out]] = True
    size = np.bincount(comp[bg_idx], weights=e - s + 1, minlength=n_comp)
    enclosed = np.flatnonzero(~comp_out)
    comp_class = np.full(n_comp, n + OUTSIDE, np.int64)
    comp_class[enclosed] = n + POCKET
    lumen = int(enclosed[np.argmax(size[enclosed])]) if len(enclosed) else -1
    if lumen >= 0:
        comp_class[lumen] = n + LUMEN
    run_class = np.zeros(len(runs), np.int64)
    run_class[bg_idx] = comp_class[comp[bg_idx]]
    lidded = bool(np.any(under_lid & ~comp_out[comp[bg_idx]]))
    return {
        "run_class": run_class,
        "lumen_volume_vox": float(size[lumen]) if lumen >= 0 else 0.0,
        "pocket_volume_vox": float(size[enclosed].sum() - (size[lumen] if lumen >= 0 else 0.0)),
        "pockets": max(len(enclosed) - 1, 0),
        "lidded": lidded,
    }


def run_moments(runs: Runs, group: np.ndarray, n_groups: int, origin: np.ndarray) -> np.ndarray:
    """Voxel count, sums and second moments of coordinates per group of runs.

    Parameters
    ----------
    runs : Runs
    group : numpy.ndarray
        Group of each run (``0 .. n_groups - 1``; negative: left out).
    n_groups : int
    origin : numpy.ndarray
        ``(z, y, x)`` subtracted from the voxel indices first (keeps the sums small).

    Returns
    -------
    numpy.ndarray
        ``(n_groups, 10)``: count, sum z, y, x, then sums of zz, yy, xx, zy, zx, yx (voxel indices).
    """
    use = group >= 0
    g = group[use]
    z, y = np.divmod(runs.row[use], runs.shape[1])
    z = z - origin[0]
    y = y - origin[1]
    s = runs.start[use] - origin[2]
    e = runs.stop[use] - origin[2]
    # Closed forms of sum_{x=s}^{e} x^k: P_k(e) - P_k(s - 1).
    p0 = (e - s + 1).astype(np.float64)
    p1 = (e * (e + 1) - (s - 1) * s) / 2.0
    p2 = (e * (e + 1) * (2 * e + 1) - (s - 1) * s * (2 * s - 1)) / 6.0
    z, y = z.astype(np.float64), y.astype(np.float64)
    columns = (p0, z * p0, y * p0, p1, z * z * p0, y * y * p0, p2, z * y * p0, z * p1, y * p1)
    return np.stack([np.bincount(g, weights=w, minlength=n_groups) for w in columns], axis=1)


def moments_to_shape(moments: np.ndarray, spacing: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroid (µm, volume coordinates) and covariance (µm²) from :func:`run_moments`.

    The covariance includes each voxel's own spread (``spacing² / 12`` per axis), so a
    box of ``n`` voxels has the variance of the continuous box, ``(n h)² / 12``.
    """
    count = np.maximum(moments[:, 0], 1)
    mean = moments[:, 1:4] / count[:, None]
    second = np.empty((len(moments), 3, 3))
    pairs = {(0, 0): 4, (1, 1): 5, (2, 2): 6, (0, 1): 7, (0, 2): 8, (1, 2): 9}
    for (a, b), col in pairs.items():
        second[:, a, b] = second[:, b, a] = moments[:, col] / count - mean[:, a] * mean[:, b]
    cov = second * np.outer(spacing, spacing) + np.diag(spacing**2 / 12.0)
    centroid = (mean + origin) * spacing
    return centroid, cov


def hull_points(cell: np.ndarray, z: np.ndarray, y: np.ndarray, x0: np.ndarray, x1: np.ndarray, rounds: int = 2):
    """Points spanning each cell's convex hull, from its runs, with most interior ones dropped.

    Every voxel of a run lies between the run's ends, so the ends span the hull.  An
    end that lies on or inside the chord of its neighbouring rows' ends along a line of
    the (z, y) plane (along y, along z, along either diagonal) is inside the hull and
    dropped: a segment of such ends is locally, hence globally, inside the chord of
    its two kept neighbours.

    Parameters
    ----------
    cell, z, y, x0, x1 : numpy.ndarray
        One entry per run: cell, row ``(z, y)``, first and last x.
    rounds : int
        Passes of dropping (each along the four lines).

    Returns
    -------
    cell, points : numpy.ndarray
        Cell of each point and ``(P, 3)`` points ``(z, y, x)``, sorted by cell.
    """
    order = np.lexsort((y, z, cell))
    cell, z, y, x0, x1 = cell[order], z[order], y[order], x0[order], x1[order]
    new = np.flatnonzero(np.r_[True, (cell[1:] != cell[:-1]) | (z[1:] != z[:-1]) | (y[1:] != y[:-1])])
    cell, z, y = cell[new], z[new], y[new]
    x0, x1 = np.minimum.reduceat(x0, new), np.maximum.reduceat(x1, new)
    parts = []
    for x, upper in ((x1, True), (x0, False)):
        c, zz, yy, xx = cell, z, y, x
        for _ in range(rounds):
            # lines of the (z, y) plane: along y (fixed z), along z, and the two diagonals
            for direction in range(4):
                line, t = ((zz, yy), (yy, zz), (zz - yy, zz), (zz + yy, zz))[direction]
                key = c * (1 << 32) + line
                order = np.lexsort((t, key))
                keep = order[_off_chord(key[order], t[order], xx[order], upper)]
                c, zz, yy, xx = c[keep], zz[keep], yy[keep], xx[keep]
        parts.append((c, np.stack([zz, yy, xx], axis=1)))
    cell = np.concatenate([p[0] for p in parts])
    points = np.concatenate([p[1] for p in parts])
    order = np.argsort(cell, kind="stable")
    return cell[order], points[order]


def _off_chord(line: np.ndarray, t: np.ndarray, x: np.ndarray, upper: bool) -> np.ndarray:
    """Whether each point ``(t, x)`` of a line (sorted by ``t`` within ``line``) is strictly outside its neighbours' chord."""
    keep = np.ones(len(t), bool)
    if len(t) < 3:
        return keep
    inner = np.flatnonzero((line[1:-1] == line[:-2]) & (line[1:-1] == line[2:])) + 1
    tp, tn = t[inner - 1].astype(np.float64), t[inner + 1].astype(np.float64)
    chord = x[inner - 1] + (x[inner + 1] - x[inner - 1]) * (t[inner] - tp) / (tn - tp)
    keep[inner] = x[inner] > chord if upper else x[inner] < chord
    return keep


def convex_voxels(owner: np.ndarray, points: np.ndarray, n: int) -> np.ndarray:
    """Per object, the number of voxels whose centre lies in the convex hull of its points.

    The hull of each object comes from qhull; the voxels inside are counted row by
    row along x: in row ``(z, y)``, the facets whose outward normal points to +x
    (-x) bound x from above (below).

    Parameters
    ----------
    owner : numpy.ndarray
        Object ``0 .. n - 1`` of each point, sorted.
    points : numpy.ndarray
        ``(P, 3)`` voxel indices ``(z, y, x)`` spanning the hulls (:func:`hull_points`).
    n : int
        Number of objects.

    Returns
    -------
    numpy.ndarray
        ``float64`` voxel count per object; ``-1`` where the points span no volume
        (all in one plane or line).
    """
    bounds = np.searchsorted(owner, np.arange(n + 1))
    return np.array([_hull_count(points[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])], np.float64)


def _hull_count(points: np.ndarray) -> int:
    from scipy.spatial import ConvexHull, QhullError

    points = np.asarray(points, np.float64)
    if len(points) < 4:
        return -1
    low, high = points.min(axis=0), points.max(axis=0)
    if (high - low).min() == 0:
        return -1
    try:
        eq = ConvexHull(points).equations  # a z + b y + c x + d <= 0 inside (unit normals)
    except QhullError:
        return -1
    eps = 1e-7
    nz, ny = int(high[0] - low[0]) + 1, int(high[1] - low[1]) + 1
    rows = np.ones((nz * ny, 3))  # (z, y, 1) of every row of the box
    rows[:, 0] = np.repeat(np.arange(low[0], high[0] + 1), ny)
    rows[:, 1] = np.tile(np.arange(low[1], high[1] + 1), nz)
    c = eq[:, 2]
    up, down, side = c > eps, c < -eps, np.abs(c) <= eps
    # A facet with c > 0 bounds x from above, c < 0 from below: x <= (or >=) (eps - a z - b y - d) / c.
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = eq[:, [0, 1, 3]] / -c[:, None]
        bound[:, 2] += eps / c
    count = np.floor((rows @ bound[up].T).min(axis=1)) - np.ceil((rows @ bound[down].T).max(axis=1)) + 1
    if side.any():  # facets along x: a z + b y + d <= eps holds for the whole row or for none of it
        e = eq[side]
        count[(rows @ np.stack([e[:, 0], e[:, 1], e[:, 3] - eps]) > 0).any(axis=1)] = 0
    return int(np.maximum(count, 0).sum())
