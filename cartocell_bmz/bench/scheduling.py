"""Where the benchmark's tasks run: plan the workers, then run the tasks with Dask or in turn.

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

The tasks are independent and small (:class:`~cartocell_bmz.bench.tasks.Task`); their
results are small dictionaries, returned in the order of the tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from cartocell_bmz.bench.tasks import BenchmarkError, Task, run_task
from cartocell_bmz.errors import CartoCellError, ConfigError
from cartocell_bmz.io.progress import ProgressCallback, report

#: How long to wait for an existing Dask scheduler before giving up.
CONNECT_TIMEOUT = "15s"


@dataclass(frozen=True)
class Plan:
    """How the tasks run: scheduler, number of worker processes, torch threads per worker."""

    scheduler: str
    workers: int
    torch_threads: int | None


def check_scheduler(scheduler: str, workers: int | None) -> str:
    """The ``--scheduler`` value as ``"local"``, ``"sync"`` or a scheduler address.

    Raises
    ------
    ConfigError
        An unknown scheduler, ``workers`` below 1, or ``workers`` with an existing cluster.

    Examples
    --------
    >>> check_scheduler("Synchronous", None), check_scheduler("tcp://host:8786", None)
    ('sync', 'tcp://host:8786')
    """
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


def available_memory_gb() -> float | None:
    """Memory available on this machine in GiB (``None`` when it cannot be read)."""
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
            report(progress, len(results), len(tasks), _describe(task))
        return results
    with _dask_client(plan) as client:
        results = _gather(client, tasks, task_fn, progress)
    order = {(t.model.name, t.image.name): i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order[(r["model"], r["image"])])


@contextlib.contextmanager
def _dask_client(plan: Plan) -> Iterator:
    """A client of a new local cluster (closed at the end) or of the cluster at ``plan.scheduler``."""
    from distributed import Client

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
            yield client
    finally:
        if cluster is not None:
            cluster.close()


def _gather(client, tasks: Sequence[Task], task_fn: Callable[[Task], dict],
            progress: ProgressCallback | None) -> list[dict]:
    """Submit every task, collect the results as they finish; the first failure cancels the rest."""
    from distributed import as_completed

    results: list[dict] = []
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
        report(progress, len(results), len(tasks), _describe(task))
    return results


def _describe(task: Task) -> str:
    return f"{task.model.name} / {task.image.name}"


def _task_key(task: Task) -> str:
    digest = hashlib.sha1(f"{task.out}|{task.image.name}".encode()).hexdigest()[:12]
    return f"cartocell-{task.model.name}-{digest}"
