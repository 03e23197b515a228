"""CartoCell's training strategy end to end: M1 -> pseudo-labels -> M2 -> test.

On a CartoCell-layout folder (``train_M1``, ``validation``, ``train_M2``,
``test``, each with ``x/`` and ``y/``), :func:`run_pipeline` runs phases 2 to 5
of the paper::

    phase 2  train M1 on train_M1 (validation: validation)       -> OUT/M1/
    phase 3  pseudo-label train_M2/x with M1 (watershed+Voronoi) -> OUT/pseudo_labels/{x,y}/
    phase 4  train M2 on the pseudo-labels (validation: same)    -> OUT/M2/ (or OUT/M2_<arch>/)
    phase 5  predict, post-process and evaluate M1 and M2 on test -> OUT/eval_M1/, OUT/eval_M2/
             and compare them                                   -> OUT/comparison.{json,md}

With ``rounds=N`` (N > 1) pseudo-labelling is repeated with the latest model::

    round r  pseudo-label train_M2/x with the previous round's M2 -> OUT/pseudo_labels_round<r>/
             train M2 on them                                    -> OUT/M2_round<r>/
             evaluate it on test                                 -> OUT/eval_M2_round<r>/

Every M2 is compared with M1 on the same test cysts: the F1@0.5 difference and a
paired bootstrap confidence interval over the cysts (:func:`cartocell_bmz.core.bootstrap.paired_bootstrap`)
in ``comparison.{json,md}``.

``train_M2/y`` is never read: M2 learns from M1's pseudo-labels only.  With
several M2 architectures (``arch_m2=["unet", "resunet", ...]``) each M2 gets
its own folder ``OUT/M2_<arch>`` and evaluation ``OUT/eval_M2_<arch>``, all
from the same M1 and pseudo-labels.

Every phase is skipped when its outputs are complete and were made from the
current upstream results (the sha256 of the upstream weights is recorded), and
continues where it stopped otherwise, so an interrupted pipeline is resumed by
running the same command again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.train.run import MODEL_JSON
from cartocell_bmz.layout import (
    CHANNELS, INSTANCES_DIR, LABEL_DIR, METRICS_CSV, PROBS_DIR, RAW_DIR, SUMMARY_JSON, VORONOI_DIR,
)

PIPELINE_JSON = "pipeline.json"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
#: Columns of the comparison: (key, title); matching figures at IoU 0.5 and 0.75, channel IoUs.
COMPARISON_COLUMNS: tuple[tuple[str, str], ...] = (
    ("f1@0.5", "F1@0.5"), ("pq@0.5", "PQ@0.5"), ("mts@0.5", "MTS@0.5"),
    ("f1@0.75", "F1@0.75"), ("pq@0.75", "PQ@0.75"), ("mts@0.75", "MTS@0.75"),
    ("iou_B", "IoU B"), ("iou_C", "IoU C"), ("iou_M", "IoU M"),
)
_FIGURE_KEYS = {"f1": "f1", "pq": "panoptic_quality", "mts": "mean_true_score"}
#: Comparison key of an M2's paired bootstrap against M1 (F1@0.5 per test cyst).
VERSUS_M1 = "f1@0.5_vs_M1"
#: Seed of the comparison's bootstrap (fixed: the same evaluations give the same interval).
BOOTSTRAP_SEED = 0


@dataclass
class PipelineResult:
    """Outcome of :func:`run_pipeline`.

    Attributes
    ----------
    out : pathlib.Path
    runs : dict
        Model name (``"M1"``, ``"M2"`` or ``"M2_<arch>"``) -> :class:`~cartocell_bmz.train.loop.RunSummary`.
    pseudo_labels : PseudoLabelSummary
    comparison : dict
        Model name -> figures (see :data:`COMPARISON_COLUMNS`), training facts, the round
        and, for every M2, the paired bootstrap against M1 (:data:`VERSUS_M1`).
    seconds : float
        Time of this call.
    """

    out: Path
    runs: dict[str, Any]
    pseudo_labels: Any
    comparison: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def __str__(self) -> str:
        return comparison_markdown(self.comparison) + f"\n\n{self.out}: pipeline done in {self.seconds:.0f} s"


def check_layout(data_root: str | os.PathLike) -> Path:
    """Check that ``data_root`` has the folders the pipeline reads.

    Raises
    ------
    InputError
        Naming the first missing folder.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found.")
    needed = [
        ("train_M1", RAW_DIR), ("train_M1", LABEL_DIR), ("validation", RAW_DIR), ("validation", LABEL_DIR),
        ("train_M2", RAW_DIR), ("test", RAW_DIR), ("test", LABEL_DIR),
    ]
    for split, sub in needed:
        if not (root / split / sub).is_dir():
            raise InputError(
                f"{root / split / sub}: folder missing; the pipeline needs the CartoCell layout "
                "train_M1/{x,y}, validation/{x,y}, train_M2/x, test/{x,y}."
            )
    return root


