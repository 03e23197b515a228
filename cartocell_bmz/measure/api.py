"""Measuring cysts for notebooks and the CLI: label volumes -> pandas tables -> files.

* :func:`measure_volume` -- one label array -> :class:`MeasureTables` (pandas);
* :func:`measure_files` -- label TIFFs -> tables, written to a folder, resumable::

      OUT/cells.csv            one row per cell    (cyst, [group,] cell, volume, ...)
      OUT/neighbours.csv       one row per touching pair of cells
      OUT/cysts.csv            one row per cyst
      OUT/groups.csv           with ``group``: the cyst figures averaged per group
      OUT/measure_params.json  the parameters and the inputs
      OUT/measure_summary.png  polygon distributions, scutoid fraction, Lewis's law
      OUT/measure_montage.png  a mid-slice of each cyst, cells coloured by neighbour count
      OUT/per_cyst/NAME.npz    each cyst's tables and what they were made from

  A cyst whose ``per_cyst`` file was made from the same input (size and modification
  time) with the same parameters is read back instead of measured again.
* :func:`summarise_against` -- the morphology errors of predicted cysts against their
  ground truth (mean apical and basal neighbours, scutoid fraction, median volume).

Units: lengths µm, areas µm², volumes µm³ (columns: README, "Measuring cells").
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cartocell_bmz.core.morphology import (
    COMPARED, DEFAULT_CONTACT_THRESHOLD, CystMeasures, compare_morphology, measure_cyst,
)
from cartocell_bmz.core.morph_surface import DEFAULT_WINDOW
from cartocell_bmz.errors import CartoCellWarning, ConfigError, InputError
from cartocell_bmz.io.progress import ProgressCallback, steps

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

CELLS_CSV, NEIGHBOURS_CSV, CYSTS_CSV, GROUPS_CSV = "cells.csv", "neighbours.csv", "cysts.csv", "groups.csv"
PARAMS_JSON = "measure_params.json"
SUMMARY_PNG, MONTAGE_PNG = "measure_summary.png", "measure_montage.png"
PER_CYST_DIR = "per_cyst"
#: Bumped when the tables change, so that older ``per_cyst`` files are measured again.
FORMAT = 3


@dataclass(frozen=True)
class MeasureTables:
    """Cells, neighbours and cysts as pandas DataFrames (see :mod:`cartocell_bmz.core.morphology`).

    Attributes
    ----------
    cells, neighbours, cysts : pandas.DataFrame
        Each starts with a ``cyst`` column (and ``group`` when grouped).
    """

    cells: "pd.DataFrame"
    neighbours: "pd.DataFrame"
    cysts: "pd.DataFrame"


def measure_volume(
    labels: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    name: str = "cyst",
    group: str | None = None,
    contact_threshold: float = DEFAULT_CONTACT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
) -> MeasureTables:
    """Measure one segmented cyst; the tables as pandas DataFrames.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(Z, Y, X)`` cell labels (0 = background).
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres.
    name : str
        Value of the ``cyst`` column.
    group : str, optional
        Value of a ``group`` column (a condition, e.g. ``"day7"``).
    contact_threshold, window
        See :func:`cartocell_bmz.core.morphology.measure_cyst`.

    Returns
    -------
    MeasureTables

    Examples
    --------
    >>> from cartocell_bmz.core.phantoms import make_cyst
    >>> c = make_cyst((24, 64, 64), (1.0, 0.5, 0.5), seed=2)
    >>> t = measure_volume(c.labels, c.spacing, name="c2")
    >>> list(t.cells.columns[:3]), len(t.cysts)
    (['cyst', 'cell', 'valid'], 1)
    """
    m = measure_cyst(labels, spacing, contact_threshold=contact_threshold, window=window)
    return tables_of(m, name, group)


def tables_of(measures: CystMeasures, name: str, group: str | None = None) -> MeasureTables:
    """:class:`MeasureTables` of one cyst's :class:`~cartocell_bmz.core.morphology.CystMeasures`."""
    import pandas as pd

    front = {"cyst": name} if group is None else {"cyst": name, "group": group}

    def frame(columns: dict) -> pd.DataFrame:
        n = len(next(iter(columns.values()))) if columns else 0
        return pd.DataFrame({**{k: [v] * n for k, v in front.items()}, **columns})

    return MeasureTables(
        cells=frame(measures.cells), neighbours=frame(measures.neighbours),
        cysts=pd.DataFrame([{**front, **measures.cyst}]),
    )


