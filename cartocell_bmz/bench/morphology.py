"""Morphology of each model's cells against the ground truth's, beside the ranking (never in it).

The question a biologist asks before trusting a model is not only "are the cells found?"
(the ranking) but "do they give the same biology?": the same mean number of apical and
basal neighbours, the same share of scutoids, the same cell size. For each benchmark task
:func:`image_morphology` measures the predicted Voronoi cells and the ground truth with
:func:`cartocell_bmz.core.morphology.measure_cyst` (at the image's voxel size) and compares
them with :func:`~cartocell_bmz.core.morphology.compare_morphology`; the record is stored in
the task's metrics file. :func:`morphology_table` then gives, per model, the mean over test
images of each feature of :data:`~cartocell_bmz.core.morphology.COMPARED`, its mean absolute
error and its mean signed error (bias), plus the ground truth's mean values as a reference
row; :func:`format_csv` and :func:`format_markdown` write ``morphology.csv`` and
``morphology.md``. The published score and ``ranking.csv`` are untouched.

Errors are ``pred - truth`` for neighbours and scutoid fraction, relative
(``pred / truth - 1``) for the median cell volume. Cyst figures are over the *valid* cells
(touching lumen and outside, not cut, one piece); a cyst without one has NaN figures, left
out of the means (empty cells in the tables).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from cartocell_bmz.core.morphology import COMPARED, compare_morphology, measure_cyst
from cartocell_bmz.errors import CartoCellWarning

#: Name of the reference row (the ground truth's own figures).
TRUTH_ROW = "ground truth"
#: Source label of model rows and of the reference row.
SOURCE_BENCHMARK = "this benchmark"
SOURCE_TRUTH = "ground truth (reference)"
#: Decimals of every figure in morphology.csv.
CSV_DECIMALS = 4
#: Readable names of the compared features (table headers).
FEATURE_LABELS: dict[str, str] = {
    "mean_apical_neighbours": "apical neighbours",
    "mean_basal_neighbours": "basal neighbours",
    "scutoid_fraction": "scutoid fraction",
    "median_volume": "median cell volume (µm³)",
}
#: Cell-count column stored with the compared values of each side.
_COUNT = "valid_cells"

#: One sentence on how to read the table (markdown, HTML report).
READING = (
    "Each model's mean over test images of the feature its Voronoi cells give, then (err: the mean absolute "
    "error against the ground truth of the same image; bias: the mean signed error, model minus truth). "
    "Neighbours are mean numbers of apical and basal neighbours of the valid cells, scutoid fraction their share "
    "of scutoids (apico-basal transitions), and the median cell volume errors are relative (model / truth - 1). "
    "Not part of the score."
)


@dataclass(frozen=True)
class MorphologyRow:
    """One line of the morphology table.

    Attributes
    ----------
    model : str
        Model name, or :data:`TRUTH_ROW`.
    values : dict
        Feature -> mean over images of the model's (or the ground truth's) value.
    errors, biases : dict
        Feature -> mean absolute and mean signed error against the ground truth (``nan``
        for the reference row).
    n_images : int
        Test images measured.
    source : str
        :data:`SOURCE_BENCHMARK` or :data:`SOURCE_TRUTH`.
    """

    model: str
    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    biases: dict[str, float] = field(default_factory=dict)
    n_images: int = 0
    source: str = SOURCE_BENCHMARK


# --------------------------------------------------------------------------- one image


def image_morphology(*, gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> dict:
    """Measure a predicted cyst and its ground truth; compare their morphology.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        ``(Z, Y, X)`` label volumes of the ground truth and of the prediction (keyword-only).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres, the same for both.

    Returns
    -------
    dict
        JSON-ready: ``truth`` and ``pred`` (each feature of
        :data:`~cartocell_bmz.core.morphology.COMPARED` and ``valid_cells``), ``error``
        (:func:`~cartocell_bmz.core.morphology.compare_morphology`) and ``notes`` (the
        measurement's notices, e.g. cells cut by the border); undefined values are ``None``.

    Examples
    --------
    >>> from cartocell_bmz.core.phantoms import make_cyst
    >>> c = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), seed=1)
    >>> image_morphology(gt=c.labels, pred=c.labels, spacing=c.spacing)["error"]["scutoid_fraction"]
    0.0
    """
    rows, notes = {}, []
    for side, labels in (("truth", gt), ("pred", pred)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CartoCellWarning)
            rows[side] = measure_cyst(labels, spacing).cyst
        for w in caught:  # the notices go into the record; anything else is passed on
            if issubclass(w.category, CartoCellWarning):
                notes.append(f"{side}: {w.message}")
            else:
                warnings.warn(w.message, w.category, stacklevel=2)
    record = {side: {k: _json_float(row.get(k)) for k in (*COMPARED, _COUNT)} for side, row in rows.items()}
    error = compare_morphology(rows["truth"], rows["pred"])
    return {**record, "error": {k: _json_float(v) for k, v in error.items()}, "notes": notes}


def _json_float(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- aggregation


def _mean(values: Iterable) -> float:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return math.fsum(vals) / len(vals) if vals else math.nan


def morphology_table(records: Iterable[Mapping], models: Sequence[str] | None = None) -> list[MorphologyRow]:
    """Per-image morphology records -> the ground truth's row, then one row per model.

    Parameters
    ----------
    records : iterable of mappings
        ``model``, ``image`` and the keys of :func:`image_morphology` (as stored in the
        metrics files).
    models : sequence of str, optional
        Order of the model rows (e.g. the ranking's); default sorted names. Models without
        a record are left out.

    Returns
    -------
    list of MorphologyRow
        The reference row (:data:`TRUTH_ROW`: the ground truth's mean values over the test
        images) first, then the models.

    Examples
    --------
    >>> def rec(model, image, truth, pred):
    ...     t = {k: truth for k in COMPARED}
    ...     p = {k: pred for k in COMPARED}
    ...     return {"model": model, "image": image, "truth": t, "pred": p, "error": compare_morphology(t, p)}
    >>> rows = morphology_table([rec("m", "a", 4.0, 5.0), rec("m", "b", 6.0, 5.0)])
    >>> [(r.model, r.values["scutoid_fraction"], r.errors["scutoid_fraction"], r.biases["scutoid_fraction"])
    ...  for r in rows]
    [('ground truth', 5.0, nan, nan), ('m', 5.0, 1.0, 0.0)]
    """
    by_model: dict[str, dict[str, Mapping]] = {}
    for r in records:
        by_model.setdefault(str(r["model"]), {})[str(r["image"])] = r
    truth_by_image: dict[str, Mapping] = {}
    for images in by_model.values():
        for image, r in images.items():
            truth_by_image.setdefault(image, r["truth"])
    nan = dict.fromkeys(COMPARED, math.nan)
    rows = [MorphologyRow(TRUTH_ROW, values=_feature_means(truth_by_image.values()), errors=dict(nan),
                          biases=dict(nan), n_images=len(truth_by_image), source=SOURCE_TRUTH)]
    order = list(models) if models is not None else sorted(by_model)
    for model in (m for m in order if m in by_model):
        images = [by_model[model][im] for im in sorted(by_model[model])]  # sorted: the same sums every run
        errors = [r["error"] for r in images]
        rows.append(MorphologyRow(
            model, values=_feature_means(r["pred"] for r in images),
            errors={k: _mean(abs(e[k]) if e.get(k) is not None else None for e in errors) for k in COMPARED},
            biases={k: _mean(e.get(k) for e in errors) for k in COMPARED},
            n_images=len(images),
        ))
    return rows


def _feature_means(sides: Iterable[Mapping]) -> dict[str, float]:
    sides = list(sides)
    return {k: _mean(s.get(k) for s in sides) for k in COMPARED}


# --------------------------------------------------------------------------- formatting


def _fmt(value: float, decimals: int = CSV_DECIMALS, sign: str = "") -> str:
    return f"{value:{sign}.{decimals}f}" if math.isfinite(value) else ""


def csv_header() -> tuple[str, ...]:
    """Header of morphology.csv: per feature its mean value, ``_error`` (mean |error|) and ``_bias``."""
    per_feature = tuple(c for k in COMPARED for c in (k, f"{k}_error", f"{k}_bias"))
    return ("model", *per_feature, "n_images", "source")


def format_csv(rows: Sequence[MorphologyRow]) -> str:
    """morphology.csv text: fixed decimals, the reference row first, no timestamps.

    Examples
    --------
    >>> text = format_csv([MorphologyRow("m", values=dict.fromkeys(COMPARED, 0.5),
    ...                    errors=dict.fromkeys(COMPARED, 0.25), biases=dict.fromkeys(COMPARED, -0.25), n_images=2)])
    >>> print(text.splitlines()[1])
    m,0.5000,0.2500,-0.2500,0.5000,0.2500,-0.2500,0.5000,0.2500,-0.2500,0.5000,0.2500,-0.2500,2,this benchmark
    """
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(csv_header())
    for r in rows:
        figures = [_fmt(getattr(r, part).get(k, math.nan)) for k in COMPARED for part in ("values", "errors", "biases")]
        writer.writerow([r.model, *figures, r.n_images, r.source])
    return buf.getvalue()


def feature_label(name: str) -> str:
    """Readable name of a compared feature (header of the markdown and HTML tables)."""
    return FEATURE_LABELS.get(name, name.replace("_", " "))


def cell_texts(row: MorphologyRow) -> list[str]:
    """The feature cells of one row as printed: ``value`` or ``value (err E, bias B)``.

    Neighbours and scutoid fraction with 2 decimals, volumes with 1; errors of relative
    features (the median volume) in percent; ``–`` where undefined.

    Examples
    --------
    >>> row = MorphologyRow("m", values={"mean_apical_neighbours": 5.25, "median_volume": 80.0},
    ...                     errors={"mean_apical_neighbours": 0.5, "median_volume": 0.1},
    ...                     biases={"mean_apical_neighbours": -0.25, "median_volume": 0.05})
    >>> cell_texts(row)[0], cell_texts(row)[3]
    ('5.25 (err 0.50, bias -0.25)', '80.0 (err 10 %, bias +5 %)')
    """
    cells = []
    for k, how in COMPARED.items():
        relative = how == "relative"
        value = _fmt(row.values.get(k, math.nan), 1 if relative else 2) or "–"
        err, bias = row.errors.get(k, math.nan), row.biases.get(k, math.nan)
        if math.isfinite(err) and math.isfinite(bias):
            if relative:
                value += f" (err {100 * err:.0f} %, bias {100 * bias:+.0f} %)"
            else:
                value += f" (err {err:.2f}, bias {bias:+.2f})"
        cells.append(value)
    return cells


def format_markdown(rows: Sequence[MorphologyRow]) -> str:
    """morphology.md text: a GitHub markdown table, the ground truth first.

    Examples
    --------
    >>> truth = MorphologyRow(TRUTH_ROW, values=dict.fromkeys(COMPARED, 0.5), n_images=2, source=SOURCE_TRUTH)
    >>> print(format_markdown([truth]).splitlines()[2])
    | ground truth | 0.50 | 0.50 | 0.50 | 0.5 | 2 |
    """
    head = ["model", *(feature_label(k) for k in COMPARED), "images"]
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        lines.append("| " + " | ".join([r.model, *cell_texts(r), str(r.n_images)]) + " |")
    return "\n".join(lines) + "\n"
