"""Per-cell morphology and packing of a segmented cyst, in micrometres.

:func:`measure_cyst` turns a label volume (cells touching, as after the Voronoi of
:mod:`cartocell_bmz.core.postprocess`) into three tables of plain column arrays:

* **cells** -- one row per cell: volume (µm³), surface area and its apical, basal,
  lateral and other parts (µm²), height (µm), lateral / apical / basal neighbours,
  apico-basal transitions, scutoid flag, sphericity, solidity, principal axes and aspect
  ratio, centroid and radial position, connected pieces, and a ``valid`` flag;
* **neighbours** -- one row per touching pair: contact area, its share of each cell's
  lateral surface, whether they count as neighbours, touch along the apical and along
  the basal surface;
* **cyst** -- one row: cell counts, volumes, areas and their ratio, means and spreads
  of the cell features, polygon distributions, scutoid fraction, cyst shape.

Definitions (CartoCell's, made spacing-aware; the README section "Measuring cells"
says where and why they differ):

* regions: the **lumen** is the largest background piece (6-connected) not reachable
  from the volume border, the **outside** the background that is; smaller enclosed
  pieces are *pockets*.  Each face of the volume gets a lid (the background the cells
  enclose within that face's slice), so the lumen of a cyst cut by the border stays
  the lumen.
* surfaces: **apical** = the cell's faces towards the lumen, **basal** = towards the
  outside, **lateral** = towards other cells, *other* = towards pockets; faces on the
  volume border are not surface (the cell is ``cut``).  Areas by the estimator of
  :mod:`cartocell_bmz.core.morph_surface` (digital balls: within 0.3 % at a radius of
  20 voxels, 2.5 % at 10).
* **neighbours**: two cells are (lateral) neighbours when their contact is at least
  ``contact_threshold`` of the lateral area of *each* (dropping is symmetric);
  **apical** (basal) neighbours are neighbours whose contact reaches a cell voxel that
  touches the lumen (outside).  **transitions** = size of the symmetric difference of
  the apical and basal neighbour sets; **scutoid** = transitions > 0.
* **height**: distance between the area-weighted centroids of the cell's apical and
  basal surfaces.
* **valid**: touches lumen and outside, not cut by the volume border, one piece
  (26-connected).  Cyst means, distributions and fractions are over valid cells.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from cartocell_bmz.core.morph_runs import (
    Runs, classify_background, convex_voxels, hull_points, moments_to_shape, run_components, run_moments,
    runs_from_x_faces,
)
from cartocell_bmz.core.morph_surface import (
    DEFAULT_WINDOW, LUMEN, OUTSIDE, POCKET, Faces, contact_index, face_areas, face_list,
)
from cartocell_bmz.core.spacing import check_spacing
from cartocell_bmz.errors import CartoCellWarning, ConfigError, InputError

#: CartoCell's neighbour threshold: a contact counts above 0.5 % of the lateral surface.
DEFAULT_CONTACT_THRESHOLD = 0.005
#: Polygon classes of the distributions (share of valid cells with 3 .. 10 neighbours).
POLYGON_SIDES: tuple[int, ...] = tuple(range(3, 11))
#: Cell features summarised in the cyst table as ``mean_<name>`` and ``std_<name>``.
SUMMARISED: tuple[str, ...] = (
    "volume", "surface_area", "apical_area", "basal_area", "lateral_area", "height", "neighbours",
    "apical_neighbours", "basal_neighbours", "transitions", "sphericity", "solidity", "aspect_ratio",
)


@dataclass(frozen=True)
class CystMeasures:
    """The three tables of one cyst (columns of equal length; lengths in µm).

    Attributes
    ----------
    cells : dict of str to numpy.ndarray
        One row per cell (column ``cell`` = the label id).
    neighbours : dict of str to numpy.ndarray
        One row per touching pair (``cell_a < cell_b``).
    cyst : dict of str to float
        One row for the cyst.
    params : dict
        The parameters used (spacing, contact threshold, window).
    """

    cells: dict[str, np.ndarray]
    neighbours: dict[str, np.ndarray]
    cyst: dict[str, float]
    params: dict = field(default_factory=dict)


def measure_cyst(
    labels: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    contact_threshold: float = DEFAULT_CONTACT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    main_cyst: bool = False,
) -> CystMeasures:
    """Measure every cell of a segmented cyst: morphology, neighbours, packing.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` integer labels, 0 = background (lumen and outside); ids need not
        be consecutive.
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres.
    contact_threshold : float
        Share of each cell's lateral area a contact needs to make them neighbours.
    window : int
        Block side, in voxels of the finest axis, of the surface-normal window of the
        area estimator (:func:`cartocell_bmz.core.morph_surface.face_areas`).
    main_cyst : bool
        Measure only the cells of the largest connected group of cells (:func:`main_cyst_cells`):
        pieces of neighbouring cysts in a crop's margin are left out, with a notice.

    Returns
    -------
    CystMeasures
        An empty volume gives tables without rows and a cyst row of zeros and NaN; a
        cyst without lumen gives no apical surface and no valid cell.

    Raises
    ------
    InputError
        ``labels`` is not 3D, holds fractions or negative values.
    ConfigError
        Bad ``spacing``, ``contact_threshold`` or ``window``.

    Examples
    --------
    >>> from cartocell_bmz.core.phantoms import make_cyst
    >>> c = make_cyst((24, 64, 64), (1.0, 0.5, 0.5), stage="day7", seed=1)
    >>> m = measure_cyst(c.labels, c.spacing)
    >>> m.cyst["cells"] == int(c.labels.max()), m.cyst["lumen_volume"] > 0
    (True, True)
    """
    labels = check_labels(labels)
    spacing_t = check_spacing(spacing)
    if not (0.0 <= float(contact_threshold) < 1.0):
        raise ConfigError(f"contact_threshold must be a share in [0, 1), got {contact_threshold!r}.")
    if int(window) != window or window < 1:
        raise ConfigError(f"window must be a whole number of voxels >= 1, got {window!r}.")
    params = {"spacing": list(spacing_t), "contact_threshold": float(contact_threshold), "window": int(window)}
    if main_cyst:
        params["main_cyst"] = True
        kept = main_cyst_cells(labels)
        dropped = len(np.unique(labels[(labels > 0) & (kept == 0)]))
        if dropped:
            warnings.warn(f"{dropped} cell(s) apart from the cyst (not connected to its largest group of cells) "
                          "are left out.", CartoCellWarning, stacklevel=2)
        labels = kept
    sp = np.asarray(spacing_t, float)
    box = _cell_box(labels)
    if box is None:
        warnings.warn("the label volume holds no cell; the tables are empty.", CartoCellWarning, stacklevel=2)
        return _empty(sp, params)
    crop, volume_sides = box
    vol = labels[crop]
    origin = np.array([s.start for s in crop])
    raw = face_list(vol)
    runs = _runs(vol, raw)
    ids = np.unique(runs.code)
    ids = ids[ids > 0]
    n = len(ids)
    runs = Runs(runs.shape, runs.row, runs.start, runs.stop, _compact(runs.code, ids))
    bg = classify_background(runs, vol, volume_sides, n)
    faces = _classified_faces(raw, ids, runs, bg["run_class"])
    del raw
    contacts = contact_index(faces)
    areas = face_areas(faces, sp, int(window), contact=contacts[2])
    cells, pairs = _surfaces(faces, contacts, areas, runs.shape, n, sp, origin, float(contact_threshold))
    _shapes(cells, runs, n, sp, origin, bg)
    cells["cut"] = _cut_cells(vol, volume_sides, ids)
    cells["valid"] = (cells["apical_faces"] > 0) & (cells["basal_faces"] > 0) & ~cells["cut"] & (cells["pieces"] == 1)
    cells["cell"] = ids.astype(np.int64)
    if bg["lumen_volume_vox"] == 0:
        warnings.warn("no lumen (no background enclosed by the cells): no apical surface, no valid cell.",
                      CartoCellWarning, stacklevel=2)
    if cells["cut"].any():
        warnings.warn(f"the cyst touches the volume border: {int(cells['cut'].sum())} cell(s) are cut and not valid.",
                      CartoCellWarning, stacklevel=2)
    cyst = _cyst_row(cells, bg, sp, params)
    ids = ids.astype(np.int64)
    pairs["cell_a"], pairs["cell_b"] = ids[pairs.pop("a") - 1], ids[pairs.pop("b") - 1]
    return CystMeasures(cells=_order_cells(cells), neighbours=_order_pairs(pairs), cyst=cyst, params=params)


def check_labels(labels) -> np.ndarray:
    """``labels`` as a 3D array of non-negative integers, or :class:`InputError`."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise InputError(f"labels must be a 3D volume (Z, Y, X), got {labels.ndim} dimension(s) {labels.shape}.")
    if labels.dtype.kind == "b":
        return labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"labels must hold whole-number cell ids, got values of type {labels.dtype}; "
            "give a label volume, not probabilities or an image."
        )
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise InputError("labels hold negative values; cell ids must be >= 0.")
    return labels


# --------------------------------------------------------------------------- steps


def _cell_box(labels: np.ndarray):
    """Bounding box of the cells, one voxel wider (clipped); which of its sides are the volume's."""
    any_zy = np.any(labels, axis=2)
    if not any_zy.any():
        return None
    any_x = np.any(labels, axis=(0, 1))
    spans = [np.flatnonzero(any_zy.any(axis=1)), np.flatnonzero(any_zy.any(axis=0)), np.flatnonzero(any_x)]
    crop, sides = [], []
    for span, size in zip(spans, labels.shape):
        lo, hi = max(int(span[0]) - 1, 0), min(int(span[-1]) + 2, size)
        crop.append(slice(lo, hi))
        sides += [lo == 0, hi == size]
    return tuple(crop), tuple(sides)


def _runs(vol: np.ndarray, faces: Faces) -> Runs:
    x = faces.axis == 2
    upper = np.where(faces.sign[x] > 0, faces.hi[x], faces.lo[x])
    return runs_from_x_faces(vol, faces.pos[x], upper)


def _compact(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Label ids (sorted ``ids``, all > 0) -> 1..n; 0 stays 0."""
    if len(ids) and int(ids[-1]) <= 4 * len(values) + (1 << 16):  # a lookup table is cheap: use it
        lut = np.zeros(int(ids[-1]) + 1, np.int64)
        lut[ids] = np.arange(1, len(ids) + 1)
        return lut[values]
    out = np.searchsorted(ids, values) + 1
    out[values == 0] = 0
    return out.astype(np.int64)


def _classified_faces(raw: Faces, ids: np.ndarray, runs: Runs, run_class: np.ndarray) -> Faces:
    """Faces with cells as 1..n and the background side as lumen / outside / pocket, cell first."""
    lo, hi = _compact(raw.lo, ids), _compact(raw.hi, ids)
    bg = lo == 0
    # The background voxel: the lower one when it is `lo` (sign +1), else the upper one.
    pos = raw.pos[bg].astype(np.int64)
    up = raw.sign[bg] < 0
    pos[up, raw.axis[bg][up]] += 1
    cls = run_class[runs.find(pos[:, 0], pos[:, 1], pos[:, 2])]
    lo[bg], hi[bg] = hi[bg], cls
    sign = raw.sign.copy()
    sign[bg] = -sign[bg]
    return Faces(axis=raw.axis, pos=raw.pos, lo=lo, hi=hi, sign=sign)


def _cell_side_flat(faces: Faces, sel: np.ndarray, shape) -> np.ndarray:
    """Flat index (in the crop) of the ``lo`` cell's voxel of the selected faces."""
    pos = faces.pos[sel].astype(np.int64)
    up = faces.sign[sel] < 0
    pos[up, faces.axis[sel][up]] += 1
    return np.ravel_multi_index(pos.T, shape)


def _sum_by(index: np.ndarray, weights: np.ndarray | None, n: int) -> np.ndarray:
    """``float64`` sums of ``weights`` per ``index`` in ``0 .. n - 1`` (zeros when empty)."""
    return np.bincount(index, weights=weights, minlength=n).astype(np.float64, copy=False)


def _surfaces(faces: Faces, contacts, areas: np.ndarray, shape, n: int, sp: np.ndarray, origin, threshold: float):
    """Areas, heights and neighbour sets from the faces and their contacts ``(lo, hi, contact)``."""
    c_lo, c_hi, contact = contacts
    k = len(c_lo)
    c_area = _sum_by(contact, areas, k)
    c_faces = _sum_by(contact, None, k)
    cells: dict[str, np.ndarray] = {}
    flags = np.zeros(int(np.prod(shape)), np.uint8)  # 1: cell voxel next to the lumen, 2: to the outside
    centres = {}
    for bit, (name, code) in enumerate((("apical", n + LUMEN), ("basal", n + OUTSIDE), ("other", n + POCKET))):
        of = c_hi == code
        cell = c_lo[of] - 1
        cells[f"{name}_area"] = _sum_by(cell, c_area[of], n)
        cells[f"{name}_faces"] = _sum_by(cell, c_faces[of], n).astype(np.int64)
        if name == "other":
            continue
        sel = np.flatnonzero(faces.hi == code)
        flags[_cell_side_flat(faces, sel, shape)] |= 1 << bit
        centre = (faces.pos[sel] + origin).astype(np.float64)
        centre[np.arange(len(sel)), faces.axis[sel]] += 0.5
        w, owner = areas[sel], faces.lo[sel] - 1
        tot = np.maximum(cells[f"{name}_area"], 1e-300)
        centres[name] = np.stack([_sum_by(owner, w * centre[:, j], n) for j in range(3)], 1) * (sp / tot[:, None])
    two_sided = (cells["apical_faces"] > 0) & (cells["basal_faces"] > 0)
    cells["height"] = np.where(two_sided, np.linalg.norm(centres["apical"] - centres["basal"], axis=1), np.nan)

    lat_c = np.flatnonzero(c_hi <= n)
    pa, pb, contact_area = c_lo[lat_c], c_hi[lat_c], c_area[lat_c]
    lateral = _sum_by(pa - 1, contact_area, n) + _sum_by(pb - 1, contact_area, n)
    cells["lateral_area"] = lateral
    cells["surface_area"] = cells["apical_area"] + cells["basal_area"] + cells["lateral_area"] + cells["other_area"]
    lat = np.flatnonzero(faces.hi <= n)
    lower = np.ravel_multi_index(faces.pos[lat].astype(np.int64).T, shape)
    step = np.array([shape[1] * shape[2], shape[2], 1], np.int64)[faces.axis[lat]]
    touch = flags[lower] | flags[lower + step]
    del flags
    where = np.searchsorted(lat_c, contact[lat])  # the lateral contact of each lateral face
    with np.errstate(divide="ignore", invalid="ignore"):
        share_a, share_b = contact_area / lateral[pa - 1], contact_area / lateral[pb - 1]
    neighbour = (share_a >= threshold) & (share_b >= threshold)
    pairs = {"a": pa, "b": pb, "contact_area": contact_area, "share_a": share_a, "share_b": share_b,
             "neighbours": neighbour}
    for bit, name in enumerate(("apical", "basal")):
        pairs[name] = neighbour & (_sum_by(where, (touch >> bit) & 1, len(lat_c)) > 0)

    def per_cell(mask):
        return np.bincount(pa[mask] - 1, minlength=n) + np.bincount(pb[mask] - 1, minlength=n)

    cells["neighbours"] = per_cell(neighbour)
    cells["apical_neighbours"] = per_cell(pairs["apical"])
    cells["basal_neighbours"] = per_cell(pairs["basal"])
    both = per_cell(pairs["apical"] & pairs["basal"])
    trans = (cells["apical_neighbours"] + cells["basal_neighbours"] - 2 * both).astype(np.float64)
    cells["transitions"] = np.where(two_sided, trans, np.nan)
    cells["scutoid"] = two_sided & (trans > 0)
    cells["t1_transitions"] = np.where(two_sided, _quartets(pa - 1, pb - 1, neighbour, pairs["apical"], pairs["basal"], n),
                                       np.nan)
    return cells, pairs


def _quartets(a: np.ndarray, b: np.ndarray, neighbour, apical, basal, n: int) -> np.ndarray:
    """Per cell, the T1 quartets it is in: cells i, j touch on one surface only and two of
    their common neighbours k, l touch on the other surface only (the partners swap)."""
    count = np.zeros(n)
    only_basal = neighbour & basal & ~apical
    only_apical = {(int(x), int(y)) for x, y in zip(a[neighbour & apical & ~basal], b[neighbour & apical & ~basal])}
    if not only_apical or not only_basal.any():
        return count
    around: dict[int, set[int]] = {}
    for x, y in zip(a[neighbour].tolist(), b[neighbour].tolist()):
        around.setdefault(x, set()).add(y)
        around.setdefault(y, set()).add(x)
    for i, j in zip(a[only_basal].tolist(), b[only_basal].tolist()):
        common = sorted(around.get(i, set()) & around.get(j, set()))
        for u, k in enumerate(common):
            for l in common[u + 1:]:
                if (k, l) in only_apical:
                    count[[i, j, k, l]] += 1
    return count


def _shapes(cells: dict, runs: Runs, n: int, sp: np.ndarray, origin: np.ndarray, bg: dict) -> None:
    """Volume, centroid, axes, sphericity, solidity, pieces and radial position, into ``cells``."""
    centre = np.array(runs.shape) // 2
    is_cell = runs.code > 0
    cell_of_run = np.where(is_cell, runs.code - 1, -1)
    mom = run_moments(runs, cell_of_run, n, centre)
    centroid, cov = moments_to_shape(mom, sp, centre + origin)
    volume = mom[:, 0] * float(np.prod(sp))
    cells["volume"] = volume
    axes = 2.0 * np.sqrt(5.0 * np.clip(np.linalg.eigvalsh(cov)[:, ::-1], 0, None))
    cells["axis_major"], cells["axis_mid"], cells["axis_minor"] = axes[:, 0], axes[:, 1], axes[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        cells["aspect_ratio"] = axes[:, 0] / axes[:, 2]
        cells["sphericity"] = np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / cells["surface_area"]
    cells["centroid_z"], cells["centroid_y"], cells["centroid_x"] = centroid.T
    # The filled cyst: cells, lumen and pockets.
    run_class = bg["run_class"]
    in_cyst = is_cell | (run_class == n + LUMEN) | (run_class == n + POCKET)
    cyst_mom = run_moments(runs, np.where(in_cyst, 0, -1), 1, centre)
    cyst_centroid, cyst_cov = moments_to_shape(cyst_mom, sp, centre + origin)
    bg["cyst_volume_vox"] = float(cyst_mom[0, 0])
    bg["cyst_axes"] = 2.0 * np.sqrt(5.0 * np.clip(np.linalg.eigvalsh(cyst_cov[0])[::-1], 0, None))
    radius = (3 * cyst_mom[0, 0] * float(np.prod(sp)) / (4 * np.pi)) ** (1 / 3)
    cells["radial_distance"] = np.linalg.norm(centroid - cyst_centroid[0], axis=1)
    cells["radial_position"] = cells["radial_distance"] / radius
    # Pieces (26-connected) and convex volume, from the runs of each cell.
    piece = run_components(runs, is_cell, full=True)
    cell_of_piece = np.zeros(int(piece.max()) + 1, np.int64)
    cell_of_piece[piece[is_cell]] = cell_of_run[is_cell]
    cells["pieces"] = np.bincount(cell_of_piece, minlength=n)
    z, y = np.divmod(runs.row[is_cell], runs.shape[1])
    owner, points = hull_points(cell_of_run[is_cell], z, y, runs.start[is_cell], runs.stop[is_cell])
    hull = convex_voxels(owner, points, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        cells["solidity"] = np.where(hull > 0, mom[:, 0] / hull, np.nan)


def main_cyst_cells(labels: np.ndarray) -> np.ndarray:
    """The labels of the cells in the largest connected group of cells (face-connected foreground); others 0.

    A cell split over several groups is kept whole if any part lies in the largest one.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((1, 1, 9), np.uint16)
    >>> lab[0, 0, :4] = [1, 1, 2, 2]; lab[0, 0, 6:8] = [3, 3]
    >>> main_cyst_cells(lab)[0, 0].tolist()
    [1, 1, 2, 2, 0, 0, 0, 0, 0]
    """
    from scipy import ndimage as ndi

    groups, n = ndi.label(labels > 0)
    if n <= 1:
        return labels
    largest = int(np.argmax(np.bincount(groups.ravel())[1:])) + 1
    keep = np.unique(labels[groups == largest])
    return np.where(np.isin(labels, keep), labels, 0).astype(labels.dtype, copy=False)


def _cut_cells(vol: np.ndarray, volume_sides, ids: np.ndarray) -> np.ndarray:
    cut = np.zeros(len(ids), bool)
    for side in range(6):
        if volume_sides[side]:
            axis, high = divmod(side, 2)
            ids_side = np.unique(np.take(vol, vol.shape[axis] - 1 if high else 0, axis=axis))
            cut[_compact(ids_side[ids_side > 0], ids) - 1] = True
    return cut


# --------------------------------------------------------------------------- tables

#: Columns of the cells table, in order.
CELL_COLUMNS: tuple[str, ...] = (
    "cell", "valid", "volume", "surface_area", "apical_area", "basal_area", "lateral_area", "other_area",
    "height", "neighbours", "apical_neighbours", "basal_neighbours", "transitions", "scutoid", "t1_transitions",
    "sphericity", "solidity", "axis_major", "axis_mid", "axis_minor", "aspect_ratio", "centroid_z", "centroid_y",
    "centroid_x", "radial_distance", "radial_position", "pieces", "cut",
)
#: Columns of the neighbours table, in order.
NEIGHBOUR_COLUMNS: tuple[str, ...] = (
    "cell_a", "cell_b", "contact_area", "share_a", "share_b", "neighbours", "apical", "basal",
)


def _order_cells(cells: dict) -> dict[str, np.ndarray]:
    return {name: cells[name] for name in CELL_COLUMNS}


def _order_pairs(pairs: dict) -> dict[str, np.ndarray]:
    return {name: pairs[name] for name in NEIGHBOUR_COLUMNS}


def _cyst_row(cells: dict, bg: dict, sp: np.ndarray, params: dict) -> dict[str, float]:
    voxel = float(np.prod(sp))
    valid = cells["valid"]
    n_valid = int(valid.sum())
    row: dict[str, float] = {"cells": len(valid), "valid_cells": n_valid, "cut": bool(cells["cut"].any()),
                             "lumen_closed_by_lid": bg["lidded"], "pockets": bg["pockets"]}
    cyst_volume = bg["cyst_volume_vox"] * voxel
    lumen = bg["lumen_volume_vox"] * voxel
    apical, basal = float(cells["apical_area"].sum()), float(cells["basal_area"].sum())
    row.update({
        "cyst_volume": cyst_volume, "lumen_volume": lumen, "lumen_fraction": lumen / cyst_volume if cyst_volume else math.nan,
        "cell_layer_volume": float(cells["volume"].sum()), "pocket_volume": bg["pocket_volume_vox"] * voxel,
        "apical_area": apical, "basal_area": basal, "surface_ratio": basal / apical if apical else math.nan,
        "cyst_sphericity": (math.pi ** (1 / 3) * (6 * cyst_volume) ** (2 / 3) / basal
                            if basal and not row["cut"] else math.nan),
    })
    row.update(_valid_summary(cells, valid))
    axes = bg["cyst_axes"]
    row.update({"axis_major": float(axes[0]), "axis_mid": float(axes[1]), "axis_minor": float(axes[2]),
                "axis_ratio_mid": float(axes[1] / axes[0]) if axes[0] else math.nan,
                "axis_ratio_minor": float(axes[2] / axes[0]) if axes[0] else math.nan})
    row.update({"spacing_z": float(sp[0]), "spacing_y": float(sp[1]), "spacing_x": float(sp[2])})
    return row


def _valid_summary(cells: dict, valid: np.ndarray) -> dict[str, float]:
    """Fractions, means, spreads and polygon distributions over the valid cells."""
    n_valid = int(valid.sum())
    row: dict[str, float] = {}

    def stat(values, how):
        v = np.asarray(values, float)[valid]
        v = v[np.isfinite(v)]
        return float(how(v)) if len(v) else math.nan

    row["scutoid_fraction"] = stat(cells["scutoid"], np.mean)
    row["t1_scutoid_fraction"] = stat(cells["t1_transitions"] > 0, np.mean)
    row["median_volume"] = stat(cells["volume"], np.median)
    for name in SUMMARISED:
        row[f"mean_{name}"] = stat(cells[name], np.mean)
        row[f"std_{name}"] = stat(cells[name], np.std)
    for side in ("apical", "basal"):
        counts = cells[f"{side}_neighbours"][valid]
        for k in POLYGON_SIDES:
            row[f"{side}_{k}"] = float(np.mean(counts == k)) if n_valid else math.nan
    return row


def _empty(sp: np.ndarray, params: dict) -> CystMeasures:
    cells = {name: np.zeros(0, bool if name in ("valid", "scutoid", "cut") else float) for name in CELL_COLUMNS}
    cells["cell"] = np.zeros(0, np.int64)
    pairs = {name: np.zeros(0, bool if name in ("neighbours", "apical", "basal") else float) for name in NEIGHBOUR_COLUMNS}
    bg = {"lidded": False, "pockets": 0, "cyst_volume_vox": 0.0, "lumen_volume_vox": 0.0, "pocket_volume_vox": 0.0,
          "cyst_axes": np.zeros(3)}
    return CystMeasures(cells=cells, neighbours=pairs, cyst=_cyst_row(cells, bg, sp, params), params=params)


# --------------------------------------------------------------------------- comparison

#: The features :func:`compare_morphology` compares: cyst-table column -> how the error is taken.
COMPARED: dict[str, str] = {
    "mean_apical_neighbours": "difference",
    "mean_basal_neighbours": "difference",
    "scutoid_fraction": "difference",
    "median_volume": "relative",
}


def compare_morphology(truth: Mapping[str, float], pred: Mapping[str, float]) -> dict[str, float]:
    """Errors of a predicted cyst's morphology against its ground truth's.

    Parameters
    ----------
    truth, pred : mapping
        Cyst rows (``CystMeasures.cyst``) of the ground truth and of the prediction.

    Returns
    -------
    dict
        For each feature of :data:`COMPARED`, the signed error ``pred - truth`` (for the
        median volume relative: ``pred / truth - 1``); NaN where either is undefined.

    Examples
    --------
    >>> compare_morphology({"mean_apical_neighbours": 5.5, "mean_basal_neighbours": 6.0,
    ...                     "scutoid_fraction": 0.4, "median_volume": 200.0},
    ...                    {"mean_apical_neighbours": 5.0, "mean_basal_neighbours": 6.5,
    ...                     "scutoid_fraction": 0.3, "median_volume": 220.0})
    {'mean_apical_neighbours': -0.5, 'mean_basal_neighbours': 0.5, 'scutoid_fraction': -0.1, 'median_volume': 0.1}
    """
    out = {}
    for name, how in COMPARED.items():
        t, p = float(truth.get(name, math.nan)), float(pred.get(name, math.nan))
        if how == "relative":
            value = p / t - 1 if t else math.nan
        else:
            value = p - t
        out[name] = round(value, 12) if math.isfinite(value) else math.nan
    return out
