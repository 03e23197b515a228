"""Rank models on a test set: predict, post-process and evaluate every (model, image) pair with Dask.

The work is a flat list of independent tasks, one per model and test image. A task
runs the model on ONE image (tiled prediction, watershed, Voronoi: the ``predict``
step, :func:`cartocell_bmz.run.batch.predict_one`), evaluates the Voronoi cells and the
probabilities against the ground truth (:func:`cartocell_bmz.run.evaluate.evaluate_volume`)
and writes the figures to ``OUT/<model>/metrics/<image>.json`` (atomically). It returns
only a small dictionary; the client reads the per-image files when every task is done,
so no volume ever travels through the scheduler and a worker holds one volume's data
at a time.

Reruns are cheap and resumable: a task whose metrics file exists for the same test
image (same file content) and the same model package (same file content) is not run
again, and ``predict_one`` itself skips outputs that are already written. A model
package whose content changed since the last run is recomputed from scratch.

Schedulers
----------
``"local"`` (default)
    A :class:`dask.distributed.LocalCluster` of worker *processes*, one Dask thread each,
    sized to the machine: ``min(cores, tasks)`` workers (fewer when memory is short, one
    when the device is a GPU), and ``cores // workers`` torch threads per worker, so
    workers x torch threads <= cores.
``"sync"``
    Every task in this process, one after the other (debugging, pdb, profiling).
an address (``tcp://host:8786``)
    An existing Dask cluster. Its workers must see the same file system paths.

Output tree ``OUT/``::

    test_set/                    default synthetic test set (when no --test is given)
    <model>/per_image/ ...       what predict writes (probabilities, instances, Voronoi)
    <model>/metrics/<image>.json per-image figures of that model
    <model>/benchmark_model.json the model's source and content fingerprint
    ranking.csv ranking.md ranking.json per_image.csv report.html plots/
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cartocell_bmz.errors import CartoCellError, ConfigError, InputError, ModelError
from cartocell_bmz.io.progress import ProgressCallback, report
from cartocell_bmz.layout import (
    DEFAULT_IOU_THRESHOLDS,
    INSTANCES_DIR,
    LABEL_DIR,
    PROBS_DIR,
    RAW_DIR,
    VORONOI_DIR,
)

#: Default output folder of the command.
DEFAULT_OUT = Path("cartocell_benchmark")
#: Folder (inside OUT) of the default synthetic test set.
TEST_SET_DIR = "test_set"
#: Folder (inside OUT/<model>) of the per-image metrics files.
METRICS_DIR = "metrics"
#: File (inside OUT/<model>) recording which model the outputs belong to.
MODEL_RECORD = "benchmark_model.json"
#: Version of the per-image metrics file format (a different one is recomputed).
METRICS_FORMAT = 1
#: How long to wait for an existing Dask scheduler before giving up.
CONNECT_TIMEOUT = "15s"
#: Seed of the default synthetic test set: the test split of ``PhantomConfig(seed=0)``,
#: the data the packages in model_packages/ were measured on.
DEFAULT_TEST_SEED = 0


class BenchmarkError(CartoCellError):
    """A benchmark task failed for a reason outside the user's input (a worker died...)."""


@dataclass(frozen=True)
class BenchmarkModel:
    """A model taking part in the benchmark.

    Attributes
    ----------
    name : str
        Name in the tables and output folder name (``OUT/<name>/``).
    source : str
        The ``--models`` value it came from.
    ref : Any
        What the predict step accepts as a model (a resolved model or a path).
    fingerprint : str
        sha256 of the package's files: a changed package invalidates earlier outputs.
    """

    name: str
    source: str
    ref: Any
    fingerprint: str = ""


@dataclass(frozen=True)
class BenchImage:
    """One test image and its ground truth."""

    name: str
    raw: Path
    gt: Path
    fingerprint: str = ""


