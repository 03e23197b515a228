"""Pseudo-labels: segment unlabelled cysts with a trained model into a new training set.

CartoCell's phase 3: model M1 predicts B, C, M on every raw volume of
``train_M2/x``; the marker-controlled watershed and the mask-bounded Voronoi
(:func:`cartocell_bmz.core.postprocess.postprocess`) turn the probabilities into
touching cells; the Voronoi labels become the ``y`` of a training set::

    OUT/x/NAME.tif        the raw volume (hard link, or a copy across file systems)
    OUT/y/NAME.tif        its pseudo-labels (uint16, the raw's voxel size)
    OUT/pseudo_labels.csv one row per volume: cells, seconds
    OUT/status.json       {"finished": ..., "model": ..., "model_sha256": ...}

Volumes whose ``x`` and ``y`` are both present are skipped, so an interrupted
run continues where it stopped; every file is written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cartocell_bmz.errors import ConfigError, InputError, ModelError
from cartocell_bmz.layout import LABEL_DIR, RAW_DIR

#: A predictor maps a raw ``(Z, Y, X)`` volume to ``float32 (3, Z, Y, X)`` probabilities B, C, M.
Predictor = Callable[[np.ndarray], np.ndarray]

STATUS_JSON = "status.json"
TABLE_CSV = "pseudo_labels.csv"


@dataclass
class PseudoLabelSummary:
    """Outcome of :func:`pseudo_label`.

    Attributes
    ----------
    out_dir : pathlib.Path
    n_volumes : int
        Volumes in the input folder.
    n_new : int
        Volumes labelled by this call (the others were already done).
    cells : dict
        Volume name -> number of cells in its pseudo-labels.
    seconds : float
        Time of this call.
    """

    out_dir: Path
    n_volumes: int
    n_new: int
    cells: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        counts = list(self.cells.values())
        spread = f"{min(counts)}-{max(counts)} cells per volume" if counts else "no volumes"
        return (
            f"{self.out_dir}: pseudo-labels for {self.n_volumes} volumes ({self.n_new} new, {spread}); "
            f"{self.seconds:.0f} s"
        )


# --------------------------------------------------------------------------- predictors


def model_fingerprint(model: str | os.PathLike) -> str:
    """sha256 identifying the weights of a model: a run's ``best.pt``, a package's ``rdf.yaml`` or file.

    A name that is no file (a BMZ id, a name in ``model_packages/``) is identified by the name itself.

    Raises
    ------
    ModelError
        A training run without ``checkpoints/best.pt`` (no epoch finished yet).
    """
    from cartocell_bmz.io.hashing import sha256_file
    from cartocell_bmz.train.run import fingerprint, is_training_run

    path = Path(model)
    if is_training_run(path):
        return fingerprint(path)
    if path.is_dir() and (path / "rdf.yaml").is_file():
        return sha256_file(path / "rdf.yaml")
    if path.is_file():
        return sha256_file(path)
    return hashlib.sha256(str(model).encode()).hexdigest()


def segment_volume(
    predictor: Predictor, image: np.ndarray, spacing: Sequence[float], config: Any = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, watershed instances and Voronoi cells of one raw volume.

    Parameters
    ----------
    predictor : callable
        Raw ``(Z, Y, X)`` volume -> ``(3, Z, Y, X)`` probabilities.
    image : numpy.ndarray
        Raw volume.
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres.
    config : PostprocessConfig, optional
        Post-processing settings (default :class:`~cartocell_bmz.core.postprocess.PostprocessConfig`).

    Returns
    -------
    probs, instances, voronoi : numpy.ndarray
    """
    from cartocell_bmz.core.postprocess import PostprocessConfig, postprocess

    probs = np.asarray(predictor(image), np.float32)
    if probs.shape != (3,) + tuple(image.shape):
        raise ModelError(f"the model returned shape {probs.shape} for a volume of shape {image.shape}; expected (3, Z, Y, X).")
    instances, voronoi = postprocess(probs, tuple(spacing), config or PostprocessConfig())
    return probs, instances, voronoi


