"""Tests of cartocell_bmz.core.voronoi: the mask-bounded Voronoi in micrometres."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from cartocell_bmz.core.matching import match
from cartocell_bmz.core.phantoms import make_cyst
from cartocell_bmz.core.targets import contours
from cartocell_bmz.core.voronoi import voronoi_on_mask
from cartocell_bmz.errors import ConfigError

SIX = ndi.generate_binary_structure(3, 1)


def test_spacing_aware_voronoi_is_closer_to_the_truth():
    """Shrink every cell to its core, regrow it over the cell region: micrometres beat voxels."""
    spacing = (1.5, 0.5, 0.5)
    gt = make_cyst((32, 96, 96), spacing, stage="day10", seed=4).labels
    dist = ndi.distance_transform_edt(~contours(gt), sampling=spacing)
    deepest = ndi.maximum(dist, gt, index=np.arange(gt.max() + 1))
    deepest[0] = np.inf
    cores = np.where(dist >= 0.5 * deepest[gt], gt, 0)
    assert len(np.unique(cores)) - 1 == gt.max()  # no cell lost
    region = (gt > 0).astype(np.float32)
    fg = gt > 0
    physical = voronoi_on_mask(cores, region, threshold=0.5, spacing=spacing, max_hole_size=0)
    voxels = voronoi_on_mask(cores, region, threshold=0.5, spacing=(1, 1, 1), max_hole_size=0)
    acc_physical = (physical[fg] == gt[fg]).mean()
    acc_voxels = (voxels[fg] == gt[fg]).mean()
    assert acc_physical > 0.8 and acc_physical > acc_voxels + 0.05, (acc_physical, acc_voxels)

    def mean_iou(pred):
        return np.mean([r[2] for r in match(gt=gt, pred=pred, thresholds=(0.1,))[0].pairs()])

    assert mean_iou(physical) > mean_iou(voxels) + 0.03
    # On isotropic voxels the two are the same.
    iso = make_cyst((24, 64, 64), (0.5, 0.5, 0.5), stage="day7", seed=4).labels
    cores = np.where(ndi.binary_erosion(iso > 0, SIX, iterations=1) & ~contours(iso), iso, 0)
    r = (iso > 0).astype(np.float32)
    assert np.array_equal(
        voronoi_on_mask(cores, r, threshold=0.5, spacing=(0.5, 0.5, 0.5)),
        voronoi_on_mask(cores, r, threshold=0.5, spacing=(1, 1, 1)),
    )


# --------------------------------------------------------------------------- Voronoi rules


def line(values) -> np.ndarray:
    return np.asarray(values, np.uint16).reshape(1, 1, -1)


def test_voronoi_ties_go_to_the_smaller_label():
    m = np.ones((1, 1, 5), np.float32)
    assert voronoi_on_mask(line([1, 0, 0, 0, 2]), m, threshold=0.5)[0, 0].tolist() == [1, 1, 1, 2, 2]
    assert voronoi_on_mask(line([2, 0, 0, 0, 1]), m, threshold=0.5)[0, 0].tolist() == [2, 2, 1, 1, 1]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_voronoi_handles_the_largest_label_of_the_type(dtype):
    top = np.iinfo(dtype).max
    m = np.ones((1, 1, 6), np.float32)
    out = voronoi_on_mask(np.asarray([[[top, 0, 0, 0, 0, 1]]], dtype), m, threshold=0.5)
    assert out.dtype == dtype and out[0, 0].tolist() == [top, top, top, 1, 1, 1]


def test_voronoi_measures_distance_in_micrometres():
    # Cell 1 lies 2 voxels away along z, cell 2 three voxels away along x.
    lab = np.zeros((5, 1, 7), np.uint16)
    lab[0, 0, 3] = 1
    lab[2, 0, 6] = 2
    m = np.ones(lab.shape, np.float32)
    in_voxels = voronoi_on_mask(lab, m, threshold=0.5)
    in_um = voronoi_on_mask(lab, m, threshold=0.5, spacing=(2.0, 1.0, 1.0))
    assert in_voxels[2, 0, 3] == 1  # 2 voxels < 3 voxels
    assert in_um[2, 0, 3] == 2      # 4 um > 3 um


def test_voronoi_territory_rules():
    lab = np.zeros((3, 3, 12), np.uint16)
    lab[1, 1, 1] = 1
    lab[1, 1, 10] = 2           # outside the territory: removed
    m = np.zeros(lab.shape, np.float32)
    m[:, :, 0:5] = 0.9          # a territory piece holding cell 1
    m[:, :, 7:9] = 0.9          # a piece with no cell: stays 0
    out = voronoi_on_mask(lab, m, threshold=0.5)
    assert (out[:, :, 0:5] == 1).all()
    assert not out[:, :, 5:].any()
    assert out.dtype == np.uint16
    # Otsu picks the same territory here.
    assert np.array_equal(voronoi_on_mask(lab, m), out)


def test_voronoi_keeps_the_lumen_and_fills_small_holes():
    # A hollow box (the cyst): walls 3 voxels thick around a 4^3 lumen, with a one-voxel
    # hole inside a wall and a one-voxel notch open to the outside.
    m = np.zeros((12, 12, 12), np.float32)
    m[1:11, 1:11, 1:11] = 1
    m[4:8, 4:8, 4:8] = 0                 # lumen: 64 voxels
    m[5, 2, 5] = 0                       # enclosed hole: 1 voxel
    m[1, 5, 5] = 0                       # notch: open to the outside, not a hole
    lab = np.zeros(m.shape, np.uint16)
    lab[1:4, 1:11, 1:11] = 1
    lab[8:11, 1:11, 1:11] = 2
    auto = voronoi_on_mask(lab, m, threshold=0.5)
    assert not auto[4:8, 4:8, 4:8].any()     # the lumen stays empty
    assert auto[5, 2, 5] > 0                 # the small hole is filled
    assert auto[1, 5, 5] == 0                # the notch is not territory
    assert (auto > 0).sum() == (m > 0.5).sum() + 1
    none = voronoi_on_mask(lab, m, threshold=0.5, max_hole_size=0)
    assert none[5, 2, 5] == 0
    huge = voronoi_on_mask(lab, m, threshold=0.5, max_hole_size=1e9)
    assert not huge[4:8, 4:8, 4:8].any() and huge[5, 2, 5] > 0  # the largest hole is never filled
    # Volumes are in cubic micrometres: with 0.5 um voxels the hole is 0.125 um^3.
    iso = (0.5, 0.5, 0.5)
    assert voronoi_on_mask(lab, m, threshold=0.5, spacing=iso, max_hole_size=0.1)[5, 2, 5] == 0
    assert voronoi_on_mask(lab, m, threshold=0.5, spacing=iso, max_hole_size=0.125)[5, 2, 5] > 0


def test_voronoi_clear_border():
    lab = np.zeros((6, 6, 12), np.uint16)
    lab[2:4, 2:4, 0:2] = 1     # touches the x = 0 face
    lab[2:4, 2:4, 5:7] = 2
    m = np.zeros(lab.shape, np.float32)
    m[1:5, 1:5, :] = 1
    kept = voronoi_on_mask(lab, m, threshold=0.5)
    cleared = voronoi_on_mask(lab, m, threshold=0.5, clear_border=True)
    assert set(np.unique(kept)) == {0, 1, 2}
    # Cell 2 grew to x = 11 and touches the border too after the Voronoi: both go.
    assert cleared.max() == 0
    m[:, :, 10:] = 0
    cleared = voronoi_on_mask(lab, m, threshold=0.5, clear_border=True)
    assert set(np.unique(cleared)) == {0, 2}


def test_voronoi_rejects_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        voronoi_on_mask(np.zeros((2, 2, 2), np.uint16), np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="integer"):
        voronoi_on_mask(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ConfigError, match="threshold"):
        voronoi_on_mask(np.zeros((2, 2, 2), np.uint16), np.zeros((2, 2, 2), np.float32), threshold="x")
    with pytest.raises(ConfigError, match="max_hole_size"):
        voronoi_on_mask(np.zeros((2, 2, 2), np.uint16), np.zeros((2, 2, 2), np.float32), max_hole_size=-1)


# --------------------------------------------------------------------------- properties


def brute_force_voronoi(instances, territory, spacing):
    """Reference: nearest cell voxel of the same 6-connected territory piece, smallest label on ties."""
    comp, _ = ndi.label(territory, SIX)
    cells = np.where(territory, instances, 0)
    out = cells.copy()
    pts = np.argwhere(cells > 0)
    labs = cells[cells > 0]
    pcomp = comp[cells > 0]
    sp = np.asarray(spacing, float)
    for p in np.argwhere(territory & (cells == 0)):
        same = pcomp == comp[tuple(p)]
        if not same.any():
            continue
        d2 = (((pts[same] - p) * sp) ** 2).sum(1)
        best = d2.min()
        out[tuple(p)] = labs[same][d2 <= best * (1 + 1e-9) + 1e-12].min()
    return out


SPACINGS = [(1.0, 1.0, 1.0), (2.0, 0.5, 0.5), (1.5, 1.0, 0.5), (3.0, 1.0, 1.0)]


@st.composite
def voronoi_cases(draw):
    shape = tuple(draw(st.integers(1, 12)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["random", "sparse", "none", "one", "everywhere", "border"]))
    rng = np.random.default_rng(seed)
    territory = rng.random(shape) < draw(st.floats(0.3, 1.0, allow_subnormal=False))
    inst = np.zeros(shape, np.uint16)
    if kind == "random":
        inst = np.where(rng.random(shape) < 0.15, rng.integers(1, 6, shape), 0).astype(np.uint16)
    elif kind == "sparse":  # few cells far apart: exercises the exact KD-tree search
        for _ in range(draw(st.integers(1, 3))):
            inst[tuple(rng.integers(0, s) for s in shape)] = rng.integers(1, 60000)
    elif kind == "one":
        inst[tuple(rng.integers(0, s) for s in shape)] = 7
    elif kind == "everywhere":  # one cell touching every border
        inst[:] = 3
    elif kind == "border":
        inst[0] = 1
        inst[-1] = 2
        inst[:, :, 0] = 4
    spacing = draw(st.sampled_from(SPACINGS))
    return inst, territory, spacing


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(voronoi_cases())
def test_voronoi_properties(case):
    check_voronoi_properties(*case)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(voronoi_cases())
def test_voronoi_properties_with_the_kd_tree_search(case):
    """Voxels far from every cell: the KD-tree search (used when many are left) gives the same."""
    import cartocell_bmz.core.voronoi as pp

    saved = pp.WINDOW_SEARCH_MAX
    pp.WINDOW_SEARCH_MAX = 0
    try:
        check_voronoi_properties(*case)
    finally:
        pp.WINDOW_SEARCH_MAX = saved


def check_voronoi_properties(inst, territory, spacing):
    out = voronoi_on_mask(inst, territory.astype(np.float32), threshold=0.5, spacing=spacing, max_hole_size=0)
    assert out.shape == inst.shape and out.dtype == np.uint16
    # No label outside the territory.
    assert not out[~territory].any()
    # A cell's own voxels inside the territory never change.
    own = territory & (inst > 0)
    assert np.array_equal(out[own], inst[own])
    # Every territory voxel of a piece that holds a cell is labelled; other pieces stay 0.
    comp, n = ndi.label(territory, SIX)
    live = np.zeros(n + 1, bool)
    live[comp[own]] = True
    live[0] = False
    assert np.array_equal(out > 0, live[comp])
    # Labels come from the input only, and each voxel takes the nearest cell.
    assert set(np.unique(out)) - {0} <= set(np.unique(inst[own]))
    assert np.array_equal(out, brute_force_voronoi(inst, territory, spacing))


def test_voronoi_degenerate_cases():
    shape = (4, 5, 6)
    full = np.ones(shape, np.float32)
    assert voronoi_on_mask(np.zeros(shape, np.uint16), full, threshold=0.5).max() == 0
    assert voronoi_on_mask(np.zeros(shape, np.uint16), np.zeros(shape, np.float32)).max() == 0
    one = np.zeros(shape, np.uint32)
    one[0, 0, 0] = 9
    out = voronoi_on_mask(one, full, threshold=0.5)
    assert out.dtype == np.uint32 and (out == 9).all()
    everywhere = np.full(shape, 5, np.uint16)
    assert (voronoi_on_mask(everywhere, full, threshold=0.5) == 5).all()
    assert voronoi_on_mask(everywhere, full, threshold=0.5, clear_border=True).max() == 0
    signed = np.zeros(shape, np.int64)
    signed[1, 1, 1] = 3
    assert voronoi_on_mask(signed, full, threshold=0.5).dtype == np.uint32


def test_clear_border_is_scikit_images_for_connected_cells():
    """Cells touching any of the six faces go, as with skimage.segmentation.clear_border(buffer_size=0)."""
    from skimage.segmentation import clear_border

    cyst = make_cyst((24, 64, 64), (1.0, 0.5, 0.5), stage="day10", seed=6)
    m = (cyst.labels > 0).astype(np.float32)
    for crop in ((slice(None), slice(0, 32), slice(None)), (slice(6, 20), slice(None), slice(10, 60)),
                 (slice(None),) * 3):
        lab, mask = cyst.labels[crop], m[crop]
        kept = voronoi_on_mask(lab, mask, threshold=0.5, max_hole_size=0)
        cleared = voronoi_on_mask(lab, mask, threshold=0.5, max_hole_size=0, clear_border=True)
        assert np.array_equal(cleared, clear_border(kept, buffer_size=0))
        faces = np.unique(np.concatenate([kept[0].ravel(), kept[-1].ravel(), kept[:, 0].ravel(),
                                          kept[:, -1].ravel(), kept[:, :, 0].ravel(), kept[:, :, -1].ravel()]))
        assert not np.isin(cleared, faces[faces > 0]).any()
        assert np.array_equal(cleared[cleared > 0], kept[cleared > 0])


def test_clear_border_removes_a_cell_in_pieces_whole():
    """A cell whose one piece touches the border goes whole; scikit-image keeps the inner piece."""
    from skimage.segmentation import clear_border

    lab = np.zeros((5, 5, 12), np.uint16)
    lab[2, 2, 0:2] = 1         # a piece of cell 1 on the x = 0 face
    lab[2, 2, 5:7] = 1         # another piece of cell 1, inside
    lab[2, 2, 9] = 2
    m = np.zeros(lab.shape, np.float32)
    m[lab > 0] = 1
    cleared = voronoi_on_mask(lab, m, threshold=0.5, clear_border=True)
    assert set(np.unique(cleared)) == {0, 2}
    assert set(np.unique(clear_border(lab))) == {0, 1, 2}
