"""Rank models on a test set: every (model, image) pair predicted, post-processed and evaluated.

:func:`run_benchmark` is the whole benchmark, in steps that each have their module:

1. what is ranked, on what (:mod:`cartocell_bmz.bench.inputs`): the models are resolved
   once and fingerprinted, the test set listed (or the embedded synthetic one written);
2. a flat list of independent tasks, one per model and test image
   (:mod:`cartocell_bmz.bench.tasks`); finished ones are reused without starting anything;
3. the others run on a Dask cluster or one after the other
   (:mod:`cartocell_bmz.bench.scheduling`);
4. the per-image figures are ranked (:mod:`cartocell_bmz.bench.ranking`), the morphology
   of each model's cells is set against the ground truth's beside the ranking, never in its
   score (:mod:`cartocell_bmz.bench.morphology`), and both are written as tables, plots and
   an HTML report (:mod:`cartocell_bmz.bench.report`).

Output tree ``OUT/``::

    test_set/                    default synthetic test set (when no --test is given)
    <model>/per_image/ ...       what predict writes (probabilities, instances, Voronoi)
    <model>/metrics/<image>.json per-image figures of that model
    <model>/benchmark_model.json the model's source and content fingerprint
    ranking.csv ranking.md ranking.json per_image.csv report.html plots/
    morphology.csv morphology.md     morphology against the ground truth (not in the score)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from cartocell_bmz.bench.inputs import (
    TEST_SET_DIR,
    default_test_set,
    expand_model_values,
    fingerprint_image,
    list_test_images,
    resolve_models,
)
from cartocell_bmz.bench.scheduling import available_memory_gb, check_scheduler, execute, plan_workers
from cartocell_bmz.bench.tasks import (
    BenchImage,
    BenchmarkModel,
    Task,
    finished_result,
    read_metrics,
    read_morphology,
    run_task,
)
from cartocell_bmz.errors import ConfigError
from cartocell_bmz.io.progress import ProgressCallback
from cartocell_bmz.layout import DEFAULT_IOU_THRESHOLDS, PROBS_DIR, VORONOI_DIR

#: Default output folder of the command.
DEFAULT_OUT = Path("cartocell_benchmark")
#: File (inside OUT/<model>) recording which model the outputs belong to.
MODEL_RECORD = "benchmark_model.json"


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced.

    Attributes
    ----------
    out : pathlib.Path
        The output folder.
    ranking, published : list of RankingRow
        The ranked models, and the published reference rows (empty unless asked for).
    per_image : list of dict
        Per-image rows of every model (one per image and threshold).
    morphology : list of MorphologyRow
        The ground truth's morphology, then each model's against it (ranked order).
    files : ReportFiles
        The tables, plots and report written.
    test_dir : pathlib.Path
        The test folder (``x/`` and ``y/``).
    n_tasks, n_reused : int
        Model x image tasks, and how many of them were reused from an earlier run.
    seconds : float
        Wall time of the whole benchmark.
    scheduler : str
        ``"sync"``, ``"local"`` or the address of the cluster that ran the tasks.
    workers : int
        Worker processes of the local cluster (1 when synchronous).
    """

    out: Path
    ranking: list = field(default_factory=list)
    published: list = field(default_factory=list)
    per_image: list[dict] = field(default_factory=list)
    morphology: list = field(default_factory=list)
    files: Any = None
    test_dir: Path | None = None
    n_tasks: int = 0
    n_reused: int = 0
    seconds: float = 0.0
    scheduler: str = "sync"
    workers: int = 1