def concat(tables: Sequence[MeasureTables]) -> MeasureTables:
    """Stack the tables of several cysts."""
    import pandas as pd

    def cat(frames):
        frames = [f for f in frames if len(f)] or list(frames[:1])
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    return MeasureTables(*(cat([getattr(t, k) for t in tables]) for k in ("cells", "neighbours", "cysts")))


def group_of(name: str, pattern: str | None) -> str | None:
    """The condition of a cyst: the first group of ``pattern`` found in ``name`` (the whole match without groups).

    Examples
    --------
    >>> group_of("cyst_day7_03", r"day(\\d+)"), group_of("cyst_day7_03", r"day\\d+"), group_of("x", None)
    ('7', 'day7', None)
    """
    if pattern is None:
        return None
    try:
        found = re.search(pattern, name)
    except re.error as exc:
        raise ConfigError(f"--group '{pattern}' is not a valid regular expression ({exc}).") from None
    if found is None:
        raise ConfigError(f"--group '{pattern}' does not match the cyst name '{name}'; give a pattern every name matches.")
    return found.group(1) if found.re.groups else found.group(0)


def measure_files(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    spacing: Sequence[float] | None = None,
    group: str | None = None,
    contact_threshold: float = DEFAULT_CONTACT_THRESHOLD,
    window: int = DEFAULT_WINDOW,
    main_cyst: bool = False,
    overwrite: bool = False,
    plots: bool = True,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> MeasureTables:
    """Measure label TIFFs (files, folders or glob patterns); write the tables to ``out``.

    Parameters
    ----------
    inputs : sequence of path-like
        Label TIFFs, folders of them (``per_image_post_processing/``, a dataset's
        ``y/``) or glob patterns.  Names (file stems) must be distinct.
    out : path-like, optional
        Output folder (see the module docstring); ``None`` writes nothing.
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in µm for every file; default: each file's metadata.
    group : str, optional
        Regular expression whose first group, found in a cyst's name, is its condition.
    contact_threshold, window
        See :func:`cartocell_bmz.core.morphology.measure_cyst`.
    main_cyst : bool
        Measure only each volume's largest connected group of cells (pieces of
        neighbouring cysts in a crop's margin left out; :func:`~cartocell_bmz.core.morphology.main_cyst_cells`).
    overwrite : bool
        Measure every cyst again even when ``out/per_cyst`` holds it.
    plots : bool
        Write the PNG figures.
    scheduler : str, optional
        Where the cysts are measured (:mod:`cartocell_bmz.engine.plan`): ``"auto"`` (default)
        a local Dask cluster when more than one cyst is to measure, else this process;
        ``"local"``, ``"sync"`` or the address of an existing cluster. The tables are the same.
    workers : int, optional
        Worker processes of the local cluster.
    progress : callable, optional
        ``progress(done, total, message)`` over the cysts (measured ones only on a cluster).

    Returns
    -------
    MeasureTables

    Raises
    ------
    InputError
        An input is missing, not a label volume, or two share a name.
    ConfigError
        Bad spacing, threshold, window or group pattern.
    """
    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.engine.plan import choose_scheduler
    from cartocell_bmz.io.volumes import ensure_output_dir, resolve_inputs

    files = _input_files(inputs, resolve_inputs)
    fixed = check_spacing(spacing, name="--spacing") if spacing is not None else None
    groups = {stem: group_of(stem, group) for stem in files}
    params = {"contact_threshold": float(contact_threshold), "window": int(window)}
    if main_cyst:  # only when asked: the cache signature of earlier runs stays valid
        params["main_cyst"] = True
    cache = ensure_output_dir(Path(out) / PER_CYST_DIR) if out is not None else None
    jobs = [_MeasureJob(stem, path, fixed, params, None if cache is None else cache / f"{stem}.npz")
            for stem, path in files.items()]
    found = {} if overwrite else {j.stem: _read_cached(j.cache, j.signature()) for j in jobs if j.cache is not None}
    todo = [j for j in jobs if found.get(j.stem) is None]
    mode = choose_scheduler(scheduler, workers, len(todo))
    if mode == "sync":
        measured = {}
        for _, job in steps(jobs, progress, describe=lambda j: j.stem, finished="measured"):
            measured[job.stem] = found.get(job.stem) or _measure_job(job)
    else:
        from cartocell_bmz.engine.cluster import map_tasks
        from cartocell_bmz.engine.plan import available_memory_gb, plan_workers

        plan = plan_workers(mode, len(todo), workers=workers, memory_gb=available_memory_gb())
        plan = replace(plan, torch_threads=None)  # no network: the workers need not load torch
        done = map_tasks(_measure_job, todo, plan, title="measured", describe=lambda j: j.stem, progress=progress)
        measured = {**found, **{j.stem: got for j, got in zip(todo, done)}}
    parts, slices, used = [], {}, {}
    for job in jobs:
        m, slices[job.stem], notices = measured[job.stem]
        for message, category in notices:  # the same notices, naming the cyst
            warnings.warn(f"{job.path.name}: {message}", category, stacklevel=2)
        used[job.stem] = m.params["spacing"]
        parts.append(tables_of(m, job.stem, groups[job.stem]))
    tables = concat(parts)
    if out is not None:
        _write_outputs(Path(out), tables, slices, files, used, params, group, plots)
    return tables


@dataclass(frozen=True)
class _MeasureJob:
    """One cyst to measure (small: what a worker needs)."""

    stem: str
    path: Path
    fixed: tuple | None
    params: dict
    cache: Path | None

    def signature(self) -> dict:
        return _signature(self.path, self.fixed, self.params)


def _measure_job(job: _MeasureJob) -> tuple[CystMeasures, np.ndarray, list]:
    """Measure one cyst and write its ``per_cyst`` file (a worker's task); measures, mid slice, notices."""
    from cartocell_bmz.io.volumes import read_volume

    signature = job.signature()
    vol = read_volume(job.path, "labels")
    vox = job.fixed or vol.spacing
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CartoCellWarning)
        m = measure_cyst(vol.data, vox, **job.params)
    got = (m, _mid_slice(vol.data))
    if job.cache is not None:
        _write_cached(job.cache, {**signature, "spacing": list(vox)}, *got)
    return (*got, [(str(w.message), w.category) for w in caught])


