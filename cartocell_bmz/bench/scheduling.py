"""Where the benchmark's tasks run: the engine of every batch command (:mod:`cartocell_bmz.engine`).

The scheduler values, the sizing of the workers and the cluster are the engine's
(:mod:`cartocell_bmz.engine.plan`, :mod:`cartocell_bmz.engine.cluster`); this module
adds what is the benchmark's own: its tasks' keys and names, and a dead worker as a
:class:`~cartocell_bmz.bench.tasks.BenchmarkError`.

The tasks are independent and small (:class:`~cartocell_bmz.bench.tasks.Task`); their
results are small dictionaries, returned in the order of the tasks.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from cartocell_bmz.bench.tasks import BenchmarkError, Task, run_task
from cartocell_bmz.engine.cluster import WorkerLostError, map_tasks
from cartocell_bmz.engine.plan import Plan, available_memory_gb, check_scheduler, plan_workers
from cartocell_bmz.io.progress import ProgressCallback


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
    try:
        return map_tasks(task_fn, tasks, plan, title="benchmark", describe=_describe,
                         keys=[_task_key(t) for t in tasks], progress=progress)
    except WorkerLostError as exc:
        task = exc.task
        raise BenchmarkError(f"a Dask worker died running {task.model.name} on {task.image.name} "
                             "(out of memory?); rerun with fewer --workers.") from None


def _describe(task: Task) -> str:
    return f"{task.model.name} / {task.image.name}"


def _task_key(task: Task) -> str:
    digest = hashlib.sha1(f"{task.out}|{task.image.name}".encode()).hexdigest()[:12]
    return f"cartocell-{task.model.name}-{digest}"


__all__ = ["Plan", "available_memory_gb", "check_scheduler", "execute", "plan_workers"]
