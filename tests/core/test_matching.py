"""Instance matching: equal to StarDist's ``matching`` on random 3D label pairs, known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cartocell_bmz.core import matching as matching_mod
from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.core.matching import FIGURES, MatchResult, match, overlap

stardist_matching = pytest.importorskip("stardist.matching")

THRESHOLDS = (0.1, 0.3, 0.5, 0.75, 0.9)


# --------------------------------------------------------------------------- random label pairs


def random_labels(rng: np.random.Generator, shape, n_cells: int, background: float = 0.3) -> np.ndarray:
    """Voronoi blobs around random seeds, with some cells and far voxels set to background."""
    pts = rng.uniform(0, 1, size=(n_cells, 3)) * np.asarray(shape)
    grid = np.indices(shape).reshape(3, -1).T
    d2 = ((grid[:, None, :] - pts[None]) ** 2).sum(-1)
    lab = d2.argmin(1) + 1
    lab[d2.min(1) > np.quantile(d2.min(1), 1 - background)] = 0
    lab = lab.reshape(shape)
    dropped = rng.choice(np.arange(1, n_cells + 1), size=rng.integers(0, max(1, n_cells // 4)), replace=False)
    lab[np.isin(lab, dropped)] = 0
    return lab.astype(np.int64)


def perturb(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction from ground truth: shifts, merges, splits, deletions, FP blobs, noise, relabelling."""
    pred = gt.copy()
    ids = np.unique(gt)[1:]
    if rng.random() < 0.7:
        pred = np.roll(pred, tuple(rng.integers(-2, 3, size=3)), axis=(0, 1, 2))
    if ids.size >= 2 and rng.random() < 0.5:  # merges
        for a, b in rng.choice(ids, size=(rng.integers(1, 3), 2)):
            pred[pred == b] = a
    if ids.size and rng.random() < 0.5:  # splits along a random axis
        for c in rng.choice(ids, size=rng.integers(1, 3)):
            vox = np.argwhere(pred == c)
            if len(vox):
                ax = rng.integers(0, 3)
                cut = np.median(vox[:, ax])
                sel = vox[vox[:, ax] > cut]
                pred[tuple(sel.T)] = pred.max() + 1
    if ids.size and rng.random() < 0.4:  # deletions
        pred[np.isin(pred, rng.choice(ids, size=rng.integers(1, 3)))] = 0
    if rng.random() < 0.4:  # a false-positive box
        lo = rng.integers(0, np.maximum(1, np.asarray(gt.shape) - 3))
        pred[lo[0]:lo[0] + 3, lo[1]:lo[1] + 3, lo[2]:lo[2] + 3] = pred.max() + 1
    if rng.random() < 0.5:  # voxel noise: copy labels from a random neighbour
        m = rng.random(gt.shape) < rng.uniform(0.02, 0.2)
        pred[m] = np.roll(pred, 1, axis=int(rng.integers(0, 3)))[m]
    # non-sequential, shuffled ids
    uniq = np.unique(pred)
    new = np.zeros(uniq.size, np.int64)
    new[uniq > 0] = rng.choice(np.arange(1, 10 * uniq.size + 10), size=(uniq > 0).sum(), replace=False)
    return new[np.searchsorted(uniq, pred)]


def assert_same_as_stardist(ours: list[MatchResult], gt, pred, thresholds=THRESHOLDS, check_pairs=True):
    ref = stardist_matching.matching(gt, pred, thresh=list(thresholds), report_matches=True)
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref):
        for name in FIGURES:
            want = r.thresh if name == "threshold" else getattr(r, name)
            got = getattr(o, name)
            if name in ("tp", "fp", "fn", "n_true", "n_pred"):
                assert got == want, (name, got, want)
            else:
                assert abs(got - want) <= 1e-9, (name, got, want)
        if check_pairs:
            ref_pairs = sorted(r.matched_pairs[i] for i in r.matched_tps)
            assert sorted((g, p) for g, p, _ in o.pairs()) == ref_pairs
            np.testing.assert_array_equal(o.tp_ious, np.asarray(r.matched_scores)[list(r.matched_tps)])
        # association is complete and consistent
        assert o.tp_true_ids.size + o.fn_true_ids.size == o.n_true
        assert o.tp_pred_ids.size + o.fp_pred_ids.size == o.n_pred
        assert o.fn_true_ids.size == o.fn and o.fp_pred_ids.size == o.fp


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(3, 10), st.integers(3, 14), st.integers(3, 14)),
    n_cells=st.integers(1, 25),
)
def test_equals_stardist_on_random_pairs(seed, shape, n_cells):
    rng = np.random.default_rng(seed)
    gt = random_labels(rng, shape, n_cells)
    pred = perturb(rng, gt)
    if rng.random() < 0.5:
        gt, pred = gt.astype(np.uint16), pred.astype(np.uint32)
    assert_same_as_stardist(match(gt=gt, pred=pred, thresholds=THRESHOLDS), gt, pred)