@dataclass(frozen=True)
class Task:
    """One unit of work: one model on one image (everything a worker needs, small)."""

    model: BenchmarkModel
    image: BenchImage
    out: Path
    overwrite: bool = False
    torch_threads: int | None = None
    device: str = "cpu"
    thresholds: tuple[float, ...] = DEFAULT_IOU_THRESHOLDS

    @property
    def metrics_path(self) -> Path:
        return self.out / METRICS_DIR / (Path(self.image.name).stem + ".json")


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced."""

    out: Path
    ranking: list = field(default_factory=list)
    published: list = field(default_factory=list)
    per_image: list[dict] = field(default_factory=list)
    files: Any = None
    test_dir: Path | None = None
    n_tasks: int = 0
    n_reused: int = 0
    seconds: float = 0.0
    scheduler: str = "sync"
    workers: int = 1


# --------------------------------------------------------------------------- fingerprints


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file, or of every file of a folder (names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


# --------------------------------------------------------------------------- test set


def default_test_set(out: str | os.PathLike) -> Path:
    """Write (once) and return the embedded synthetic test set ``OUT/test_set/test``.

    It is the ``test`` split of :class:`~cartocell_bmz.core.phantoms.PhantomConfig` with seed
    :data:`DEFAULT_TEST_SEED` and default sizes: the same cysts every time, on every
    machine, and the ones the packages in ``model_packages/`` were measured on. An
    existing copy is reused when its ``dataset.json`` matches.
    """
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.io.phantom_sets import make_dataset

    base = PhantomConfig(seed=DEFAULT_TEST_SEED)
    config = PhantomConfig(seed=DEFAULT_TEST_SEED, counts={"test": base.counts["test"]})
    root = Path(out) / TEST_SET_DIR
    expected = json.loads(json.dumps({"generator": "cartocell_bmz.core.phantoms", **asdict(config)}))
    try:
        current = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        current = None
    if current != expected:
        make_dataset(root, config)
    return root / "test"


def list_test_images(test_dir: str | os.PathLike) -> list[BenchImage]:
    """Pairs of raw image and ground truth in a test folder with ``x/`` and ``y/``.

    Raises
    ------
    InputError
        The folder is missing, has no ``x/`` or ``y/``, no images, or an image without
        ground truth.
    """
    from cartocell_bmz.io.volumes import list_volumes

    test_dir = Path(test_dir)
    if not test_dir.exists():
        raise InputError(f"{test_dir}: test folder not found.")
    if not test_dir.is_dir():
        raise InputError(f"{test_dir}: --test must be a folder with x/ (images) and y/ (ground-truth labels).")
    for sub, what in ((RAW_DIR, "images"), (LABEL_DIR, "ground-truth labels")):
        if not (test_dir / sub).is_dir():
            raise InputError(f"{test_dir}: has no {sub}/ folder of {what}; a test folder needs x/ and y/.")
    raws = list_volumes(test_dir / RAW_DIR, what="test images")
    missing = [p.name for p in raws if not (test_dir / LABEL_DIR / p.name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"{test_dir / LABEL_DIR}: no ground truth for {missing[0]}{more}; y/ needs the same file names as x/.")
    return [BenchImage(p.name, p, test_dir / LABEL_DIR / p.name, "") for p in raws]


# --------------------------------------------------------------------------- models


def list_local_packages() -> list[str]:
    """Names of the packages in ``model_packages/`` (see :func:`cartocell_bmz.bmz.resolve.local_packages`), sorted."""
    from cartocell_bmz.bmz.resolve import local_packages

    return sorted(local_packages())


def published_model_ids() -> list[str]:
    """The six published CartoCell models' BMZ ids (from :mod:`cartocell_bmz.bmz.known_models`)."""
    from cartocell_bmz.bmz.known_models import KNOWN_MODELS

    return list(KNOWN_MODELS)


