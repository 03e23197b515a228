"""Tests of cartocell_bmz.core.watershed: seeds, growth mask and the flood."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cartocell_bmz.core.matching import match
from cartocell_bmz.core.postprocess import PostprocessConfig, postprocess
from cartocell_bmz.core.thresholds import otsu_threshold
from cartocell_bmz.core.watershed import flood, watershed_by_channels
from cartocell_bmz.errors import ConfigError

SIX = ndi.generate_binary_structure(3, 1)


def f1(gt, pred, threshold=0.5) -> float:
    return match(gt=gt, pred=pred, thresholds=(threshold,))[0].f1


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


def test_watershed_agrees_with_scikit_image(cysts, corrupt):
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


def test_smoothing_option_runs_and_keeps_the_cells(cysts, corrupt):
    cyst = cysts[0]
    p = corrupt(cyst.labels, cyst.spacing, seed=1)
    plain = watershed_by_channels(p, spacing=cyst.spacing)
    smooth = watershed_by_channels(p, spacing=cyst.spacing, config=PostprocessConfig(smooth=True))
    assert plain.max() == smooth.max()  # same seeds
    assert np.array_equal(plain > 0, smooth > 0)  # same growth mask
    assert 0 < (plain != smooth).mean() < 0.01  # only boundaries move


def flood_inputs(p):
    """Seeds, quantised surface and growth mask of watershed_by_channels (default configuration)."""
    from cartocell_bmz.core.thresholds import bin_indices

    b, c = p[0], p[1]
    tb, tc = otsu_threshold(b), otsu_threshold(c)
    mask = b > tb / 2
    seeds, n = ndi.label((b > tb) & (c < tc) & mask, SIX)
    sizes = np.bincount(seeds.ravel())
    keep = sizes > 5
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, keep.sum() + 1)
    levels = (255 - bin_indices(b, float(b.min()), float(b.max()))).astype(np.uint8)
    return levels, lut[seeds], mask


def test_flood_is_the_flood_of_watershed_by_channels(cysts, corrupt):
    cyst = cysts[2]
    p = corrupt(cyst.labels, cyst.spacing, seed=3)
    levels, markers, mask = flood_inputs(p)
    assert np.array_equal(flood(levels, markers, mask), watershed_by_channels(p))


def test_flood_agrees_with_scikit_image_on_the_same_surface(cysts, corrupt):
    """Same seeds, same 8-bit surface, same mask, 6-connectivity: only plateau ties differ."""
    from skimage.segmentation import watershed

    cyst = cysts[0]
    levels, markers, mask = flood_inputs(corrupt(cyst.labels, cyst.spacing, seed=4))
    ours = flood(levels, markers, mask)
    ref = watershed(levels, markers, mask=mask, connectivity=1)
    assert ours.dtype == np.int32 and np.array_equal(ours > 0, ref > 0)
    assert (ours == ref)[mask].mean() > 0.99
    # A surface without plateaus: the same labels everywhere.
    line = np.array([[[0, 1, 2, 3, 9, 4, 2, 1, 0]]], np.uint8)
    seeds = np.array([[[1, 0, 0, 0, 0, 0, 0, 0, 2]]], np.int32)
    assert flood(line, seeds).tolist() == watershed(line, seeds, connectivity=1).tolist()
    assert flood(line, seeds)[0, 0].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2]


def test_flood_keeps_to_the_mask_and_rejects_bad_inputs():
    levels = np.zeros((1, 3, 5), np.uint8)
    seeds = np.zeros(levels.shape, np.int32)
    seeds[0, 1, 0] = 4
    mask = np.zeros(levels.shape, bool)
    mask[0, 1, :3] = True
    assert flood(levels, seeds, mask)[0].tolist() == [[0] * 5, [4, 4, 4, 0, 0], [0] * 5]
    assert (flood(levels, seeds) == 4).all()
    with pytest.raises(ValueError, match="uint8"):
        flood(levels.astype(np.float32), seeds)
    with pytest.raises(ValueError, match="shape"):
        flood(levels, seeds[:, :2])


def test_watershed_labels_use_the_label_dtype_rule():
    lab = watershed_by_channels(two_blobs(), config=PostprocessConfig.legacy())
    assert lab.dtype == np.uint16
