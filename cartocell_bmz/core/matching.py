"""Instance matching of a predicted label volume against ground truth.

The definitions are StarDist's (``stardist.matching.matching`` with
``criterion="iou"``), the ones the published CartoCell ranking uses:

* the IoU of a ground-truth object ``i`` and a predicted object ``j`` is
  ``|i & j| / (|i| + |j| - |i & j|)``, background (label 0) excluded;
* at each threshold ``t`` a one-to-one assignment (Hungarian,
  :func:`scipy.optimize.linear_sum_assignment`) maximises first the number of
  pairs with IoU >= ``t`` and then, as a tie-breaker, the sum of the IoUs of all
  assigned pairs: the cost of a pair is ``-(iou >= t) - iou / (2 * n)`` with
  ``n = min(n_true, n_pred)``;
* TP = assigned pairs with IoU >= ``t``, FP = ``n_pred - TP``,
  FN = ``n_true - TP``; precision, recall, accuracy ``TP / (TP + FP + FN)``,
  F1 ``2 TP / (2 TP + FP + FN)`` (all 0 when TP = 0);
  mean_matched_score = sum(IoU of TP) / TP, mean_true_score = sum(IoU of TP) /
  n_true, panoptic_quality = sum(IoU of TP) / (TP + FP/2 + FN/2) (0 when the
  denominator is 0).

The arithmetic is StarDist's too, so every figure equals StarDist's to the last
bit: IoUs are rounded to ``float32`` and summed in ``float32`` (in ground-truth
id order); mean_matched_score and panoptic_quality divide that sum in
``float64``, mean_true_score in ``float32``.  The ``float32`` quantisation
(about 1e-7) is far below anything that matters for a ranking.

What differs is the cost: the overlap is counted in one pass over the voxels
that are foreground in either volume, with label ids compacted first, so label
ids may be non-sequential and as large as 2**63 - 1 without any array of the
size of the largest id; all thresholds share that one count.  Problems
with up to 4 million object pairs are solved on the dense IoU matrix exactly as
StarDist does; larger ones are split into the connected groups of overlapping
objects, which gives an optimum of the same problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.layout import DEFAULT_IOU_THRESHOLDS

#: Figures of one image at one threshold, in the order of the CSV columns.
FIGURES: tuple[str, ...] = (
    "threshold", "tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "accuracy", "f1",
    "mean_matched_score", "mean_true_score", "panoptic_quality",
)

# Label ids up to this value are compacted with a lookup table (one int per id up
# to the largest id); larger ids go through a sort (np.unique).
_LUT_MAX_ID = 1 << 22
# Object-pair counts up to this many are counted with a dense bincount.
_DENSE_PAIRS = 1 << 22
# Assignment problems with up to this many (true x pred) entries are solved densely.
_DENSE_ASSIGNMENT = 4_000_000


@dataclass(frozen=True)
class Overlap:
    """Voxel overlap of the objects of two label volumes (background excluded).

    Attributes
    ----------
    true_ids, pred_ids : numpy.ndarray
        Sorted ids (``int64``) of the ground-truth and predicted objects.
    true_sizes, pred_sizes : numpy.ndarray
        Voxel count of each object, aligned with the ids.
    rows, cols : numpy.ndarray
        For each overlapping pair, the index of its ground-truth object in
        ``true_ids`` and of its predicted object in ``pred_ids``.
    intersections : numpy.ndarray
        Voxels shared by each pair.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_sizes: np.ndarray
    pred_sizes: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    intersections: np.ndarray

    @property
    def n_true(self) -> int:
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    def iou(self) -> np.ndarray:
        """IoU of each overlapping pair, ``float32`` (aligned with ``rows``/``cols``)."""
        inter = self.intersections.astype(np.float64)
        union = self.true_sizes[self.rows] + self.pred_sizes[self.cols] - self.intersections
        return (inter / union).astype(np.float32)

    def iou_matrix(self) -> np.ndarray:
        """Dense ``(n_true, n_pred)`` IoU matrix, ``float32``; mind its size for many objects."""
        out = np.zeros((self.n_true, self.n_pred), np.float32)
        out[self.rows, self.cols] = self.iou()
        return out


