"""Benchmark outputs a reader can use: tables (CSV, markdown, JSON), PNG plots, an HTML report.

The tables are deterministic (fixed decimals, sorted rows, no timestamps), so two runs on
the same models and data give byte-identical ``ranking.csv`` and ``per_image.csv``.
The plots use matplotlib's Agg backend; the HTML report embeds them as base64 data
URIs, so the single ``report.html`` file opens offline and can be mailed around.

Files written by :func:`write_report` in ``OUT/``::

    ranking.csv  ranking.md  ranking.json  per_image.csv  report.html
    morphology.csv  morphology.md     (given morphology rows; never part of the score)
    plots/ranking_bars.png  plots/per_image_f1_pq.png  plots/montage_<model>.png
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cartocell_bmz.bench import morphology as morph
from cartocell_bmz.bench.ranking import (
    COLUMN_NAMES,
    RANKING_RULE,
    SOURCE_BENCHMARK,
    RankingRow,
    format_csv,
    format_markdown,
    records,
)
from cartocell_bmz.layout import INSTANCES_DIR, VORONOI_DIR

#: Columns of per_image.csv, in order (the evaluate columns, with the model first).
PER_IMAGE_COLUMNS: tuple[str, ...] = (
    "model", "image", "threshold", "tp", "fp", "fn", "n_true", "n_pred", "precision", "recall",
    "accuracy", "f1", "mean_matched_score", "mean_true_score", "panoptic_quality", "iou_B", "iou_C", "iou_M",
)
_INT_COLUMNS = {"tp", "fp", "fn", "n_true", "n_pred"}
_TEXT_COLUMNS = {"model", "image"}
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class Montage:
    """Mid-slices of one test cyst for the montage of one model.

    Attributes
    ----------
    model : str
        Model name (title of the figure).
    image : str
        Test image file name.
    raw, gt, pred : numpy.ndarray
        ``(Z, Y, X)`` raw image, ground-truth labels and predicted labels.
    spacing : tuple of float
        Voxel size ``(z, y, x)`` in micrometres (aspect ratio of the side view).
    caption : str
        Extra text under the title (e.g. the image's F1).
    """

    model: str
    image: str
    raw: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    caption: str = ""


@dataclass
class ReportFiles:
    """Paths written by :func:`write_report`."""

    ranking_csv: Path
    ranking_md: Path
    ranking_json: Path
    per_image_csv: Path
    html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    morphology_csv: Path | None = None
    morphology_md: Path | None = None


# --------------------------------------------------------------------------- tables


def format_per_image_csv(rows: Sequence[Mapping]) -> str:
    """per_image.csv text: rows sorted by model, image and threshold; 6 fixed decimals.

    Missing values (e.g. no IoU without probabilities) are empty cells.

    Examples
    --------
    >>> row = dict(model="m", image="a.tif", threshold=0.5, tp=3, fp=1, fn=0, n_true=3, n_pred=4,
    ...            precision=0.75, recall=1.0, accuracy=0.75, f1=6 / 7, mean_matched_score=0.9,
    ...            mean_true_score=0.9, panoptic_quality=0.771428571, iou_B=0.8, iou_C=0.4)
    >>> print(format_per_image_csv([row]).splitlines()[1])
    m,a.tif,0.50,3,1,0,3,4,0.750000,1.000000,0.750000,0.857143,0.900000,0.900000,0.771429,0.800000,0.400000,
    """
    import csv
    import io

    def cell(key, value):
        if value is None or value == "":
            return ""
        if key in _TEXT_COLUMNS:
            return str(value)
        if key in _INT_COLUMNS:
            return str(int(value))
        v = float(value)
        if not math.isfinite(v):
            return ""
        return f"{v:.2f}" if key == "threshold" else f"{v:.6f}"

    ordered = sorted(rows, key=lambda r: (str(r["model"]), str(r["image"]), float(r["threshold"])))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PER_IMAGE_COLUMNS)
    for r in ordered:
        writer.writerow([cell(k, r.get(k)) for k in PER_IMAGE_COLUMNS])
    return buf.getvalue()


def ranking_json(rows: Sequence[RankingRow], *, extra: Mapping | None = None) -> str:
    """ranking.json text: the rule, the columns and one record per row (no timestamps)."""
    doc = {"rule": RANKING_RULE, "columns": list(COLUMN_NAMES), "rows": records(rows), **(extra or {})}
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def _write_text(path: Path, text: str) -> Path:
    from cartocell_bmz.io.volumes import atomic_open

    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return path


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from cartocell_bmz.io.volumes import atomic_path

    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def _model_colours(models: Sequence[str]) -> dict[str, tuple]:
    plt = _plt()
    cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def plot_ranking_bars(rows: Sequence[RankingRow], path: str | os.PathLike) -> Path:
    """Grouped bar chart: one group per ranking column, one bar per model (ranked order).

    Published reference rows, when present, are drawn hatched and labelled as such.
    """
    plt = _plt()
    path = Path(path)
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(COLUMN_NAMES) + 0.12 * n * len(COLUMN_NAMES)), 4.6))
    width = 0.8 / n
    x = np.arange(len(COLUMN_NAMES))
    colours = _model_colours(sorted({r.model for r in rows}))
    for i, r in enumerate(rows):
        vals = [r.values.get(c, math.nan) for c in COLUMN_NAMES]
        published = r.source != SOURCE_BENCHMARK
        label = f"{r.rank if r.rank is not None else '-'}. {r.model}" + (" (published, real test set)" if published else "")
        ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(vals), width, label=label, color=colours[r.model],
               hatch="//" if published else None, edgecolor="0.3" if published else None, linewidth=0.4)
    ax.set_xticks(x, COLUMN_NAMES)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("mean over test images")
    ax.set_title("Ranking columns per model (higher is better)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if n > 3 else 1, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def plot_distributions(per_image: Sequence[Mapping], path: str | os.PathLike, *,
                       models: Sequence[str] | None = None, threshold: float = 0.5) -> Path:
    """Per-image distributions of F1 and PQ at ``threshold``: a box and the points, per model.

    Parameters
    ----------
    per_image : sequence of mappings
        Per-image rows (``model``, ``image``, ``threshold``, ``f1``, ``panoptic_quality``).
    path : path-like
        PNG file.
    models : sequence of str, optional
        Model order on the x axis (default: sorted names).
    threshold : float
        IoU threshold of the figures shown.
    """
    plt = _plt()
    path = Path(path)
    rows = [r for r in per_image if abs(float(r["threshold"]) - threshold) < 1e-6]
    models = list(models) if models is not None else sorted({str(r["model"]) for r in rows})
    colours = _model_colours(sorted(models))
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.0 + 1.2 * len(models)), 4.2), sharey=True)
    rng = np.random.default_rng(0)  # fixed jitter: the same picture every run
    for ax, key, title in zip(axes, ("f1", "panoptic_quality"), (f"F1@{threshold:g}", f"PQ@{threshold:g}")):
        data = []
        for m in models:
            vals = [float(r[key]) for r in rows if str(r["model"]) == m and r.get(key) not in (None, "")]
            data.append([v for v in vals if math.isfinite(v)])
        ax.boxplot([d if d else [np.nan] for d in data], positions=np.arange(len(models)), widths=0.55,
                   showfliers=False, medianprops={"color": "k"})
        for i, (m, d) in enumerate(zip(models, data)):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=14, color=colours[m], alpha=0.85, zorder=3,
                       edgecolors="0.2", linewidths=0.3)
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{title} per test image")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("per-image value")
    fig.tight_layout()
    return _save(fig, path)


def _label_colours(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.3, 1.0, size=(max(n, 0) + 1, 3))
    colours[0] = 0.0
    return colours


def label_colour_tables(gt: np.ndarray, pred: np.ndarray, *, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Colour look-up tables where a predicted cell matched to a true cell takes its colour.

    A predicted cell whose IoU with a true cell is at least 0.5 (the match of F1@0.5) is
    drawn in that true cell's colour; every other predicted cell is drawn in a shade of
    red. Compute the tables on whole volumes, then index slices with them.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Label arrays of the same shape (0 = background).
    seed : int
        Seed of the random colours (the same colours every run).

    Returns
    -------
    tuple of numpy.ndarray
        ``(max(gt) + 1, 3)`` and ``(max(pred) + 1, 3)`` RGB tables, row 0 black:
        ``table[labels]`` is an RGB image.
    """
    gt = np.asarray(gt).astype(np.int64, copy=False)
    pred = np.asarray(pred).astype(np.int64, copy=False)
    gt_colours = _label_colours(int(gt.max(initial=0)), seed)
    n_pred = int(pred.max(initial=0))
    rng = np.random.default_rng(seed + 1)
    pred_colours = np.stack([rng.uniform(0.65, 1.0, n_pred + 1), rng.uniform(0.0, 0.2, n_pred + 1),
                             rng.uniform(0.0, 0.2, n_pred + 1)], 1)
    pred_colours[0] = 0.0
    fg = (pred > 0) & (gt > 0)
    if fg.any():
        pairs, inter = np.unique(np.stack([pred[fg], gt[fg]]), axis=1, return_counts=True)
        size_p = np.bincount(pred.ravel(), minlength=n_pred + 1)
        size_g = np.bincount(gt.ravel(), minlength=len(gt_colours))
        iou = inter / (size_p[pairs[0]] + size_g[pairs[1]] - inter)
        keep = iou >= 0.5
        pred_colours[pairs[0][keep]] = gt_colours[pairs[1][keep]]
    return gt_colours, pred_colours


def colour_labels_like_truth(gt: np.ndarray, pred: np.ndarray, *, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """RGB images of ``gt`` and ``pred`` coloured by :func:`label_colour_tables`.

    Returns
    -------
    tuple of numpy.ndarray
        ``gt`` and ``pred`` as float RGB arrays of shape ``(*shape, 3)``.
    """
    gt_colours, pred_colours = label_colour_tables(gt, pred, seed=seed)
    return gt_colours[np.asarray(gt)], pred_colours[np.asarray(pred)]


def collect_montages(out: str | os.PathLike, models: Sequence[str], images: Sequence,
                     per_image: Sequence[Mapping]) -> list[Montage]:
    """Mid-slice montages of the first test image, one per model that has predicted it.

    Parameters
    ----------
    out : path-like
        The benchmark's output folder: a model's cells are read from
        ``OUT/<model>/per_image_post_processing/`` (Voronoi), else ``OUT/<model>/per_image_instances/``.
    models : sequence of str
        Model names, in the order of the montages.
    images : sequence
        Test images with ``name``, ``raw`` and ``gt`` (:class:`~cartocell_bmz.bench.tasks.BenchImage`).
    per_image : sequence of mappings
        Per-image rows: the caption is the model's F1 at IoU 0.5 on that image.
    """
    from cartocell_bmz.io.volumes import read_volume

    if not images:
        return []
    out, image = Path(out), images[0]
    raw = read_volume(image.raw, "image")
    gt = read_volume(image.gt, "labels").data
    result = []
    for model in models:
        pred_path = out / model / VORONOI_DIR / image.name
        if not pred_path.is_file():
            pred_path = out / model / INSTANCES_DIR / image.name
            if not pred_path.is_file():
                continue
        pred = read_volume(pred_path, "labels").data
        f1 = next((r.get("f1") for r in per_image if r["model"] == model and r["image"] == image.name
                   and abs(float(r["threshold"]) - 0.5) < 1e-6), None)
        caption = f"F1@0.5 = {f1:.3f}" if isinstance(f1, (int, float)) else ""
        result.append(Montage(model, image.name, raw.data, gt, pred, tuple(raw.spacing), caption))
    return result


def plot_montage(montage: Montage, path: str | os.PathLike) -> Path:
    """Raw, ground truth and prediction of one cyst: mid z-slice (top) and mid y-slice (bottom)."""
    plt = _plt()
    path = Path(path)
    raw, gt, pred = montage.raw, montage.gt, montage.pred
    z, y = raw.shape[0] // 2, raw.shape[1] // 2
    aspect = montage.spacing[0] / montage.spacing[2]
    lo, hi = np.percentile(raw, (0.5, 99.8)) if raw.size else (0, 1)
    fig, ax = plt.subplots(2, 3, figsize=(9, 3.2 + 3.2 * min(1.0, raw.shape[0] * aspect / raw.shape[1])),
                           gridspec_kw={"height_ratios": [raw.shape[1], raw.shape[0] * aspect]})
    gt_colours, pred_colours = label_colour_tables(gt, pred)  # matched in 3D, not per slice
    for row, (sl, asp) in enumerate((((z,), 1.0), ((slice(None), y), aspect))):
        ax[row, 0].imshow(raw[sl], cmap="gray", vmin=lo, vmax=hi, aspect=asp, interpolation="nearest")
        ax[row, 1].imshow(gt_colours[gt[sl]], aspect=asp, interpolation="nearest")
        ax[row, 2].imshow(pred_colours[pred[sl]], aspect=asp, interpolation="nearest")
    titles = ("raw", f"ground truth ({len(np.unique(gt)) - (gt.min() == 0)} cells)",
              f"prediction ({len(np.unique(pred)) - (pred.min() == 0)} cells)")
    for a, t in zip(ax[0], titles):
        a.set_title(t, fontsize=9)
    ax[0, 0].set_ylabel(f"z = {z}", fontsize=8)
    ax[1, 0].set_ylabel(f"y = {y}", fontsize=8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"{montage.model} on {montage.image}" + (f" — {montage.caption}" if montage.caption else ""),
                 fontsize=10)
    fig.text(0.5, 0.01, "a predicted cell matched to a true cell (3D IoU >= 0.5) takes its colour; red: unmatched",
             ha="center", fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


# --------------------------------------------------------------------------- HTML


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _html_table(rows: Sequence[RankingRow]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("rank", "model", "score", *COLUMN_NAMES, "images", "source"))
    body = []
    for r in rows:
        cls = "" if r.source == SOURCE_BENCHMARK else ' class="published"'

        def num(v):
            return f"{v:.3f}" if math.isfinite(v) else "–"

        cells = [str(r.rank) if r.rank is not None else "–", html.escape(r.model), num(r.score),
                 *(num(r.values.get(c, math.nan)) for c in COLUMN_NAMES), str(r.n_images), html.escape(r.source)]
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _morphology_html(rows: Sequence[morph.MorphologyRow]) -> str:
    """The report's morphology section (empty without rows)."""
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>"
                   for h in ("model", *(morph.feature_label(k) for k in morph.COMPARED), "images"))
    body = []
    for r in rows:
        cls = ' class="published"' if r.source != morph.SOURCE_BENCHMARK else ""
        cells = [html.escape(r.model), *(html.escape(c) for c in morph.cell_texts(r)), str(r.n_images)]
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        "<h2>Morphology against the ground truth: the question a biologist asks before trusting a model</h2>\n"
        f'<table class="morphology"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>\n'
        f"<p>{html.escape(morph.READING)}</p>\n"
    )


def render_html(rows: Sequence[RankingRow], plots: Mapping[str, Path], *, title: str = "CartoCell model benchmark",
                notes: Sequence[str] = (), morphology: Sequence[morph.MorphologyRow] = ()) -> str:
    """A self-contained HTML page: the ranking table, the rule, notes, the morphology and the plots (embedded)."""
    figures = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="{_data_uri(p)}"><figcaption>{html.escape(name)}</figcaption></figure>'
        for name, p in plots.items()
    )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:nth-child(2),th:nth-child(2),td:last-child{text-align:left}th{background:#f0f0f0}"
        "tr.published{color:#666;font-style:italic;background:#fafafa}"
        "table.morphology td,table.morphology th{text-align:right}"
        "table.morphology td:first-child,table.morphology th:first-child{text-align:left}"
        "figure{margin:1.5em 0}img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}"
    )
    return (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"<h2>Ranking</h2>\n{_html_table(rows)}\n<p><b>Rule.</b> {html.escape(RANKING_RULE)}</p>\n"
        + (f"<ul>{note_html}</ul>\n" if note_html else "")
        + _morphology_html(morphology)
        + f"<h2>Plots</h2>\n{figures}\n</body></html>\n"
    )


