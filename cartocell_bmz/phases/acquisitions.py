"""A lab's acquisitions end to end: whole stacks -> single cysts -> cells -> morphology tables and figures.

CartoCell's phase 3 starts from low-resolution stacks of many cysts; the
single-layer, single-lumen cysts were cropped from them by hand, segmented and
then measured.  :func:`analyse_stacks` runs the three steps that replace that
work, each with its own command's output tree and resume rule::

    OUT/crop/        crop_stacks:   x/STACK_cyst_NNN.tif (kept cysts), candidates.csv, stacks/
    OUT/predict/     predict_folder: per_image/, per_image_instances/, per_image_post_processing/
    OUT/measure/     measure_files:  cells.csv, neighbours.csv, cysts.csv (groups.csv), figures
                     (each crop's largest group of cells: pieces of neighbouring cysts left out)
    OUT/analysis.json  what ran: model, stacks, candidates kept and rejected, cysts and cells, seconds

A rerun skips what is finished in each step (stacks cropped with the same
settings, volumes whose cells exist, cysts measured with the same parameters),
so an interrupted run continues where it stopped.  ``scheduler`` and
``workers`` are passed to every step (:mod:`cartocell_bmz.engine`).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cartocell_bmz.errors import CartoCellWarning, InputError
from cartocell_bmz.io.progress import ProgressCallback, nested, report
from cartocell_bmz.io.volumes import atomic_open
from cartocell_bmz.layout import RAW_DIR, VORONOI_DIR

#: Sub-folders of an analysis, one per step.
CROP_DIR, PREDICT_DIR, MEASURE_DIR = "crop", "predict", "measure"
#: The run's own summary.
ANALYSIS_JSON = "analysis.json"
STEPS: tuple[str, ...] = ("crop", "predict", "measure")


@dataclass
class AnalysisSummary:
    """What :func:`analyse_stacks` did.

    Attributes
    ----------
    model : str
        The model as given.
    out : str
        Output folder.
    stacks : list of str
        The stacks, in order.
    candidates : int
        Cyst candidates found in all stacks.
    kept : int
        Candidates kept and cropped.
    rejected : dict of str to int
        Rejected candidates by reason.
    cells : int
        Cells measured, over every kept cyst (each crop's main cyst).
    failed : list of str
        Crops that could not be predicted (one message each).
    seconds : dict of str to float
        Wall time of each step.
    tables : MeasureTables or None
        The measurement tables (``None`` when no cyst was kept); not in ``analysis.json``.
    """

    model: str
    out: str
    stacks: list[str] = field(default_factory=list)
    candidates: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    cells: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    tables: Any = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """Plain JSON-ready dictionary."""
        return {"model": self.model, "out": self.out, "stacks": list(self.stacks), "candidates": self.candidates,
                "kept": self.kept, "rejected": dict(self.rejected), "cells": self.cells,
                "failed": list(self.failed), "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}

    def __str__(self) -> str:
        rejected = ", ".join(f"{k}: {v}" for k, v in sorted(self.rejected.items(), key=lambda kv: -kv[1]))
        return (f"{len(self.stacks)} stack(s), {self.candidates} cyst candidate(s): {self.kept} kept"
                + (f" (rejected {rejected})" if rejected else "") + f"; {self.cells} cells; results in {self.out}")


def analyse_stacks(
    model: Any,
    stacks: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    settings: Any = None,
    spacing: Sequence[float] | None = None,
    group: str | None = None,
    weights: str | None = None,
    tile: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    trust: bool = False,
    plots: bool = True,
    overwrite: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> AnalysisSummary:
    """Crop the single cysts of whole acquisitions, segment them and measure every cell.

    Parameters
    ----------
    model : str, path or Predictor
        Anything ``--model`` accepts: a package name, folder, zip, rdf.yaml, BMZ id or training run.
    stacks : sequence of path-like
        TIFF stacks ``(Z, Y, X)`` of whole acquisitions.
    out : path-like
        Output folder (see the module's layout).
    settings : CropSettings, optional
        How cysts are found and cropped (:class:`cartocell_bmz.run.crop.CropSettings`).
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in µm of every stack; default: read from each file.
        The crops carry it on to prediction and measurement.
    group : str, optional
        Regular expression whose first group in each crop's name (``STACK_cyst_NNN``)
        is its condition, e.g. ``r"day(\\d+)"``: adds ``groups.csv`` and grouped figures.
    weights, tile, batch_size, device, trust
        As for :func:`cartocell_bmz.run.batch.predict_folder`.
    plots : bool
        Write the measurement figures.
    overwrite : bool
        Redo every step instead of resuming.
    scheduler, workers : str, int, optional
        Where the steps' work runs (:mod:`cartocell_bmz.engine.plan`).
    progress : callable, optional
        ``progress(done, total, message)``: the three steps, each with its own inner progress.

    Returns
    -------
    AnalysisSummary
        Also written to ``OUT/analysis.json``.

    Raises
    ------
    InputError
        No stacks given, or a stack that cannot be read (from ``crop``).
    """
    from cartocell_bmz.measure.api import measure_files
    from cartocell_bmz.run.batch import predict_folder
    from cartocell_bmz.run.crop import crop_stacks

    stacks = [Path(s) for s in stacks]
    if not stacks:
        raise InputError("no stacks given: name one or more TIFF stacks of whole acquisitions.")
    out = Path(out)
    summary = AnalysisSummary(model=str(getattr(model, "name", model)), out=str(out),
                              stacks=[str(s) for s in stacks])
    run = {"scheduler": scheduler, "workers": workers}
    predict_kwargs = {"weights": weights, "tile": tile, "batch_size": batch_size, "device": device, "trust": trust}

    t0 = time.perf_counter()
    report(progress, 0, len(STEPS), "crop")
    rows = crop_stacks(model, stacks, out / CROP_DIR, settings=settings, spacing=spacing, overwrite=overwrite,
                       progress=nested(progress, 0, len(STEPS), "crop"), **predict_kwargs, **run)
    summary.seconds["crop"] = time.perf_counter() - t0
    summary.candidates = len(rows)
    summary.kept = sum(1 for r in rows if r["kept"])
    summary.rejected = dict(Counter(r["reason"] for r in rows if not r["kept"]))

    if summary.kept == 0:
        warnings.warn(f"no cyst of the {len(stacks)} stack(s) was kept (see {out / CROP_DIR / 'candidates.csv'}): "
                      "nothing to segment or measure.", CartoCellWarning, stacklevel=2)
    else:
        t0 = time.perf_counter()
        report(progress, 1, len(STEPS), "predict")
        predicted = predict_folder(model, out / CROP_DIR / RAW_DIR, out / PREDICT_DIR, overwrite=overwrite,
                                   progress=nested(progress, 1, len(STEPS), "predict"), **predict_kwargs, **run)
        summary.seconds["predict"] = time.perf_counter() - t0
        summary.failed = list(predicted.failed)

        t0 = time.perf_counter()
        report(progress, 2, len(STEPS), "measure")
        summary.tables = measure_files([out / PREDICT_DIR / VORONOI_DIR], out / MEASURE_DIR, group=group, plots=plots,
                                       main_cyst=True, overwrite=overwrite,
                                       progress=nested(progress, 2, len(STEPS), "measure"), **run)
        summary.seconds["measure"] = time.perf_counter() - t0
        summary.cells = int(summary.tables.cysts["cells"].sum())
    report(progress, len(STEPS), len(STEPS), "done")
    with atomic_open(out / ANALYSIS_JSON, "w") as fh:
        json.dump(summary.as_dict(), fh, indent=2)
    return summary


__all__ = ["ANALYSIS_JSON", "CROP_DIR", "MEASURE_DIR", "PREDICT_DIR", "AnalysisSummary", "analyse_stacks"]
