"""Per-channel IoU and dataset aggregation (by image, pooled)."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.core.matching import FIGURES, match
from cartocell_bmz.core.metrics import IOU_BOTH_EMPTY, aggregate, channel_iou, mean_channel_iou
from cartocell_bmz.core.targets import make_targets

THRESHOLDS = (0.3, 0.5, 0.75)


def two_cells() -> np.ndarray:
    lab = np.zeros((6, 12, 12), np.uint16)
    lab[1:5, 2:10, 2:6] = 3
    lab[1:5, 2:10, 6:10] = 9
    return lab


# --------------------------------------------------------------------------- channel IoU


def test_perfect_probabilities_score_one():
    lab = two_cells()
    probs = make_targets(lab).astype(np.float32) * 0.9
    assert channel_iou(probs=probs, gt=lab) == {"B": 1.0, "C": 1.0, "M": 1.0}


def test_known_iou_after_removing_and_adding_voxels():
    lab = two_cells()
    t = make_targets(lab)
    probs = t.astype(np.float32)
    n_b = int(t[0].sum())
    # drop 10 true B voxels, add 5 false B voxels
    on = np.argwhere(t[0] == 1)[:10]
    off = np.argwhere(t[0] == 0)[:5]
    probs[0][tuple(on.T)] = 0.2
    probs[0][tuple(off.T)] = 0.8
    # C: predict nothing at all
    probs[1] = 0.0
    got = channel_iou(probs=probs, gt=lab)
    assert got["B"] == pytest.approx((n_b - 10) / (n_b + 5), abs=1e-15)
    assert got["C"] == 0.0
    assert got["M"] == 1.0


def test_threshold_is_strictly_greater_than_half():
    lab = two_cells()
    t = make_targets(lab).astype(np.float32)
    assert channel_iou(probs=t * 0.5, gt=lab) == {"B": 0.0, "C": 0.0, "M": 0.0}
    assert channel_iou(probs=t * 0.5, gt=lab, threshold=0.4)["B"] == 1.0


def test_both_empty_is_one_and_empty_target_with_prediction_is_zero():
    lab = np.zeros((4, 8, 8), np.uint16)
    probs = np.zeros((3, 4, 8, 8), np.float32)
    assert channel_iou(probs=probs, gt=lab) == {"B": IOU_BOTH_EMPTY, "C": IOU_BOTH_EMPTY, "M": IOU_BOTH_EMPTY}
    probs[2, 0, 0, 0] = 0.9
    assert channel_iou(probs=probs, gt=lab)["M"] == 0.0


def test_target_mode_is_used():
    lab = two_cells()
    probs = make_targets(lab, mode="cartocell").astype(np.float32)
    b_old = int(make_targets(lab, mode="cartocell")[0].sum())
    b_new = int(make_targets(lab, mode="biapy37")[0].sum())
    # cartocell B (cells minus contours) is a subset of biapy37 B (cells)
    assert channel_iou(probs=probs, gt=lab, mode="biapy37")["B"] == pytest.approx(b_old / b_new)
    with pytest.raises(ConfigError):
        channel_iou(probs=probs, gt=lab, mode="nonsense")


def test_channel_iou_shape_errors():
    lab = two_cells()
    with pytest.raises(InputError, match=r"\(3, Z, Y, X\)"):
        channel_iou(probs=np.zeros((2,) + lab.shape, np.float32), gt=lab)
    with pytest.raises(InputError, match="differs"):
        channel_iou(probs=np.zeros((3, 6, 12, 11), np.float32), gt=lab)


def test_mean_channel_iou():
    assert mean_channel_iou([None, None]) is None
    got = mean_channel_iou([{"B": 1.0, "C": 0.25, "M": 0.5}, None, {"B": 0.5, "C": 0.75, "M": 1.0}])
    assert got == {"B": 0.75, "C": 0.5, "M": 0.75}


# --------------------------------------------------------------------------- aggregation


def random_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        gt = np.zeros((6, 16, 16), np.uint16)
        for k in range(1, int(rng.integers(0, 7)) + 1):
            z, y, x = rng.integers(0, 12, size=3)
            gt[z % 5:z % 5 + 2, y:y + 4, x:x + 4] = k
        pred = np.roll(gt, tuple(rng.integers(-1, 2, size=3)), axis=(0, 1, 2))
        if i % 3 == 0:
            pred[pred == 1] = 0
        if i % 4 == 1:
            pred[0:2, 0:3, 0:3] = 50
        pairs.append((gt, pred))
    return pairs


@pytest.mark.parametrize("by_image", [True, False])
def test_aggregate_equals_stardist_matching_dataset(by_image):
    sd = pytest.importorskip("stardist.matching")
    pairs = random_pairs(12)
    rows = [r for gt, pred in pairs for r in match(gt=gt, pred=pred, thresholds=THRESHOLDS)]
    ours = aggregate(rows, "image" if by_image else "pooled")
    ref = sd.matching_dataset([p[0] for p in pairs], [p[1] for p in pairs], thresh=list(THRESHOLDS),
                              by_image=by_image, show_progress=False)
    assert list(ours) == list(THRESHOLDS)
    for thr, r in zip(THRESHOLDS, ref):
        got = ours[thr]
        assert got["n_images"] == len(pairs)
        for name in FIGURES[1:]:
            # StarDist rebuilds the IoU sum from a float32 mean_true_score when pooling
            tol = 1e-12 if by_image else 1e-6
            assert got[name] == pytest.approx(getattr(r, name), abs=tol), name


def test_aggregate_known_values_and_csv_strings():
    a = {"threshold": "0.5", "tp": "1", "fp": "1", "fn": "1", "n_true": "2", "n_pred": "2",
         "precision": "0.5", "recall": "0.5", "accuracy": str(1 / 3), "f1": "0.5",
         "mean_matched_score": "0.6", "mean_true_score": "0.3", "panoptic_quality": "0.3"}
    b = {"threshold": 0.5, "tp": 3, "fp": 0, "fn": 0, "n_true": 3, "n_pred": 3, "precision": 1.0,
         "recall": 1.0, "accuracy": 1.0, "f1": 1.0, "mean_matched_score": 1.0, "mean_true_score": 1.0,
         "panoptic_quality": 1.0}
    img = aggregate([a, b], "image")[0.5]
    assert img["precision"] == 0.75 and img["f1"] == 0.75
    assert img["panoptic_quality"] == pytest.approx(0.65)
    assert (img["tp"], img["fp"], img["fn"], img["n_images"]) == (4, 1, 1, 2)
    pooled = aggregate([a, b], "pooled")[0.5]
    assert pooled["precision"] == 0.8 and pooled["accuracy"] == pytest.approx(4 / 6)
    # summed IoU = 0.3 * 2 + 1.0 * 3 = 3.6
    assert pooled["mean_matched_score"] == pytest.approx(3.6 / 4)
    assert pooled["mean_true_score"] == pytest.approx(3.6 / 5)
    assert pooled["panoptic_quality"] == pytest.approx(3.6 / 5)


def test_aggregate_rows_from_results_and_dicts_agree():
    pairs = random_pairs(5, seed=3)
    results = [r for gt, pred in pairs for r in match(gt=gt, pred=pred, thresholds=THRESHOLDS)]
    dicts = [r.as_row() for r in results]
    assert aggregate(results, "image") == aggregate(dicts, "image")
    for thr in THRESHOLDS:
        for name, value in aggregate(results, "pooled")[thr].items():
            assert aggregate(dicts, "pooled")[thr][name] == pytest.approx(value, abs=1e-7)


def test_aggregate_errors():
    with pytest.raises(ConfigError, match="image"):
        aggregate([], "mean")
    with pytest.raises(InputError, match="'f1'"):
        aggregate([{k: 1 for k in FIGURES if k != "f1"}])
    with pytest.raises(InputError, match="non-numeric"):
        aggregate([{**{k: 1 for k in FIGURES}, "tp": "many"}])
    assert aggregate([]) == {}


def test_binary_channel_iou():
    from cartocell_bmz.core.metrics import binary_channel_iou

    pred = np.zeros((3, 2, 4), bool)
    target = np.zeros((3, 2, 4), bool)
    pred[0, 0, :2] = target[0, 0, :1] = True      # 1 of 2
    pred[1] = target[1] = True                    # equal
    assert binary_channel_iou(pred=pred, target=target) == [0.5, 1.0, IOU_BOTH_EMPTY]
    with pytest.raises(TypeError):
        binary_channel_iou(pred, target)  # type: ignore[misc]


def test_gt_and_prediction_are_keyword_only():
    lab = np.zeros((2, 3, 4), np.uint16)
    with pytest.raises(TypeError):
        channel_iou(np.zeros((3, 2, 3, 4), np.float32), lab)  # type: ignore[misc]
    with pytest.raises(TypeError):
        match(lab, lab)  # type: ignore[misc]
