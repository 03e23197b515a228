"""Tests of cartocell_bmz.core.postprocess: watershed by channels and the mask-bounded Voronoi."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from cartocell_bmz.errors import ConfigError
from cartocell_bmz.core.matching import match
from cartocell_bmz.core.phantoms import make_cyst
from cartocell_bmz.core.postprocess import (
    LEGACY_THRESHOLDS,
    PostprocessConfig,
    check_threshold,
    otsu_threshold,
    postprocess,
    voronoi_on_mask,
    watershed_by_channels,
)
from cartocell_bmz.core.targets import contours, make_targets

SIX = ndi.generate_binary_structure(3, 1)


def f1(gt, pred, threshold=0.5) -> float:
    return match(gt, pred, thresholds=(threshold,))[0].f1


def corrupt(labels, spacing, blur_um=0.5, noise=0.1, seed=0) -> np.ndarray:
    """Targets of ``labels`` blurred by ``blur_um`` micrometres, plus Gaussian noise, clipped."""
    rng = np.random.default_rng(seed)
    sigma = [blur_um / s for s in spacing]
    t = make_targets(labels).astype(np.float32)
    out = np.stack([ndi.gaussian_filter(ch, sigma) + rng.normal(0, noise, ch.shape) for ch in t])
    return np.clip(out, 0, 1).astype(np.float32)


def lumen_core(labels) -> np.ndarray:
    """The lumen of a cyst (enclosed background) less two voxels next to the cells."""
    lumen = ndi.binary_fill_holes(labels > 0) & (labels == 0)
    return ndi.binary_erosion(lumen, iterations=2)


@pytest.fixture(scope="module")
def cysts():
    """Three synthetic cysts of well-sampled cells (48 x 96 x 96, about 30-65 cells)."""
    spacing = (1.0, 0.5, 0.5)
    return [
        make_cyst((48, 96, 96), spacing, stage=stage, max_cells=70, seed=seed)
        for seed, stage in ((1, "day7"), (2, "day10"), (3, "day4"))
    ]


# --------------------------------------------------------------------------- configuration


def test_config_defaults_and_legacy():
    cfg = PostprocessConfig()
    assert (cfg.seed_b_threshold, cfg.seed_c_threshold, cfg.growth_threshold, cfg.mask_threshold) == ("auto",) * 4
    assert cfg.min_seed_size == 5 and cfg.max_hole_size == "auto"
    assert not cfg.clear_border and not cfg.smooth
    legacy = PostprocessConfig.legacy(clear_border=True)
    assert (legacy.seed_b_threshold, legacy.seed_c_threshold, legacy.growth_threshold) == LEGACY_THRESHOLDS == (0.2, 0.2, 0.25)
    assert legacy.clear_border and legacy.mask_threshold == "auto"
    assert PostprocessConfig(seed_b_threshold="0.4").seed_b_threshold == 0.4
    assert cfg.as_dict()["min_seed_size"] == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"seed_b_threshold": "high"}, "seed_b_threshold"),
        ({"seed_c_threshold": float("nan")}, "seed_c_threshold"),
        ({"growth_threshold": None}, "growth_threshold"),
        ({"mask_threshold": True}, "mask_threshold"),
        ({"min_seed_size": 2.5}, "min_seed_size"),
        ({"min_seed_size": -1}, "min_seed_size"),
        ({"max_hole_size": -3}, "max_hole_size"),
        ({"max_hole_size": "big"}, "max_hole_size"),
        ({"clear_border": "yes"}, "clear_border"),
        ({"smooth": 1}, "smooth"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field) as info:
        PostprocessConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_is_frozen():
    with pytest.raises(Exception):
        PostprocessConfig().min_seed_size = 3  # type: ignore[misc]


def test_check_threshold():
    assert check_threshold(" Auto ") == "auto"
    assert check_threshold(1) == 1.0
    with pytest.raises(ConfigError, match="--seed-b must be 'auto' or a number, got 'x'"):
        check_threshold("x", "--seed-b")


def test_otsu_equals_scikit_image():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(1)
    samples = [
        np.r_[rng.normal(0.2, 0.05, 5000), rng.normal(0.8, 0.1, 2000)],
        rng.random(10000),
        np.r_[np.zeros(900), rng.random(100)],
        rng.normal(5, 2, (20, 30, 40)),
    ]
    for x in samples:
        x = x.astype(np.float32)
        assert otsu_threshold(x) == pytest.approx(float(threshold_otsu(x)), abs=1e-5)
    assert otsu_threshold(np.full(10, 0.3, np.float32)) == pytest.approx(0.3)


# --------------------------------------------------------------------------- watershed


def two_blobs(gap_c=0.9) -> np.ndarray:
    """Two 6x6x6 bodies of B = 0.9 two voxels apart, the gap marked as contour."""
    p = np.zeros((3, 8, 8, 16), np.float32)
    p[0, 1:7, 1:7, 1:7] = 0.9
    p[0, 1:7, 1:7, 9:15] = 0.9
    p[0, 1:7, 1:7, 7:9] = 0.3  # a weak bridge of B between the bodies
    p[1, 1:7, 1:7, 7:9] = gap_c
    p[2, 1:7, 1:7, 1:15] = 1
    return p


def test_watershed_splits_at_contours_and_floods_the_growth_mask():
    lab = watershed_by_channels(two_blobs(), config=PostprocessConfig.legacy())
    assert lab.dtype == np.uint16 and lab.shape == (8, 8, 16)
    assert sorted(np.unique(lab)) == [0, 1, 2]
    # Seeds are the two bodies; the bridge (B 0.3 > growth 0.25) is flooded, half each.
    assert (lab == 1).sum() == (lab == 2).sum() == 216 + 36
    assert np.array_equal(lab > 0, two_blobs()[0] > 0.25)
    # Without the contour the bridge joins the bodies into one seed.
    merged = watershed_by_channels(two_blobs(gap_c=0.0), config=PostprocessConfig.legacy())
    assert merged.max() == 1 and (merged == 1).sum() == 2 * 216 + 72


def test_small_seeds_are_removed():
    p = np.zeros((3, 12, 12, 30), np.float32)
    p[0, 2:4, 2:4, 2:4] = 0.9          # 8 voxels: kept with min_seed_size 7, dropped with 8
    p[0, 2:3, 2:3, 10:15] = 0.9        # 5 voxels: dropped with the default (<= 5)
    p[0, 2:4, 2:5, 20:21] = 0.9        # 6 voxels: kept with the default
    cfg = PostprocessConfig.legacy()
    lab = watershed_by_channels(p, config=cfg)
    assert lab.max() == 2 and (lab[2, 2, 10:15] == 0).all() and lab[2, 2, 20] > 0
    assert watershed_by_channels(p, config=PostprocessConfig.legacy(min_seed_size=7)).max() == 1
    assert watershed_by_channels(p, config=PostprocessConfig.legacy(min_seed_size=8)).max() == 0
    assert watershed_by_channels(p, config=PostprocessConfig.legacy(min_seed_size=0)).max() == 3


def test_watershed_uses_manual_thresholds():
    p = np.zeros((3, 8, 8, 8), np.float32)
    p[0, 2:6, 2:6, 2:6] = 0.22
    p[0, 3:5, 3:5, 3:5] = 0.5
    # Legacy growth 0.25 keeps only the 2^3 core; growth 0.2 lets the core flood the 4^3 block.
    legacy = watershed_by_channels(p, config=PostprocessConfig.legacy(min_seed_size=0))
    assert (legacy == 1).sum() == 8 and legacy.max() == 1
    grown = watershed_by_channels(p, config=PostprocessConfig(0.3, 0.2, 0.2, min_seed_size=0))
    assert (grown == 1).sum() == 64 and grown.max() == 1


def test_empty_and_constant_probabilities():
    assert watershed_by_channels(np.zeros((3, 4, 5, 6), np.float32)).max() == 0
    inst, vor = postprocess(np.zeros((3, 4, 5, 6), np.float32))
    assert inst.max() == 0 and vor.max() == 0 and vor.shape == (4, 5, 6)


def test_watershed_rejects_bad_arrays():
    with pytest.raises(ValueError, match=r"\(3, Z, Y, X\)"):
        watershed_by_channels(np.zeros((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(3, Z, Y, X\)"):
        watershed_by_channels(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ConfigError, match="spacing"):
        watershed_by_channels(np.zeros((3, 4, 4, 4), np.float32), spacing=(1, 0, 1))


def test_watershed_agrees_with_scikit_image(cysts):
    """Same seeds and mask: our level-quantised flood and skimage's heap flood agree."""
    from skimage.segmentation import watershed

    cyst = cysts[1]
    p = corrupt(cyst.labels, cyst.spacing, seed=5)
    ours = watershed_by_channels(p)
    b, c = p[0], p[1]
    tb, tc = otsu_threshold(b), otsu_threshold(c)
    seeds, n = ndi.label((b > tb) & (c < tc) & (b > tb / 2), SIX)
    sizes = np.bincount(seeds.ravel())
    keep = sizes > 5
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, keep.sum() + 1)
    ref = watershed(-b, lut[seeds], mask=b > tb / 2)
    assert ours.max() == ref.max() == keep.sum()
    assert np.array_equal(ours > 0, ref > 0)
    agree = (ours == ref)[ref > 0].mean()
    assert agree > 0.99, agree
    assert f1(ref, ours) == 1.0


