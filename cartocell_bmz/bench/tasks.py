"""One benchmark task: one model on one test image, predicted, evaluated and written down.

A task runs the model on ONE image (tiled prediction, watershed, Voronoi: the ``predict``
step, :func:`cartocell_bmz.run.batch.predict_one`), evaluates the Voronoi cells and the
probabilities against the ground truth (:func:`cartocell_bmz.run.evaluate.evaluate_volume`),
measures the morphology of the Voronoi cells and of the ground truth
(:func:`cartocell_bmz.bench.morphology.image_morphology`, kept out of the score) and writes
the figures to ``OUT/<model>/metrics/<image>.json`` (atomically). It returns
only a small dictionary; the client reads the per-image files when every task is done
(:func:`read_metrics`), so no volume ever travels through a scheduler and a worker holds
one volume's data at a time.

Reruns are cheap and resumable: a task whose metrics file exists for the same test
image (same content fingerprint) and the same model package (same content fingerprint)
is not run again (:func:`finished_result`), and ``predict_one`` itself skips outputs that
are already written. Outputs written for another content are predicted again.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from cartocell_bmz.errors import CartoCellError
from cartocell_bmz.layout import DEFAULT_IOU_THRESHOLDS, PROBS_DIR, VORONOI_DIR

#: Folder (inside OUT/<model>) of the per-image metrics files.
METRICS_DIR = "metrics"
#: Version of the per-image metrics file format (a different one is recomputed; 2: "morphology").
METRICS_FORMAT = 2


class BenchmarkError(CartoCellError):
    """A benchmark task failed for a reason outside the user's input (a worker died...)."""


@dataclass(frozen=True)
class _Fingerprinted:
    """A named input of the benchmark and the fingerprint of its content (keyword-only)."""

    name: str
    fingerprint: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class BenchmarkModel(_Fingerprinted):
    """A model taking part in the benchmark.

    Attributes
    ----------
    name : str
        Name in the tables and output folder name (``OUT/<name>/``).
    source : str
        The ``--models`` value it came from.
    ref : Any
        What the predict step accepts as a model (a resolved model or a path).
    fingerprint : str, keyword-only
        Content fingerprint of the package (:func:`cartocell_bmz.bench.inputs.file_fingerprint`):
        a changed package invalidates earlier outputs.
    """

    source: str
    ref: Any


@dataclass(frozen=True)
class BenchImage(_Fingerprinted):
    """One test image and its ground truth.

    Attributes
    ----------
    name : str
        File name (the same in ``x/`` and ``y/``).
    raw, gt : pathlib.Path
        The raw image and its ground-truth labels.
    fingerprint : str, keyword-only
        Content fingerprint of both files (:func:`cartocell_bmz.bench.inputs.fingerprint_image`).
    """

    raw: Path
    gt: Path


@dataclass(frozen=True)
class Task:
    """One unit of work: one model on one image (everything a worker needs, small).

    Attributes
    ----------
    model : BenchmarkModel
    image : BenchImage
    out : pathlib.Path
        The model's output folder ``OUT/<model>/``.
    overwrite : bool
        Predict and evaluate again even when finished outputs exist.
    torch_threads : int, optional
        Torch threads of the worker running the task (``None``: leave torch's setting).
    device : str
        Device of the predict step.
    thresholds : tuple of float
        IoU thresholds of instance matching.
    """

    model: BenchmarkModel
    image: BenchImage
    out: Path
    overwrite: bool = False
    torch_threads: int | None = None
    device: str = "cpu"
    thresholds: tuple[float, ...] = DEFAULT_IOU_THRESHOLDS

    @property
    def metrics_path(self) -> Path:
        """``OUT/<model>/metrics/<image stem>.json``."""
        return self.out / METRICS_DIR / (Path(self.image.name).stem + ".json")


# --------------------------------------------------------------------------- the default steps


def _default_predict(task: Task) -> None:
    """Predict step of a task: :func:`cartocell_bmz.run.batch.predict_one` on one image."""
    from cartocell_bmz.run.batch import predict_one

    # the model was resolved (and its notice shown) once, in the client: trust=True here
    predict_one(task.model.ref, task.image.raw, task.out, overwrite=task.overwrite, device=task.device, trust=True)


def _default_evaluate(pred, gt, probs, thresholds) -> list[dict]:
    """Evaluate step of a task: rows of :func:`cartocell_bmz.run.evaluate.evaluate_volume`."""
    from cartocell_bmz.run.evaluate import evaluate_volume

    result = evaluate_volume(gt=gt, pred=pred, probs=probs, thresholds=thresholds)
    return result_rows(result)


def result_rows(result) -> list[dict]:
    """Rows (one per threshold) of an evaluation result, as plain dictionaries."""
    for attr in ("rows", "to_rows", "as_rows"):
        value = getattr(result, attr, None)
        if value is not None:
            value = value() if callable(value) else value
            return [dict(r) for r in value]
    if isinstance(result, (list, tuple)):
        return [dict(r) if isinstance(r, Mapping) else asdict(r) for r in result]
    raise TypeError(f"cannot read rows from evaluation result {type(result).__name__}")