@pytest.mark.parametrize("seed", range(60))
def test_equals_stardist_on_seeded_cell_layers(seed):
    """Bigger volumes with many touching cells, like a segmented cyst."""
    rng = np.random.default_rng(1000 + seed)
    gt = random_labels(rng, (12, 24, 24), int(rng.integers(20, 80)), background=0.4)
    pred = perturb(rng, gt)
    assert_same_as_stardist(match(gt=gt, pred=pred, thresholds=THRESHOLDS), gt, pred)


@pytest.mark.parametrize("seed", range(40))
def test_sparse_code_paths_equal_stardist(seed, monkeypatch):
    """Sort-based id compaction, sparse pair counting and per-group assignment give the same figures."""
    monkeypatch.setattr(matching_mod, "_LUT_MAX_ID", 0)
    monkeypatch.setattr(matching_mod, "_DENSE_PAIRS", 0)
    monkeypatch.setattr(matching_mod, "_DENSE_ASSIGNMENT", 0)
    rng = np.random.default_rng(5000 + seed)
    gt = random_labels(rng, (8, 16, 16), int(rng.integers(2, 40)))
    pred = perturb(rng, gt)
    ours = match(gt=gt, pred=pred, thresholds=THRESHOLDS)
    # ties between equally good assignments may be broken differently per group,
    # so compare the figures, not which of two equal pairs was chosen
    assert_same_as_stardist(ours, gt, pred, check_pairs=False)


@pytest.mark.parametrize("which", ["gt", "pred", "both"])
def test_empty_volumes_follow_stardist(which):
    rng = np.random.default_rng(1)
    lab = random_labels(rng, (6, 10, 10), 8)
    empty = np.zeros_like(lab)
    gt = empty if which in ("gt", "both") else lab
    pred = empty if which in ("pred", "both") else lab
    ours = match(gt=gt, pred=pred, thresholds=THRESHOLDS)
    assert_same_as_stardist(ours, gt, pred)
    r = ours[0]
    assert r.tp == 0 and r.precision == r.recall == r.f1 == r.panoptic_quality == 0.0
    if which == "gt":
        assert r.fp == r.n_pred > 0 and r.fn == 0
    elif which == "pred":
        assert r.fn == r.n_true > 0 and r.fp == 0
    else:
        assert (r.n_true, r.n_pred, r.fp, r.fn) == (0, 0, 0, 0)


def test_zero_size_arrays():
    r = match(gt=np.zeros((0, 4, 4), np.uint16), pred=np.zeros((0, 4, 4), np.uint16), thresholds=(0.5,))[0]
    assert (r.tp, r.fp, r.fn, r.n_true, r.n_pred, r.f1) == (0, 0, 0, 0, 0, 0.0)


@pytest.mark.parametrize("big", [2**31 - 5, 2**32 - 1, 2**40 + 3])
def test_very_large_ids_equal_stardist_on_sequential_copy(big):
    """Ids near 2**31, 2**32 and beyond: same figures as StarDist on an order-preserving relabelling."""
    rng = np.random.default_rng(big % 1000)
    gt = random_labels(rng, (8, 14, 14), 15)
    pred = perturb(rng, gt)
    # map ids to huge ones, keeping their order (StarDist cannot take them: it allocates max id)
    def huge(lab):
        uniq = np.unique(lab)
        ids = np.zeros(uniq.size, np.uint64)
        ids[uniq > 0] = big - np.arange((uniq > 0).sum(), dtype=np.uint64)[::-1] * 7919
        return ids[np.searchsorted(uniq, lab)], dict(zip(ids.tolist(), uniq.tolist()))
    gt_big, back_gt = huge(gt)
    pred_big, back_pred = huge(pred)
    ours = match(gt=gt_big, pred=pred_big, thresholds=THRESHOLDS)
    ref = stardist_matching.matching(gt, pred, thresh=list(THRESHOLDS), report_matches=True)
    for o, r in zip(ours, ref):
        for name in FIGURES[1:]:
            assert abs(getattr(o, name) - getattr(r, name)) <= 1e-9, name
        assert int(o.tp_true_ids.max(initial=0)) <= big
        got = sorted((back_gt[g], back_pred[p]) for g, p, _ in o.pairs())
        assert got == sorted(r.matched_pairs[i] for i in r.matched_tps)