def expand_model_values(values: Sequence[str] | None) -> list[str]:
    """``--models`` values -> model references: commas split, ``published`` expanded, duplicates dropped.

    No value means every package in ``model_packages/``.

    Raises
    ------
    ConfigError
        No value and no local package.
    """
    items: list[str] = []
    for v in values or []:
        items += [s.strip() for s in str(v).split(",") if s.strip()]
    if not items:
        items = list_local_packages()
        if not items:
            from cartocell_bmz.bmz.resolve import model_packages_dir

            raise ConfigError(
                f"{model_packages_dir()}: no model packages found; build some (cartocell-bmz package) "
                "or name models with --models."
            )
    out: list[str] = []
    for item in items:
        for v in (published_model_ids() if item.lower() == "published" else [item]):
            if v not in out:
                out.append(v)
    return out


def _resolved_path(resolved) -> Path | None:
    for attr in ("package_dir", "root", "path", "source", "rdf", "rdf_path"):
        value = getattr(resolved, attr, None)
        if value is not None and not callable(value):
            try:
                p = Path(value)
            except TypeError:
                continue
            if p.exists():
                return p
    return None


def _model_name(value: str, resolved) -> str:
    name = getattr(resolved, "name", None)
    if not isinstance(name, str) or not name:
        p = Path(value)
        name = p.parent.name if p.name in ("rdf.yaml", "bioimageio.yaml") else (p.stem if p.suffix else p.name)
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "model"


def resolve_models(values: Sequence[str], *, resolver: Callable | None = None) -> list[BenchmarkModel]:
    """Resolve every model once, here, before any task runs (downloads happen once).

    Parameters
    ----------
    values : sequence of str
        Model references as accepted by ``predict --model``.
    resolver : callable, optional
        ``value -> resolved model`` (default :func:`cartocell_bmz.bmz.resolve.resolve_model`).

    Raises
    ------
    ModelError
        A value cannot be resolved (raised by the resolver).
    ConfigError
        Two values resolve to the same model name.
    """
    if resolver is None:
        from cartocell_bmz.bmz.resolve import resolve_model as resolver
    models: list[BenchmarkModel] = []
    for value in values:
        resolved = resolver(value)
        name = _model_name(value, resolved)
        if any(m.name == name for m in models):
            raise ConfigError(f"two models are both named {name!r} ({value!r} and "
                              f"{next(m.source for m in models if m.name == name)!r}); rename one package.")
        path = _resolved_path(resolved)
        models.append(BenchmarkModel(name=name, source=str(value), ref=resolved,
                                     fingerprint=file_fingerprint(path) if path is not None else str(value)))
    return models


# --------------------------------------------------------------------------- one task


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


def run_task(task: Task, *, predict: Callable[[Task], None] | None = None,
             evaluate: Callable | None = None) -> dict:
    """Predict, post-process and evaluate one model on one image; write its metrics file.

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
    """
    from cartocell_bmz.io.volumes import atomic_open, check_same_shape, read_volume

    t0 = time.perf_counter()
    path = task.metrics_path
    previous = _read_json(path)
    if not task.overwrite and previous is not None and _metrics_valid(previous, task):
        return {"model": task.model.name, "image": task.image.name, "metrics": str(path), "reused": True, "seconds": 0.0}
    # outputs written for another package content or another image of this name: predict again
    stale = previous is not None and (previous.get("model_fingerprint") != task.model.fingerprint
                                      or previous.get("image_fingerprint") != task.image.fingerprint)
    if stale and not task.overwrite:
        task = replace(task, overwrite=True)
    if task.torch_threads:
        import torch

        torch.set_num_threads(int(task.torch_threads))
    (predict or _default_predict)(task)
    name = task.image.name
    vor_path, probs_path = task.out / VORONOI_DIR / name, task.out / PROBS_DIR / name
    for p in (vor_path, probs_path):
        if not p.is_file():
            raise BenchmarkError(f"{p}: the predict step of {task.model.name} wrote no such file for {name}.")
    gt = read_volume(task.image.gt, "labels").data
    pred = read_volume(vor_path, "labels").data
    check_same_shape(pred.shape, gt.shape, vor_path, task.image.gt)
    probs = read_volume(probs_path, "probabilities").data
    rows = (evaluate or _default_evaluate)(pred, gt, probs, tuple(task.thresholds))
    del gt, pred, probs
    doc = {
        "format": METRICS_FORMAT, "model": task.model.name, "image": name,
        "model_fingerprint": task.model.fingerprint, "image_fingerprint": task.image.fingerprint,
        "rows": [{k: _clean(v) for k, v in r.items() if k not in ("model", "image")} for r in rows],
    }
    with atomic_open(path) as fh:
        json.dump(doc, fh, indent=1)
    return {"model": task.model.name, "image": name, "metrics": str(path), "reused": False,
            "seconds": round(time.perf_counter() - t0, 3)}


