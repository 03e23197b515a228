"""How batch work is spread: the ``--scheduler`` value and the number of workers (pure, no Dask).

Schedulers
----------
``"local"``
    A :class:`dask.distributed.LocalCluster` of worker *processes*, one Dask thread each,
    sized to the machine: ``min(cores, tasks)`` workers (fewer when memory is short), and
    ``cores // workers`` torch threads per worker, so workers x torch threads <= cores.
    On CUDA (``--device cuda`` or ``auto`` with a GPU): one worker per GPU, each pinned to
    its own device (``CUDA_VISIBLE_DEVICES``).
``"sync"``
    Every task in this process, one after the other (debugging, pdb, profiling).
an address (``tcp://host:8786``)
    An existing Dask cluster. Its workers must see the same file system paths.
``"auto"`` (the default of the batch commands)
    ``"local"`` when more than one task is to run, else ``"sync"``; the environment
    variable ``CARTOCELL_BMZ_SCHEDULER`` replaces it (a lab sets its cluster's address there).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from cartocell_bmz.errors import ConfigError

#: Environment variable naming the scheduler used when a batch command is given none.
SCHEDULER_ENV = "CARTOCELL_BMZ_SCHEDULER"
#: ``--scheduler`` and ``--workers`` of the batch commands (one text for every command).
SCHEDULER_HELP = ("Where the volumes run: 'local' (a Dask cluster of worker processes sized to this machine, one "
                  "per GPU on CUDA), 'sync' (one after the other in this process, for debugging) or the address "
                  "of a running Dask scheduler (tcp://host:8786). Default: local when more than one volume is to "
                  f"compute, else in this process; ${SCHEDULER_ENV} replaces the default.")
WORKERS_HELP = "Worker processes of the local cluster (default: sized to cores, memory and GPUs)."


@dataclass(frozen=True)
class Plan:
    """How the tasks run.

    Attributes
    ----------
    scheduler : str
        ``"local"``, ``"sync"`` or a scheduler address.
    workers : int
        Worker processes of a local cluster (1 in sync mode, 0 when an existing cluster decides).
    torch_threads : int or None
        Torch threads per worker (``None``: leave the worker's setting).
    gpus : int
        With a local cluster on several GPUs: worker ``i`` is pinned to GPU ``i % gpus``
        (0: no pinning).
    """

    scheduler: str
    workers: int
    torch_threads: int | None
    gpus: int = 0


def check_scheduler(scheduler: str | None, workers: int | None) -> str:
    """The ``--scheduler`` value as ``"local"``, ``"sync"``, ``"auto"`` or a scheduler address.

    ``None`` is ``"local"`` (what the benchmark has always done); the batch commands
    use :func:`choose_scheduler`, which reads ``None`` as ``"auto"``.

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
    if value.lower() in ("local", "sync", "synchronous", "auto"):
        return "sync" if value.lower().startswith("sync") else value.lower()
    if "://" in value or (":" in value and value.rsplit(":", 1)[1].isdigit()):
        if workers is not None:
            raise ConfigError("--workers applies to the local cluster only; an existing cluster keeps its workers.")
        return value
    raise ConfigError(f"--scheduler must be 'local', 'sync' or a Dask scheduler address like tcp://host:8786, "
                      f"got {scheduler!r}.")


def choose_scheduler(scheduler: str | None, workers: int | None, n_tasks: int) -> str:
    """The scheduler of a batch command with ``n_tasks`` volumes to compute.

    ``None`` reads :data:`SCHEDULER_ENV` (default ``"auto"``); ``"auto"`` is a local
    cluster for more than one task, else this process. An explicit ``workers`` with
    ``"auto"`` asks for the local cluster whenever there is work.

    Raises
    ------
    ConfigError
        See :func:`check_scheduler`.

    Examples
    --------
    >>> choose_scheduler("auto", None, 16), choose_scheduler("auto", None, 1), choose_scheduler("sync", None, 16)
    ('local', 'sync', 'sync')
    """
    if scheduler is None:
        scheduler = os.environ.get(SCHEDULER_ENV, "").strip() or "auto"
    value = check_scheduler(scheduler, workers)
    if value != "auto":
        return value
    return "local" if n_tasks > 1 or (workers is not None and workers > 1 and n_tasks > 0) else "sync"


def plan_workers(scheduler: str, n_tasks: int, *, workers: int | None = None, device: str = "cpu",
                 cores: int | None = None, memory_gb: float | None = None, gb_per_worker: float = 2.0,
                 gpus: int | None = None) -> Plan:
    """Size the local cluster to the machine (see the module docstring).

    Parameters
    ----------
    scheduler : str
        From :func:`check_scheduler` or :func:`choose_scheduler` (``"auto"`` is decided here).
    n_tasks : int
        Tasks to run.
    workers : int, optional
        Worker processes asked for (default: sized to cores and memory; on CUDA one per GPU).
    device : str
        Device of the tasks: ``"cuda"`` (every GPU) gets one worker per GPU; ``"cuda:N"``
        one worker on that GPU.
    cores, memory_gb : optional
        Cores and available memory (default: this machine's cores; memory not limiting).
    gb_per_worker : float
        Memory one worker needs.
    gpus : int, optional
        GPUs of this machine (default: counted by torch when ``device`` is ``"cuda"``).

    Returns
    -------
    Plan

    Examples
    --------
    >>> plan_workers("local", 24, cores=2, memory_gb=16)
    Plan(scheduler='local', workers=2, torch_threads=1, gpus=0)
    >>> plan_workers("local", 3, cores=16, memory_gb=64)
    Plan(scheduler='local', workers=3, torch_threads=5, gpus=0)
    >>> plan_workers("local", 24, cores=16, memory_gb=5)
    Plan(scheduler='local', workers=2, torch_threads=8, gpus=0)
    >>> plan_workers("sync", 24, cores=8)
    Plan(scheduler='sync', workers=1, torch_threads=8, gpus=0)
    >>> plan_workers("local", 24, cores=16, device="cuda", gpus=4)
    Plan(scheduler='local', workers=4, torch_threads=4, gpus=4)
    """
    cores = max(1, int(cores or os.cpu_count() or 1))
    if scheduler == "auto":
        scheduler = "local" if n_tasks > 1 else "sync"
    if scheduler == "sync":
        return Plan("sync", 1, cores)
    if scheduler != "local":
        return Plan(scheduler, int(workers or 0), None)
    device = str(device)
    n_gpus = 0
    if re.fullmatch(r"cuda", device):
        n_gpus = max(1, int(gpus if gpus is not None else gpu_count()))
    if workers is None:
        by_memory = int(memory_gb // gb_per_worker) if memory_gb else cores
        if device.startswith("cuda"):
            workers = min(n_gpus or 1, max(1, n_tasks))
        else:
            workers = min(cores, max(1, n_tasks), max(1, by_memory))
    workers = max(1, int(workers))
    return Plan("local", workers, max(1, cores // workers), n_gpus if n_gpus > 1 else 0)


def gpu_count() -> int:
    """CUDA devices torch sees here (0 without torch or CUDA)."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # pragma: no cover - torch without CUDA support
        return 0


def available_memory_gb() -> float | None:
    """Memory available on this machine in GiB (``None`` when it cannot be read)."""
    try:
        import psutil

        return psutil.virtual_memory().available / 2**30
    except Exception:  # pragma: no cover - psutil comes with distributed
        return None


__all__ = ["Plan", "SCHEDULER_ENV", "SCHEDULER_HELP", "WORKERS_HELP", "available_memory_gb", "check_scheduler", "choose_scheduler", "gpu_count",
           "plan_workers"]
