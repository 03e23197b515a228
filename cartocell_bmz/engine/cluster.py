"""Run independent tasks with a :class:`~cartocell_bmz.engine.plan.Plan`: a Dask cluster, or in turn here.

:func:`map_tasks` is the one loop every batch command runs its volumes through
(``predict``, ``pseudo-label``, ``measure``, ``crop``, the pipeline, the benchmark):

* results come back in the order of the tasks, whatever order they finish in;
* ``progress(done, total, message)`` (:mod:`cartocell_bmz.io.progress`) hears of each
  finished task in the order they finish;
* the first task failing with an expected error (:class:`~cartocell_bmz.errors.CartoCellError`)
  cancels the others and is raised as it is; a worker process that dies (out of memory,
  killed) is :class:`WorkerLostError`, naming the task.

Tasks must be small to send (paths, settings) and write their own results, atomically,
so that nothing large travels through the scheduler and a killed worker loses only the
task it was running. A task function runs in a worker *process*; what it caches at module
level (a loaded model) is kept for the next task of the same worker.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from typing import Any, Callable, Iterator, Sequence

from cartocell_bmz.engine.plan import Plan
from cartocell_bmz.errors import CartoCellError, ConfigError
from cartocell_bmz.io.progress import ProgressCallback, report

#: How long to wait for an existing Dask scheduler before giving up.
CONNECT_TIMEOUT = "15s"


class WorkerLostError(CartoCellError):
    """A Dask worker process died while running a task (out of memory, killed).

    Attributes
    ----------
    task : object
        The task it was running.
    """

    def __init__(self, message: str, task: Any = None) -> None:
        super().__init__(message)
        self.task = task


def map_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], plan: Plan, *, title: str = "tasks",
              describe: Callable[[Any], str] = str, keys: Sequence[str] | None = None,
              progress: ProgressCallback | None = None,
              on_result: Callable[[Any, Any], None] | None = None) -> list[Any]:
    """``[fn(t) for t in tasks]``, run as ``plan`` says (see the module docstring).

    Parameters
    ----------
    fn : callable
        One task -> its (small) result; importable by the workers (a module-level function
        or a :func:`functools.partial` of one).
    tasks : sequence
        Small, picklable task descriptions.
    plan : Plan
        From :func:`~cartocell_bmz.engine.plan.plan_workers`. On a local cluster each
        worker first sets its torch threads to ``plan.torch_threads`` (``None``: torch is left alone).
    title : str
        The first progress message (``progress(0, total, title)``) and the prefix of the Dask keys.
    describe : callable
        A task's name in progress messages and errors.
    keys : sequence of str, optional
        Dask keys of the tasks (default: ``title``, the position and a token of this call).
    progress : callable, optional
        ``progress(done, total, describe(task))`` per finished task.
    on_result : callable, optional
        ``on_result(task, result)`` in this process as each task finishes (before its progress
        report), e.g. to record it at once: what a later failure stops is only the rest.

    Returns
    -------
    list
        The results, in the order of ``tasks``.

    Raises
    ------
    ConfigError
        The scheduler address cannot be reached.
    WorkerLostError
        A worker died while running a task.
    CartoCellError
        The first task that failed with an expected error (the others are cancelled).
    """
    tasks = list(tasks)
    if plan.scheduler == "sync":
        results = []
        report(progress, 0, len(tasks), title)
        for task in tasks:
            results.append(fn(task))
            if on_result is not None:
                on_result(task, results[-1])
            report(progress, len(results), len(tasks), describe(task))
        return results
    if not tasks:
        return []
    if keys is None:
        token = uuid.uuid4().hex[:8]
        keys = [f"cartocell-{title}-{i}-{token}" for i in range(len(tasks))]
    if plan.scheduler == "local" and plan.torch_threads:
        fn = functools.partial(run_with_threads, fn, int(plan.torch_threads))
    with dask_client(plan) as client:
        return _gather(client, fn, tasks, list(keys), title, describe, progress, on_result)


def run_with_threads(fn: Callable[[Any], Any], threads: int, task: Any) -> Any:
    """``fn(task)`` with torch's CPU threads set to ``threads`` first (a worker's share of the cores).

    Dask's nanny starts workers with ``OMP_NUM_THREADS=1``, which the OpenMP runtime has
    read before any task runs, so the count is set through torch itself (imported here).
    """
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(task)


@contextlib.contextmanager
def dask_client(plan: Plan) -> Iterator:
    """A client of a new local cluster (closed at the end) or of the cluster at ``plan.scheduler``.

    Raises
    ------
    ConfigError
        The address cannot be reached within :data:`CONNECT_TIMEOUT`.
    """
    from distributed import Client

    cluster = None
    try:
        if plan.scheduler == "local":
            cluster = local_cluster(plan)
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


def local_cluster(plan: Plan) -> Any:
    """A local cluster of ``plan.workers`` processes with one Dask thread each.

    With ``plan.gpus`` (several GPUs), worker ``i`` sees only GPU ``i % gpus``
    (``CUDA_VISIBLE_DEVICES``), so ``cuda`` in a task is its own device.
    """
    if not plan.gpus:
        from distributed import LocalCluster

        return LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True,
                            dashboard_address=None, silence_logs=40)
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {f"gpu{i % plan.gpus}-{i}": {"cls": Nanny, "options": {
        "nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": str(i % plan.gpus)}}} for i in range(plan.workers)}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40)


def _gather(client, fn: Callable[[Any], Any], tasks: list, keys: list[str], title: str,
            describe: Callable[[Any], str], progress: ProgressCallback | None,
            on_result: Callable[[Any, Any], None] | None) -> list[Any]:
    """Submit every task, collect the results as they finish; the first failure cancels the rest."""
    from distributed import as_completed

    futures = client.map(fn, tasks, pure=False, key=keys)
    position = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(tasks)
    done = 0
    report(progress, 0, len(tasks), title)
    for fut in as_completed(futures):
        i = position[fut.key]
        try:
            results[i] = fut.result()
        except CartoCellError:
            client.cancel(futures)
            raise
        except Exception as exc:
            client.cancel(futures)
            if type(exc).__name__ == "KilledWorker":
                raise WorkerLostError(f"a Dask worker died running {describe(tasks[i])} (out of memory or killed); the "
                                      "finished results are kept: rerun to complete the rest (with fewer --workers "
                                      "if memory ran out).", tasks[i]) from None
            raise
        if on_result is not None:
            on_result(tasks[i], results[i])
        done += 1
        report(progress, done, len(tasks), describe(tasks[i]))
    return results


__all__ = ["CONNECT_TIMEOUT", "WorkerLostError", "dask_client", "local_cluster", "map_tasks", "run_with_threads"]
