"""Whole acquisitions to single cysts: predict a stack block by block, find its cysts, crop the good ones.

For each stack ``NAME.tif`` :func:`crop_stacks` writes::

    OUT/x/NAME_cyst_NNN.tif   each kept cyst, raw, cropped with a margin, with its voxel size
    OUT/candidates.csv        every candidate: stack, box, volume, lumens, kept or the reason it is not

and works in memory bounded by blocks and cysts, not by the stack:

1. the stack is read lazily (:func:`cartocell_bmz.io.stacks.open_stack`);
2. the model's zero-mean, unit-variance normalisation takes the whole stack's
   mean and standard deviation, computed in two passes over z-slabs in float64
   (:func:`~cartocell_bmz.core.normalize.chunked_mean_std`);
3. the stack is predicted in blocks (``CropSettings.block``), each read with a
   context of the model's measured tile-edge margin on every side and tiled by
   the shared :class:`~cartocell_bmz.run.predictor.Predictor`; the context is
   dropped, so a block's probabilities are the whole stack's within the
   predictor's edge tolerance;
4. each block's M and C masks go to a uint8 scratch file (bit 0: M above the
   threshold, bit 1: C above it), removed afterwards;
5. the connected M regions are labelled slab by slab
   (:func:`~cartocell_bmz.core.components.component_boxes`); each region is read
   back alone (its box) and classified (:func:`~cartocell_bmz.core.cysts.classify_region`;
   the layer test counts the C contours that rays from the lumen cross in the
   wall, :func:`~cartocell_bmz.core.cysts.single_layer_rays`).

:func:`candidates_from_probabilities` runs steps 4-5 on probabilities in memory
(tests, notebooks); both give what :func:`~cartocell_bmz.core.cysts.find_cysts`
gives on the whole masks.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cartocell_bmz.core.components import component_boxes
from cartocell_bmz.core.cysts import (
    MIN_LUMEN_UM3, MIN_VOLUME_UM3, TOUCH_GAP_UM, Candidate, CystRules, classify_region, crop_box, region_pad,
)
from cartocell_bmz.errors import CartoCellWarning
from cartocell_bmz.io.progress import ProgressCallback, nested, report
from cartocell_bmz.layout import CHANNELS, RAW_DIR

#: Table of every candidate of a ``crop`` run.
CANDIDATES_CSV = "candidates.csv"
CANDIDATE_COLUMNS: tuple[str, ...] = (
    "stack", "candidate", "z0", "y0", "x0", "z1", "y1", "x1", "volume_um3", "lumens", "layer_fraction",
    "kept", "reason", "crop",
)
#: Bits of the scratch mask: M above the threshold, C above it.
M_BIT, C_BIT = 1, 2
#: Voxels of one slab read for the statistics and for labelling the mask (an int32 label slab of 16 MiB).
SLAB_VOXELS = 1 << 22


@dataclass(frozen=True)
class CropSettings:
    """How cysts are found and cropped.

    Attributes
    ----------
    threshold : float
        M (and B) probability above which a voxel is cellular (a cell body).
    margin_um : float
        Margin added around each kept cyst, in µm.
    min_volume, min_lumen, touch_gap :
        See :func:`~cartocell_bmz.core.cysts.find_cysts`.
    block : tuple of 3 ints
        Voxels ``(z, y, x)`` of a prediction block (without its context); memory
        grows with it (about 20 bytes per voxel of block and context).
    """

    threshold: float = 0.5
    margin_um: float = 3.0
    min_volume: float = MIN_VOLUME_UM3
    min_lumen: float = MIN_LUMEN_UM3
    touch_gap: float = TOUCH_GAP_UM
    block: tuple[int, int, int] = (64, 256, 256)


def crop_stacks(
    model: Any,
    stacks: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    settings: CropSettings | None = None,
    spacing: Sequence[float] | None = None,
    weights: str | None = None,
    tile: Sequence[int] | None = None,
    batch_size: int = 1,
    device: str = "auto",
    trust: bool = False,
    overwrite: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[dict]:
    """Find the cysts of whole stacks and crop the kept ones into ``OUT/x/``.

    Each stack's crops are written first, then its record ``OUT/stacks/NAME.json`` (its
    candidate rows, the settings and the stack's size and time), atomically: a stack whose
    record matches and whose crops all exist is finished, and a rerun skips it.

    Parameters
    ----------
    model : str, path-like or Predictor
        A model (see :class:`~cartocell_bmz.run.predictor.Predictor`) or a loaded predictor
        (which runs in this process).
    stacks : sequence of path-like
        TIFF stacks ``(Z, Y, X)``; every one is checked before anything is written.
    out : path-like
        Output folder.
    settings : CropSettings, optional
        Thresholds, margin, block size.
    spacing : sequence of 3 floats, optional
        Voxel size of every stack (default: each file's; required when a file has none).
    weights, tile, batch_size, device, trust :
        See :class:`~cartocell_bmz.run.predictor.Predictor`.
    overwrite : bool
        Crop finished stacks again.
    scheduler : str, optional
        Where the stacks run (:mod:`cartocell_bmz.engine.plan`): ``"auto"`` (default) a local
        Dask cluster when more than one stack is to crop, else this process; ``"local"``,
        ``"sync"`` or the address of an existing cluster. One worker crops one stack.
    workers : int, optional
        Worker processes of the local cluster.
    progress : callable, optional
        ``progress(stacks_done, stacks_total, message)``, blocks as sub-steps in this process.

    Returns
    -------
    list of dict
        The rows of ``OUT/candidates.csv``.

    Raises
    ------
    InputError
        A stack is missing, not 3D, not numbers, or has no voxel size (and none given).
    """
    from cartocell_bmz.engine.plan import choose_scheduler
    from cartocell_bmz.io.stacks import open_stack
    from cartocell_bmz.io.volumes import atomic_open, ensure_output_dir
    from cartocell_bmz.run.predictor import Predictor

    settings = settings or CropSettings()
    paths = [Path(p) for p in stacks]
    for p in paths:  # every stack is checked before anything is written
        open_stack(p, spacing).close()
    out = ensure_output_dir(out)
    model, model_id = _identify(model, trust)
    job = _CropJob(out=out, settings=settings, spacing=None if spacing is None else tuple(spacing),
                   weights=weights, tile=None if tile is None else tuple(tile), batch_size=batch_size, device=device,
                   model_id=model_id)
    records = {p: None if overwrite else finished_stack(out, p, settings, spacing, model_id=model_id) for p in paths}
    todo = [p for p in paths if records[p] is None]
    mode = "sync" if isinstance(model, Predictor) else choose_scheduler(scheduler, workers, len(todo))
    if mode == "sync":
        # a given Predictor stays open for its owner; one made here is closed here
        loaded = nullcontext(model) if isinstance(model, Predictor) or not todo else Predictor(
            model, weights=weights, tile=tile, batch_size=batch_size, device=device, trust=True)
        with loaded as predictor:
            report(progress, 0, len(todo), "stacks")
            for i, p in enumerate(todo):
                records[p] = job.crop(predictor, p, nested(progress, i, len(todo), p.name))
                report(progress, i + 1, len(todo), p.name)
    else:
        records.update(zip(todo, _crop_on_cluster(model, todo, job, mode, workers, progress)))
    rows = [row for p in paths for row in records[p]]
    with atomic_open(out / CANDIDATES_CSV, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CANDIDATE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def stack_candidates(predictor: Any, stack: Any, scratch_dir: str | os.PathLike, settings: CropSettings,
                     progress: ProgressCallback | None = None) -> list[Candidate]:
    """Cyst candidates of one lazily read stack (steps 2-5 of the module notes).

    Parameters
    ----------
    predictor : Predictor
        A loaded model.
    stack : LazyStack
        From :func:`~cartocell_bmz.io.stacks.open_stack` (``shape``, ``spacing``, box reads).
    scratch_dir : path-like
        Where the scratch mask goes while the stack is worked on.
    settings : CropSettings
    progress : callable, optional
        ``progress(blocks_done, blocks_total, "blocks")``.

    Returns
    -------
    list of Candidate
    """
    from cartocell_bmz.io.stacks import ScratchVolume

    with ScratchVolume(scratch_dir, stack.shape) as code:
        predict_mask(predictor, stack, code, settings, progress)
        return candidates_from_code(code, stack.spacing, settings)


def predict_mask(predictor: Any, stack: Any, code: Any, settings: CropSettings,
                 progress: ProgressCallback | None = None) -> None:
    """Fill ``code`` (``(Z, Y, X)`` uint8, box writes) with the M and C bits of ``stack``, block by block."""
    from cartocell_bmz.core.normalize import apply_zero_mean_unit_variance, chunked_mean_std

    shape = tuple(stack.shape)
    eps = normalization_eps(predictor)
    whole = None
    if eps is None:
        warnings.warn(f"model {predictor.name}: its preprocessing is not a plain zero-mean, unit-variance "
                      "normalisation, so the stack is normalised whole in memory.", CartoCellWarning, stacklevel=3)
        whole = predictor.normalize(stack[:])
    else:
        planes = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
        mean, std = chunked_mean_std(stack, planes=planes)
        if std == 0:  # no contrast: normalises to zeros, holds no cells (as Predictor.predict)
            report(progress, 1, 1, "blocks")
            return
    block = tuple(max(1, min(int(b), s)) for b, s in zip(settings.block, shape))
    context = block_context(predictor, block, shape)
    starts = [range(0, s, b) for s, b in zip(shape, block)]
    total = math.prod(len(r) for r in starts)
    done = 0
    report(progress, 0, total, "blocks")
    m, c = CHANNELS.index("M"), CHANNELS.index("C")
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                core = tuple(slice(o, min(o + n, s)) for o, n, s in zip((z, y, x), block, shape))
                read = tuple(slice(max(0, c.start - w), min(s, c.stop + w)) for c, w, s in zip(core, context, shape))
                if whole is not None:
                    norm = whole[read]
                else:
                    norm = apply_zero_mean_unit_variance(stack[read], mean, std, eps)
                probs = predictor.predict_normalized(norm)
                inner = tuple(slice(c.start - r.start, c.stop - r.start) for c, r in zip(core, read))
                bits = (probs[(m, *inner)] > settings.threshold).astype(np.uint8) * M_BIT
                bits |= (probs[(c, *inner)] > settings.threshold).astype(np.uint8) * C_BIT
                code[core] = bits
                done += 1
                report(progress, done, total, "blocks")


def normalization_eps(predictor: Any) -> float | None:
    """The epsilon of the model's zero-mean, unit-variance normalisation; ``None`` when it normalises otherwise.

    A training run's network is normalised with
    :func:`~cartocell_bmz.core.normalize.zero_mean_unit_variance`; a package
    qualifies when its preprocessing is ``ensure_dtype`` steps and one
    ``zero_mean_unit_variance`` over every axis of the sample.
    """
    from cartocell_bmz.core.normalize import NORM_EPS

    description = getattr(getattr(predictor, "model", None), "description", None)
    if description is None:
        return NORM_EPS
    inp = description.inputs[0]
    steps = [p for p in inp.preprocessing if str(p.id) != "ensure_dtype"]
    if len(steps) != 1 or str(steps[0].id) != "zero_mean_unit_variance":
        return None
    kwargs = steps[0].kwargs
    axes = getattr(kwargs, "axes", None)
    non_batch = {str(a.id) for a in inp.axes if str(a.id) != "batch"}
    if axes is not None and {str(a) for a in axes} != non_batch:
        return None
    return float(getattr(kwargs, "eps", NORM_EPS))


def block_context(predictor: Any, block: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxels read around a block: the model's tile-edge margin (measured once), or the halo when untiled."""
    guess = tuple(min(int(b) + 64, int(s)) for b, s in zip(block, shape))
    g = predictor.geometry(guess)
    margins = predictor.edge_margins(g)
    return tuple(int(max(mg, bd)) for mg, bd in zip(margins.margin, g.border))  # type: ignore[return-value]


def candidates_from_probabilities(
    probs: np.ndarray, spacing: Sequence[float], settings: CropSettings | None = None,
) -> list[Candidate]:
    """Cyst candidates of ``(3, Z, Y, X)`` probabilities (B, C, M): the M mask and the C contours.

    Parameters
    ----------
    probs : numpy.ndarray
        Probabilities in channel order B, C, M.
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in µm.
    settings : CropSettings, optional
        Threshold and the finder's limits.

    Returns
    -------
    list of Candidate
    """
    settings = settings or CropSettings()
    code = (probs[CHANNELS.index("M")] > settings.threshold).astype(np.uint8) * M_BIT
    code |= (probs[CHANNELS.index("C")] > settings.threshold).astype(np.uint8) * C_BIT
    return candidates_from_code(code, spacing, settings)


def candidates_from_code(code: Any, spacing: Sequence[float], settings: CropSettings | None = None) -> list[Candidate]:
    """Cyst candidates of a ``(Z, Y, X)`` uint8 mask of M and C bits, read by slabs and boxes.

    Parameters
    ----------
    code : array-like
        ``code[z0:z1, y0:y1, x0:x1]`` gives uint8 arrays (a numpy array or a
        :class:`~cartocell_bmz.io.stacks.ScratchVolume`); bit :data:`M_BIT` the
        cellular mask, bit :data:`C_BIT` the cell contours.
    spacing : sequence of 3 floats
        Voxel size in µm.
    settings : CropSettings, optional

    Returns
    -------
    list of Candidate
        Sorted by box; equal to :func:`~cartocell_bmz.core.cysts.find_cysts` of the
        whole M mask with the C bit as its contours.
    """
    from scipy import ndimage as ndi

    from cartocell_bmz.core.spacing import check_spacing

    settings = settings or CropSettings()
    spacing = check_spacing(spacing)
    shape = tuple(int(s) for s in code.shape)
    voxel = float(np.prod(spacing))
    planes = max(1, SLAB_VOXELS // max(1, shape[1] * shape[2]))
    found = component_boxes(lambda a, b: np.asarray(code[a:b]) & M_BIT, shape, planes=planes)
    grow = region_pad(spacing, settings.touch_gap)
    out: list[Candidate] = []
    for comp in found:
        box, volume = comp.box, comp.voxels * voxel
        if any(v == 0 for v in box[:3]) or any(v == s for v, s in zip(box[3:], shape)):
            out.append(Candidate(box, round(volume, 3), 0, float("nan"), "cut by the stack border"))
            continue
        if volume < settings.min_volume:
            out.append(Candidate(box, round(volume, 3), 0, float("nan"), "too small"))
            continue
        pad = tuple(slice(max(0, lo - g), min(s, hi + g)) for lo, hi, g, s in zip(box[:3], box[3:], grow, shape))
        bits = np.asarray(code[pad])
        inside, _ = ndi.label(bits & M_BIT)
        region = inside == inside[tuple(p - s.start for p, s in zip(comp.seed, pad))]
        out.extend(classify_region(
            region, origin=tuple(s.start for s in pad), shape=shape, spacing=spacing, contours=bits & C_BIT > 0,
            others=(inside > 0) & ~region if settings.touch_gap > 0 else None,
            rules=CystRules(min_volume=settings.min_volume, min_lumen=settings.min_lumen, touch_gap=settings.touch_gap),
        ))
    return sorted(out, key=lambda c: c.box)


def _write_crops(stack: Any, found: list[Candidate], out: Path, settings: CropSettings) -> list[dict]:
    """Crop the kept candidates of one stack into ``OUT/x/``; one table row per candidate."""
    from cartocell_bmz.io.stacks import stack_stem
    from cartocell_bmz.io.volumes import write_volume

    margin = tuple(int(math.ceil(settings.margin_um / s)) for s in stack.spacing)
    rows = []
    for n, c in enumerate(found, start=1):
        crop = ""
        if c.kept:
            name = f"{stack_stem(stack.path)}_cyst_{n:03d}.tif"
            write_volume(out / RAW_DIR / name, stack[crop_box(c.box, margin, stack.shape)], stack.spacing)
            crop = f"{RAW_DIR}/{name}"
        rows.append({"stack": stack.path.name, "candidate": n, **dict(zip(CANDIDATE_COLUMNS[2:8], c.box)),
                     "volume_um3": c.volume_um3, "lumens": c.lumens,
                     "layer_fraction": "" if math.isnan(c.layer_fraction) else round(c.layer_fraction, 3),
                     "kept": c.kept, "reason": c.reason, "crop": crop})
    return rows


# --------------------------------------------------------------------------- stacks one by one, resumable


#: Folder (in OUT) of the per-stack records: a stack's candidate rows, written after its crops.
STACKS_DIR = "stacks"


def stack_record_path(out: str | os.PathLike, stack: str | os.PathLike) -> Path:
    """``OUT/stacks/NAME.json``: the record of one cropped stack."""
    return Path(out) / STACKS_DIR / (Path(stack).name + ".json")


def _identify(model: Any, trust: bool) -> tuple[Any, str]:
    """The model resolved once (its notice shown here) and what identifies its weights in a stack's record."""
    from cartocell_bmz.run.predictor import Predictor
    from cartocell_bmz.train.run import fingerprint, is_training_run

    if isinstance(model, Predictor):
        return model, f"predictor:{model.name}"
    if isinstance(model, (str, os.PathLike)) and is_training_run(model):
        return model, fingerprint(model)
    from cartocell_bmz.bmz.resolve import resolve_model

    resolved = resolve_model(model, trust=trust)
    return resolved, resolved.rdf_sha256


def _record_key(stack: Path, settings: CropSettings, spacing: Sequence[float] | None, model_id: str) -> dict:
    """What a finished stack's record must match: the stack file, the model and the crop settings."""
    from dataclasses import asdict

    from cartocell_bmz.io.stacks import stack_fingerprint

    return json.loads(json.dumps({"stack": stack.name, **stack_fingerprint(stack), "model": model_id,
                                  "settings": asdict(settings), "spacing": None if spacing is None else list(spacing)}))


def finished_stack(out: str | os.PathLike, stack: str | os.PathLike, settings: CropSettings,
                   spacing: Sequence[float] | None = None, *, model_id: str = "") -> list[dict] | None:
    """The candidate rows of a stack cropped before with the same settings, ``None`` when it is not finished.

    Finished: its record exists, names the same stack file (size, modification time), model
    (``model_id``: a package's rdf sha256, a training run's fingerprint) and settings, and
    every crop it lists exists.
    """
    path = stack_record_path(out, stack)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != _record_key(Path(stack), settings, spacing, model_id):
        return None
    rows = record.get("rows")
    if not isinstance(rows, list) or not all((Path(out) / r["crop"]).is_file() for r in rows if r.get("crop")):
        return None
    return rows


@dataclass(frozen=True)
class _CropJob:
    """Everything a worker needs to crop one stack (small to send)."""

    out: Path
    settings: CropSettings
    spacing: tuple | None
    weights: str | None
    tile: tuple | None
    batch_size: int
    device: str
    model_id: str = ""

    def crop(self, predictor: Any, path: Path, progress: ProgressCallback | None = None) -> list[dict]:
        """Crop one stack, write its record last; its candidate rows (as read back from the record)."""
        from cartocell_bmz.io.stacks import open_stack
        from cartocell_bmz.io.volumes import atomic_open

        record_path = stack_record_path(self.out, path)
        record_path.unlink(missing_ok=True)  # from other settings: not finished until rewritten
        with open_stack(path, self.spacing) as stack:
            found = stack_candidates(predictor, stack, self.out, self.settings, progress)
            rows = _write_crops(stack, found, self.out, self.settings)
        rows = json.loads(json.dumps(rows, default=lambda v: v.item()))  # plain numbers, as a rerun reads them
        with atomic_open(record_path) as fh:
            json.dump({"key": _record_key(path, self.settings, self.spacing, self.model_id), "rows": rows}, fh,
                      indent=1)
        return rows

    def crop_in_worker(self, model: Any, path: Path) -> list[dict]:
        """:meth:`crop` with this worker's copy of the model (loaded on its first stack)."""
        from cartocell_bmz.run.batch import loaded_predictor

        predictor = loaded_predictor(model, weights=self.weights, tile=self.tile, batch_size=self.batch_size,
                                     device=self.device, trust=True)
        return self.crop(predictor, path)


def _crop_on_cluster(model: Any, todo: list[Path], job: _CropJob, scheduler: str, workers: int | None,
                     progress: ProgressCallback | None) -> list[list[dict]]:
    """Crop the stacks on the engine's workers, one stack per task; their rows in the order of ``todo``.

    ``model`` is a training run folder or a resolved package (:func:`_identify`).
    """
    import functools
    from dataclasses import replace

    from cartocell_bmz.engine.cluster import map_tasks
    from cartocell_bmz.engine.plan import available_memory_gb, plan_workers
    from cartocell_bmz.run.device import resolve_device

    job = replace(job, device=str(resolve_device(job.device)))
    plan = plan_workers(scheduler, len(todo), workers=workers, device=job.device, memory_gb=available_memory_gb())
    return map_tasks(functools.partial(job.crop_in_worker, model), todo, plan, title="stacks",
                     describe=lambda p: p.name, progress=progress)


__all__ = ["CANDIDATES_CSV", "CANDIDATE_COLUMNS", "CropSettings", "crop_stacks", "stack_candidates", "predict_mask",
           "normalization_eps", "block_context", "candidates_from_probabilities", "candidates_from_code",
           "STACKS_DIR", "finished_stack", "stack_record_path"]
