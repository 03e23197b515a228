"""Property tests (hypothesis) of post-processing and metrics on random and degenerate volumes.

What already has properties elsewhere is not repeated here: the Voronoi alone
(``test_postprocess.py``: nearest cell, territory, degenerate masks) and matching
equal to StarDist on random label pairs (``test_matching.py``).  Here:

- the watershed by channels and the whole post-processing on random probability
  maps and degenerate ones: all zeros, constant maps, no cell, one cell, one cell
  touching every border;
- instance matching and the dataset figures on random label volumes with the
  same degenerate cases: invariants that hold whatever the labels (identity,
  symmetry, relabelling, thresholds, bounds, pooling of copies);
- the per-channel IoU.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from cartocell_bmz.core.matching import FIGURES, match
from cartocell_bmz.core.metrics import aggregate, channel_iou
from cartocell_bmz.core.postprocess import PostprocessConfig, otsu_threshold, postprocess, watershed_by_channels
from cartocell_bmz.core.targets import make_targets

SIX = ndi.generate_binary_structure(3, 1)
THRESHOLDS = (0.1, 0.3, 0.5, 0.75, 0.9)
RATIOS = ("precision", "recall", "accuracy", "f1", "mean_matched_score", "mean_true_score", "panoptic_quality")
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = ("random", "blobs", "zeros", "constant", "no_cell", "one_cell", "border_cell")


# --------------------------------------------------------------------------- probability maps


@st.composite
def probability_maps(draw):
    """``(kind, probs)``: a (3, Z, Y, X) float32 map in [0, 1] of one of :data:`KINDS`."""
    shape = (draw(st.integers(1, 8)), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = np.zeros((3, *shape), np.float32)
    if kind == "random":
        p[:] = rng.random(p.shape)
    elif kind == "blobs":  # a few boxes of cell body with their faces as contours, noise around
        p[:] = rng.random(p.shape) * 0.3
        for _ in range(draw(st.integers(1, 4))):
            lo = [int(rng.integers(0, s)) for s in shape]
            hi = [min(s, a + int(rng.integers(1, 6))) for s, a in zip(shape, lo)]
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            p[(0, *box)] = rng.uniform(0.6, 1.0)
            p[(2, *box)] = rng.uniform(0.6, 1.0)
            p[(1, *box)] = rng.random(tuple(b - a for a, b in zip(lo, hi))) * 0.2
    elif kind == "constant":
        p[:] = np.asarray(rng.random(3), np.float32)[:, None, None, None]
    elif kind == "no_cell":  # low cell body everywhere, contours everywhere
        p[0] = rng.random(shape) * 0.1
        p[1] = 0.9 + rng.random(shape) * 0.1
        p[2] = rng.random(shape) * 0.1
    elif kind == "one_cell":
        lo = [int(rng.integers(0, max(1, s - 2))) for s in shape]
        box = tuple(slice(a, min(s, a + 3)) for a, s in zip(lo, shape))
        p[(0, *box)] = 0.9
        p[(2, *box)] = 0.9
    elif kind == "border_cell":  # one cell filling the volume: it touches every border
        p[0] = 0.8 + rng.random(shape) * 0.2
        p[1] = rng.random(shape) * 0.05
        p[2] = 0.9
    return kind, p


@st.composite
def configs(draw):
    """Otsu ('auto') or manual thresholds, any minimum seed size; no hole filling (exact territory)."""
    if draw(st.booleans()):
        return PostprocessConfig(min_seed_size=draw(st.integers(0, 6)), max_hole_size=0)
    t = st.floats(0.05, 0.95, allow_subnormal=False)
    return PostprocessConfig(seed_b_threshold=draw(t), seed_c_threshold=draw(t), growth_threshold=draw(t),
                             mask_threshold=draw(t), min_seed_size=draw(st.integers(0, 6)), max_hole_size=0)


def _thresholds(probs: np.ndarray, config: PostprocessConfig) -> tuple[float, float, float, float]:
    """Seed B, seed C, growth and mask thresholds as the post-processing resolves them."""
    b_otsu = otsu_threshold(probs[0])
    tb = b_otsu if config.seed_b_threshold == "auto" else config.seed_b_threshold
    tc = otsu_threshold(probs[1]) if config.seed_c_threshold == "auto" else config.seed_c_threshold
    tg = b_otsu / 2 if config.growth_threshold == "auto" else config.growth_threshold
    tm = otsu_threshold(probs[2]) if config.mask_threshold == "auto" else config.mask_threshold
    return tb, tc, tg, tm


def _map(kind: str, shape=(4, 6, 6)) -> tuple[str, np.ndarray]:
    """A fixed degenerate map of ``kind`` (for explicit examples)."""
    p = np.zeros((3, *shape), np.float32)
    if kind == "border_cell":
        p[0], p[1], p[2] = 0.9, 0.01, 0.9
    elif kind == "one_cell":
        p[0, 1:4, 1:4, 1:4] = p[2, 1:4, 1:4, 1:4] = 0.9
    elif kind == "constant":
        p[:] = 0.6
    return kind, p


LEGACY = PostprocessConfig.legacy(max_hole_size=0)


@SETTINGS
@given(probability_maps(), configs())
@example(_map("border_cell"), LEGACY)
@example(_map("one_cell"), LEGACY)
@example(_map("zeros"), PostprocessConfig(max_hole_size=0))
@example(_map("constant"), PostprocessConfig(max_hole_size=0))
def test_watershed_grows_each_kept_seed_over_its_piece_of_the_growth_mask(case, config):
    kind, probs = case
    labels = watershed_by_channels(probs, config=config)
    tb, tc, tg, _ = _thresholds(probs, config)
    b, c = probs[0], probs[1]
    growth = b > tg
    seeds = growth & (b > tb) & (c < tc)

    # sequential labels 1..n of the smallest unsigned type
    assert labels.shape == b.shape and labels.dtype == np.uint16
    n = int(labels.max())
    assert set(np.unique(labels)) - {0} == set(range(1, n + 1))
    # one cell per seed of more than min_seed_size voxels (6-connected), its seed entirely inside it
    comp, n_comp = ndi.label(seeds, SIX)
    sizes = np.bincount(comp.ravel(), minlength=n_comp + 1)
    kept = [k for k in range(1, n_comp + 1) if sizes[k] > config.min_seed_size]
    assert n == len(kept)
    ids = set()
    for k in kept:
        inside = np.unique(labels[comp == k])
        assert inside.size == 1 and inside[0] > 0
        ids.add(int(inside[0]))
    assert len(ids) == n
    # cells cover exactly the pieces of the growth mask that hold a kept seed, each cell in one piece
    pieces, _ = ndi.label(growth, SIX)
    live = np.unique(pieces[np.isin(comp, kept)])
    assert np.array_equal(labels > 0, np.isin(pieces, live[live > 0]))
    for cell in range(1, n + 1):
        assert ndi.label(labels == cell, SIX)[1] == 1  # grown through face neighbours: connected

    # the degenerate maps (Otsu splits any contrast, even noise: only fixed thresholds see "no cell")
    manual = config.seed_b_threshold != "auto"
    if kind == "zeros" or (kind == "constant" and not manual):
        assert n == 0  # nothing above the background, or no contrast for Otsu to split
    if kind == "no_cell" and manual and (max(tb, tg) >= 0.1 or tc <= 0.9):
        assert n == 0  # cell body below 0.1 and contours above 0.9 everywhere
    if kind == "border_cell" and manual and max(tb, tg) < 0.8 and tc > 0.05 \
            and b.size > config.min_seed_size:
        assert n == 1 and (labels == 1).all()  # one cell, touching every border
    if kind == "one_cell" and manual:
        box = b > 0.5
        expect = 1 if (0.9 > max(tb, tg) and tc > 0 and box.sum() > config.min_seed_size) else 0
        assert n == expect


@SETTINGS
@given(probability_maps(), configs(), st.sampled_from([(1.0, 1.0, 1.0), (2.0, 0.5, 0.5)]))
@example(_map("border_cell"), PostprocessConfig.legacy(mask_threshold=0.5, max_hole_size=0), (2.0, 0.5, 0.5))
@example(_map("zeros"), PostprocessConfig(max_hole_size=0), (1.0, 1.0, 1.0))
def test_postprocess_voronoi_keeps_the_watershed_cells_inside_the_territory(case, config, spacing):
    kind, probs = case
    instances, voronoi = postprocess(probs, spacing, config)
    _, _, _, tm = _thresholds(probs, config)
    territory = probs[2] > tm
    assert voronoi.shape == instances.shape and voronoi.dtype == instances.dtype
    assert not voronoi[~territory].any()  # nothing outside the cellular region (no hole filling here)
    assert set(np.unique(voronoi)) <= set(np.unique(instances)) | {0}  # no new cell
    own = territory & (instances > 0)
    assert np.array_equal(voronoi[own], instances[own])  # a cell keeps its voxels
    if kind == "zeros":
        assert not instances.any() and not voronoi.any()
    if kind == "border_cell" and (instances == 1).all():
        assert ((voronoi == 1) == territory).all()  # the one cell fills its territory, border to border
    # deterministic
    again = postprocess(probs, spacing, config)
    assert np.array_equal(again[0], instances) and np.array_equal(again[1], voronoi)


# --------------------------------------------------------------------------- label volumes


@st.composite
def label_volumes(draw):
    """``(kind, labels)``: a random uint16/uint32 label volume, or a degenerate one."""
    shape = (draw(st.integers(1, 6)), draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    kind = draw(st.sampled_from(("random", "random", "no_cell", "one_cell", "border_cell")))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lab = np.zeros(shape, np.uint32)
    if kind == "random":  # blobs of nearest seeds, some background, non-sequential ids
        n = int(rng.integers(1, 12))
        pts = rng.uniform(0, 1, (n, 3)) * np.asarray(shape)
        grid = np.indices(shape).reshape(3, -1).T
        nearest = ((grid[:, None] - pts[None]) ** 2).sum(-1).argmin(1)
        ids = rng.choice(np.arange(1, 1000), size=n, replace=False)
        lab = ids[nearest].reshape(shape).astype(np.uint32)
        lab[rng.random(shape) < draw(st.floats(0.0, 0.5, allow_subnormal=False))] = 0
    elif kind == "one_cell":
        lab[tuple(slice(0, max(1, s // 2)) for s in shape)] = int(rng.integers(1, 70000))
    elif kind == "border_cell":
        lab[:] = int(rng.integers(1, 70000))
    return kind, lab.astype(np.uint16) if lab.max() < 65535 and draw(st.booleans()) else lab


def _perturbed(rng: np.random.Generator, lab: np.ndarray) -> np.ndarray:
    """A prediction: the labels shifted, with some voxels lost or taken by a neighbour."""
    pred = np.roll(lab, tuple(int(v) for v in rng.integers(-1, 2, 3)), axis=(0, 1, 2))
    pred = pred.copy()
    pred[rng.random(lab.shape) < 0.1] = 0
    noise = rng.random(lab.shape) < 0.1
    pred[noise] = np.roll(pred, 1, axis=int(rng.integers(0, 3)))[noise]
    return pred


def _figures(results) -> list[tuple]:
    return [tuple(getattr(r, f) for f in FIGURES) for r in results]


@SETTINGS
@given(label_volumes(), st.integers(0, 2**32 - 1))
def test_matching_invariants(case, seed):
    kind, gt = case
    rng = np.random.default_rng(seed)
    pred = _perturbed(rng, gt) if rng.random() < 0.8 else np.zeros_like(gt)
    n_true, n_pred = len(np.unique(gt[gt > 0])), len(np.unique(pred[pred > 0]))
    results = match(gt=gt, pred=pred, thresholds=THRESHOLDS)

    for r in results:
        assert (r.n_true, r.n_pred) == (n_true, n_pred)
        assert r.tp + r.fn == n_true and r.tp + r.fp == n_pred and 0 <= r.tp <= min(n_true, n_pred)
        assert all(0.0 <= getattr(r, f) <= 1.0 for f in RATIOS)
        assert np.all(r.tp_ious.astype(np.float32) >= np.float32(r.threshold))  # IoUs are float32, as StarDist's
    assert [r.tp for r in results] == sorted((r.tp for r in results), reverse=True)  # stricter, fewer matches

    # a volume against itself: every object matched with IoU 1 (none: every figure 0, as StarDist)
    for r in match(gt=gt, pred=gt, thresholds=THRESHOLDS):
        assert (r.tp, r.fp, r.fn) == (n_true, 0, 0)
        want = 1.0 if n_true else 0.0
        assert r.f1 == r.panoptic_quality == r.mean_true_score == want
    # swapping prediction and truth swaps FP and FN, precision and recall; the rest is the same
    for a, b in zip(results, match(gt=pred, pred=gt, thresholds=THRESHOLDS)):
        assert (a.tp, a.fp, a.fn) == (b.tp, b.fn, b.fp)
        assert a.precision == pytest.approx(b.recall) and a.recall == pytest.approx(b.precision)
        for f in ("accuracy", "f1", "mean_matched_score", "panoptic_quality"):
            assert getattr(a, f) == pytest.approx(getattr(b, f))
    # renaming the cells changes nothing
    ids = np.unique(pred)
    new = np.zeros(ids.size, np.int64)
    new[ids > 0] = rng.permutation(np.arange(1, 3 * ids.size + 3))[: (ids > 0).sum()] * 7
    renamed = new[np.searchsorted(ids, pred)]
    assert _figures(match(gt=gt, pred=renamed, thresholds=THRESHOLDS)) == _figures(results)
    # the degenerate volumes
    if kind == "no_cell":
        assert all(r.tp == 0 and r.fn == 0 and r.f1 == 0.0 for r in results)
    if kind in ("one_cell", "border_cell"):
        assert n_true == 1 and all(r.tp <= 1 for r in results)
    if kind == "border_cell" and pred.any():
        # one cell everywhere against anything: IoU = that prediction's share of the volume
        share = np.bincount(pred.ravel().astype(np.int64))[1:].max() / gt.size
        for r in results:
            if abs(share - r.threshold) > 1e-6:  # (at the threshold itself float32 rounding decides)
                assert r.tp == (1 if share > r.threshold else 0)


@SETTINGS
@given(label_volumes(), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_copies_of_one_image_aggregate_to_its_own_figures(case, seed, copies):
    """Pooling or averaging k copies of an image gives that image's figures and k times its counts."""
    _, gt = case
    pred = _perturbed(np.random.default_rng(seed), gt)
    results = match(gt=gt, pred=pred, thresholds=THRESHOLDS)
    for by in ("image", "pooled"):
        agg = aggregate(results * copies, by=by)
        for r in results:
            fig = agg[r.threshold]
            assert fig["n_images"] == copies
            assert (fig["tp"], fig["fp"], fig["fn"]) == (copies * r.tp, copies * r.fp, copies * r.fn)
            for f in RATIOS:
                assert fig[f] == pytest.approx(getattr(r, f), rel=1e-6)  # per image: float32 IoU sums, as StarDist


@SETTINGS
@given(label_volumes(), st.floats(0.001, 0.49, allow_subnormal=False))
def test_channel_iou_of_the_targets_is_one_and_of_their_complement_is_zero(case, margin):
    """Probabilities on the right side of 0.5 score 1 whatever their value; the complement scores 0."""
    _, lab = case
    targets = make_targets(lab) > 0
    probs = np.where(targets, 0.5 + margin, 0.5 - margin).astype(np.float32)
    assert channel_iou(probs=probs, gt=lab) == {"B": 1.0, "C": 1.0, "M": 1.0}
    assert channel_iou(probs=1.0 - probs, gt=lab) == {"B": 0.0, "C": 0.0, "M": 0.0}