# --------------------------------------------------------------------------- all together


def write_report(
    out: str | os.PathLike,
    ranking: Sequence[RankingRow],
    per_image: Sequence[Mapping],
    *,
    published: Sequence[RankingRow] = (),
    montages: Sequence[Montage] = (),
    notes: Sequence[str] = (),
    extra_json: Mapping | None = None,
    morphology: Sequence[morph.MorphologyRow] = (),
) -> ReportFiles:
    """Write every table, plot and the HTML report of a benchmark into ``out``.

    Parameters
    ----------
    out : path-like
        Output folder (must exist or be creatable).
    ranking : sequence of RankingRow
        The ranked models of this benchmark.
    per_image : sequence of mappings
        Per-image rows (see :data:`PER_IMAGE_COLUMNS`).
    published : sequence of RankingRow
        Published reference rows, appended after the benchmark's rows in every table and
        labelled by their ``source``.
    montages : sequence of Montage
        One per model: ``plots/montage_<model>.png``.
    notes : sequence of str
        Sentences listed under the table in the HTML report (test set, scheduler...).
    extra_json : mapping, optional
        Additional deterministic fields of ranking.json (e.g. the test set).
    morphology : sequence of MorphologyRow
        The morphology against the ground truth (:func:`cartocell_bmz.bench.morphology.morphology_table`):
        ``morphology.csv``, ``morphology.md`` and a section of the report; the ranking tables
        do not change.

    Returns
    -------
    ReportFiles
    """
    from cartocell_bmz.io.volumes import ensure_output_dir

    out = ensure_output_dir(out)
    rows = list(ranking) + list(published)
    files = ReportFiles(
        ranking_csv=_write_text(out / "ranking.csv", format_csv(rows)),
        ranking_md=_write_text(out / "ranking.md", format_markdown(rows)),
        ranking_json=_write_text(out / "ranking.json", ranking_json(rows, extra=extra_json)),
        per_image_csv=_write_text(out / "per_image.csv", format_per_image_csv(per_image)),
        html=out / "report.html",
    )
    if morphology:
        files.morphology_csv = _write_text(out / "morphology.csv", morph.format_csv(morphology))
        files.morphology_md = _write_text(out / "morphology.md", morph.format_markdown(morphology))
    plots_dir = out / PLOTS_DIR
    files.plots["Ranking columns per model"] = plot_ranking_bars(rows, plots_dir / "ranking_bars.png")
    files.plots["Per-image F1 and PQ at IoU 0.5"] = plot_distributions(
        per_image, plots_dir / "per_image_f1_pq.png", models=[r.model for r in ranking])
    for m in montages:
        files.plots[f"{m.model}: mid-slices of {m.image}"] = plot_montage(m, plots_dir / f"montage_{_safe(m.model)}.png")
    _write_text(files.html, render_html(rows, files.plots, notes=notes, morphology=morphology))
    return files


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
