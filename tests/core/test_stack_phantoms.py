"""Synthetic multi-cyst stacks: the truth table matches the labels, determinism, every kind appears."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cartocell_bmz.core.stack_phantoms import KINDS, box_iou, make_stack

SHAPE = (28, 160, 208)


@pytest.fixture(scope="module")
def stack():
    return make_stack(SHAPE, seed=2, raw=True)


def test_every_kind_is_placed_once_or_twice(stack):
    kinds = [c.kind for c in stack.cysts]
    assert set(kinds) == set(KINDS)
    assert kinds.count("touching") == 2 and kinds.count("single") == 4
    assert all(c.expected == KINDS[c.kind] for c in stack.cysts)


def test_boxes_hold_the_cells_and_only_cut_cysts_reach_the_border(stack):
    fg = stack.labels > 0
    for c in stack.cysts:
        z0, y0, x0, z1, y1, x1 = c.box
        assert fg[z0:z1, y0:y1, x0:x1].any()
        at_border = min(c.box[:3]) == 0 or any(e == s for e, s in zip(c.box[3:], SHAPE))
        assert at_border == (c.kind == "cut"), c


def test_free_objects_are_separate_regions_and_pairs_are_one(stack):
    regions, n = ndi.label(stack.labels > 0)
    objects = {c.box: c for c in stack.cysts}
    pairs = sum(1 for c in stack.cysts if c.kind == "touching") // 2
    assert n == len(objects) - pairs
    for c in stack.cysts:  # each truth box is the bounding box of its region (pairs: of its own part)
        if c.kind in ("single", "two_layers", "two_lumens", "debris"):
            z0, y0, x0, z1, y1, x1 = c.box
            ids = np.unique(regions[z0:z1, y0:y1, x0:x1])
            sl = ndi.find_objects(regions)
            best = max(box_iou(c.box, tuple(s.start for s in sl[i - 1]) + tuple(s.stop for s in sl[i - 1]))
                       for i in ids if i)
            assert best == pytest.approx(1.0)


def test_raw_image_and_determinism(stack):
    assert stack.raw.dtype == np.uint16 and stack.raw.shape == SHAPE
    # membranes are brighter than the background
    assert stack.raw[stack.labels > 0].mean() > 1.5 * stack.raw[stack.labels == 0].mean()
    again = make_stack(SHAPE, seed=2, raw=False)
    assert np.array_equal(again.labels, stack.labels) and again.cysts == stack.cysts
    other = make_stack(SHAPE, seed=3, raw=False)
    assert not np.array_equal(other.labels, stack.labels)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least the cyst shape"):
        make_stack((10, 64, 64))
    with pytest.raises(ValueError, match="unknown kind"):
        make_stack(mix={"triple": 1})