def m2_names(arch_m2: str | Sequence[str]) -> dict[str, str]:
    """Folder name of each M2: ``{"M2": arch}`` for one architecture, ``{"M2_<arch>": arch}`` for several.

    Examples
    --------
    >>> m2_names("unet")
    {'M2': 'unet'}
    >>> m2_names(["unet", "resunet"])
    {'M2_unet': 'unet', 'M2_resunet': 'resunet'}
    """
    archs = [arch_m2] if isinstance(arch_m2, str) else list(dict.fromkeys(arch_m2))
    if not archs:
        raise ConfigError("arch_m2 needs at least one architecture.")
    if len(archs) == 1:
        return {"M2": archs[0]}
    return {f"M2_{a}": a for a in archs}


def run_pipeline(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str = "tiny",
    arch_m1: str = "resunet",
    arch_m2: str | Sequence[str] = "resunet",
    seed: int = 0,
    device: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    postprocess_config: Any = None,
    rounds: int = 1,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[..., None] | None = None,
) -> PipelineResult:
    """Run CartoCell's phases 2-5 on a dataset, resuming whatever is already done.

    Parameters
    ----------
    data_root : path-like
        CartoCell-layout dataset (see :func:`check_layout`).
    out : path-like
        Output folder (created).
    preset : {"tiny", "paper"}
        Training preset of M1 and M2 (:data:`cartocell_bmz.train.config.TRAIN_PRESETS`).
    arch_m1 : str
        Architecture of M1.
    arch_m2 : str or sequence of str
        Architecture(s) of M2; several give one M2 each (``OUT/M2_<arch>``).
    seed : int
        Seed of both trainings.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    overrides : mapping, optional
        :class:`~cartocell_bmz.train.config.TrainConfig` fields that replace the
        preset's for both M1 and M2 (``{"epochs": 5}``).
    postprocess_config : PostprocessConfig, optional
        Watershed and Voronoi settings for pseudo-labels and evaluation.
    rounds : int
        Rounds of pseudo-labelling: 1 (CartoCell's) or more, each further round
        pseudo-labelling ``train_M2/x`` with the previous round's M2 and training
        ``M2_round<r>`` on them (one M2 architecture only).
    scheduler, workers : optional
        Where the volumes of pseudo-labelling and evaluation run (:mod:`cartocell_bmz.engine.plan`;
        default a local Dask cluster for more than one volume); training runs in this process.
    progress : callable, optional
        ``progress(done, total, message)`` (:mod:`cartocell_bmz.io.progress`): one run
        over the steps (train M1, pseudo-label, train each M2, two steps per further
        round, evaluate each model), the
        message naming the step and the step's own progress (epochs, volumes).

    Returns
    -------
    PipelineResult
    """
    from cartocell_bmz.io.progress import nested, report
    from cartocell_bmz.io.volumes import ensure_output_dir
    from cartocell_bmz.phases.pseudo_label import model_fingerprint
    from cartocell_bmz.train.loop import train

    t0 = time.perf_counter()
    root = check_layout(data_root)
    names = m2_names(arch_m2)
    if int(rounds) < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}.")
    if rounds > 1 and len(names) > 1:
        raise ConfigError("rounds > 1 pseudo-labels with the latest M2: give one M2 architecture.")
    out = ensure_output_dir(out)
    cfg_m1, cfg_m2 = _configs(preset, arch_m1, names, seed=seed, device=device, overrides=overrides)
    n_steps = 2 + 2 * len(cfg_m2) + 1 + 3 * (rounds - 1)
    step = 0

    def begin(message: str):
        """Report the start of the next step; the callback for that step's own progress."""
        nonlocal step
        step += 1
        report(progress, step - 1, n_steps, message)
        return nested(progress, step - 1, n_steps, message)

    state = _read_json(out / PIPELINE_JSON)
    timings: dict[str, float] = {}

    def record(**changes: Any) -> None:
        state.update(changes)
        _write_json(out / PIPELINE_JSON, state)

    record(data_root=str(root.resolve()), preset=preset, arch_m1=arch_m1, arch_m2=list(names.values()), seed=seed,
           rounds=int(rounds))

    # ---- phase 2: M1
    inner = begin(f"phase 2/5: training M1 ({arch_m1}, preset {preset}) on {root / 'train_M1'} -> {out / 'M1'}")
    t = time.perf_counter()
    runs = {"M1": train(cfg_m1, root / "train_M1", root / "validation", out / "M1", progress=inner)}
    timings["M1"] = time.perf_counter() - t
    sha_m1 = model_fingerprint(out / "M1")

    # ---- phase 3: pseudo-labels; phase 4: M2 (each architecture)
    ctx = _Steps(root=root, out=out, begin=begin, record=record, timings=timings, device=device,
                 postprocess_config=postprocess_config, made_from=dict(state.get("m2_trained_on", {})),
                 scheduler=scheduler, workers=workers)
    pseudo = ctx.pseudo_label(out / "M1", out / "pseudo_labels", "phase 3/5", "M1")
    for name, cfg in cfg_m2.items():
        runs[name] = ctx.train_m2(name, cfg, out / "pseudo_labels", sha_m1, "phase 4/5", "the pseudo-labels")
    round_of = {"M1": 0, **{name: 1 for name in cfg_m2}}

    # ---- further rounds: pseudo-label with the latest M2, train the next
    teacher, cfg = next(iter(cfg_m2.items()))
    for r in range(2, int(rounds) + 1):
        tag, pl_dir, name = f"round {r}/{rounds}", out / f"pseudo_labels_round{r}", f"M2_round{r}"
        ctx.pseudo_label(out / teacher, pl_dir, tag, teacher)
        runs[name] = ctx.train_m2(name, cfg, pl_dir, model_fingerprint(out / teacher), tag, f"{teacher}'s pseudo-labels")
        round_of[name], teacher = r, name

    # ---- phase 5: evaluation on test
    summaries = {name: ctx.evaluate(name) for name in runs}
    comparison = compare(summaries, runs)
    for name, row in comparison.items():
        row["round"] = round_of[name]
    add_bootstrap(comparison, {name: out / f"eval_{name}" for name in runs})
    comparison = _write_comparison(out, comparison)
    seconds = time.perf_counter() - t0
    record(finished=True, last_call_seconds=round(seconds, 1), last_call_phase_seconds={k: round(v, 1) for k, v in timings.items()})
    result = PipelineResult(out=out, runs=runs, pseudo_labels=pseudo, comparison=comparison, seconds=seconds)
    report(progress, n_steps, n_steps, "finished")
    return result