@dataclass(frozen=True)
class MatchResult:
    """Matching figures of one image at one IoU threshold, with the association.

    The figures are those of :data:`FIGURES`; :meth:`as_row` returns them as a
    dict for a CSV row.  The association (which prediction matched which
    ground-truth object) is kept in arrays that do not print:

    Attributes
    ----------
    tp_true_ids, tp_pred_ids : numpy.ndarray
        Ids of the matched pairs (IoU >= threshold), sorted by ground-truth id.
    tp_ious : numpy.ndarray
        IoU of each matched pair (``float64`` holding the ``float32`` value).
    fn_true_ids : numpy.ndarray
        Ground-truth ids left unmatched (false negatives), sorted.
    fp_pred_ids : numpy.ndarray
        Predicted ids left unmatched (false positives), sorted.
    sum_matched_score : float
        Sum of the IoUs of the matched pairs (used to pool images).

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((4, 10, 10), np.uint16); gt[:, 2:6, 2:6] = 7
    >>> pred = np.roll(gt, 1, axis=2) * 3           # shifted by one voxel, id 21
    >>> r = match(gt=gt, pred=pred, thresholds=(0.5,))[0]
    >>> r.tp, r.fp, r.fn, round(r.mean_matched_score, 4)   # IoU = 12 / 20
    (1, 0, 0, 0.6)
    >>> r.pairs()
    [(7, 21, 0.6000000238418579)]
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    precision: float
    recall: float
    accuracy: float
    f1: float
    mean_matched_score: float
    mean_true_score: float
    panoptic_quality: float
    sum_matched_score: float = field(default=0.0, repr=False)
    tp_true_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False, compare=False)
    tp_pred_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False, compare=False)
    tp_ious: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64), repr=False, compare=False)
    fn_true_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False, compare=False)
    fp_pred_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False, compare=False)

    def as_row(self) -> dict[str, float | int]:
        """The figures as a dict in CSV column order (see :data:`FIGURES`)."""
        return {name: getattr(self, name) for name in FIGURES}

    def pairs(self) -> list[tuple[int, int, float]]:
        """Matched pairs ``(gt_id, pred_id, iou)``, sorted by ground-truth id."""
        return [(int(g), int(p), float(s)) for g, p, s in zip(self.tp_true_ids, self.tp_pred_ids, self.tp_ious)]

    def gt_associations(self) -> list[dict[str, object]]:
        """One row per ground-truth object, sorted by id: ``gt_id, pred_id, iou, tag``.

        ``tag`` is ``"TP"`` for a matched object and ``"FN"`` otherwise; an
        unmatched object has ``pred_id`` -1 and ``iou`` 0.0.
        """
        rows = [{"gt_id": g, "pred_id": p, "iou": s, "tag": "TP"} for g, p, s in self.pairs()]
        rows += [{"gt_id": int(g), "pred_id": -1, "iou": 0.0, "tag": "FN"} for g in self.fn_true_ids]
        rows.sort(key=lambda r: r["gt_id"])
        return rows

    def __str__(self) -> str:
        return (
            f"IoU >= {self.threshold:g}: TP {self.tp}, FP {self.fp}, FN {self.fn} "
            f"(true {self.n_true}, pred {self.n_pred}); precision {self.precision:.3f}, "
            f"recall {self.recall:.3f}, accuracy {self.accuracy:.3f}, F1 {self.f1:.3f}, "
            f"MMS {self.mean_matched_score:.3f}, MTS {self.mean_true_score:.3f}, PQ {self.panoptic_quality:.3f}"
        )


# --------------------------------------------------------------------------- public API


def match(
    *,
    gt: np.ndarray,
    pred: np.ndarray,
    thresholds: float | Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> list[MatchResult]:
    """Match predicted objects to ground-truth objects at one or more IoU thresholds.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Ground-truth and predicted label volumes of the same shape (any
        dimensionality), non-negative integers, 0 = background.  Ids need not be
        sequential.  Keyword-only: the two are easily swapped, and swapping them
        exchanges FP and FN.
    thresholds : float or sequence of float
        IoU thresholds in ``(0, 1]``; the overlap is computed once for all.

    Returns
    -------
    list of MatchResult
        One result per threshold, in the order given.

    Raises
    ------
    InputError
        The arrays differ in shape or do not hold non-negative integers.
    ConfigError
        A threshold is outside ``(0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((8, 8, 8), np.uint8); gt[1:5, 1:5, 1:5] = 1; gt[5:8, 5:8, 5:8] = 2
    >>> [(r.threshold, r.tp, r.fp, r.fn) for r in match(gt=gt, pred=(gt == 1).astype(np.uint8) * 9)]
    [(0.3, 1, 0, 1), (0.5, 1, 0, 1), (0.75, 1, 0, 1)]
    """
    thrs = check_thresholds(thresholds)
    ov = overlap(gt=gt, pred=pred)
    iou = ov.iou()
    assignments = _assign(ov, iou, thrs)
    return [_result(ov, thr, pairs) for thr, pairs in zip(thrs, assignments)]


def overlap(*, gt: np.ndarray, pred: np.ndarray) -> Overlap:
    """Count the voxels shared by every pair of ground-truth and predicted objects.

    One pass over the voxels that are foreground in either volume; ids are
    compacted first (a lookup table for ids up to about 4 million, a sort
    beyond), so memory never grows with the size of the largest id.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Ground-truth and predicted label volumes of the same shape, non-negative
        integers (keyword-only).

    Returns
    -------
    Overlap
    """
    t = _check_labels(gt, "ground truth")
    p = _check_labels(pred, "prediction")
    if t.shape != p.shape:
        raise InputError(f"prediction shape {p.shape} differs from ground-truth shape {t.shape}.")
    t = t.ravel()
    p = p.ravel()
    fg = t != 0
    fg |= p != 0
    t = t[fg]
    p = p[fg]
    del fg
    true_ids, true_sizes, tc = _compact(t)
    pred_ids, pred_sizes, pc = _compact(p)
    del t, p
    n_true, n_pred = true_ids.size, pred_ids.size
    width = n_pred + 1
    key = tc.astype(np.int64, copy=False) * width
    key += pc
    del tc, pc
    if (n_true + 1) * width <= _DENSE_PAIRS:
        counts = np.bincount(key, minlength=(n_true + 1) * width).reshape(n_true + 1, width)[1:, 1:]
        rows, cols = np.nonzero(counts)
        inter = counts[rows, cols]
    else:
        key = key[(key >= width) & (key % width != 0)]
        keys, inter = np.unique(key, return_counts=True)
        rows, cols = np.divmod(keys, width)
        rows -= 1
        cols -= 1
    return Overlap(
        true_ids=true_ids, pred_ids=pred_ids, true_sizes=true_sizes, pred_sizes=pred_sizes,
        rows=rows.astype(np.int64), cols=cols.astype(np.int64), intersections=inter.astype(np.int64),
    )


def check_thresholds(thresholds: float | Iterable[float]) -> tuple[float, ...]:
    """IoU thresholds as a tuple of floats in ``(0, 1]``, or :class:`ConfigError` naming the bad one."""
    if np.isscalar(thresholds):
        thresholds = (thresholds,)
    try:
        thrs = tuple(float(t) for t in thresholds)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ConfigError(f"IoU thresholds must be numbers, got {thresholds!r}.") from None
    if not thrs:
        raise ConfigError("give at least one IoU threshold.")
    bad = [t for t in thrs if not (0.0 < t <= 1.0)]
    if bad:
        raise ConfigError(f"IoU threshold {bad[0]:g} is outside (0, 1]; use values such as 0.3 0.5 0.75.")
    return thrs


# --------------------------------------------------------------------------- internals


def _check_labels(y: np.ndarray, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise InputError(f"the {what} must be a label volume of integers, got type {y.dtype}.")
    if y.dtype.kind == "i" and y.size and y.min() < 0:
        raise InputError(f"the {what} holds negative labels; labels must be >= 0.")
    if y.dtype == np.uint64 and y.size and y.max() >= 2**63:
        raise InputError(f"the {what} holds label ids of 2**63 or more; relabel it.")
    return y


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted nonzero ids, their counts, and codes 0..n (0 = background) of ``values``."""
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = int(values.max())
    if top <= _LUT_MAX_ID:
        counts = np.bincount(values.astype(np.intp, copy=False), minlength=top + 1)
        counts[0] = 0
        ids = np.flatnonzero(counts)
        lut = np.zeros(top + 1, np.int64 if ids.size >= 2**31 else np.int32)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(np.int64), counts[ids].astype(np.int64), lut[values]
    uniq, codes, counts = np.unique(values, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    if uniq[0] == 0:
        return uniq[1:].astype(np.int64), counts[1:].astype(np.int64), codes
    return uniq.astype(np.int64), counts.astype(np.int64), codes + 1


_NO_MATCH = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def _assign(ov: Overlap, iou: np.ndarray, thresholds: tuple[float, ...]) -> list[tuple[np.ndarray, ...]]:
    """Per threshold: rows, cols and IoUs of the matched pairs with IoU >= t, sorted by row."""
    n_matched = min(ov.n_true, ov.n_pred)
    if n_matched == 0 or iou.size == 0:
        return [_NO_MATCH for _ in thresholds]
    if ov.n_true * ov.n_pred <= _DENSE_ASSIGNMENT:
        return _assign_dense(ov, iou, thresholds, n_matched)
    return _assign_by_groups(ov, iou, thresholds, n_matched)


def _assign_dense(ov, iou, thresholds, n_matched):
    from scipy.optimize import linear_sum_assignment

    scores = np.zeros((ov.n_true, ov.n_pred), np.float32)
    scores[ov.rows, ov.cols] = iou
    tie_break = scores / np.float32(2 * n_matched)  # float32 as in StarDist
    out = []
    for thr in thresholds:
        hits = scores >= thr
        if not hits.any():
            out.append(_NO_MATCH)
            continue
        costs = -hits.astype(np.float64) - tie_break
        r, c = linear_sum_assignment(costs)
        ok = hits[r, c]
        out.append((r[ok].astype(np.int64), c[ok].astype(np.int64), scores[r[ok], c[ok]]))
    return out


def _assign_by_groups(ov, iou, thresholds, n_matched):
    """Hungarian assignment on each connected group of overlapping objects.

    Pairs without overlap cost 0, so an optimal assignment of the whole problem
    is the union of optimal assignments of the groups.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n_t = ov.n_true
    n_nodes = n_t + ov.n_pred
    graph = coo_matrix((np.ones(ov.rows.size, np.int8), (ov.rows, n_t + ov.cols)), shape=(n_nodes, n_nodes))
    _, component = connected_components(graph, directed=False)
    group = component[ov.rows]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    groups = np.split(order, bounds)
    half = np.float32(2 * n_matched)
    out = []
    for thr in thresholds:
        rows_ok, cols_ok, scores_ok = [], [], []
        single = [g for g in groups if g.size == 1]
        if single:
            s = np.concatenate(single)
            s = s[iou[s] >= thr]
            rows_ok.append(ov.rows[s])
            cols_ok.append(ov.cols[s])
            scores_ok.append(iou[s])
        for g in groups:
            if g.size == 1:
                continue
            sel = iou[g] >= thr
            if not sel.any():
                continue
            r_ids, r_loc = np.unique(ov.rows[g], return_inverse=True)
            c_ids, c_loc = np.unique(ov.cols[g], return_inverse=True)
            sub = np.zeros((r_ids.size, c_ids.size), np.float32)
            sub[r_loc, c_loc] = iou[g]
            hits = sub >= thr
            r, c = linear_sum_assignment(-hits.astype(np.float64) - sub / half)
            ok = hits[r, c]
            rows_ok.append(r_ids[r[ok]])
            cols_ok.append(c_ids[c[ok]])
            scores_ok.append(sub[r[ok], c[ok]])
        if rows_ok:
            rr = np.concatenate(rows_ok).astype(np.int64)
            o = np.argsort(rr, kind="stable")
            cc = np.concatenate(cols_ok).astype(np.int64)
            out.append((rr[o], cc[o], np.concatenate(scores_ok)[o]))
        else:
            out.append(_NO_MATCH)
    return out


def _result(ov: Overlap, thr: float, matched: tuple[np.ndarray, ...]) -> MatchResult:
    rows, cols, scores = matched
    n_true, n_pred = ov.n_true, ov.n_pred
    tp = int(rows.size)
    fp, fn = n_pred - tp, n_true - tp
    # float32 sum in ground-truth id order, exactly as StarDist adds them.
    total = np.sum(scores, dtype=np.float32) if tp else np.float32(0.0)
    matched_true = np.zeros(n_true, bool)
    matched_true[rows] = True
    matched_pred = np.zeros(n_pred, bool)
    matched_pred[cols] = True

    def ratio(num, den) -> float:
        return float(num / den) if tp > 0 else 0.0

    def score_ratio(den: float, dtype=np.float64) -> float:
        return float(dtype(total) / dtype(den)) if den > 0 and tp > 0 else 0.0

    return MatchResult(
        threshold=float(thr), tp=tp, fp=fp, fn=fn, n_true=n_true, n_pred=n_pred,
        precision=ratio(tp, tp + fp), recall=ratio(tp, tp + fn),
        accuracy=ratio(tp, tp + fp + fn), f1=ratio(2 * tp, 2 * tp + fp + fn),
        mean_matched_score=score_ratio(tp), mean_true_score=score_ratio(n_true, np.float32),
        panoptic_quality=score_ratio(tp + fp / 2 + fn / 2),
        sum_matched_score=float(total),
        tp_true_ids=ov.true_ids[rows], tp_pred_ids=ov.pred_ids[cols], tp_ious=scores.astype(np.float64),
        fn_true_ids=ov.true_ids[~matched_true], fp_pred_ids=ov.pred_ids[~matched_pred],
    )