def run_benchmark(
    models: Sequence[str] | Sequence[BenchmarkModel] | None = None,
    test: str | os.PathLike | None = None,
    out: str | os.PathLike = DEFAULT_OUT,
    *,
    published: bool = False,
    scheduler: str = "local",
    workers: int | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    task_fn: Callable[[Task], dict] = run_task,
    resolver: Callable | None = None,
    progress: ProgressCallback | None = None,
) -> BenchmarkResult:
    """Rank models on a test set; write tables, plots and the HTML report into ``out``.

    Parameters
    ----------
    models : sequence, optional
        Model references (``predict --model`` values; ``"published"`` = the six BMZ
        models) or already built :class:`~cartocell_bmz.bench.tasks.BenchmarkModel`.
        Default: every package in ``model_packages/``.
    test : path-like, optional
        Folder with ``x/`` and ``y/``. Default: the embedded synthetic test set, written
        to ``OUT/test_set/``.
    out : path-like
        Output folder.
    published : bool
        Add the published figures (real CartoCell test set) as labelled reference rows.
    scheduler : str
        ``"local"``, ``"sync"`` or the address of a Dask scheduler
        (:mod:`cartocell_bmz.bench.scheduling`).
    workers : int, optional
        Worker processes of the local cluster (default: sized to the machine).
    overwrite : bool
        Recompute every output instead of reusing finished ones.
    device : str
        Device of the predict step (``cpu``, ``cuda``, ``auto``).
    thresholds : sequence of float
        IoU thresholds of instance matching (0.5 and 0.75 are needed by the ranking).
    task_fn : callable
        ``Task -> dict``; the per-task function (a seam for tests; must be picklable for
        process workers).
    resolver : callable, optional
        ``value -> resolved model`` (default :func:`cartocell_bmz.bmz.resolve.resolve_model`).
    progress : callable, optional
        ``progress(done, total, message)`` over the tasks that are computed
        (:mod:`cartocell_bmz.io.progress`; finished tasks are reused without a report).

    Returns
    -------
    BenchmarkResult
    """
    from cartocell_bmz.bench import ranking as rk
    from cartocell_bmz.bench.morphology import morphology_table
    from cartocell_bmz.bench.report import collect_montages, write_report
    from cartocell_bmz.io.volumes import ensure_output_dir

    t0 = time.perf_counter()
    scheduler = check_scheduler(scheduler, workers)
    thresholds = tuple(sorted({round(float(t), 6) for t in thresholds} | {0.5, 0.75}))
    out = ensure_output_dir(out)
    # validate the cheap things first: a bad --test must not wait for a model download
    test_dir = Path(test) if test is not None else None
    images = list_test_images(test_dir) if test_dir is not None else None
    if models and all(isinstance(m, BenchmarkModel) for m in models):
        bench_models = list(models)
    else:
        bench_models = resolve_models(expand_model_values(models), resolver=resolver)
    if images is None:
        test_dir = default_test_set(out)
        images = list_test_images(test_dir)
    images = [fingerprint_image(im) for im in images]
    _check_out_names(out, bench_models)

    from cartocell_bmz.run.device import resolve_device

    device = str(resolve_device(device))  # "auto" -> cuda when available; a device not here fails now
    tasks = _make_tasks(out, bench_models, images, overwrite=overwrite, device=device, thresholds=thresholds)
    # finished tasks are read here: a rerun with nothing to do starts no cluster
    done = {i: finished_result(t) for i, t in enumerate(tasks) if not t.overwrite}
    done = {i: r for i, r in done.items() if r is not None}
    todo = [t for i, t in enumerate(tasks) if i not in done]
    plan = plan_workers(scheduler, len(todo), workers=workers, device=device, memory_gb=available_memory_gb())
    todo = [replace(t, torch_threads=plan.torch_threads) for t in todo]
    computed = iter(execute(todo, plan, task_fn, progress=progress) if todo else [])
    results = [done[i] if i in done else next(computed) for i in range(len(tasks))]

    per_image: list[dict] = []
    for r in results:
        per_image += read_metrics(r["metrics"])
    ranking = rk.rank_models(per_image)
    reference = rk.published_rows() if published else []
    records = [m for m in (read_morphology(r["metrics"]) for r in results) if m is not None]
    morphology = morphology_table(records, models=[r.model for r in ranking])
    montages = collect_montages(out, [m.name for m in bench_models], images, per_image)
    files = write_report(out, ranking, per_image, published=reference, montages=montages, morphology=morphology,
                         notes=_notes(test_dir, images, bool(reference)),
                         extra_json={"test_set": [im.name for im in images],
                                     "models": {m.name: m.source for m in bench_models},
                                     "thresholds": list(thresholds)})
    return BenchmarkResult(
        out=out, ranking=ranking, published=reference, per_image=per_image, morphology=morphology, files=files,
        test_dir=test_dir,
        n_tasks=len(tasks), n_reused=sum(bool(r.get("reused")) for r in results),
        seconds=time.perf_counter() - t0, scheduler=plan.scheduler, workers=plan.workers,
    )


def _check_out_names(out: Path, models: Sequence[BenchmarkModel]) -> None:
    from cartocell_bmz.bench.report import PLOTS_DIR

    reserved = {TEST_SET_DIR, PLOTS_DIR}
    for m in models:
        if m.name in reserved:
            raise ConfigError(f"a model may not be named {m.name!r} (an output folder of the benchmark); rename it.")
        target = out / m.name
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{target}: is a file, but the outputs of model {m.name} go there; choose another --out.")


def _make_tasks(out: Path, models: Sequence[BenchmarkModel], images: Sequence[BenchImage], *, overwrite: bool,
                device: str, thresholds: tuple[float, ...]) -> list[Task]:
    """One task per model and image, model after model; a changed package recomputes its tasks."""
    from cartocell_bmz.io.volumes import ensure_output_dir

    tasks = []
    for model in models:
        model_out = ensure_output_dir(out / model.name)
        stale = _record_model(model_out, model)
        for image in images:
            tasks.append(Task(model=model, image=image, out=model_out, overwrite=overwrite or stale,
                              device=device, thresholds=thresholds))
    return tasks


def _record_model(model_out: Path, model: BenchmarkModel) -> bool:
    """Write ``benchmark_model.json``; return True when earlier outputs belong to another package."""
    from cartocell_bmz.io.volumes import atomic_open

    record = {"name": model.name, "source": model.source, "fingerprint": model.fingerprint}
    path = model_out / MODEL_RECORD
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    stale = old is not None and old.get("fingerprint") != model.fingerprint
    if old != record:
        with atomic_open(path) as fh:
            json.dump(record, fh, indent=1)
    return stale


def _notes(test_dir: Path, images: Sequence[BenchImage], reference: bool) -> list[str]:
    """The sentences under the ranking table of the HTML report."""
    from cartocell_bmz.bench.ranking import SOURCE_PUBLISHED

    notes = [
        f"Test set: {test_dir} ({len(images)} images with ground truth).",
        f"Cells evaluated: the Voronoi output ({VORONOI_DIR}/) against y/; channel IoU from the probabilities "
        f"({PROBS_DIR}/) at 0.5.",
        "Figures are means over test images; per-image values are in per_image.csv.",
    ]
    if reference:
        notes.append(f"Rows marked '{SOURCE_PUBLISHED}' are the published figures of the six BMZ CartoCell "
                     "models on the real CartoCell test set (60 cysts), for reference only: they were measured on "
                     "other data and are not ranked together with this benchmark's models.")
    return notes