@dataclass
class _Steps:
    """The pseudo-labelling and M2-training steps of :func:`run_pipeline` (shared by every round)."""

    root: Path
    out: Path
    begin: Callable[[str], Any]
    record: Callable[..., None]
    timings: dict[str, float]
    device: str
    postprocess_config: Any
    made_from: dict[str, str]
    scheduler: str | None = None
    workers: int | None = None

    def pseudo_label(self, teacher: Path, pl_dir: Path, tag: str, teacher_name: str) -> Any:
        """Pseudo-label ``train_M2/x`` with ``teacher`` into ``pl_dir`` (redone when the teacher changed)."""
        from cartocell_bmz.phases.pseudo_label import model_fingerprint, pseudo_label

        sha = model_fingerprint(teacher)
        stale = _read_json(pl_dir / "status.json").get("model_sha256") not in (None, sha)
        inner = self.begin(f"{tag}: pseudo-labelling {self.root / 'train_M2' / RAW_DIR} with {teacher_name} -> {pl_dir}"
                           + (f" ({teacher_name} changed: redoing)" if stale else ""))
        t = time.perf_counter()
        summary = pseudo_label(teacher, self.root / "train_M2" / RAW_DIR, pl_dir, config=self.postprocess_config,
                               device=self.device, fresh=stale, progress=inner, scheduler=self.scheduler,
                               workers=self.workers)
        self.timings[pl_dir.name] = time.perf_counter() - t
        return summary

    def train_m2(self, name: str, cfg: Any, pl_dir: Path, teacher_sha: str, tag: str, what: str) -> Any:
        """Train ``OUT/<name>`` on ``pl_dir`` (retrained from scratch when the pseudo-labels' teacher changed)."""
        from cartocell_bmz.train.loop import train

        fresh = self.made_from.get(name) not in (None, teacher_sha)
        self.made_from[name] = teacher_sha
        self.record(m2_trained_on=self.made_from)
        inner = self.begin(f"{tag}: training {name} ({cfg.arch}) on {what} -> {self.out / name}"
                           + (" (pseudo-labels changed: retraining)" if fresh else ""))
        t = time.perf_counter()
        run = train(cfg, pl_dir, self.root / "validation", self.out / name, resume=not fresh, progress=inner)
        self.timings[name] = time.perf_counter() - t
        return run

    def evaluate(self, name: str) -> dict:
        """Predict, post-process and evaluate ``OUT/<name>`` on ``test`` (:func:`evaluate_run`)."""
        test, dest = self.root / "test", self.out / f"eval_{name}"
        inner = self.begin(f"phase 5/5: predicting and evaluating {name} on {test} -> {dest}")
        t = time.perf_counter()
        summary = evaluate_run(self.out / name, test, dest, postprocess_config=self.postprocess_config,
                               device=self.device, scheduler=self.scheduler, workers=self.workers, progress=inner)
        self.timings[f"eval_{name}"] = time.perf_counter() - t
        return summary