def test_smoothing_option_runs_and_keeps_the_cells(cysts):
    cyst = cysts[0]
    p = corrupt(cyst.labels, cyst.spacing, seed=1)
    plain = watershed_by_channels(p, spacing=cyst.spacing)
    smooth = watershed_by_channels(p, spacing=cyst.spacing, config=PostprocessConfig(smooth=True))
    assert plain.max() == smooth.max()  # same seeds
    assert np.array_equal(plain > 0, smooth > 0)  # same growth mask
    assert 0 < (plain != smooth).mean() < 0.01  # only boundaries move


# --------------------------------------------------------------------------- acceptance


def test_pipeline_recovers_synthetic_cysts(cysts):
    """Targets -> blurred, noisy probabilities -> watershed -> Voronoi: F1@0.5 >= 0.98."""
    for i, cyst in enumerate(cysts):
        p = corrupt(cyst.labels, cyst.spacing, blur_um=0.5, noise=0.1, seed=i)
        inst, vor = postprocess(p, spacing=cyst.spacing)
        f1_ws, f1_vor = f1(cyst.labels, inst), f1(cyst.labels, vor)
        assert f1_vor >= 0.98, (i, f1_ws, f1_vor)
        assert f1_vor >= f1_ws, (i, f1_ws, f1_vor)
        # The lumen stays empty (BiaPy 3.7.1's hole filling hands it all to the cells).
        core = lumen_core(cyst.labels)
        assert core.sum() > 1000
        assert not vor[core].any()
        # Voronoi only grows cells: every watershed voxel inside the result keeps its label.
        kept = (inst > 0) & (vor > 0)
        assert np.array_equal(vor[kept], inst[kept])
        assert (vor > 0).sum() > (inst > 0).sum()


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
        return np.mean([r[2] for r in match(gt, pred, thresholds=(0.1,))[0].pairs()])

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
    import cartocell_bmz.core.postprocess as pp

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