def test_large_ids_do_not_allocate_by_max_id():
    """Two objects with ids near 2**62 in a small volume: fast, little memory."""
    import tracemalloc

    gt = np.zeros((4, 8, 8), np.uint64)
    gt[:, :4] = 2**62 + 11
    gt[:, 4:] = 2**62 - 1
    pred = gt.copy()
    tracemalloc.start()
    r = match(gt=gt, pred=pred, thresholds=(0.5,))[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert peak < 1_000_000
    assert r.pairs() == [(2**62 - 1, 2**62 - 1, 1.0), (2**62 + 11, 2**62 + 11, 1.0)]


# --------------------------------------------------------------------------- known answers


def test_cube_shifted_by_one_voxel_has_iou_three_fifths():
    gt = np.zeros((10, 10, 10), np.uint16)
    gt[2:6, 2:6, 2:6] = 4  # 64 voxels
    pred = np.roll(gt, 1, axis=0) * 2  # id 8, shares 48 voxels: IoU 48 / 80
    low, high = match(gt=gt, pred=pred, thresholds=(0.5, 0.75))
    assert low.pairs() == [(4, 8, pytest.approx(0.6, abs=1e-7))]
    assert (low.tp, low.fp, low.fn, low.precision, low.recall, low.f1) == (1, 0, 0, 1.0, 1.0, 1.0)
    assert low.mean_matched_score == pytest.approx(0.6, abs=1e-7)
    assert low.panoptic_quality == pytest.approx(0.6, abs=1e-7)
    assert (high.tp, high.fp, high.fn, high.f1, high.panoptic_quality) == (0, 1, 1, 0.0, 0.0)
    assert high.fn_true_ids.tolist() == [4] and high.fp_pred_ids.tolist() == [8]
    assert high.gt_associations() == [{"gt_id": 4, "pred_id": -1, "iou": 0.0, "tag": "FN"}]


def test_merge_and_split_known_figures():
    gt = np.zeros((4, 10, 20), np.uint8)
    gt[:, :, :10] = 1
    gt[:, :, 10:] = 2
    merged = (gt > 0).astype(np.uint8) * 5  # one prediction covering both: IoU 1/2 with each
    r3, r5, r6 = match(gt=gt, pred=merged, thresholds=(0.3, 0.5, 0.6))
    assert (r3.tp, r3.fp, r3.fn) == (1, 0, 1)
    assert r3.tp_true_ids.tolist() == [1]  # equal IoUs: the first ground-truth object wins
    assert r5.tp == 1 and r5.mean_true_score == pytest.approx(0.25)
    assert r5.panoptic_quality == pytest.approx(0.5 / 1.5)
    assert (r6.tp, r6.fp, r6.fn) == (0, 1, 2)
    # the other way round: one ground-truth object split in two predictions
    s5 = match(gt=merged, pred=gt, thresholds=(0.5,))[0]
    assert (s5.tp, s5.fp, s5.fn, s5.accuracy) == (1, 1, 0, 0.5)


def test_assignment_maximises_matches_not_greedy_iou():
    """A greedy best-IoU choice would give 1 match; the optimal assignment gives 2."""
    gt = np.zeros((1, 1, 20), np.uint8)
    gt[0, 0, 0:10] = 1
    gt[0, 0, 10:16] = 2
    pred = np.zeros_like(gt)
    pred[0, 0, 0:6] = 7  # IoU with gt 1: 6/10
    pred[0, 0, 6:16] = 8  # IoU with gt 1: 4/16, with gt 2: 6/10
    r = match(gt=gt, pred=pred, thresholds=(0.25,))[0]
    assert r.pairs() == [(1, 7, pytest.approx(0.6)), (2, 8, pytest.approx(0.6))]
    assert_same_as_stardist([r], gt, pred, thresholds=(0.25,))


def test_result_row_and_printing():
    gt = np.zeros((2, 6, 6), np.uint16)
    gt[:, :3] = 1
    r = match(gt=gt, pred=gt, thresholds=0.5)[0]
    assert list(r.as_row()) == list(FIGURES)
    assert r.as_row()["f1"] == 1.0 and r.as_row()["threshold"] == 0.5
    assert "TP 1, FP 0, FN 0" in str(r)
    assert "tp_true_ids" not in repr(r) and "tp=1" in repr(r)


def test_overlap_counts():
    gt = np.array([[[0, 1, 1, 2, 2, 0]]], np.uint16)
    pred = np.array([[[3, 3, 1, 1, 0, 0]]], np.uint16)
    ov = overlap(gt=gt, pred=pred)
    assert ov.true_ids.tolist() == [1, 2] and ov.pred_ids.tolist() == [1, 3]
    assert ov.true_sizes.tolist() == [2, 2] and ov.pred_sizes.tolist() == [2, 2]
    m = ov.iou_matrix()
    np.testing.assert_allclose(m, [[1 / 3, 1 / 3], [1 / 3, 0.0]], rtol=1e-7)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_give_one_line_errors():
    a = np.zeros((4, 4, 4), np.uint16)
    with pytest.raises(InputError, match="shape"):
        match(gt=a, pred=np.zeros((4, 4, 5), np.uint16))
    with pytest.raises(InputError, match="integers"):
        match(gt=a, pred=a.astype(np.float32))
    with pytest.raises(InputError, match="negative"):
        match(gt=a.astype(np.int32) - 1, pred=a)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="outside"):
            match(gt=a, pred=a, thresholds=(0.5, bad))
    with pytest.raises(ConfigError, match="at least one"):
        match(gt=a, pred=a, thresholds=())
    with pytest.raises(ConfigError, match="numbers"):
        match(gt=a, pred=a, thresholds=("x",))
    for exc in (InputError, ConfigError):
        try:
            match(gt=a, pred=a.astype(np.float32)) if exc is InputError else match(gt=a, pred=a, thresholds=(2,))
        except exc as e:
            assert "\n" not in str(e)