def _configs(preset: str, arch_m1: str, names: Mapping[str, str], *, seed: int, device: str,
             overrides: Mapping[str, Any] | None) -> tuple[Any, dict[str, Any]]:
    """Training configurations of M1 and of each M2 (same preset, seed and overrides)."""
    from cartocell_bmz.train.config import TrainConfig

    overrides = dict(overrides or {})
    for bad in ("arch", "preset"):
        if bad in overrides:
            raise ConfigError(f"overrides cannot set {bad!r}; use the preset and arch arguments.")
    cfg_m1 = TrainConfig.from_preset(preset, arch=arch_m1, seed=seed, device=device, **overrides)
    cfg_m2 = {name: TrainConfig.from_preset(preset, arch=a, seed=seed, device=device, **overrides) for name, a in names.items()}
    return cfg_m1, cfg_m2


def _write_comparison(out: Path, comparison: dict) -> dict:
    """Write ``comparison.json`` and ``comparison.md``; return the comparison."""
    from cartocell_bmz.io.volumes import atomic_open

    _write_json(out / COMPARISON_JSON, comparison)
    with atomic_open(out / COMPARISON_MD) as fh:
        fh.write(comparison_markdown(comparison) + "\n")
    return comparison


def evaluate_run(
    run_dir: str | os.PathLike,
    test_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    postprocess_config: Any = None,
    device: str = "auto",
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[..., None] | None = None,
) -> dict:
    """Predict, post-process and evaluate a training run on a test split.

    Writes the BiaPy output tree in ``out_dir`` (``per_image/``,
    ``per_image_instances/``, ``per_image_post_processing/``) and the
    evaluation of the Voronoi cells (:func:`cartocell_bmz.run.evaluate.evaluate_folder`).
    Volumes already predicted by the same weights are kept; a finished
    evaluation of the same weights on the same test volumes is returned at once.
    The run is predicted by :class:`~cartocell_bmz.run.predictor.Predictor`, tiled as
    the benchmark tiles a package.

    Parameters
    ----------
    run_dir, test_dir, out_dir : path-like
        The training run, the test split (``x/``, ``y/``) and the output folder.
    postprocess_config : PostprocessConfig, optional
        Watershed and Voronoi settings.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    scheduler, workers : optional
        Where the volumes are predicted (:mod:`cartocell_bmz.engine.plan`; default a local Dask
        cluster for more than one volume, each worker loading the run once); the same bytes.
    progress : callable, optional
        ``progress(done, total, message)`` of the predictions on a cluster, then of the evaluation.

    Returns
    -------
    dict
        The evaluation summary (``summary.json``).
    """
    from cartocell_bmz.engine.plan import choose_scheduler
    from cartocell_bmz.run.evaluate import evaluate_folder
    from cartocell_bmz.phases.pseudo_label import model_fingerprint
    from cartocell_bmz.io.volumes import ensure_output_dir, list_volumes
    from cartocell_bmz.run.predictor import Predictor
    from cartocell_bmz.train.run import read_run

    run_dir, test_dir = Path(run_dir), Path(test_dir)
    out = ensure_output_dir(out_dir)
    sha = model_fingerprint(run_dir)
    raws = list_volumes(test_dir / RAW_DIR, what="raw test volumes")
    names = sorted(p.name for p in raws)
    status = _read_json(out / "status.json")
    if status.get("model_sha256") not in (None, sha):
        for sub in (PROBS_DIR, INSTANCES_DIR, VORONOI_DIR):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        status = {}
    if status.get("finished") and status.get("volumes") == names and (out / SUMMARY_JSON).is_file():
        return _read_json(out / SUMMARY_JSON)
    _write_json(out / "status.json", {"finished": False, "model": str(run_dir), "model_sha256": sha})
    for sub in (PROBS_DIR, INSTANCES_DIR, VORONOI_DIR):  # predictions of volumes no longer in the test set
        if (out / sub).is_dir():
            for stale in (out / sub).iterdir():
                if stale.is_file() and stale.name not in names and not stale.name.startswith("."):
                    stale.unlink()
    todo = [raw for raw in raws if not all((out / sub / raw.name).is_file() for sub in (PROBS_DIR, INSTANCES_DIR,
                                                                                         VORONOI_DIR))]
    job = _EvalJob(run_dir=run_dir, out=out, config=postprocess_config, device=device)
    mode = choose_scheduler(scheduler, workers, len(todo))
    if mode == "sync" and todo:
        with Predictor(run_dir, device=device) as predictor:  # tiled as the benchmark tiles packages
            for raw in todo:
                job.segment(predictor.predict, raw)
    elif todo:
        from dataclasses import replace

        from cartocell_bmz.engine.cluster import map_tasks
        from cartocell_bmz.engine.plan import available_memory_gb, plan_workers
        from cartocell_bmz.run.device import resolve_device

        job = replace(job, device=str(resolve_device(device)))
        plan = plan_workers(mode, len(todo), workers=workers, device=job.device, memory_gb=available_memory_gb())
        map_tasks(job.segment_in_worker, todo, plan, title="test volumes", describe=lambda p: p.name,
                  progress=progress)
    target_mode = read_run(run_dir, complete=False).target_mode
    summary = evaluate_folder(
        gt_dir=test_dir / LABEL_DIR, pred_dir=out / VORONOI_DIR, out_dir=out, probs_dir=out / PROBS_DIR,
        mode=target_mode if target_mode != "unknown" else "cartocell", progress=progress,
    )
    _write_json(out / "status.json", {"finished": True, "model": str(run_dir), "model_sha256": sha, "volumes": names})
    return summary