def _label_dtype(labels: np.ndarray) -> np.ndarray:
    from cartocell_bmz.core.labels import as_label_dtype

    return as_label_dtype(labels)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` atomically: a hard link when possible, else a copy."""
    from cartocell_bmz.io.volumes import atomic_path

    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def _raw_folder(input_dir: Path) -> Path:
    """``input_dir`` itself, or its ``x/`` when it is a dataset split without TIFFs of its own."""
    from cartocell_bmz.layout import TIFF_SUFFIXES

    if input_dir.is_dir() and (input_dir / RAW_DIR).is_dir():
        if not any(p.suffix.lower() in TIFF_SUFFIXES for p in input_dir.iterdir()):
            return input_dir / RAW_DIR
    return input_dir


# --------------------------------------------------------------------------- main


def pseudo_label(
    model: str | os.PathLike,
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    config: Any = None,
    device: str = "auto",
    fresh: bool = False,
    progress: Callable[..., None] | None = None,
    predictor: Predictor | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
) -> PseudoLabelSummary:
    """Segment every raw volume of a folder and write them as a training set.

    Parameters
    ----------
    model : path-like or str
        A training run folder or a BMZ package (:class:`~cartocell_bmz.run.predictor.Predictor`).
    input_dir : path-like
        Folder of raw volumes (``train_M2/x``; ``train_M2`` works too).
    out_dir : path-like
        Output training set: ``OUT/x/``, ``OUT/y/``.
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in micrometres for every volume; default each
        file's own.
    config : PostprocessConfig, optional
        Watershed and Voronoi settings.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    fresh : bool
        Redo every volume; otherwise finished volumes are kept.  Without
        ``fresh``, an output folder labelled by another model is an error.
    progress : callable, optional
        ``progress(done, total, message)`` per volume (:mod:`cartocell_bmz.io.progress`),
        with the tiles of the volume being predicted as sub-steps.
    predictor : callable, optional
        Use this raw -> probabilities function instead of loading ``model``
        (``model`` then only names it in ``status.json``; it runs in this process).
    scheduler : str, optional
        Where the volumes run (:mod:`cartocell_bmz.engine.plan`): ``"auto"`` (default) a local
        Dask cluster when more than one volume is to label, else this process; ``"local"``,
        ``"sync"`` or the address of an existing cluster. Each worker loads the model once
        and writes its volumes' ``x`` and ``y``; the labels are the same bytes.
    workers : int, optional
        Worker processes of the local cluster.

    Returns
    -------
    PseudoLabelSummary

    Raises
    ------
    ModelError
        The model cannot be loaded.
    ConfigError
        ``OUT`` holds pseudo-labels of another model (use ``fresh``).
    InputError
        The input folder is missing, empty or holds unreadable volumes.
    """
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.engine.plan import choose_scheduler
    from cartocell_bmz.io.progress import nested, steps
    from cartocell_bmz.io.volumes import atomic_open, ensure_output_dir, list_volumes

    t0 = time.perf_counter()
    if spacing is not None:
        spacing = check_spacing(spacing)
    raws = list_volumes(_raw_folder(Path(input_dir)), what="raw volumes")
    names = [p.name for p in raws]
    if len(set(names)) != len(names):
        raise InputError(f"{input_dir}: two raw volumes share a name.")
    out = ensure_output_dir(out_dir)
    x_dir, y_dir = out / RAW_DIR, out / LABEL_DIR
    fingerprint = model_fingerprint(model) if predictor is None else str(model)
    status_path = out / STATUS_JSON
    status = _read_json(status_path)
    if status and not fresh and status.get("model_sha256") not in (None, fingerprint):
        raise ConfigError(
            f"{out} holds pseudo-labels made by another model ({status.get('model')}); "
            "choose another output folder or start afresh (--fresh)."
        )
    table = _read_table(out / TABLE_CSV)
    if fresh:
        for sub in (x_dir, y_dir):
            if sub.is_dir():
                shutil.rmtree(sub)
        table = {}
        status_path.unlink(missing_ok=True)

    def write_status(finished: bool) -> None:
        with atomic_open(status_path) as fh:
            json.dump({
                "finished": finished, "model": str(model), "model_sha256": fingerprint,
                "input": str(Path(input_dir).resolve()), "n_volumes": len(raws), "n_done": len(table),
                "postprocess": _config_dict(config),
            }, fh, indent=2)
            fh.write("\n")

    todo = [p for p in raws if not ((x_dir / p.name).is_file() and (y_dir / p.name).is_file() and p.name in table)]
    job = _LabelJob(x_dir=x_dir, y_dir=y_dir, spacing=spacing, config=config, model=model, device=device)

    def finished(row: dict) -> None:  # the table follows every finished volume: a rerun skips it
        table[row["volume"]] = row
        _write_table(out / TABLE_CSV, table)

    mode = "sync" if predictor is not None else choose_scheduler(scheduler, workers, len(todo))
    if todo:
        write_status(False)
    if todo and mode != "sync":
        _label_on_cluster(job, todo, mode, workers, finished, progress)
    elif todo:
        from contextlib import nullcontext

        from cartocell_bmz.run.predictor import Predictor as ModelPredictor

        # a training run or a BMZ package, tiled alike; closed at the end
        with nullcontext() if predictor is not None else ModelPredictor(model, device=device) as loaded:
            for i, raw_path in steps(todo, progress, describe=lambda p: p.name, finished="pseudo-labels written"):
                tiles = nested(progress, i, len(todo), raw_path.name)
                run = predictor or (lambda volume: loaded.predict(volume, progress=tiles))
                finished(job.label(run, raw_path))
    write_status(True)
    summary = PseudoLabelSummary(
        out_dir=out, n_volumes=len(raws), n_new=len(todo),
        cells={n: int(table[n]["cells"]) for n in names if n in table}, seconds=time.perf_counter() - t0,
    )
    return summary


@dataclass(frozen=True)
class _LabelJob:
    """What labelling one volume needs (small: sent to a worker with each volume)."""

    x_dir: Path
    y_dir: Path
    spacing: tuple | None
    config: Any
    model: Any
    device: str

    def label(self, predict: Predictor, raw_path: Path) -> dict:
        """Segment one raw volume, write its ``y`` then its ``x``; its row of the table."""
        from cartocell_bmz.io.volumes import read_volume, write_volume

        t1 = time.perf_counter()
        vol = read_volume(raw_path, "image")
        sp = self.spacing or vol.spacing
        _, _, voronoi = segment_volume(predict, vol.data, sp, self.config)
        voronoi = _label_dtype(voronoi)
        write_volume(self.y_dir / raw_path.name, voronoi, sp, compress=True)
        _link_or_copy(raw_path, self.x_dir / raw_path.name)
        n_cells = int(len(np.unique(voronoi)) - (1 if (voronoi == 0).any() else 0))
        return {"volume": raw_path.name, "cells": n_cells, "seconds": round(time.perf_counter() - t1, 2)}

    def label_in_worker(self, raw_path: Path) -> dict:
        """:meth:`label` with this worker's copy of the model (loaded on its first volume)."""
        from cartocell_bmz.run.batch import loaded_predictor

        return self.label(loaded_predictor(self.model, device=self.device, trust=True).predict, raw_path)


def _label_on_cluster(job: _LabelJob, todo: list[Path], scheduler: str, workers: int | None,
                      finished: Callable[[dict], None], progress: Callable[..., None] | None) -> None:
    """Label the volumes on the engine's workers; ``finished(row)`` here as each one is written."""
    from dataclasses import replace

    from cartocell_bmz.engine.cluster import map_tasks
    from cartocell_bmz.engine.plan import available_memory_gb, plan_workers
    from cartocell_bmz.run.device import resolve_device
    from cartocell_bmz.train.run import is_training_run

    model = job.model
    if not is_training_run(model):
        from cartocell_bmz.bmz.resolve import resolve_model

        model = resolve_model(model)  # a package's notice shown once, here
    job = replace(job, model=model, device=str(resolve_device(job.device)))
    plan = plan_workers(scheduler, len(todo), workers=workers, device=job.device, memory_gb=available_memory_gb())
    map_tasks(job.label_in_worker, todo, plan, title="pseudo-labels written", describe=lambda p: p.name,
              progress=progress, on_result=lambda _path, row: finished(row))


def _config_dict(config: Any) -> Any:
    import dataclasses

    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return str(config)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_table(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["volume"]: row for row in csv.DictReader(fh)}


def _write_table(path: Path, table: dict[str, dict]) -> None:
    from cartocell_bmz.io.volumes import atomic_open

    with atomic_open(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["volume", "cells", "seconds"])
        writer.writeheader()
        for name in sorted(table):
            writer.writerow({k: table[name][k] for k in ("volume", "cells", "seconds")})
