"""Semantic per-channel IoU and dataset-level aggregation of matching figures.

* :func:`channel_iou` compares the network's B, C, M probabilities, binarised
  at 0.5, with the target channels built from the ground-truth labels
  (:func:`cartocell_bmz.core.targets.make_targets`): IoU of the positive class.
* :func:`binary_channel_iou` is the same IoU on boolean predictions and targets
  given channel by channel (the training validation's figure).
* :func:`aggregate` turns per-image matching figures into dataset figures, per
  IoU threshold, either **by image** (the mean of the per-image precision,
  recall, ..., BiaPy's default and the published ranking's rule) or **pooled**
  (from the summed TP, FP, FN and summed IoUs of all images, StarDist's
  ``matching_dataset(by_image=False)``).
* :func:`mean_channel_iou` averages per-image channel IoUs.

Pure functions on arrays and plain rows; no file access.
"""

from __future__ import annotations

from typing import Iterable, Literal, Mapping

import numpy as np

from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.layout import CHANNELS

#: Value of a channel's IoU when both the prediction and the target are empty
#: (nothing to find and nothing found: a perfect answer).
IOU_BOTH_EMPTY = 1.0

#: Figures averaged over images (``by="image"``) or recomputed from sums (``by="pooled"``).
RATIO_FIGURES: tuple[str, ...] = (
    "precision", "recall", "accuracy", "f1", "mean_matched_score", "mean_true_score", "panoptic_quality",
)
#: Counts summed over images in both aggregations.
COUNT_FIGURES: tuple[str, ...] = ("tp", "fp", "fn", "n_true", "n_pred")


def channel_iou(
    *,
    probs: np.ndarray,
    gt: np.ndarray,
    mode: str = "cartocell",
    threshold: float = 0.5,
) -> dict[str, float]:
    """IoU of each binarised probability channel with its target from the ground truth.

    All arguments are keyword-only (``channel_iou(probs=..., gt=...)``).

    Parameters
    ----------
    probs : numpy.ndarray
        ``(3, Z, Y, X)`` probabilities in channel order B, C, M.
    gt : numpy.ndarray
        ``(Z, Y, X)`` ground-truth instance labels.
    mode : str
        Target definition passed to :func:`cartocell_bmz.core.targets.make_targets`
        (``"cartocell"``: the CartoCell-era B without contour voxels).
    threshold : float
        A voxel is predicted positive where its probability is strictly above this.

    Returns
    -------
    dict
        ``{"B": iou, "C": iou, "M": iou}``; a channel whose prediction and target
        are both empty scores :data:`IOU_BOTH_EMPTY` (1.0).

    Raises
    ------
    InputError
        ``probs`` is not ``(3, Z, Y, X)`` with the labels' ``(Z, Y, X)``.
    """
    from cartocell_bmz.core.targets import make_targets

    probs = np.asarray(probs)
    gt = np.asarray(gt)
    if probs.ndim != 4 or probs.shape[0] != len(CHANNELS):
        raise InputError(
            f"probabilities must be (3, Z, Y, X) in channel order {', '.join(CHANNELS)}, got shape {probs.shape}."
        )
    if probs.shape[1:] != gt.shape:
        raise InputError(
            f"probability volume shape {probs.shape[1:]} differs from ground-truth shape {gt.shape}."
        )
    targets = make_targets(gt, mode=mode)
    out: dict[str, float] = {}
    for c, name in enumerate(CHANNELS):
        pred = probs[c] > threshold
        target = targets[c] != 0
        inter = np.count_nonzero(pred & target)
        union = np.count_nonzero(pred) + np.count_nonzero(target) - inter
        out[name] = inter / union if union else IOU_BOTH_EMPTY
    return out


def binary_channel_iou(*, pred: np.ndarray, target: np.ndarray) -> list[float]:
    """IoU of the positive class per channel of boolean ``(C, ...)`` arrays (1.0 when both are empty).

    The training validation's figure: ``pred`` is the network's binarised output
    (``logits > 0``), ``target`` the boolean targets, channel by channel.  Unlike
    :func:`channel_iou` it does not build the targets from labels.

    Examples
    --------
    >>> p = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
    >>> t = np.array([[1, 0, 0, 0], [0, 0, 0, 0]], bool)
    >>> binary_channel_iou(pred=p, target=t)
    [0.5, 1.0]
    """
    out = []
    for p, t in zip(pred, target):
        union = int(np.count_nonzero(p | t))
        out.append(IOU_BOTH_EMPTY if union == 0 else int(np.count_nonzero(p & t)) / union)
    return out