@dataclass(frozen=True)
class _EvalJob:
    """Predicting one test volume of a run (small: sent to a worker with each volume)."""

    run_dir: Path
    out: Path
    config: Any
    device: str

    def segment(self, predict: Callable, raw: Path) -> str:
        """Probabilities, watershed cells and Voronoi cells of one volume, written in that order."""
        import numpy as np

        from cartocell_bmz.core.labels import as_label_dtype
        from cartocell_bmz.io.volumes import read_volume, write_volume
        from cartocell_bmz.phases.pseudo_label import segment_volume

        vol = read_volume(raw, "image")
        probs, instances, voronoi = segment_volume(predict, vol.data, vol.spacing, self.config)
        write_volume(self.out / PROBS_DIR / raw.name, probs.astype(np.float32), vol.spacing)
        write_volume(self.out / INSTANCES_DIR / raw.name, as_label_dtype(instances), vol.spacing, compress=True)
        write_volume(self.out / VORONOI_DIR / raw.name, as_label_dtype(voronoi), vol.spacing, compress=True)
        return raw.name

    def segment_in_worker(self, raw: Path) -> str:
        """:meth:`segment` with this worker's copy of the run (loaded on its first volume)."""
        from cartocell_bmz.run.batch import loaded_predictor

        return self.segment(loaded_predictor(self.run_dir, device=self.device, trust=True).predict, raw)