def read_tables(out: str | os.PathLike) -> MeasureTables:
    """Read the tables written by :func:`measure_files` back from ``out``."""
    import pandas as pd

    out = Path(out)
    for name in (CELLS_CSV, NEIGHBOURS_CSV, CYSTS_CSV):
        if not (out / name).is_file():
            raise InputError(f"{out / name}: not found; is {out} the --out folder of cartocell-bmz measure?")
    return MeasureTables(*(pd.read_csv(out / n, dtype={"cyst": str, "group": str})
                           for n in (CELLS_CSV, NEIGHBOURS_CSV, CYSTS_CSV)))


def natural_key(text: str) -> list:
    """Sort key that orders numbers by value: ``day4 < day7 < day10``.

    Examples
    --------
    >>> sorted(["10", "4", "7"], key=natural_key)
    ['4', '7', '10']
    """
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text)) if t]


def summarise_groups(cysts: "pd.DataFrame") -> "pd.DataFrame":
    """One row per group (in natural order): the number of cysts and the mean of every numeric cyst column."""
    numeric = cysts.drop(columns=["cyst"]).select_dtypes(include=["number", "bool"]).astype(float)
    numeric.insert(0, "group", cysts["group"].astype(str).values)
    summary = numeric.groupby("group").mean()
    summary.insert(0, "cysts", cysts.groupby(cysts["group"].astype(str)).size())
    order = sorted(summary.index, key=natural_key)
    return summary.loc[order].reset_index()


