"""Tests of the training augmentations (cartocell_bmz.train.augment): geometry kept, determinism, foreground bias."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.train.augment import Augmentations, random_patch


def _blob_image():
    """A normalised image equal to its own B target (a few boxes), so geometry can be checked."""
    mask = np.zeros((12, 40, 40), bool)
    mask[3:9, 5:20, 8:30] = True
    mask[2:10, 24:36, 14:22] = True
    targets = np.stack([mask, ~mask, mask]).astype(np.uint8)
    return mask.astype(np.float32) * 2 - 1, targets


@pytest.mark.parametrize("rotation", ["any", "90", "none"])
def test_augmented_patch_keeps_image_and_targets_aligned(rotation):
    image, targets = _blob_image()
    aug = Augmentations(rotation=rotation, elastic=True, p_elastic=1.0, brightness=False)
    agree = []
    for seed in range(6):
        x, y = random_patch(image, targets, (8, 24, 24), np.random.default_rng(seed), augment=aug)
        assert x.shape == (8, 24, 24) and y.shape == (3, 8, 24, 24)
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert np.array_equal(y[0] + y[1], np.ones_like(y[0]))  # nearest-neighbour targets stay exclusive
        agree.append(np.mean((x > 0) == (y[0] > 0.5)))
    # linear (image) and nearest (targets) sampling differ only on a thin rim of each box
    assert min(agree) > 0.93


def test_patches_are_deterministic_and_biased_to_foreground():
    image, targets = _blob_image()
    fg = np.flatnonzero(targets[2])
    a = random_patch(image, targets, (4, 8, 8), np.random.default_rng(5), augment=Augmentations(), foreground=fg)
    b = random_patch(image, targets, (4, 8, 8), np.random.default_rng(5), augment=Augmentations(), foreground=fg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    rng = np.random.default_rng(0)
    biased = [random_patch(image, targets, (4, 8, 8), rng, foreground=fg, foreground_bias=1.0)[1][2].max()
              for _ in range(30)]
    assert min(biased) == 1.0  # every patch centred on a foreground voxel contains foreground


def test_brightness_changes_only_intensities():
    image, targets = _blob_image()
    aug = Augmentations(rotation="none", flip=False, elastic=False, brightness=True, p_brightness=1.0)
    x, y = random_patch(image, targets, (12, 40, 40), np.random.default_rng(1), augment=aug)
    plain, _ = random_patch(image, targets, (12, 40, 40), np.random.default_rng(1))
    assert np.array_equal(y, targets.astype(np.float32))
    slope = np.polyfit(plain.ravel(), x.ravel(), 1)[0]
    assert 0.85 <= slope <= 1.15 and not np.allclose(x, plain)