def aggregate(
    rows: Iterable[object],
    by: Literal["image", "pooled"] = "image",
) -> dict[float, dict[str, float | int]]:
    """Dataset figures per IoU threshold from per-image matching figures.

    Parameters
    ----------
    rows : iterable of MatchResult or mapping
        One entry per image and threshold: :class:`~cartocell_bmz.core.matching.MatchResult`
        objects or mappings with the keys of :data:`cartocell_bmz.core.matching.FIGURES`
        (e.g. rows of ``metrics_per_image.csv``; strings are converted).  Pooling
        uses ``sum_matched_score`` where present, else ``mean_true_score * n_true``.
    by : {"image", "pooled"}
        ``"image"``: mean over images of each ratio (an image without objects
        counts with its figures of 0, as in StarDist and BiaPy); ``"pooled"``:
        ratios from the summed TP, FP, FN, object counts and IoU sums.

    Returns
    -------
    dict
        ``{threshold: {"n_images", "tp", "fp", "fn", "n_true", "n_pred",
        "precision", "recall", "accuracy", "f1", "mean_matched_score",
        "mean_true_score", "panoptic_quality"}}``, thresholds in first-seen order.

    Examples
    --------
    >>> rows = [{"threshold": 0.5, "tp": 1, "fp": 1, "fn": 0, "n_true": 1, "n_pred": 2,
    ...          "precision": 0.5, "recall": 1.0, "accuracy": 0.5, "f1": 2 / 3,
    ...          "mean_matched_score": 0.8, "mean_true_score": 0.8, "panoptic_quality": 0.8 / 1.5},
    ...         {"threshold": 0.5, "tp": 3, "fp": 0, "fn": 0, "n_true": 3, "n_pred": 3,
    ...          "precision": 1.0, "recall": 1.0, "accuracy": 1.0, "f1": 1.0,
    ...          "mean_matched_score": 0.6, "mean_true_score": 0.6, "panoptic_quality": 0.6}]
    >>> aggregate(rows, "image")[0.5]["precision"], aggregate(rows, "pooled")[0.5]["precision"]
    (0.75, 0.8)
    """
    if by not in ("image", "pooled"):
        raise ConfigError(f"aggregation must be 'image' or 'pooled', got {by!r}.")
    groups: dict[float, list[dict[str, float]]] = {}
    for row in rows:
        fig = _figures(row)
        groups.setdefault(fig["threshold"], []).append(fig)
    out: dict[float, dict[str, float | int]] = {}
    for thr, figs in groups.items():
        res: dict[str, float | int] = {"n_images": len(figs)}
        for name in COUNT_FIGURES:
            res[name] = int(sum(f[name] for f in figs))
        if by == "image":
            for name in RATIO_FIGURES:
                res[name] = float(sum(f[name] for f in figs) / len(figs))
        else:
            tp, fp, fn, n_true = (res[k] for k in ("tp", "fp", "fn", "n_true"))
            total = float(sum(f["sum_matched_score"] for f in figs))
            res.update(
                precision=tp / (tp + fp) if tp else 0.0,
                recall=tp / (tp + fn) if tp else 0.0,
                accuracy=tp / (tp + fp + fn) if tp else 0.0,
                f1=2 * tp / (2 * tp + fp + fn) if tp else 0.0,
                mean_matched_score=total / tp if tp else 0.0,
                mean_true_score=total / n_true if n_true else 0.0,
                panoptic_quality=total / (tp + fp / 2 + fn / 2) if tp else 0.0,
            )
        out[thr] = res
    return out


def mean_channel_iou(values: Iterable[Mapping[str, float] | None]) -> dict[str, float] | None:
    """Mean over images of per-image channel IoUs (``{"B", "C", "M"}`` dicts).

    Entries that are ``None`` (no probabilities for that image) are skipped;
    returns ``None`` when no image has channel IoUs.

    Examples
    --------
    >>> mean_channel_iou([{"B": 1.0, "C": 0.5, "M": 1.0}, {"B": 0.5, "C": 0.0, "M": 1.0}])
    {'B': 0.75, 'C': 0.25, 'M': 1.0}
    """
    got = [v for v in values if v is not None]
    if not got:
        return None
    return {name: float(sum(float(v[name]) for v in got) / len(got)) for name in CHANNELS}


def _figures(row: object) -> dict[str, float]:
    """The numeric figures of one per-image row (MatchResult or mapping)."""
    from cartocell_bmz.core.matching import FIGURES

    get = row.get if isinstance(row, Mapping) else (lambda k, d=None: getattr(row, k, d))
    fig: dict[str, float] = {}
    for name in FIGURES:
        value = get(name)
        if value is None or value == "":
            raise InputError(f"a metrics row has no {name!r} value; is it a row of metrics_per_image.csv?")
        try:
            fig[name] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"a metrics row has a non-numeric {name!r} value {value!r}.") from None
    total = get("sum_matched_score")
    fig["sum_matched_score"] = (
        float(total) if total not in (None, "") else fig["mean_true_score"] * fig["n_true"]
    )
    return fig
