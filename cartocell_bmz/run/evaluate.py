"""Evaluate predicted instance labels (and probabilities) against ground truth.

* :func:`evaluate_volume`: one prediction against its ground truth -> matching
  figures at each IoU threshold (:func:`cartocell_bmz.core.matching.match`) and,
  when probabilities are given, the IoU of each channel B, C, M
  (:func:`cartocell_bmz.core.metrics.channel_iou`).
* :func:`write_associations`: per threshold, which prediction matched which
  ground-truth object, as CSV files and a colour TIFF.
* :func:`evaluate_folder`: a folder of predictions against a folder of ground
  truth (paired by file name), writing::

      OUT/metrics_per_image.csv       one row per image and threshold
      OUT/summary.json                dataset figures (by image and pooled)
      OUT/instance_associations/      per image and threshold:
          <image>_iou<t>_associations.csv   gt_id, pred_id, iou, tag (TP/FN)
          <image>_iou<t>_fp.csv             pred_id of each false positive
          <image>_iou<t>_tp_fp_fn.tif       colour map (see below)

The colour map is an 8-bit RGB TIFF of shape ``(Z, Y, X, 3)`` (ZYX plus RGB
samples, "ZYXS": Fiji opens it as an RGB stack, napari as an RGB volume) with
the voxel size of the ground truth: voxels of matched predictions (TP) green,
unmatched predictions (FP) blue, unmatched ground-truth objects (FN) red,
painted in that order, so a missed object shows red even where a false
positive covers it; background black.  All files are written atomically.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.layout import ASSOCIATIONS_DIR, CHANNELS, DEFAULT_IOU_THRESHOLDS, METRICS_CSV, SUMMARY_JSON
from cartocell_bmz.core.matching import FIGURES, MatchResult, check_thresholds, match
from cartocell_bmz.io.progress import ProgressCallback, steps

#: Columns of ``metrics_per_image.csv`` (the channel IoUs only with probabilities).
CSV_COLUMNS: tuple[str, ...] = ("image",) + FIGURES
IOU_COLUMNS: tuple[str, ...] = tuple(f"iou_{c}" for c in CHANNELS)

#: RGB colours of the association map.
TP_COLOUR = (0, 255, 0)
FP_COLOUR = (0, 0, 255)
FN_COLOUR = (255, 0, 0)


@dataclass(frozen=True)
class EvaluationResult:
    """Figures of one prediction against its ground truth.

    Attributes
    ----------
    matches : tuple of MatchResult
        Instance matching, one per IoU threshold.
    channel_iou : dict or None
        ``{"B", "C", "M"}`` IoUs of the binarised probabilities, ``None``
        without probabilities.
    """

    matches: tuple[MatchResult, ...]
    channel_iou: dict[str, float] | None = None

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per threshold: the matching figures, plus ``iou_B``, ``iou_C``, ``iou_M``."""
        extra = {f"iou_{c}": v for c, v in self.channel_iou.items()} if self.channel_iou else {}
        return [{**m.as_row(), **extra} for m in self.matches]

    def __str__(self) -> str:
        lines = [str(m) for m in self.matches]
        if self.channel_iou:
            lines.append("channel IoU: " + ", ".join(f"{c} {v:.3f}" for c, v in self.channel_iou.items()))
        return "\n".join(lines)


def evaluate_volume(
    *,
    gt: np.ndarray,
    pred: np.ndarray,
    probs: np.ndarray | None = None,
    thresholds: float | Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    mode: str = "cartocell",
) -> EvaluationResult:
    """Evaluate one predicted label volume (and its probabilities) against ground truth.

    All arguments are keyword-only (``evaluate_volume(gt=..., pred=...)``): the two
    volumes are easily swapped, which exchanges false positives and negatives.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        ``(Z, Y, X)`` ground-truth and predicted instance labels.
    probs : numpy.ndarray, optional
        ``(3, Z, Y, X)`` probabilities (B, C, M) for the per-channel IoU.
    thresholds : float or sequence of float
        IoU thresholds of instance matching.
    mode : str
        Target definition for the per-channel IoU (see :mod:`cartocell_bmz.core.targets`).

    Returns
    -------
    EvaluationResult

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((4, 8, 8), np.uint16); gt[:, :4] = 1; gt[:, 4:] = 2
    >>> r = evaluate_volume(gt=gt, pred=gt, thresholds=(0.5,))
    >>> r.rows()[0]["f1"], r.channel_iou is None
    (1.0, True)
    """
    from cartocell_bmz.core.metrics import channel_iou

    matches = tuple(match(gt=gt, pred=pred, thresholds=thresholds))
    ious = channel_iou(probs=probs, gt=gt, mode=mode) if probs is not None else None
    return EvaluationResult(matches=matches, channel_iou=ious)


