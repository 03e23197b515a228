"""Tests of cartocell_bmz.core.thresholds: checked thresholds and Otsu's threshold."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.core.thresholds import (
    N_BINS,
    bin_indices,
    check_hole_size,
    check_threshold,
    otsu_from_histogram,
    otsu_threshold,
    resolve_threshold,
)
from cartocell_bmz.errors import ConfigError


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


def test_check_hole_size():
    assert check_hole_size(" AUTO ") == "auto" and check_hole_size("2.5") == 2.5 and check_hole_size(0) == 0.0
    for bad in (-1, "big", True, float("inf"), None):
        with pytest.raises(ConfigError, match="max_hole_size") as info:
            check_hole_size(bad)
        assert "\n" not in str(info.value)


def hand_written_otsu(counts, lo, hi) -> float:
    """The project's former Otsu (float64 sums), kept as the reference of the histogram path."""
    nbins = counts.size
    counts = counts.astype(np.float64)
    centers = lo + (np.arange(nbins) + 0.5) * ((hi - lo) / nbins)
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centers) / np.maximum(w1, 1e-300)
    m2 = (np.cumsum((counts * centers)[::-1]) / np.maximum(w2[::-1], 1e-300))[::-1]
    variance = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centers[:-1][np.argmax(variance)])


def test_otsu_of_the_histogram_is_the_former_hand_written_one(cysts, corrupt):
    """scikit-image's threshold_otsu(hist=...) gives exactly the thresholds of the former code."""
    rng = np.random.default_rng(2)
    volumes = [corrupt(c.labels, c.spacing, seed=i) for i, c in enumerate(cysts)]
    volumes.append(rng.normal(5, 2, (3, 20, 30, 40)).astype(np.float32))
    volumes.append(np.r_[rng.normal(0.2, 0.05, 5000), rng.normal(0.8, 0.1, 2000)].astype(np.float32)[None])
    for p in volumes:
        for x in p:
            lo, hi = float(x.min()), float(x.max())
            counts = np.bincount(bin_indices(x.ravel(), lo, hi).ravel(), minlength=N_BINS)
            assert otsu_from_histogram(counts, lo, hi) == hand_written_otsu(counts, lo, hi)
            assert otsu_threshold(x) == hand_written_otsu(counts, lo, hi)


def test_resolve_threshold():
    x = np.r_[np.zeros(100), np.ones(100)].astype(np.float32)
    assert resolve_threshold(0.7, x) == 0.7
    assert resolve_threshold("auto", x) == otsu_threshold(x)
    assert resolve_threshold("auto", x, factor=0.5) == otsu_threshold(x) / 2
