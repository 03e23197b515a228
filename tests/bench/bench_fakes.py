"""Fake models for the benchmark tests, injected through the predict seam of
:func:`cartocell_bmz.bench.tasks.run_task`: each writes probabilities and cells derived from
the ground truth with a known defect, so the ranking is known in advance.
"""

from __future__ import annotations

import functools

import numpy as np

from cartocell_bmz.bench import tasks as bt
from cartocell_bmz.layout import PROBS_DIR, VORONOI_DIR


def _targets(labels: np.ndarray) -> np.ndarray:
    from cartocell_bmz.core.targets import make_targets

    return make_targets(labels).astype(np.float32)


def fake_predict(task: bt.Task) -> None:
    """A fake model: ``perfect`` returns the truth; ``merge`` fuses cell pairs; ``shift`` moves cells."""
    from cartocell_bmz.io.volumes import read_volume, write_volume

    if not task.overwrite and (task.out / VORONOI_DIR / task.image.name).is_file():
        return  # finished before, as predict_one skips finished outputs
    gt = read_volume(task.image.gt, "labels")
    labels = gt.data.astype(np.uint16)
    probs = _targets(labels)
    kind = task.model.ref
    if kind == "merge":  # every pair of consecutive ids fused: about half the cells lost
        labels = ((labels.astype(np.int64) + 1) // 2).astype(np.uint16)
        probs[1] *= 0.4  # contours missed
    elif kind == "shift":
        labels = np.roll(labels, 1, axis=2)
        probs = np.roll(probs, 1, axis=3)
    elif kind != "perfect":
        raise ValueError(kind)
    write_volume(task.out / PROBS_DIR / task.image.name, probs.astype(np.float32), gt.spacing)
    write_volume(task.out / VORONOI_DIR / task.image.name, labels, gt.spacing)


def matching_evaluate(pred, gt, probs, thresholds):
    """An evaluate step built on :mod:`cartocell_bmz.core.matching` (stand-in for evaluate_volume)."""
    from cartocell_bmz.core.matching import match

    target = _targets(gt) > 0.5
    ious = {}
    for i, ch in enumerate("BCM"):
        p = probs[i] > 0.5
        union = np.logical_or(p, target[i]).sum()
        ious[f"iou_{ch}"] = float(np.logical_and(p, target[i]).sum() / union) if union else 1.0
    rows = []
    for r in match(gt=gt, pred=pred, thresholds=thresholds):
        rows.append({k: getattr(r, k) for k in ("threshold", "tp", "fp", "fn", "n_true", "n_pred", "precision",
                                                "recall", "accuracy", "f1", "mean_matched_score", "mean_true_score",
                                                "panoptic_quality")} | ious)
    return rows


def _evaluate_step():
    try:
        from cartocell_bmz.run.evaluate import evaluate_volume  # noqa: F401
    except ImportError:
        return matching_evaluate
    return None  # the real one


FAKE_TASK = functools.partial(bt.run_task, predict=fake_predict, evaluate=_evaluate_step())


def fake_models(*kinds: str) -> list[bt.BenchmarkModel]:
    return [bt.BenchmarkModel(name=f"fake-{k}", source=k, ref=k, fingerprint=f"v1-{k}") for k in kinds]


def trusting_resolver():
    from cartocell_bmz.bmz.resolve import resolve_model

    return functools.partial(resolve_model, trust=True, notify=lambda _msg: None)
