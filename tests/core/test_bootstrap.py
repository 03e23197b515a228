"""Tests of cartocell_bmz.core.bootstrap: the paired bootstrap of per-image differences."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.core.bootstrap import paired_bootstrap


def test_known_difference_lies_in_the_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 0.9, 60)
    b = a + 0.05 + rng.normal(0, 0.03, 60)  # true mean difference 0.05
    r = paired_bootstrap(a, b, seed=1)
    assert r.low < 0.05 < r.high and r.low < r.difference < r.high
    assert r.difference == pytest.approx(float(np.mean(b - a)))
    assert 0.005 < r.high - r.low < 0.04  # about 2 x 1.96 x 0.03 / sqrt(60) = 0.015
    assert r.n == 60 and r.n_resamples == 10_000 and r.confidence == 0.95


def test_identical_inputs_give_zero_interval_and_constant_shift_a_point():
    a = [0.7, 0.8, 0.9, 1.0]
    r = paired_bootstrap(a, a)
    assert (r.difference, r.low, r.high) == (0.0, 0.0, 0.0)
    shifted = paired_bootstrap(a, [v - 0.25 for v in a])
    assert shifted.low == pytest.approx(-0.25) and shifted.high == pytest.approx(-0.25)


def test_seeded_and_pairing_matters():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 1, 20)
    b = a + 0.02
    first, again = paired_bootstrap(a, b, seed=4), paired_bootstrap(a, b, seed=4)
    assert first == again
    other = paired_bootstrap(a, rng.permutation(b), seed=4)  # pairing lost: a much wider interval
    assert other.high - other.low > 10 * (first.high - first.low + 1e-12)
    assert "95% CI" in str(first) and set(first.as_dict()) >= {"difference", "low", "high"}


@pytest.mark.parametrize("a, b, kwargs, message", [
    ([1.0], [1.0, 2.0], {}, "same number"),
    ([], [], {}, "at least one"),
    ([np.nan], [1.0], {}, "finite"),
    ([1.0], [1.0], {"n_resamples": 0}, "n_resamples"),
    ([1.0], [1.0], {"confidence": 1.0}, "confidence"),
])
def test_bad_inputs_are_refused(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b, **kwargs)
