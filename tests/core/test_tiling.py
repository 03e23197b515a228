"""Tile grids, blending weights and mirrored extraction (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cartocell_bmz.core.tiling import accumulate, axis_tiling, extract_tile, plan_tiles, ramp, reflect_index


def _coverage(t):
    total = np.zeros(t.size)
    for start, w in zip(t.starts, t.weights):
        for i in range(t.tile):
            if 0 <= start + i < t.size:
                total[start + i] += w[i]
    return total


def test_axis_tiling_known_grid():
    t = axis_tiling(100, 40, margin=4, overlap=8, align=4)
    # stride (40 - 8 - 8) = 24, last tile aligned up to 60 (= 100 - 40)
    assert t.starts == (0, 24, 48, 60)
    assert np.allclose(_coverage(t), 1.0, atol=1e-6)
    # a border tile keeps its border side, an inner tile drops its 4-voxel margins
    first, second = t.weights[0], t.weights[1]
    assert first[0] > 0 and first[-4:].max() == 0
    assert second[:4].max() == 0 and second[-4:].max() == 0
    # the blend: the first tile's weight falls smoothly where the second rises
    lo, hi = t.starts[1] + 4, t.starts[1] + 12
    ramp_first = first[lo:hi]
    assert np.all(np.diff(ramp_first) < 0) and ramp_first[0] > 0.9 and ramp_first[-1] < 0.1


def test_starts_are_aligned_from_the_border():
    t = axis_tiling(200, 64, margin=6, overlap=6, align=8, border=10)
    assert all((s + 10) % 8 == 0 for s in t.starts)
    assert t.starts[0] == -10 and t.starts[-1] + 64 >= 200 + 10
    assert np.allclose(_coverage(t), 1.0, atol=1e-6)
    # nothing outside the volume is kept
    for s, w in zip(t.starts, t.weights):
        pos = np.arange(s, s + 64)
        assert w[(pos < 0) | (pos >= 200)].max(initial=0) == 0


def test_volume_smaller_than_a_tile_is_one_tile():
    t = axis_tiling(10, 32, margin=4, overlap=4)
    assert t.starts == (0,)
    assert np.allclose(t.weights[0][:10], 1.0) and t.weights[0][10:].max() == 0


def test_valid_output_range_and_errors():
    t = axis_tiling(60, 32, margin=6, overlap=2, valid=(4, 28), border=4)
    assert np.allclose(_coverage(t), 1.0, atol=1e-6)
    assert all(w[:4].max() == 0 and w[28:].max() == 0 for w in t.weights)
    with pytest.raises(ValueError, match="cannot keep anything"):
        axis_tiling(100, 16, margin=8, overlap=0)
    with pytest.raises(ValueError):
        axis_tiling(0, 16)


def test_ramp_is_smooth_and_positive():
    r = ramp(8)
    assert np.all(r > 0) and np.all(r < 1) and np.all(np.diff(r) > 0)
    assert np.allclose(r + r[::-1], 1.0)  # complementary ramps sum to one


def test_reflect_index_matches_numpy_pad():
    for n in (1, 2, 5, 9):
        a = np.arange(n)
        padded = np.pad(a, 3 * n, mode="reflect") if n > 1 else np.zeros(7 * n, int)
        assert np.array_equal(a[reflect_index(np.arange(-3 * n, 4 * n), n)], padded)


def test_extract_and_accumulate_rebuild_the_volume():
    rng = np.random.default_rng(1)
    vol = rng.random((19, 45, 37), dtype=np.float32)
    plan = plan_tiles(vol.shape, (16, 24, 24), margin=(2, 4, 4), overlap=(2, 4, 4), align=(1, 4, 4), border=(1, 2, 2))
    assert plan.grid[1] > 1 and plan.n_tiles == np.prod(plan.grid)
    out = np.zeros((2, *vol.shape), np.float32)
    for tile in plan.tiles():
        block = extract_tile(vol, tile)
        assert block.shape == (16, 24, 24)
        accumulate(out, np.stack([block, 2 * block]), tile)
    assert np.allclose(out[0], vol, atol=1e-5) and np.allclose(out[1], 2 * vol, atol=1e-5)


def test_extract_tile_mirrors_past_the_border():
    vol = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    plan = plan_tiles(vol.shape, (8, 8, 8))
    tile = next(plan.tiles())
    block = extract_tile(vol, tile)
    expected = np.pad(vol, ((0, 3), (0, 2), (0, 1)), mode="reflect")
    assert np.array_equal(block, expected)


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(1, 300), tile=st.integers(8, 96), margin=st.integers(0, 12), overlap=st.integers(0, 12),
    align=st.sampled_from([1, 2, 4, 8]), border=st.integers(0, 10),
)
def test_weights_always_sum_to_one(size, tile, margin, overlap, align, border):
    try:
        t = axis_tiling(size, tile, margin=margin, overlap=overlap, align=align, border=border)
    except ValueError as exc:
        assert "cannot keep anything" in str(exc) or "keeps no voxel" in str(exc)
        return
    assert np.allclose(_coverage(t), 1.0, atol=1e-5)
    assert all((s + border) % align == 0 for s in t.starts)
    assert all(w.min() >= 0 for w in t.weights)


def test_tiles_holding_only_border_are_dropped():
    # found by hypothesis: a one-voxel volume with a 6-voxel mirrored border planned a second,
    # empty tile
    t = axis_tiling(1, 8, margin=0, overlap=0, align=4, border=6)
    assert t.starts == (-6,) and t.weights[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
