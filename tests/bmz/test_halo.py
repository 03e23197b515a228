"""Tests of cartocell_bmz.bmz.halo: a package's input sizes and the measured halo.

The halo chosen for a built package is checked in test_export.py (``test_halo_is_the_measured_reach_of_the_network``).
"""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz import networks
from cartocell_bmz.bmz.halo import AxisSizes, blocked_difference, halo_units
from cartocell_bmz.errors import InputError


def test_axis_sizes_leave_output_after_cropping_the_halo():
    sizes = AxisSizes.from_halo((1, 4, 4), (6, 10, 10))
    assert sizes.minimum == (13, 24, 24) and sizes.step == (1, 4, 4)
    assert sizes.largest_valid((32, 96, 96), cap=(32, 64, 64)) == (32, 64, 64)
    assert sizes.largest_valid((20, 30, 30)) == (20, 28, 28)
    with pytest.raises(InputError):
        sizes.largest_valid((12, 96, 96))
    assert halo_units((1, 4, 4)) == (1, 2, 2) and halo_units((4, 8, 8)) == (2, 4, 4)


def test_blocked_difference_is_zero_beyond_the_receptive_field_and_not_below():
    """A 1-level net (two 3x3x3 convs and a 1x1x1 head) sees 2 voxels each way: halo 2 is exact."""
    import torch

    torch.manual_seed(0)
    net = networks.build_network("resunet", feature_maps=[4], z_down=[], dropout=0.0).eval()
    img = np.random.default_rng(0).normal(size=(12, 20, 20)).astype(np.float32)
    inner = (4, 4, 4)
    assert blocked_difference(net, img, (2, 2, 2), inner) < 1e-5
    assert blocked_difference(net, img, (1, 1, 1), inner) > 1e-3
    # not splitting an axis needs no halo along it
    assert blocked_difference(net, img, (2, 0, 0), (4, 20, 20)) < 1e-5


def test_a_given_halo_is_checked_then_measured():
    """measure_halo: exact past the receptive field, a difference below it, bad values refused."""
    import torch

    from cartocell_bmz.bmz.halo import measure_halo
    from cartocell_bmz.errors import ConfigError

    torch.manual_seed(0)
    net = networks.build_network("resunet", feature_maps=[4], z_down=[], dropout=0.0).eval()
    img = np.random.default_rng(1).normal(size=(12, 20, 20)).astype(np.float32) * 50 + 300
    exact = measure_halo(net, img, (1, 1, 1), (2, 2, 2))
    assert exact.halo == (2, 2, 2) and exact.trials == () and exact.met and exact.max_difference < 1e-5
    short = measure_halo(net, img, (1, 1, 1), (1, 1, 1))
    assert short.max_difference > 1e-3 and short.tolerance == 0.005
    with pytest.raises(ConfigError, match="must be 3 positive multiples of \\[1, 2, 2\\]"):
        measure_halo(net, img, (1, 4, 4), (2, 3, 2))
    with pytest.raises(ConfigError, match="halo \\[0, 2, 2\\]"):
        measure_halo(net, img, (1, 1, 1), (0, 2, 2))
    with pytest.raises(InputError, match="smaller than the package's minimum input"):
        measure_halo(net, img, (1, 1, 1), (8, 2, 2))