def _reused(task: Task) -> dict | None:
    """The result of a task whose metrics file is valid, else ``None``."""
    doc = _read_json(task.metrics_path)
    if doc is None or not _metrics_valid(doc, task):
        return None
    return {"model": task.model.name, "image": task.image.name, "metrics": str(task.metrics_path), "reused": True,
            "seconds": 0.0}


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _metrics_valid(doc: Mapping, task: Task) -> bool:
    return (doc.get("format") == METRICS_FORMAT and doc.get("model_fingerprint") == task.model.fingerprint
            and doc.get("image_fingerprint") == task.image.fingerprint and bool(doc.get("rows"))
            and {round(float(r["threshold"]), 6) for r in doc["rows"]} >= {round(t, 6) for t in task.thresholds})


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Per-image rows (with ``model`` and ``image``) of one metrics file."""
    doc = json.loads(Path(path).read_text())
    return [{"model": doc["model"], "image": doc["image"], **r} for r in doc["rows"]]


# --------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class Plan:
    """How the tasks run: scheduler, number of worker processes, torch threads per worker."""

    scheduler: str
    workers: int
    torch_threads: int | None


def plan_workers(scheduler: str, n_tasks: int, *, workers: int | None = None, device: str = "cpu",
                 cores: int | None = None, memory_gb: float | None = None, gb_per_worker: float = 2.0) -> Plan:
    """Size the local cluster to the machine (pure; see the module docstring).

    Examples
    --------
    >>> plan_workers("local", 24, cores=2, memory_gb=16)
    Plan(scheduler='local', workers=2, torch_threads=1)
    >>> plan_workers("local", 3, cores=16, memory_gb=64)
    Plan(scheduler='local', workers=3, torch_threads=5)
    >>> plan_workers("local", 24, cores=16, memory_gb=5)
    Plan(scheduler='local', workers=2, torch_threads=8)
    >>> plan_workers("sync", 24, cores=8)
    Plan(scheduler='sync', workers=1, torch_threads=8)
    """
    cores = max(1, int(cores or os.cpu_count() or 1))
    if scheduler == "sync":
        return Plan("sync", 1, cores)
    if scheduler != "local":
        return Plan(scheduler, int(workers or 0), None)
    if workers is None:
        by_memory = int(memory_gb // gb_per_worker) if memory_gb else cores
        workers = 1 if str(device).startswith("cuda") else min(cores, max(1, n_tasks), max(1, by_memory))
    workers = max(1, int(workers))
    return Plan("local", workers, max(1, cores // workers))


def _available_memory_gb() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().available / 2**30
    except Exception:  # pragma: no cover - psutil comes with distributed
        return None


def execute(tasks: Sequence[Task], plan: Plan, task_fn: Callable[[Task], dict] = run_task, *,
            progress: ProgressCallback | None = None) -> list[dict]:
    """Run the tasks with the planned scheduler; return their small result dictionaries.

    ``progress(done, total, message)`` (:mod:`cartocell_bmz.io.progress`) hears of each
    finished task, ``"<model> / <image>"``, in the order they finish.

    Raises
    ------
    ConfigError
        The scheduler address cannot be reached.
    BenchmarkError
        A worker died while running a task.
    CartoCellError
        The first task that failed with an expected error (the others are cancelled).
    """
    results: list[dict] = []
    if plan.scheduler == "sync":
        report(progress, 0, len(tasks), "benchmark")
        for task in tasks:
            results.append(task_fn(task))
            report(progress, len(results), len(tasks), f"{task.model.name} / {task.image.name}")
        return results

    from distributed import Client, as_completed

    cluster = None
    try:
        if plan.scheduler == "local":
            from distributed import LocalCluster

            cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
            client = Client(cluster)
        else:
            try:
                client = Client(plan.scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(f"cannot reach the Dask scheduler at {plan.scheduler!r} ({exc}); "
                                  "check the address or use --scheduler local.") from None
        with client:
            futures = client.map(task_fn, list(tasks), pure=False, key=[_task_key(t) for t in tasks])
            by_key = {f.key: t for f, t in zip(futures, tasks)}
            report(progress, 0, len(tasks), "benchmark")
            for fut in as_completed(futures):
                task = by_key[fut.key]
                try:
                    results.append(fut.result())
                except CartoCellError:
                    client.cancel(futures)
                    raise
                except Exception as exc:
                    client.cancel(futures)
                    if type(exc).__name__ == "KilledWorker":
                        raise BenchmarkError(
                            f"a Dask worker died running {task.model.name} on {task.image.name} "
                            "(out of memory?); rerun with fewer --workers.") from None
                    raise
                report(progress, len(results), len(tasks), f"{task.model.name} / {task.image.name}")
    finally:
        if cluster is not None:
            cluster.close()
    order = {(t.model.name, t.image.name): i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r["model"], r["image"])])


def _task_key(task: Task) -> str:
    digest = hashlib.sha1(f"{task.out}|{task.image.name}".encode()).hexdigest()[:12]
    return f"cartocell-{task.model.name}-{digest}"


# --------------------------------------------------------------------------- the benchmark


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
        models) or already built :class:`BenchmarkModel`. Default: every package in
        ``model_packages/``.
    test : path-like, optional
        Folder with ``x/`` and ``y/``. Default: the embedded synthetic test set, written
        to ``OUT/test_set/``.
    out : path-like
        Output folder.
    published : bool
        Add the published figures (real CartoCell test set) as labelled reference rows.
    scheduler : str
        ``"local"``, ``"sync"`` or the address of a Dask scheduler.
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
    from cartocell_bmz.bench.report import write_report
    from cartocell_bmz.io.volumes import ensure_output_dir

    t0 = time.perf_counter()
    scheduler = _check_scheduler(scheduler, workers)
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
    images = [BenchImage(im.name, im.raw, im.gt, _image_fingerprint(im)) for im in images]
    _check_out_names(out, bench_models, test_dir)

    from cartocell_bmz.run.device import resolve_device

    device = str(resolve_device(device))  # "auto" -> cuda when available; a device not here fails now
    tasks = []
    for model in bench_models:
        model_out = ensure_output_dir(out / model.name)
        stale = _record_model(model_out, model)
        for image in images:
            tasks.append(Task(model=model, image=image, out=model_out, overwrite=overwrite or stale,
                              device=device, thresholds=thresholds))
    # finished tasks are read here: a rerun with nothing to do starts no cluster
    done = {i: _reused(t) for i, t in enumerate(tasks) if not t.overwrite}
    done = {i: r for i, r in done.items() if r is not None}
    todo = [t for i, t in enumerate(tasks) if i not in done]
    plan = plan_workers(scheduler, len(todo), workers=workers, device=device, memory_gb=_available_memory_gb())
    todo = [replace(t, torch_threads=plan.torch_threads) for t in todo]
    computed = iter(execute(todo, plan, task_fn, progress=progress) if todo else [])
    results = [done[i] if i in done else next(computed) for i in range(len(tasks))]

    per_image: list[dict] = []
    for r in results:
        per_image += read_metrics(r["metrics"])
    ranking = rk.rank_models(per_image)
    reference = rk.published_rows() if published else []
    montages = _montages(bench_models, images, per_image, out)
    notes = [
        f"Test set: {test_dir} ({len(images)} images with ground truth).",
        f"Cells evaluated: the Voronoi output ({VORONOI_DIR}/) against y/; channel IoU from the probabilities "
        f"({PROBS_DIR}/) at 0.5.",
        "Figures are means over test images; per-image values are in per_image.csv.",
    ]
    if reference:
        notes.append(f"Rows marked '{rk.SOURCE_PUBLISHED}' are the published figures of the six BMZ CartoCell "
                     "models on the real CartoCell test set (60 cysts), for reference only: they were measured on "
                     "other data and are not ranked together with this benchmark's models.")
    files = write_report(out, ranking, per_image, published=reference, montages=montages, notes=notes,
                         extra_json={"test_set": [im.name for im in images],
                                     "models": {m.name: m.source for m in bench_models},
                                     "thresholds": list(thresholds)})
    return BenchmarkResult(
        out=out, ranking=ranking, published=reference, per_image=per_image, files=files, test_dir=test_dir,
        n_tasks=len(tasks), n_reused=sum(bool(r.get("reused")) for r in results),
        seconds=time.perf_counter() - t0, scheduler=plan.scheduler, workers=plan.workers,
    )


def _check_scheduler(scheduler: str, workers: int | None) -> str:
    value = str(scheduler or "local").strip()
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}.")
    if value.lower() in ("local", "sync", "synchronous"):
        return "sync" if value.lower().startswith("sync") else "local"
    if "://" in value or (":" in value and value.rsplit(":", 1)[1].isdigit()):
        if workers is not None:
            raise ConfigError("--workers applies to the local cluster only; an existing cluster keeps its workers.")
        return value
    raise ConfigError(f"--scheduler must be 'local', 'sync' or a Dask scheduler address like tcp://host:8786, "
                      f"got {scheduler!r}.")


def _image_fingerprint(image: BenchImage) -> str:
    return hashlib.sha256((file_fingerprint(image.raw) + file_fingerprint(image.gt)).encode()).hexdigest()


def _check_out_names(out: Path, models: Sequence[BenchmarkModel], test_dir: Path) -> None:
    reserved = {TEST_SET_DIR, "plots"}
    for m in models:
        if m.name in reserved:
            raise ConfigError(f"a model may not be named {m.name!r} (an output folder of the benchmark); rename it.")
        target = out / m.name
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{target}: is a file, but the outputs of model {m.name} go there; choose another --out.")


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


def _montages(models: Sequence[BenchmarkModel], images: Sequence[BenchImage], per_image: Sequence[Mapping],
              out: Path) -> list:
    """Mid-slice montages of the first test image, one per model (read here, after the tasks)."""
    from cartocell_bmz.bench.report import Montage
    from cartocell_bmz.io.volumes import read_volume

    if not images:
        return []
    image = images[0]
    raw = read_volume(image.raw, "image")
    gt = read_volume(image.gt, "labels").data
    result = []
    for m in models:
        pred_path = out / m.name / VORONOI_DIR / image.name
        if not pred_path.is_file():
            pred_path = out / m.name / INSTANCES_DIR / image.name
            if not pred_path.is_file():
                continue
        pred = read_volume(pred_path, "labels").data
        f1 = next((r.get("f1") for r in per_image if r["model"] == m.name and r["image"] == image.name
                   and abs(float(r["threshold"]) - 0.5) < 1e-6), None)
        caption = f"F1@0.5 = {f1:.3f}" if isinstance(f1, (int, float)) else ""
        result.append(Montage(m.name, image.name, raw.data, gt, pred, tuple(raw.spacing), caption))
    return result
