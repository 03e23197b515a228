"""Predict or post-process a batch of volumes into the BiaPy-style output tree.

For each input volume ``NAME.tif`` (the tree and its storage rules: :mod:`cartocell_bmz.io.outputs`)::

    OUT/per_image/NAME.tif                   (3, Z, Y, X) probabilities B, C, M (float32 or float16)
    OUT/per_image_instances/NAME.tif         cells after the watershed
    OUT/per_image_post_processing/NAME.tif   cells after the Voronoi (the result)

With ground truth (``gt=``) :func:`cartocell_bmz.run.evaluate.evaluate_folder` adds
``OUT/instance_associations/``, ``OUT/metrics_per_image.csv`` and ``OUT/summary.json``;
the run itself is described in ``OUT/predict_summary.json``.

Every file is written atomically, probabilities first and Voronoi cells last,
so a volume whose three files exist is finished: a rerun skips it (unless
``overwrite``), and a volume whose probabilities exist but not its cells is
only post-processed.  :func:`predict_one` does one volume (what a Dask worker
of the benchmark calls); :func:`predict_folder` does a batch;
:func:`postprocess_folder` turns a folder of probabilities into cells.
Progress is reported through a ``progress=`` callback (:mod:`cartocell_bmz.io.progress`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cartocell_bmz.engine.plan import choose_scheduler
from cartocell_bmz.errors import InputError
from cartocell_bmz.io.outputs import (
    PREDICT_SUMMARY_JSON, count_cells, is_finished, output_paths, write_cells, write_probabilities,
)
from cartocell_bmz.layout import INSTANCES_DIR, PROBS_DIR, VORONOI_DIR
from cartocell_bmz.io.progress import ProgressCallback, nested, steps


@dataclass(frozen=True)
class ImageResult:
    """What happened to one volume.

    Attributes
    ----------
    name : str
        File name of the volume (and of its outputs).
    status : str
        ``"predicted"``, ``"postprocessed"`` (probabilities reused) or ``"skipped"`` (finished before).
    cells : int
        Cells after the Voronoi.
    seconds : float
        Time spent on it.
    spacing : tuple of float
        Voxel size used ``(z, y, x)``.
    spacing_known : bool
        Whether the spacing came from ``--spacing`` or the file (else 1, 1, 1).
    """

    name: str
    status: str
    cells: int
    seconds: float
    spacing: tuple[float, float, float]
    spacing_known: bool = True


@dataclass
class PredictSummary:
    """Summary of :func:`predict_folder`.

    Attributes
    ----------
    model : str
        Model name.
    out : str
        Output folder.
    images : list of ImageResult
        One per input volume.
    seconds : float
        Wall time of the run.
    metrics : dict or None
        ``evaluate_folder``'s summary when ground truth was given.
    failed : list of str
        One message per input volume that could not be used (unreadable, wrong shape, NaN...).
    """

    model: str
    out: str
    images: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0
    metrics: dict | None = None
    failed: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_computed(self) -> int:
        return sum(r.status != "skipped" for r in self.images)

    @property
    def n_cells(self) -> int:
        return sum(r.cells for r in self.images)

    def as_dict(self) -> dict:
        """Plain JSON-ready dictionary."""
        return {
            "model": self.model, "out": self.out, "n_images": self.n_images, "n_computed": self.n_computed,
            "n_skipped": self.n_images - self.n_computed, "n_cells": self.n_cells, "seconds": round(self.seconds, 3),
            "images": [asdict(r) for r in self.images], "metrics": self.metrics, "failed": self.failed,
        }

    def __str__(self) -> str:
        skipped = self.n_images - self.n_computed
        text = (f"{self.n_images} image(s) ({self.n_computed} computed, {skipped} already done), "
                f"{self.n_cells} cells found, {self.seconds:.1f} s; results in {self.out}")
        if self.metrics:
            dataset = self.metrics.get("dataset", {})
            key = next((k for k in dataset if str(k).startswith("0.5")), None)
            if key is not None:
                fig = dataset[key]
                parts = [f"{m} {fig[m]:.3f}" for m in ("f1", "panoptic_quality") if m in fig]
                if parts:
                    text += f"; at IoU 0.5: {', '.join(parts)}"
        return text


# one loaded model per thread (a Dask worker's task thread, or the caller's), reused by its next calls
_LOADED = threading.local()


def loaded_predictor(model: Any, *, weights: str | None = None, tile: Sequence[int] | None = None,
                     batch_size: int = 1, device: str = "auto", trust: bool = False) -> Any:
    """The :class:`~cartocell_bmz.run.predictor.Predictor` of ``model``, loaded once per thread.

    A worker of the engine (:mod:`cartocell_bmz.engine.cluster`, one thread per worker process)
    keeps its model for the next volume: the predictor is cached by the model's location and
    content digest, the weight format, tile, batch size and device. A different model closes
    the one the thread held before (one model in memory per thread; threads of one process
    never share or close each other's). A given ``Predictor`` is returned as it is.
    """
    from cartocell_bmz.bmz.resolve import resolve_model
    from cartocell_bmz.run.predictor import Predictor
    from cartocell_bmz.train.run import fingerprint, is_training_run

    if isinstance(model, Predictor):
        return model
    if isinstance(model, (str, os.PathLike)) and is_training_run(model):
        resolved, where, digest = model, str(Path(model).resolve()), fingerprint(model)  # a training run folder
    else:
        resolved = resolve_model(model, trust=trust)
        where, digest = str(resolved.rdf_path), resolved.rdf_sha256
    key = (where, digest, weights, tuple(tile) if tile else None, batch_size, device)
    held: dict = _LOADED.__dict__.setdefault("models", {})
    if key not in held:
        for old in list(held.values()):
            old.close()
        held.clear()
        held[key] = Predictor(resolved, weights=weights, tile=tile, batch_size=batch_size, device=device, trust=True)
    return held[key]


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    if spacing is None:
        return None
    from cartocell_bmz.core.spacing import check_spacing

    return check_spacing(spacing)


def predict_one(
    model: Any,
    image_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    weights: str | None = None,
    tile: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    spacing: Sequence[float] | None = None,
    float16: bool = False,
    config: Any = None,
    trust: bool = False,
    progress: ProgressCallback | None = None,
) -> ImageResult:
    """Predict, post-process and write one volume (skipping what is already written).

    Parameters
    ----------
    model : str, path-like, ResolvedModel or Predictor
        The model; a loaded model is kept for the next call in this process.
    image_path : path-like
        TIFF volume ``(Z, Y, X)``.
    out : path-like
        Output folder (the BiaPy-style tree is created in it).
    overwrite : bool
        Recompute even if outputs exist.
    weights, tile, batch_size, device, trust :
        See :class:`~cartocell_bmz.run.predictor.Predictor`.
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in micrometres; default the file's.
    float16 : bool
        Store probabilities as float16 (half the disk space).
    config : PostprocessConfig, optional
        Post-processing settings.
    progress : callable, optional
        Told about the tiles of the prediction, ``progress(tiles_done, tiles_total, "tiles")``
        (the protocol of :mod:`cartocell_bmz.io.progress`).

    Returns
    -------
    ImageResult
    """
    from cartocell_bmz.core.postprocess import postprocess
    from cartocell_bmz.io.volumes import ensure_output_dir, read_spacing, read_volume

    t0 = time.perf_counter()
    image_path = Path(image_path)
    name = image_path.name
    paths = output_paths(out, name)
    given = _spacing(spacing)
    ensure_output_dir(out)
    if not overwrite and is_finished(out, name):
        sp, known = (given, True) if given else read_spacing(image_path)
        cells = count_cells(read_volume(paths.voronoi, "labels").data)
        return ImageResult(name, "skipped", cells, time.perf_counter() - t0, tuple(sp), known)  # type: ignore[arg-type]

    probs = None
    status = "predicted"
    if not overwrite and paths.probabilities.is_file():
        try:
            probs = read_volume(paths.probabilities, "probabilities").data
            image_shape = read_volume(image_path, "image").data.shape
            if probs.shape != (3, *image_shape):
                probs = None  # from another image of the same name: recompute
            else:
                status = "postprocessed"
        except InputError:
            probs = None  # unreadable leftover: recompute
    if probs is None:
        volume = read_volume(image_path, "image")
        predictor = loaded_predictor(model, weights=weights, tile=tile, batch_size=batch_size, device=device,
                                         trust=trust)
        tiles = None if progress is None else (lambda done, total, message="": progress(done, total, "tiles"))
        probs = predictor.predict(volume.data, progress=tiles)
        del volume
        write_probabilities(out, name, probs, given or read_spacing(image_path)[0], float16=float16)
    if given is not None:
        sp, known = given, True
    else:
        sp, known = read_spacing(image_path)
    instances, voronoi = postprocess(probs, sp, config)
    write_cells(out, name, instances, voronoi, sp)
    return ImageResult(name, status, count_cells(voronoi), time.perf_counter() - t0, tuple(sp), known)  # type: ignore[arg-type]


def collect_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Files named by one or more files, folders or glob patterns (sorted, no duplicates).

    Raises
    ------
    InputError
        Nothing matches, or two inputs share a file name (their outputs would collide).
    """
    from cartocell_bmz.io.volumes import resolve_inputs

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("no input given; name a TIFF file, a folder or a glob pattern.")
    files: dict[Path, None] = {}
    for item in items:
        for f in resolve_inputs(item):
            files[f.resolve()] = None
    by_name: dict[str, Path] = {}
    for f in files:
        if f.name in by_name:
            raise InputError(f"{f}: has the same file name as {by_name[f.name]}; outputs are named after inputs, rename one.")
        by_name[f.name] = f
    return sorted(files, key=lambda p: p.name)


def predict_folder(
    model: Any,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    gt: str | os.PathLike | None = None,
    spacing: Sequence[float] | None = None,
    float16: bool = False,
    overwrite: bool = False,
    weights: str | None = None,
    tile: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    config: Any = None,
    trust: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> PredictSummary:
    """Segment every volume of ``inputs`` into the BiaPy-style tree ``out``.

    Parameters
    ----------
    model : str, path-like or ResolvedModel
        See :func:`~cartocell_bmz.bmz.resolve.resolve_model`.
    inputs : path-like or sequence
        TIFF files, folders or glob patterns.
    out : path-like
        Output folder.
    gt : path-like, optional
        Folder of ground-truth labels with the same file names: evaluate the results.
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in micrometres for every volume; default each file's.
    float16, overwrite, weights, tile, batch_size, device, config, trust :
        See :func:`predict_one`.
    scheduler : str, optional
        Where the volumes run (:mod:`cartocell_bmz.engine.plan`): ``"auto"`` (default, also
        when ``None`` and ``CARTOCELL_BMZ_SCHEDULER`` is unset) a local Dask cluster when more
        than one volume is to compute, else this process; ``"local"``, ``"sync"`` or the
        address of an existing cluster. Each volume is written by one worker, atomically,
        with the same bytes as in this process.
    workers : int, optional
        Worker processes of the local cluster (default: sized to cores, memory and GPUs).
    progress : callable, optional
        ``progress(done, total, message)`` (:mod:`cartocell_bmz.io.progress`): one run over the
        volumes (in this process with the current volume's tiles in the message), then the
        evaluation's run.

    Returns
    -------
    PredictSummary

    Raises
    ------
    InputError
        After every other volume is done, when some input volumes could not be
        used (one bad file does not stop a long run); the message names the
        first and ``OUT/predict_summary.json`` lists them all.
    """
    import json

    from cartocell_bmz.bmz.resolve import resolve_model
    from cartocell_bmz.io.volumes import atomic_open, ensure_output_dir

    t0 = time.perf_counter()
    files = collect_inputs(inputs)
    _spacing(spacing)
    if gt is not None and not Path(gt).is_dir():
        raise InputError(f"{gt}: ground-truth folder not found.")
    out = ensure_output_dir(out)
    todo = [f for f in files if overwrite or not is_finished(out, f.name)]
    mode = choose_scheduler(scheduler, workers, len(todo))
    resolved = resolve_model(model, trust=trust)
    summary = PredictSummary(model=resolved.name, out=str(out))
    options = dict(overwrite=overwrite, weights=weights, tile=tile, batch_size=batch_size, device=device,
                   spacing=spacing, float16=float16, config=config, trust=True)
    if mode == "sync":
        results = _predict_here(resolved, files, todo, out, options, progress)
    else:
        results = _predict_on_cluster(resolved, files, todo, out, options, mode, workers, progress)
    for result in results:
        if isinstance(result, ImageResult):
            summary.images.append(result)
        else:  # a bad volume must not cost the others of an unattended run
            summary.failed.append(result)
    if gt is not None and not summary.failed:
        from cartocell_bmz.run.evaluate import evaluate_folder

        summary.metrics = evaluate_folder(gt_dir=gt, pred_dir=out / VORONOI_DIR, out_dir=out, probs_dir=out / PROBS_DIR,
                                          progress=progress)
    summary.seconds = time.perf_counter() - t0
    with atomic_open(out / PREDICT_SUMMARY_JSON) as fh:
        json.dump(summary.as_dict(), fh, indent=2, default=str)
        fh.write("\n")
    if summary.failed:
        n_bad = len(summary.failed)
        if n_bad == len(files) == 1:
            raise InputError(summary.failed[0])
        listed = f" (listed in {out / PREDICT_SUMMARY_JSON}), the first" if n_bad > 1 else ""
        raise InputError(
            f"{n_bad} of {len(files)} volume(s) could not be used and the others are done; rerun after fixing "
            f"{'them' if n_bad > 1 else 'it'} (finished volumes are skipped){listed}: {summary.failed[0]}"
        )
    return summary


def _predict_or_fail(model: Any, image_path: Path, out: Path, options: dict,
                     progress: ProgressCallback | None = None) -> ImageResult | str:
    """:func:`predict_one`, or the one-line message of an unusable volume (a worker's task)."""
    try:
        return predict_one(model, image_path, out, progress=progress, **options)
    except InputError as exc:
        return str(exc)


def _predict_here(resolved: Any, files: list[Path], todo: list[Path], out: Path, options: dict,
                  progress: ProgressCallback | None) -> list[ImageResult | str]:
    """Every volume in this process, one after the other, the model loaded once."""
    needs_model = [f for f in todo if options["overwrite"] or not output_paths(out, f.name).probabilities.is_file()]
    model = resolved
    if needs_model:
        model = loaded_predictor(resolved, weights=options["weights"], tile=options["tile"],
                                 batch_size=options["batch_size"], device=options["device"], trust=True)
    return [_predict_or_fail(model, f, out, options, nested(progress, i, len(files), f.name))
            for i, f in steps(files, progress, describe=lambda p: p.name, finished="images")]


def _predict_on_cluster(resolved: Any, files: list[Path], todo: list[Path], out: Path, options: dict,
                        scheduler: str, workers: int | None,
                        progress: ProgressCallback | None) -> list[ImageResult | str]:
    """The volumes to compute on the engine's workers (each loads the model once); the finished ones here."""
    import functools

    from cartocell_bmz.engine.cluster import map_tasks
    from cartocell_bmz.engine.plan import available_memory_gb, plan_workers
    from cartocell_bmz.run.device import resolve_device

    device = str(resolve_device(options["device"]))  # a device not here fails now, in the client
    plan = plan_workers(scheduler, len(todo), workers=workers, device=device, memory_gb=available_memory_gb())
    task = functools.partial(_predict_or_fail, resolved, out=out, options={**options, "device": device})
    computed = dict(zip(todo, map_tasks(task, todo, plan, title="images", describe=lambda p: p.name,
                                        progress=progress)))
    return [computed[f] if f in computed else _predict_or_fail(resolved, f, out, options) for f in files]


# --------------------------------------------------------------------------- post-processing a folder


@dataclass(frozen=True)
class PostprocessResult:
    """One post-processed volume of :func:`postprocess_folder`.

    Attributes
    ----------
    name : str
        File name of the probabilities (and of the outputs).
    watershed_cells, cells : int
        Cells after the watershed and after the Voronoi.
    seconds : float
        Time of the post-processing itself.
    spacing : tuple of float
        Voxel size used ``(z, y, x)``.
    spacing_known : bool
        Whether the spacing was given or in the file (else 1, 1, 1).
    """

    name: str
    watershed_cells: int
    cells: int
    seconds: float
    spacing: tuple[float, float, float]
    spacing_known: bool = True

    def __str__(self) -> str:
        note = "" if self.spacing_known else ", no voxel size in file: 1 1 1"
        return (f"{self.name}: {self.watershed_cells} cells after watershed, {self.cells} after Voronoi "
                f"({self.seconds:.1f} s{note})")


@dataclass
class PostprocessSummary:
    """Summary of :func:`postprocess_folder`.

    Attributes
    ----------
    out : str
        Output folder.
    images : list of PostprocessResult
        The volumes post-processed by this call.
    skipped : list of str
        Volumes whose outputs existed (not redone).
    seconds : float
        Wall time of the call.
    """

    out: str
    images: list[PostprocessResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_cells(self) -> int:
        return sum(r.cells for r in self.images)

    def __str__(self) -> str:
        out = Path(self.out)
        return (f"post-processed {len(self.images)} volume(s), skipped {len(self.skipped)} already done, "
                f"{self.n_cells} cells in total ({self.seconds:.1f} s); outputs in {out / INSTANCES_DIR} "
                f"and {out / VORONOI_DIR}")


def postprocess_folder(
    probs_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    config: Any = None,
    resume: bool = True,
    progress: ProgressCallback | None = None,
) -> PostprocessSummary:
    """Turn every B, C, M probability volume of a folder into cells: watershed, then Voronoi.

    Writes ``OUT/per_image_instances/NAME`` and ``OUT/per_image_post_processing/NAME``
    (:mod:`cartocell_bmz.io.outputs`) with the voxel size used, volume by volume.

    Parameters
    ----------
    probs_dir : path-like
        Folder of ``(3, Z, Y, X)`` probability TIFFs (channels B, C, M).
    out_dir : path-like
        Output folder (created).
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in micrometres for every volume; default each file's (1, 1, 1 if absent).
    config : PostprocessConfig, optional
        Post-processing settings.
    resume : bool
        Skip volumes whose two outputs exist (``False``: redo them).
    progress : callable, optional
        ``progress(done, total, message)`` over the volumes (:mod:`cartocell_bmz.io.progress`).

    Returns
    -------
    PostprocessSummary

    Raises
    ------
    InputError
        The folder is missing or holds no TIFF, or a volume is unreadable or has not
        3 channels first; the volumes before it are kept, a rerun continues after them.
    ConfigError
        ``spacing`` is not three positive sizes.
    """
    from cartocell_bmz.core.postprocess import postprocess
    from cartocell_bmz.io.volumes import ensure_output_dir, list_volumes, read_volume

    started = time.perf_counter()
    given = _spacing(spacing)
    files = list_volumes(probs_dir, what="probability volumes")
    ensure_output_dir(Path(out_dir) / INSTANCES_DIR)
    ensure_output_dir(Path(out_dir) / VORONOI_DIR)
    summary = PostprocessSummary(out=str(out_dir))
    for _, path in steps(files, progress, describe=lambda p: p.name, finished="volumes"):
        if resume and is_finished(out_dir, path.name, probabilities=False):
            summary.skipped.append(path.name)
            continue
        vol = read_volume(path, kind="probabilities")
        _check_channels(vol.data, path)
        vox = given if given is not None else vol.spacing
        t0 = time.perf_counter()
        instances, voronoi = postprocess(vol.data, spacing=vox, config=config)
        seconds = time.perf_counter() - t0
        write_cells(out_dir, path.name, instances, voronoi, vox)
        summary.images.append(PostprocessResult(path.name, count_cells(instances), count_cells(voronoi), seconds,
                                                tuple(vox), given is not None or vol.spacing_known))  # type: ignore[arg-type]
    summary.seconds = time.perf_counter() - started
    return summary


def _check_channels(data: np.ndarray, path: Path) -> None:
    if data.shape[0] != 3:
        hint = " Channels must come first (C, Z, Y, X)." if data.shape[-1] == 3 else ""
        raise InputError(
            f"{path}: has {data.shape[0]} channel(s) (shape {tuple(data.shape)}), but post-processing needs "
            f"3 channels B, C, M.{hint}"
        )


__all__ = ["ImageResult", "PostprocessResult", "PostprocessSummary", "PredictSummary", "collect_inputs",
           "postprocess_folder", "predict_folder", "predict_one"]