def association_colours(result: MatchResult, *, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Colour map ``(Z, Y, X, 3)`` uint8: TP predictions green, FP blue, FN ground truth red.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.array([[[1, 1, 0, 2]]], np.uint8); pred = np.array([[[5, 5, 6, 0]]], np.uint8)
    >>> r = match(gt=gt, pred=pred, thresholds=(0.5,))[0]
    >>> association_colours(r, gt=gt, pred=pred)[0, 0].tolist()
    [[0, 255, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0]]
    """
    rgb = np.zeros(np.shape(gt) + (3,), np.uint8)
    for labels, ids, colour in (
        (pred, result.tp_pred_ids, TP_COLOUR),
        (pred, result.fp_pred_ids, FP_COLOUR),
        (gt, result.fn_true_ids, FN_COLOUR),
    ):
        if ids.size:
            rgb[np.isin(labels, ids.astype(np.asarray(labels).dtype, copy=False))] = colour
    return rgb


def write_associations(
    out_dir: str | os.PathLike,
    name: str,
    result: EvaluationResult | Sequence[MatchResult],
    *,
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float] | None = None,
    colour_map: bool = True,
) -> list[Path]:
    """Write the association files of one image, for each threshold of ``result``.

    Parameters
    ----------
    out_dir : path-like
        Folder of the files (created), e.g. ``OUT/instance_associations``.
    name : str
        Image name used as the file prefix (a file name's suffix is dropped).
    result : EvaluationResult or sequence of MatchResult
        The matching of ``pred`` against ``gt``.
    gt, pred : numpy.ndarray
        The label volumes that were matched (for the colour map), keyword-only.
    spacing : sequence of 3 floats, optional
        Voxel size written into the colour TIFF.
    colour_map : bool
        Also write the colour TIFF.

    Returns
    -------
    list of pathlib.Path
        The files written: per threshold ``<name>_iou<t>_associations.csv``
        (``gt_id, pred_id, iou, tag``; one row per ground-truth object, ``pred_id``
        -1 for a false negative), ``<name>_iou<t>_fp.csv`` (``pred_id``) and
        ``<name>_iou<t>_tp_fp_fn.tif``.
    """
    from cartocell_bmz.io.volumes import atomic_open, ensure_output_dir

    out = ensure_output_dir(out_dir)
    stem = Path(name).stem if Path(name).suffix.lower() in (".tif", ".tiff") else name
    matches = result.matches if isinstance(result, EvaluationResult) else tuple(result)
    written: list[Path] = []
    for m in matches:
        prefix = out / f"{stem}_iou{m.threshold}"
        path = Path(f"{prefix}_associations.csv")
        with atomic_open(path, newline="") as f:
            w = csv.writer(f)
            w.writerow(["gt_id", "pred_id", "iou", "tag"])
            for row in m.gt_associations():
                w.writerow([row["gt_id"], row["pred_id"], row["iou"], row["tag"]])
        written.append(path)
        path = Path(f"{prefix}_fp.csv")
        with atomic_open(path, newline="") as f:
            f.write("pred_id\n" + "".join(f"{int(i)}\n" for i in m.fp_pred_ids))
        written.append(path)
        if colour_map:
            path = Path(f"{prefix}_tp_fp_fn.tif")
            _write_rgb(path, association_colours(m, gt=gt, pred=pred), spacing)
            written.append(path)
    return written


def evaluate_folder(
    *,
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    probs_dir: str | os.PathLike | None = None,
    thresholds: float | Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    by: Literal["image", "pooled"] = "image",
    mode: str = "cartocell",
    colour_maps: bool = True,
    progress: ProgressCallback | None = None,
) -> dict:
    """Evaluate every prediction in a folder against the ground truth of the same name.

    All arguments are keyword-only (``evaluate_folder(gt_dir=..., pred_dir=...,
    out_dir=...)``), as in :func:`evaluate_volume`.

    Parameters
    ----------
    gt_dir, pred_dir : path-like
        Folders of ``(Z, Y, X)`` label TIFFs; files are paired by name (the
        suffix ``.tif``/``.tiff`` may differ).  Every prediction needs a ground
        truth and every ground truth a prediction.
    out_dir : path-like
        Output folder (created): ``metrics_per_image.csv``, ``summary.json``,
        ``instance_associations/``.
    probs_dir : path-like, optional
        Folder of ``(3, Z, Y, X)`` probability TIFFs of the same names; adds the
        per-channel IoUs ``iou_B``, ``iou_C``, ``iou_M``.
    thresholds : float or sequence of float
        IoU thresholds of instance matching.
    by : {"image", "pooled"}
        Which aggregation is reported as the ``dataset`` figures (both are written).
    mode : str
        Target definition for the per-channel IoU.
    colour_maps : bool
        Write the TP/FP/FN colour TIFFs (the CSV association files are always written).
    progress : callable, optional
        ``progress(done, total, message)`` over the images (:mod:`cartocell_bmz.io.progress`).

    Returns
    -------
    dict
        The content of ``summary.json``: ``n_images``, ``images``, ``thresholds``,
        ``by``, ``dataset`` (the ``by`` figures), ``by_image``, ``pooled`` (each
        ``{threshold: figures}``), ``channel_iou`` (means over images or ``None``),
        ``target_mode``.

    Raises
    ------
    InputError
        A folder is missing or empty, a prediction has no ground truth (or the
        other way round), a file is unreadable, or shapes differ.
    """
    from cartocell_bmz.core.metrics import aggregate, mean_channel_iou
    from cartocell_bmz.io.volumes import (
        atomic_open, check_same_shape, ensure_output_dir, list_volumes, read_volume,
    )

    thrs = check_thresholds(thresholds)
    if by not in ("image", "pooled"):
        raise ConfigError(f"aggregation must be 'image' or 'pooled', got {by!r}.")
    preds = _by_stem(list_volumes(pred_dir, what="predicted label volumes"))
    gts = _by_stem(list_volumes(gt_dir, what="ground-truth label volumes"))
    for stem, path in preds.items():
        if stem not in gts:
            raise InputError(f"{path}: no ground truth of the same name in {gt_dir}; add it or remove the prediction.")
    for stem, path in gts.items():
        if stem not in preds:
            raise InputError(f"{path}: no prediction of the same name in {pred_dir}; predict it or remove the ground truth.")
    probs_files: dict[str, Path] = {}
    if probs_dir is not None:
        probs_files = _by_stem(list_volumes(probs_dir, what="probability volumes"))
        for stem, path in preds.items():
            if stem not in probs_files:
                raise InputError(f"{path}: no probability volume of the same name in {probs_dir}.")

    out = ensure_output_dir(out_dir)
    assoc_dir = out / ASSOCIATIONS_DIR
    rows: list[dict] = []
    matches: list[MatchResult] = []
    ious: list[dict[str, float] | None] = []
    stems = sorted(preds)
    for _, stem in steps(stems, progress, describe=lambda s: f"evaluating {s}", finished="evaluated"):
        pred_path, gt_path = preds[stem], gts[stem]
        gt = read_volume(gt_path, "labels")
        pred = read_volume(pred_path, "labels")
        check_same_shape(pred.data.shape, gt.data.shape, pred_path, gt_path)
        probs = None
        if probs_files:
            probs_path = probs_files[stem]
            probs = read_volume(probs_path, "probabilities").data
            if probs.shape[0] != len(CHANNELS):
                raise InputError(
                    f"{probs_path}: has {probs.shape[0]} channel(s); 3 probability channels B, C, M are needed."
                )
            check_same_shape(probs.shape[1:], gt.data.shape, probs_path, gt_path)
        result = evaluate_volume(gt=gt.data, pred=pred.data, probs=probs, thresholds=thrs, mode=mode)
        write_associations(assoc_dir, stem, result, gt=gt.data, pred=pred.data, spacing=gt.spacing, colour_map=colour_maps)
        rows += [{"image": pred_path.name, **r} for r in result.rows()]
        matches += result.matches
        ious.append(result.channel_iou)
        del gt, pred, probs

    columns = CSV_COLUMNS + (IOU_COLUMNS if probs_files else ())
    with atomic_open(out / METRICS_CSV, newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)

    by_image = aggregate(matches, "image")
    pooled = aggregate(matches, "pooled")
    summary = {
        "n_images": len(stems),
        "images": [preds[s].name for s in stems],
        "thresholds": list(thrs),
        "by": by,
        "dataset": _keyed(by_image if by == "image" else pooled),
        "by_image": _keyed(by_image),
        "pooled": _keyed(pooled),
        "channel_iou": mean_channel_iou(ious),
        "target_mode": mode,
    }
    with atomic_open(out / SUMMARY_JSON) as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary


# --------------------------------------------------------------------------- helpers


def _by_stem(files: list[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files:
        if path.stem in out:
            raise InputError(f"{path}: two files named {path.stem} ({out[path.stem].name} and {path.name}); keep one.")
        out[path.stem] = path
    return out


def _keyed(per_threshold: dict[float, dict]) -> dict[str, dict]:
    return {str(thr): figs for thr, figs in per_threshold.items()}


def _write_rgb(path: Path, rgb: np.ndarray, spacing: Sequence[float] | None) -> None:
    import tifffile

    from cartocell_bmz.io.volumes import atomic_path

    sz, sy, sx = (float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp, rgb, imagej=True, photometric="rgb", compression="zlib",
            resolution=(1.0 / sx, 1.0 / sy), metadata={"spacing": sz, "unit": "um", "axes": "ZYXS"},
        )