def summarise_against(truth: MeasureTables | "pd.DataFrame", pred: MeasureTables | "pd.DataFrame") -> dict:
    """Morphology errors of predicted cysts against the ground truth of the same names.

    Parameters
    ----------
    truth, pred : MeasureTables or pandas.DataFrame
        The ground truth's and the prediction's tables (or their ``cysts`` tables).

    Returns
    -------
    dict
        ``cysts`` (how many names both have) and, for each feature of
        :data:`cartocell_bmz.core.morphology.COMPARED` (``mean_apical_neighbours``,
        ``mean_basal_neighbours``, ``scutoid_fraction``, ``median_volume``),
        ``<feature>_error`` (mean absolute error over the cysts) and ``<feature>_bias``
        (mean signed error; the median volume relative, ``pred / truth - 1``); NaN
        without common cysts.
    """
    t = truth.cysts if isinstance(truth, MeasureTables) else truth
    p = pred.cysts if isinstance(pred, MeasureTables) else pred
    by_name = {str(row["cyst"]): row for row in t.to_dict("records")}
    diffs = [compare_morphology(by_name[str(row["cyst"])], row)
             for row in p.to_dict("records") if str(row["cyst"]) in by_name]
    out: dict = {"cysts": len(diffs)}
    for name in COMPARED:
        values = np.array([d[name] for d in diffs], float)
        values = values[np.isfinite(values)]
        out[f"{name}_error"] = float(np.mean(np.abs(values))) if len(values) else math.nan
        out[f"{name}_bias"] = float(np.mean(values)) if len(values) else math.nan
    return out


# --------------------------------------------------------------------------- helpers


def _input_files(inputs, resolve) -> dict[str, Path]:
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise InputError("no label volume given; name TIFF files or folders to measure.")
    files: dict[str, Path] = {}
    for spec in inputs:
        for path in resolve(spec):
            stem = path.name.rsplit(".", 1)[0]
            if stem in files and files[stem].resolve() != path.resolve():
                raise InputError(
                    f"{path}: has the same name as {files[stem]}; measure files of the same name into different --out folders."
                )
            files[stem] = path
    return files


def _signature(path: Path, spacing, params: dict) -> dict:
    from cartocell_bmz import __version__

    stat = path.stat()
    return {"format": FORMAT, "version": __version__, "file": path.name, "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "fixed_spacing": list(spacing) if spacing else None, **params}


def _mid_slice(labels: np.ndarray) -> np.ndarray:
    """The z slice through the middle of the cells' z range."""
    z = np.flatnonzero(np.any(labels, axis=(1, 2)))
    return np.asarray(labels[(z[0] + z[-1]) // 2 if len(z) else labels.shape[0] // 2], np.int64)


def _write_cached(path: Path, signature: dict, m: CystMeasures, mid: np.ndarray) -> None:
    from cartocell_bmz.io.volumes import atomic_open

    arrays = {f"cells:{k}": v for k, v in m.cells.items()}
    arrays.update({f"neighbours:{k}": v for k, v in m.neighbours.items()})
    meta = {"signature": signature, "cyst": m.cyst, "params": m.params}
    with atomic_open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), mid_slice=mid, **arrays)


def _read_cached(path: Path, signature: dict):
    """The cached measures of a cyst, or ``None`` when missing, unreadable or made otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            saved = dict(meta["signature"])
            saved.pop("spacing", None)
            if saved != signature:
                return None
            cells = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("cells:")}
            pairs = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("neighbours:")}
            mid = data["mid_slice"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return CystMeasures(cells=cells, neighbours=pairs, cyst=meta["cyst"], params=meta["params"]), mid, []


def _write_outputs(out: Path, tables: MeasureTables, slices, files, used, params, group, plots: bool) -> None:
    from cartocell_bmz.io.volumes import atomic_open, ensure_output_dir

    ensure_output_dir(out)
    written = [(CELLS_CSV, tables.cells), (NEIGHBOURS_CSV, tables.neighbours), (CYSTS_CSV, tables.cysts)]
    if group is not None and len(tables.cysts):
        written.append((GROUPS_CSV, summarise_groups(tables.cysts)))
    for name, frame in written:
        with atomic_open(out / name, newline="") as f:
            frame.to_csv(f, index=False)
    record = {"params": {**params, "group": group}, "inputs": {stem: str(p) for stem, p in files.items()},
              "spacing": used, "outputs": [n for n, _ in written]}
    if plots and len(tables.cysts):
        from cartocell_bmz.measure.plots import plot_montage, plot_summary

        by = "group" if group is not None else None
        plot_summary(tables.cells, tables.cysts, out / SUMMARY_PNG, by=by)
        plot_montage(slices, tables.cells, tables.cysts, used, out / MONTAGE_PNG, by=by)
        record["outputs"] += [SUMMARY_PNG, MONTAGE_PNG]
    with atomic_open(out / PARAMS_JSON) as f:
        json.dump(record, f, indent=2)
        f.write("\n")
