"""Where networks run: the one device resolver, CPU threads, denormal flushing.

Training, prediction (packages and training runs) and export all turn a
``--device`` value into a :class:`torch.device` with :func:`resolve_device`.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING, Any, Iterator

from cartocell_bmz.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def resolve_device(device: Any = "auto", *, threads: bool = False) -> "torch.device":
    """A ``--device`` value as a :class:`torch.device`.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` (or ``None``): CUDA when available, else the CPU; ``"cpu"``,
        ``"cuda"``, ``"cuda:N"``, ``"mps"``.
    threads : bool
        On the CPU, also set torch's thread count to :func:`cpu_threads`
        (training does; prediction keeps the caller's setting).

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        An unknown name, or a device that is not available here.

    Examples
    --------
    >>> str(resolve_device("cpu"))
    'cpu'
    """
    import torch

    text = str(device if device is not None else "auto").strip().lower() or "auto"
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if re.fullmatch(r"cuda(:\d+)?", text):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is available here; use --device cpu.")
        idx = int(text.split(":")[1]) if ":" in text else 0
        if idx >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s).")
    elif text == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps: Apple's MPS is not available here; use --device cpu.")
    elif text != "cpu":
        raise ConfigError(f"--device {device!r}: use auto, cpu, cuda or cuda:N.")
    dev = torch.device(text)
    if threads and dev.type == "cpu":
        torch.set_num_threads(cpu_threads())
    return dev


def cpu_threads() -> int:
    """Threads for CPU work: ``OMP_NUM_THREADS`` when set, else every core.

    Examples
    --------
    >>> cpu_threads() >= 1
    True
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


_FLUSH_DEPTH = [0]


@contextlib.contextmanager
def flush_denormal() -> Iterator[None]:
    """Treat denormal floats as zero inside the block (CPU), and restore afterwards.

    Denormal numbers make CPU convolutions many times slower; flushing them is
    a process-wide setting that also changes numpy's results, so it is only on
    while a network runs.  Blocks may nest.
    """
    import torch

    switched = False
    if _FLUSH_DEPTH[0] == 0:
        switched = torch.set_flush_denormal(True)
    _FLUSH_DEPTH[0] += 1
    try:
        yield
    finally:
        _FLUSH_DEPTH[0] -= 1
        if switched and _FLUSH_DEPTH[0] == 0:
            torch.set_flush_denormal(False)


__all__ = ["cpu_threads", "flush_denormal", "resolve_device"]
