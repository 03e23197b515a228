"""Tests of cartocell_bmz.core.targets: B, C, M target channels from labels."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.errors import ConfigError
from cartocell_bmz.core.targets import TARGET_MODES, contours, make_targets


def two_boxes() -> np.ndarray:
    """Two 4x4x4 cells touching along x, with one voxel of background around them."""
    lab = np.zeros((6, 6, 10), np.uint16)
    lab[1:5, 1:5, 1:5] = 1
    lab[1:5, 1:5, 5:9] = 2
    return lab


def test_modes_and_default():
    assert TARGET_MODES[0] == "cartocell"
    assert set(TARGET_MODES) == {"cartocell", "biapy37"}
    lab = two_boxes()
    assert np.array_equal(make_targets(lab), make_targets(lab, mode="cartocell"))


def test_contours_equal_skimage_thick_boundaries():
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(0)
    for trial in range(5):
        lab = rng.integers(0, 4, size=(5, 7, 9)).astype(np.uint16)
        lab[rng.random(lab.shape) < 0.3] = 0
        ref = find_boundaries(lab, connectivity=1, mode="thick")
        assert np.array_equal(contours(lab), ref), trial
    cyst = np.zeros((8, 8, 8), np.uint16)
    assert not contours(cyst).any()


def test_cartocell_targets_on_two_touching_boxes():
    lab = two_boxes()
    b, c, m = make_targets(lab).astype(bool)
    cells = lab > 0
    # Every face of each 4x4x4 cell touches background or the other cell, so B keeps
    # the inner 2x2x2 of each: 16 voxels.
    assert b.sum() == 16
    assert np.array_equal(b, cells & ~c)
    assert np.array_equal(m, cells)
    # The contour holds both sides of the cell-cell boundary and the background voxels
    # touching the cells (face neighbours only).
    assert c[2, 2, 4] and c[2, 2, 5]
    assert c[0, 2, 2] and not c[0, 0, 0]
    assert c.sum() == (cells.sum() - 16) + _background_touching(lab)


def _background_touching(lab: np.ndarray) -> int:
    from scipy import ndimage as ndi

    grown = ndi.binary_dilation(lab > 0, structure=ndi.generate_binary_structure(3, 1))
    return int((grown & (lab == 0)).sum())


def test_biapy37_targets():
    lab = two_boxes()
    b, c, m = make_targets(lab, mode="biapy37").astype(bool)
    cells = lab > 0
    assert np.array_equal(b, cells)
    assert np.array_equal(m, cells | c)
    assert m.sum() == 128 + _background_touching(lab)
    # The two modes share C.
    assert np.array_equal(c, make_targets(lab)[1].astype(bool))


def test_output_type_shape_and_values(small_cyst):
    t = make_targets(small_cyst.labels)
    assert t.dtype == np.uint8 and t.shape == (3,) + small_cyst.labels.shape
    assert set(np.unique(t)) <= {0, 1}
    # The lumen (enclosed background away from the cells) is 0 in every channel.
    from scipy import ndimage as ndi

    lumen = ndi.binary_fill_holes(small_cyst.labels > 0) & (small_cyst.labels == 0)
    core = ndi.binary_erosion(lumen)
    assert core.any() and not t[:, core].any()


def test_no_hole_filling():
    lab = np.ones((5, 5, 5), np.uint16)
    lab[2, 2, 2] = 0  # a one-voxel hole stays background in B and M
    b, c, m = make_targets(lab)
    assert m[2, 2, 2] == 0 and b[2, 2, 2] == 0 and c[2, 2, 2] == 1


def test_bad_inputs():
    with pytest.raises(ConfigError, match="target mode 'old' is unknown"):
        make_targets(np.zeros((2, 2, 2), np.uint16), mode="old")
    with pytest.raises(ValueError, match="3D"):
        make_targets(np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="integers"):
        make_targets(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        make_targets(-np.ones((2, 2, 2), np.int32))
