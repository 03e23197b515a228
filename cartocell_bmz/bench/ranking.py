"""Ranking models from per-image metrics: the published CartoCell table, reproducibly.

Pure functions on plain rows (dictionaries, as read from ``metrics_per_image.csv``
or the benchmark's per-image files); no file access, no plotting.

The ranking rule
----------------
1. For every model, each of the eight published columns is the **mean over test
   images** of the per-image figure (the "by image" aggregation, BiaPy's default):

   ======== ==================================================
   column   per-image figure
   ======== ==================================================
   IoU B    IoU of channel B (probability > 0.5 vs the target)
   IoU C    IoU of channel C
   IoU M    IoU of channel M
   F1@0.5   F1 of instance matching at IoU threshold 0.5
   PQ@0.5   panoptic quality at 0.5
   MTS@0.5  mean true score at 0.5
   F1@0.75  F1 at 0.75
   PQ@0.75  panoptic quality at 0.75
   ======== ==================================================

2. A model's **score** is the unweighted mean of its eight column values.
3. Models are ranked by score, highest first, after rounding the score to the
   printed precision (:data:`SCORE_DECIMALS` decimals): models whose printed scores are
   equal **tie** and share a rank, with competition ranking ("1224": two models
   tied for first are both 1, the next is 3). Tied models are listed by model name,
   so the order of the table never depends on the order of the input.
4. A model with a missing column (no probabilities, so no IoU; or no image with
   a figure at a threshold) has no score and no rank; it is listed last.

On the published CartoCell figures this rule gives the published order
(see :func:`published_rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from cartocell_bmz.bmz.known_models import RANKING_COLUMNS

#: Source label of rows computed by this benchmark.
SOURCE_BENCHMARK = "this benchmark"
#: Source label of the published reference rows (never mixed into the ranking).
SOURCE_PUBLISHED = "published (real CartoCell test set)"

#: Test cysts of the real CartoCell test set behind the published figures.
PUBLISHED_N_IMAGES = 60

#: Names of the ranking columns, in table order.
COLUMN_NAMES: tuple[str, ...] = tuple(c[0] for c in RANKING_COLUMNS)
#: Decimals of every figure in ranking.csv / ranking.md (and the precision of ties).
SCORE_DECIMALS = 4

#: One-paragraph statement of the rule, written into ranking.json and the report.
RANKING_RULE = (
    "Each column is the mean over test images of the per-image figure (IoU of each channel at "
    "probability > 0.5; F1, PQ and MTS of instance matching at IoU 0.5 and 0.75). A model's score is "
    "the mean of its eight columns; models are ranked by score (highest first) rounded to "
    f"{SCORE_DECIMALS} decimals; equal rounded scores share a rank (competition ranking, 1-2-2-4) and "
    "are listed by model name; a model with a missing column has no rank and is listed last."
)


@dataclass(frozen=True)
class RankingRow:
    """One line of the ranking table.

    Attributes
    ----------
    model : str
        Model name.
    rank : int or None
        Competition rank within its ``source`` (``None``: no score).
    score : float
        Mean of the eight column values (``nan`` when one is missing).
    values : dict
        Column name -> value (``nan`` when missing), in :data:`COLUMN_NAMES` order.
    n_images : int
        Test images the figures were averaged over (60 real cysts for published rows).
    source : str
        :data:`SOURCE_BENCHMARK` or :data:`SOURCE_PUBLISHED`.
    """

    model: str
    rank: int | None
    score: float
    values: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    source: str = SOURCE_BENCHMARK


# --------------------------------------------------------------------------- aggregation


def _key(threshold) -> float | None:
    if threshold is None or threshold == "":
        return None
    return round(float(threshold), 6)


def _float(value) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def model_columns(rows: Iterable[Mapping]) -> dict[str, tuple[dict[str, float], int]]:
    """Mean over images of each ranking column, per model.

    Parameters
    ----------
    rows : iterable of mappings
        Per-image rows, one per model, image and threshold, with keys ``model``,
        ``image``, ``threshold``, ``f1``, ``panoptic_quality``, ``mean_true_score`` and,
        when probabilities were evaluated, ``iou_B``, ``iou_C``, ``iou_M`` (values may be
        strings, as read from a CSV).

    Returns
    -------
    dict
        Model -> (column name -> mean value, number of images). A column without any
        finite value is ``nan``; per image, a non-finite figure is left out of the mean.

    Examples
    --------
    >>> rows = [dict(model="a", image=i, threshold=t, f1=f, panoptic_quality=f, mean_true_score=f,
    ...              iou_B=1, iou_C=0.5, iou_M=1) for i, f in (("x", 1.0), ("y", 0.5)) for t in (0.5, 0.75)]
    >>> cols, n = model_columns(rows)["a"]
    >>> n, cols["F1@0.5"], cols["IoU C"]
    (2, 0.75, 0.5)
    """
    # model -> image -> column -> value
    per_image: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        model, image, thr = str(row["model"]), str(row["image"]), _key(row.get("threshold"))
        cols = per_image.setdefault(model, {}).setdefault(image, {})
        for name, key, want in RANKING_COLUMNS:
            if key not in row:
                continue
            if want is None:  # channel IoU: the same on every threshold's row
                if name not in cols or not math.isfinite(cols[name]):
                    cols[name] = _float(row[key])
            elif thr == _key(want):
                cols[name] = _float(row[key])
    result: dict[str, tuple[dict[str, float], int]] = {}
    for model in sorted(per_image):
        images = per_image[model]
        means: dict[str, float] = {}
        for name in COLUMN_NAMES:
            # sorted image order: the same sum, bit for bit, whatever the input order
            vals = [images[im][name] for im in sorted(images) if math.isfinite(images[im].get(name, math.nan))]
            means[name] = math.fsum(vals) / len(vals) if vals else math.nan
        result[model] = (means, len(images))
    return result


def score_of(values: Mapping[str, float]) -> float:
    """Mean of the eight ranking columns (``nan`` if one is missing or not finite).

    Examples
    --------
    >>> score_of(dict.fromkeys(COLUMN_NAMES, 0.5))
    0.5
    """
    vals = [float(values.get(name, math.nan)) for name in COLUMN_NAMES]
    if not all(math.isfinite(v) for v in vals):
        return math.nan
    return math.fsum(vals) / len(vals)


def competition_ranks(scores: Mapping[str, float], *, decimals: int = SCORE_DECIMALS) -> list[tuple[str, int | None]]:
    """Order names by score (highest first) and give competition ranks ("1224").

    Scores are compared after rounding to ``decimals``; equal rounded scores share a
    rank and are ordered by name. Non-finite scores get rank ``None`` and come last
    (by name).

    Examples
    --------
    >>> competition_ranks({"b": 0.9, "a": 0.9, "c": 0.8, "d": float("nan")})
    [('a', 1), ('b', 1), ('c', 3), ('d', None)]
    """
    finite = [(round(s, decimals), n) for n, s in scores.items() if math.isfinite(s)]
    finite.sort(key=lambda t: (-t[0], t[1]))
    out: list[tuple[str, int | None]] = []
    prev, rank = None, 0
    for i, (s, name) in enumerate(finite, start=1):
        if s != prev:
            rank, prev = i, s
        out.append((name, rank))
    out += [(n, None) for n in sorted(n for n, s in scores.items() if not math.isfinite(s))]
    return out


def rank_table(
    columns: Mapping[str, Mapping[str, float]],
    *,
    n_images: Mapping[str, int] | None = None,
    source: str = SOURCE_BENCHMARK,
) -> list[RankingRow]:
    """Rank models given their column values (see the module docstring for the rule).

    Parameters
    ----------
    columns : mapping
        Model -> (column name -> value).
    n_images : mapping, optional
        Model -> number of test images.
    source : str
        Label stored in every row.

    Returns
    -------
    list of RankingRow
        Sorted by rank, then model name; unranked models last.
    """
    scores = {m: score_of(v) for m, v in columns.items()}
    rows = []
    for model, rank in competition_ranks(scores):
        values = {name: float(columns[model].get(name, math.nan)) for name in COLUMN_NAMES}
        rows.append(RankingRow(model=model, rank=rank, score=scores[model], values=values,
                               n_images=int((n_images or {}).get(model, 0)), source=source))
    return rows


def rank_models(rows: Iterable[Mapping]) -> list[RankingRow]:
    """Per-image rows -> the ranking of the models (mean over images, then the rule).

    Parameters
    ----------
    rows : iterable of mappings
        Per-image rows as described in :func:`model_columns`.

    Returns
    -------
    list of RankingRow

    Examples
    --------
    >>> def rows(model, f1):
    ...     return [dict(model=model, image="i", threshold=t, f1=f1, panoptic_quality=f1,
    ...                  mean_true_score=f1, iou_B=0.9, iou_C=0.5, iou_M=0.9) for t in (0.5, 0.75)]
    >>> [(r.model, r.rank) for r in rank_models(rows("good", 0.9) + rows("bad", 0.2) + rows("twin", 0.9))]
    [('good', 1), ('twin', 1), ('bad', 3)]
    """
    table = model_columns(rows)
    return rank_table({m: v for m, (v, _) in table.items()}, n_images={m: n for m, (_, n) in table.items()})


def published_rows() -> list[RankingRow]:
    """The published figures of the six CartoCell models on the real test set (60 cysts).

    From :data:`cartocell_bmz.bmz.known_models.PUBLISHED_RANKING`. The source names only the
    first and the last model; the others are listed as ``published #N (not named)``.

    Returns
    -------
    list of RankingRow
        Ranked among themselves by this module's rule (which reproduces the published
        order), labelled :data:`SOURCE_PUBLISHED`.

    Examples
    --------
    >>> [(r.rank, r.model) for r in published_rows()][:2]
    [(1, 'happy-honeybee'), (2, 'published #2 (not named)')]
    """
    from cartocell_bmz.bmz.known_models import PUBLISHED_COLUMNS, PUBLISHED_RANKING

    to_column = dict(zip(PUBLISHED_COLUMNS, COLUMN_NAMES))
    columns = {}
    for row in PUBLISHED_RANKING:
        name = row.model_id or f"published #{row.rank} (not named)"
        columns[name] = {to_column[k]: float(v) for k, v in row.figures.items()}
    return rank_table(columns, n_images=dict.fromkeys(columns, PUBLISHED_N_IMAGES), source=SOURCE_PUBLISHED)


# --------------------------------------------------------------------------- formatting


def _fmt(value: float, decimals: int = SCORE_DECIMALS) -> str:
    return f"{value:.{decimals}f}" if math.isfinite(value) else ""


#: Header of ranking.csv.
CSV_HEADER: tuple[str, ...] = ("rank", "model", "score", *COLUMN_NAMES, "n_images", "source")


def records(rows: Sequence[RankingRow]) -> list[dict]:
    """Rows as JSON-ready dictionaries (``None`` for missing values)."""
    out = []
    for r in rows:
        out.append({
            "rank": r.rank, "model": r.model,
            "score": round(r.score, 10) if math.isfinite(r.score) else None,
            **{k: (round(v, 10) if math.isfinite(v) else None) for k, v in r.values.items()},
            "n_images": r.n_images, "source": r.source,
        })
    return out


def format_csv(rows: Sequence[RankingRow]) -> str:
    """ranking.csv text: fixed decimals, one row per model, in table order, no timestamps.

    Examples
    --------
    >>> print(format_csv(rank_table({"m": dict.fromkeys(COLUMN_NAMES, 0.5)}, n_images={"m": 3})), end="")
    rank,model,score,IoU B,IoU C,IoU M,F1@0.5,PQ@0.5,MTS@0.5,F1@0.75,PQ@0.75,n_images,source
    1,m,0.5000,0.5000,0.5000,0.5000,0.5000,0.5000,0.5000,0.5000,0.5000,3,this benchmark
    """
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in rows:
        writer.writerow([
            "" if r.rank is None else r.rank, r.model, _fmt(r.score),
            *(_fmt(r.values.get(c, math.nan)) for c in COLUMN_NAMES), r.n_images, r.source,
        ])
    return buf.getvalue()


def format_markdown(rows: Sequence[RankingRow], *, decimals: int = 3) -> str:
    """ranking.md text: a GitHub markdown table (published rows, if any, after a labelled rule).

    Examples
    --------
    >>> print(format_markdown(rank_table({"m": dict.fromkeys(COLUMN_NAMES, 0.5)}, n_images={"m": 3})), end="")
    | rank | model | score | IoU B | IoU C | IoU M | F1@0.5 | PQ@0.5 | MTS@0.5 | F1@0.75 | PQ@0.75 | images |
    |---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
    | 1 | m | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 3 |
    """
    head = ["rank", "model", "score", *COLUMN_NAMES, "images"]
    lines = ["| " + " | ".join(head) + " |", "|---:|:---|" + "---:|" * (len(head) - 2)]
    for r in rows:
        model = r.model if r.source == SOURCE_BENCHMARK else f"{r.model} — *{r.source}*"
        n = str(r.n_images)
        cells = ["" if r.rank is None else str(r.rank), model, _fmt(r.score, decimals) or "–",
                 *(_fmt(r.values.get(c, math.nan), decimals) or "–" for c in COLUMN_NAMES), n]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
