"""Tests of cartocell_bmz.core.spacing: the one spacing check."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.core.spacing import check_spacing
from cartocell_bmz.errors import ConfigError


def test_check_spacing_accepts_three_positive_sizes():
    assert check_spacing((1, 0.5, 0.5)) == (1.0, 0.5, 0.5)
    assert check_spacing(np.array([2.0, 1.0, 1.0], np.float32)) == (2.0, 1.0, 1.0)
    assert check_spacing(["3", 1, 1]) == (3.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "bad", [(1, 0, 1), (1, -1, 1), (1, 1), (1, 1, 1, 1), (1, float("nan"), 1), (1, 1, float("inf")), "abc", None, 3.0],
)
def test_check_spacing_rejects_with_one_line_naming_the_value(bad):
    with pytest.raises(ConfigError, match="spacing needs three positive sizes Z Y X in micrometres") as info:
        check_spacing(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="^--spacing needs"):
        check_spacing(bad, name="--spacing")


def test_every_entry_point_uses_the_same_check():
    """The post-processing, the notebook API, batch prediction and the phantoms give the same sentence."""
    from cartocell_bmz.core.phantoms import make_cyst
    from cartocell_bmz.core.voronoi import voronoi_on_mask
    from cartocell_bmz.core.watershed import watershed_by_channels

    expected = "spacing needs three positive sizes Z Y X in micrometres, got [1, 0, 1]."
    calls = [
        lambda: watershed_by_channels(np.zeros((3, 4, 4, 4), np.float32), spacing=(1, 0, 1)),
        lambda: voronoi_on_mask(np.zeros((2, 2, 2), np.uint16), np.zeros((2, 2, 2), np.float32), spacing=(1, 0, 1)),
        lambda: make_cyst((8, 8, 8), (1, 0, 1)),
    ]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        assert str(info.value) == expected
