"""Tests of cartocell_bmz.core.normalize: zero mean, unit variance as bioimageio.core computes it."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.core.normalize import NORM_EPS, zero_mean_unit_variance


def test_zero_mean_unit_variance_figures():
    image = np.array([[1, 2, 3], [4, 5, 6]], np.uint16)
    out = zero_mean_unit_variance(image)
    std = np.sqrt(((image - 3.5) ** 2).mean())  # population std: 1.7078
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.allclose(out, (image - 3.5) / (std + NORM_EPS), atol=1e-6)
    assert zero_mean_unit_variance(image, eps=10.0).max() == pytest.approx(2.5 / (std + 10.0), abs=1e-6)


def test_no_contrast_and_empty():
    assert not zero_mean_unit_variance(np.full((2, 3, 4), 1234.0)).any()
    assert zero_mean_unit_variance(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_the_statistics_are_float32_as_bioimageio_core_computes_them():
    """A float64 computation differs in the last bits; ours is the float32 one, whatever the input type."""
    rng = np.random.default_rng(0)
    image = rng.normal(1000, 300, (20, 64, 64)).astype(np.float32)
    x = image.reshape(-1)
    mean = x.mean()
    c = x - mean
    std = np.sqrt(np.einsum("i,i->", c, c) / c.size)
    expected = (image - mean) / (std + np.float32(NORM_EPS))
    assert np.array_equal(zero_mean_unit_variance(image), expected)
    assert np.array_equal(zero_mean_unit_variance(image.astype(np.float64)), expected)  # cast to float32 first


def test_chunked_statistics_normalise_like_the_whole_image():
    """Two passes over z-slabs (float64): the whole image's statistics, blocks normalised as the whole."""
    from cartocell_bmz.core.normalize import apply_zero_mean_unit_variance, chunked_mean_std

    rng = np.random.default_rng(0)
    image = (rng.poisson(300, size=(23, 40, 52)) * 3).astype(np.uint16)
    exact = image.astype(np.float64)
    for planes in (1, 5, 23, 100):
        mean, std = chunked_mean_std(image, planes=planes)
        assert mean.dtype == np.float32 and std.dtype == np.float32
        assert mean == np.float32(exact.mean()) and std == np.float32(exact.std())
        whole = zero_mean_unit_variance(image)
        block = apply_zero_mean_unit_variance(image[3:9, 10:30], mean, std)
        assert block.dtype == np.float32
        # float32 statistics (as bioimageio.core) agree with the exact ones to a float32 rounding
        assert np.abs(block - whole[3:9, 10:30]).max() < 1e-5
    assert chunked_mean_std(np.full((4, 3, 3), 7, np.uint8)) == (np.float32(7), np.float32(0))