def _clean(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------- one task


def run_task(task: Task, *, predict: Callable[[Task], None] | None = None,
             evaluate: Callable | None = None) -> dict:
    """Predict, post-process, evaluate and measure one model on one image; write its metrics file.

    Parameters
    ----------
    task : Task
    predict : callable, optional
        ``predict(task)`` writes ``OUT/<model>/per_image/NAME`` (probabilities) and
        ``OUT/<model>/per_image_post_processing/NAME`` (Voronoi cells); default
        :func:`cartocell_bmz.run.batch.predict_one`.
    evaluate : callable, optional
        ``evaluate(pred, gt, probs, thresholds) -> rows``; default
        :func:`cartocell_bmz.run.evaluate.evaluate_volume`.

    Returns
    -------
    dict
        ``model``, ``image``, ``metrics`` (path of the metrics file), ``reused``, ``seconds``.

    Raises
    ------
    BenchmarkError
        The predict step wrote no probabilities or no Voronoi cells.
    """
    from cartocell_bmz.io.volumes import atomic_open

    t0 = time.perf_counter()
    previous = _read_json(task.metrics_path)
    if not task.overwrite and previous is not None and _metrics_valid(previous, task):
        return _result(task, reused=True, seconds=0.0)
    # outputs written for another package content or another image of this name: predict again
    stale = previous is not None and (previous.get("model_fingerprint") != task.model.fingerprint
                                      or previous.get("image_fingerprint") != task.image.fingerprint)
    if stale and not task.overwrite:
        task = replace(task, overwrite=True)
    if task.torch_threads:
        import torch

        torch.set_num_threads(int(task.torch_threads))
    (predict or _default_predict)(task)
    rows, morphology = _evaluate_outputs(task, evaluate or _default_evaluate)
    doc = {
        "format": METRICS_FORMAT, "model": task.model.name, "image": task.image.name,
        "model_fingerprint": task.model.fingerprint, "image_fingerprint": task.image.fingerprint,
        "rows": [{k: _clean(v) for k, v in r.items() if k not in ("model", "image")} for r in rows],
        "morphology": morphology,
    }
    with atomic_open(task.metrics_path) as fh:
        json.dump(doc, fh, indent=1)
    return _result(task, reused=False, seconds=round(time.perf_counter() - t0, 3))


def _evaluate_outputs(task: Task, evaluate: Callable) -> tuple[list[dict], dict]:
    """Read what the predict step wrote and the ground truth; the evaluate rows and the morphology record."""
    from cartocell_bmz.bench.morphology import image_morphology
    from cartocell_bmz.io.volumes import check_same_shape, read_spacing, read_volume

    name = task.image.name
    vor_path, probs_path = task.out / VORONOI_DIR / name, task.out / PROBS_DIR / name
    for p in (vor_path, probs_path):
        if not p.is_file():
            raise BenchmarkError(f"{p}: the predict step of {task.model.name} wrote no such file for {name}.")
    gt = read_volume(task.image.gt, "labels").data
    pred = read_volume(vor_path, "labels").data
    check_same_shape(pred.shape, gt.shape, vor_path, task.image.gt)
    probs = read_volume(probs_path, "probabilities").data
    rows = evaluate(pred, gt, probs, tuple(task.thresholds))
    del probs
    # both measured at the image's voxel size (the one predict used): µm figures that compare
    spacing, _ = read_spacing(task.image.raw)
    return rows, image_morphology(gt=gt, pred=pred, spacing=spacing)


def _result(task: Task, *, reused: bool, seconds: float) -> dict:
    return {"model": task.model.name, "image": task.image.name, "metrics": str(task.metrics_path),
            "reused": reused, "seconds": seconds}


# --------------------------------------------------------------------------- finished tasks


def finished_result(task: Task) -> dict | None:
    """The result of a task whose metrics file is valid for it, else ``None``.

    Valid: the current format, the task's model and image fingerprints, a row for every
    threshold of the task, and a morphology record.
    """
    doc = _read_json(task.metrics_path)
    if doc is None or not _metrics_valid(doc, task):
        return None
    return _result(task, reused=True, seconds=0.0)


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _metrics_valid(doc: Mapping, task: Task) -> bool:
    return (doc.get("format") == METRICS_FORMAT and doc.get("model_fingerprint") == task.model.fingerprint
            and doc.get("image_fingerprint") == task.image.fingerprint and bool(doc.get("rows"))
            and isinstance(doc.get("morphology"), dict)
            and {round(float(r["threshold"]), 6) for r in doc["rows"]} >= {round(t, 6) for t in task.thresholds})


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Per-image rows (with ``model`` and ``image``) of one metrics file."""
    doc = json.loads(Path(path).read_text())
    return [{"model": doc["model"], "image": doc["image"], **r} for r in doc["rows"]]


def read_morphology(path: str | os.PathLike) -> dict | None:
    """The morphology record (with ``model`` and ``image``) of one metrics file, ``None`` without one.

    See :func:`cartocell_bmz.bench.morphology.image_morphology` for its keys.
    """
    doc = json.loads(Path(path).read_text())
    record = doc.get("morphology")
    return {"model": doc["model"], "image": doc["image"], **record} if isinstance(record, dict) else None