def compare(summaries: Mapping[str, Mapping[str, Any]], runs: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Comparison rows (one per model) from evaluation summaries.

    Examples
    --------
    >>> s = {"dataset": {"0.5": {"f1": 0.9, "panoptic_quality": 0.7, "mean_true_score": 0.75},
    ...                  "0.75": {"f1": 0.5, "panoptic_quality": 0.4, "mean_true_score": 0.45}},
    ...      "channel_iou": {"B": 0.8, "C": 0.5, "M": 0.9}}
    >>> compare({"M1": s})["M1"]["f1@0.5"], compare({"M1": s})["M1"]["iou_C"]
    (0.9, 0.5)
    """
    table: dict[str, dict[str, Any]] = {}
    for name, summary in summaries.items():
        row: dict[str, Any] = {}
        dataset = summary.get("dataset", {})
        for thr in ("0.5", "0.75"):
            figs = dataset.get(thr) or {}
            for short, key in _FIGURE_KEYS.items():
                row[f"{short}@{thr}"] = _num(figs.get(key))
        ious = summary.get("channel_iou") or {}
        for c in CHANNELS:
            row[f"iou_{c}"] = _num(ious.get(c))
        if runs is not None and name in runs:
            r = runs[name]
            row.update(arch=_read_json(Path(r.run_dir) / MODEL_JSON).get("arch"), epochs=r.epochs,
                       best_epoch=r.best_epoch, train_seconds=round(r.seconds, 1))
        table[name] = row
    return table


def per_image_f1(eval_dir: str | os.PathLike, threshold: float = 0.5) -> dict[str, float]:
    """F1 of each test image at one IoU threshold, from an evaluation's ``metrics_per_image.csv``.

    Returns
    -------
    dict
        Image file name -> F1; empty when the file is missing.
    """
    import csv

    path = Path(eval_dir) / METRICS_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["image"]: float(row["f1"]) for row in csv.DictReader(fh)
                if abs(float(row["threshold"]) - threshold) < 1e-9}


def add_bootstrap(comparison: dict[str, dict[str, Any]], eval_dirs: Mapping[str, os.PathLike],
                  *, reference: str = "M1", n_resamples: int | None = None) -> dict[str, dict[str, Any]]:
    """Add to every model's row its F1@0.5 difference from ``reference`` with a bootstrap interval.

    Per-cyst F1@0.5 of both models on the test images they share are paired, and
    :func:`cartocell_bmz.core.bootstrap.paired_bootstrap` (seed :data:`BOOTSTRAP_SEED`)
    gives the mean difference (model minus reference) and its 95 % percentile interval,
    stored under :data:`VERSUS_M1`.  Rows without shared images are left alone.

    Parameters
    ----------
    comparison : dict
        Model name -> row (changed in place and returned).
    eval_dirs : mapping
        Model name -> its evaluation folder (``metrics_per_image.csv``).
    reference : str
        The model the others are compared with.
    n_resamples : int, optional
        Bootstrap resamples; default :data:`~cartocell_bmz.core.bootstrap.DEFAULT_RESAMPLES`.

    Returns
    -------
    dict
        ``comparison``.
    """
    from cartocell_bmz.core.bootstrap import DEFAULT_RESAMPLES, paired_bootstrap

    if reference not in eval_dirs:
        return comparison
    ref = per_image_f1(eval_dirs[reference])
    for name, row in comparison.items():
        if name == reference or name not in eval_dirs:
            continue
        other = per_image_f1(eval_dirs[name])
        shared = sorted(set(ref) & set(other))
        if not shared:
            continue
        result = paired_bootstrap([ref[k] for k in shared], [other[k] for k in shared],
                                  n_resamples=n_resamples or DEFAULT_RESAMPLES, seed=BOOTSTRAP_SEED)
        row[VERSUS_M1] = {"reference": reference, "reference_f1": sum(ref[k] for k in shared) / len(shared),
                          "f1": sum(other[k] for k in shared) / len(shared), **result.as_dict()}
    return comparison


def comparison_markdown(comparison: Mapping[str, Mapping[str, Any]]) -> str:
    """The comparison as a markdown table (one row per model).

    Examples
    --------
    >>> print(comparison_markdown({"M1": {"f1@0.5": 0.9, "arch": "unet"}}).splitlines()[2])
    | M1 | unet | 0.900 | – | – | – | – | – | – | – | – |
    """
    head = ["model", "arch"] + [title for _, title in COMPARISON_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in comparison.items():
        cells = [name, str(row.get("arch") or "–")]
        for key, _ in COMPARISON_COLUMNS:
            v = row.get(key)
            cells.append("–" if v is None else f"{v:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + _bootstrap_markdown(comparison))


def _bootstrap_markdown(comparison: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Lines of the paired-bootstrap table (none when no row has :data:`VERSUS_M1`)."""
    rows = {name: row[VERSUS_M1] for name, row in comparison.items() if isinstance(row.get(VERSUS_M1), Mapping)}
    if not rows:
        return []
    first = next(iter(rows.values()))
    lines = [
        "",
        f"F1@0.5 against {first['reference']} on the same {first['n']} test cysts: mean per-cyst difference and "
        f"paired bootstrap {first['confidence']:.0%} percentile interval over the cysts "
        f"({first['n_resamples']} resamples, seed {first['seed']}).",
        "",
        f"| model | round | F1@0.5 | {first['reference']} F1@0.5 | difference | {first['confidence']:.0%} CI |",
        "|---|---|---|---|---|---|",
    ]
    for name, b in rows.items():
        r = comparison[name].get("round")
        lines.append(f"| {name} | {'–' if r is None else r} | {b['f1']:.3f} | {b['reference_f1']:.3f} | "
                     f"{b['difference']:+.3f} | [{b['low']:+.3f}, {b['high']:+.3f}] |")
    return lines


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: Any) -> None:
    from cartocell_bmz.io.volumes import atomic_open

    with atomic_open(path) as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
