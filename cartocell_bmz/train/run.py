"""The training run folder: its file names, reading and checking it, rebuilding its network.

The one owner of the folder ``cartocell-bmz train`` writes (``docs/DEVELOPING.md``,
"Contracts")::

    RUN/config.json            the full run configuration
    RUN/model.json             {"arch", "callable", "source", "kwargs", "divisor", "channels",
                                "target_mode", "n_parameters"}
    RUN/checkpoints/best.pt    state dict with the lowest validation loss
    RUN/checkpoints/last.pt    state dict of the last epoch
    RUN/checkpoints/resume.pt  optimizer, scheduler, epoch, RNG (the commit point)
    RUN/train_log.csv, RUN/charts/, RUN/status.json

:func:`read_run` checks a folder and returns a :class:`TrainingRun`;
:func:`load_network` is the single way to build the network of a run from
``model.json`` and a checkpoint; :func:`fingerprint` names its weights.
Writing stays with the training loop (:mod:`cartocell_bmz.train.loop`), which
uses the file names defined here.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from cartocell_bmz.errors import ConfigError, ModelError
from cartocell_bmz.layout import CHANNELS

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: File and folder names inside a run folder.
CONFIG_JSON = "config.json"
MODEL_JSON = "model.json"
STATUS_JSON = "status.json"
TRAIN_LOG_CSV = "train_log.csv"
CHARTS_DIR = "charts"
CHECKPOINTS_DIR = "checkpoints"
BEST_PT = "best.pt"
LAST_PT = "last.pt"
RESUME_PT = "resume.pt"
#: Checkpoints a network can be loaded from, by name.
CHECKPOINTS: dict[str, str] = {"best": BEST_PT, "last": LAST_PT}

#: Files a complete training run folder holds (relative to RUN/): what packaging needs.
RUN_REQUIRED: tuple[str, ...] = (MODEL_JSON, CONFIG_JSON, STATUS_JSON, f"{CHECKPOINTS_DIR}/{BEST_PT}")
#: Fields ``model.json`` must have; ``callable`` may be left out of a run that is only
#: predicted with (it is the architecture's own).
MODEL_FIELDS: tuple[str, ...] = ("arch", "callable", "kwargs", "divisor", "channels")


@dataclass(frozen=True)
class TrainingRun:
    """What a training run folder holds (see ``docs/DEVELOPING.md``).

    Attributes
    ----------
    path : pathlib.Path
        The run folder.
    arch, callable : str
        Registry name and class name of the architecture.
    source : pathlib.Path
        The self-contained architecture source file.
    kwargs : dict
        Constructor arguments of the network.
    divisor : tuple of 3 int
        Input sizes ``(z, y, x)`` must be multiples of these.
    target_mode : str
        Definition of the B, C, M training targets.
    n_parameters : int
        Number of network parameters.
    config, status : dict
        ``config.json`` and ``status.json``.
    weights : pathlib.Path
        ``checkpoints/best.pt``.
    """

    path: Path
    arch: str
    callable: str
    source: Path
    kwargs: dict[str, Any]
    divisor: tuple[int, int, int]
    target_mode: str
    n_parameters: int
    config: dict[str, Any]
    status: dict[str, Any]
    weights: Path

    def checkpoint(self, name: str = "best") -> Path:
        """Path of the ``"best"`` or ``"last"`` checkpoint."""
        return checkpoint_path(self.path, name)


def checkpoint_path(run_dir: str | os.PathLike, name: str = "best") -> Path:
    """``RUN/checkpoints/best.pt`` or ``last.pt``.

    Examples
    --------
    >>> checkpoint_path("RUN", "last").as_posix()
    'RUN/checkpoints/last.pt'
    """
    if name not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be 'best' or 'last', got {name!r}.")
    return Path(run_dir) / CHECKPOINTS_DIR / CHECKPOINTS[name]


def is_training_run(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run folder (a folder holding ``model.json``).

    Examples
    --------
    >>> is_training_run("no/such/folder")
    False
    """
    p = Path(path)
    return p.is_dir() and (p / MODEL_JSON).is_file()


def read_run(run_dir: str | os.PathLike, *, complete: bool = True) -> TrainingRun:
    """Read and check a training run folder.

    Parameters
    ----------
    run_dir : path-like
        The folder ``cartocell-bmz train`` wrote.
    complete : bool
        ``True`` (packaging): every file of :data:`RUN_REQUIRED` must be there.
        ``False`` (prediction): ``model.json`` and ``checkpoints/best.pt`` are
        enough; ``config.json`` and ``status.json`` are read when present.

    Returns
    -------
    TrainingRun

    Raises
    ------
    ModelError
        One sentence naming the missing or broken file (or field) of the run.
    """
    from cartocell_bmz import networks

    run = Path(run_dir)
    if not run.exists():
        raise ModelError(f"{run}: training run folder not found.")
    if not run.is_dir():
        raise ModelError(f"{run}: not a folder; give the folder written by `cartocell-bmz train`.")
    required = RUN_REQUIRED if complete else (MODEL_JSON, f"{CHECKPOINTS_DIR}/{BEST_PT}")
    for name in required:
        if not (run / name).is_file():
            raise ModelError(f"{run / name}: missing; {run} is not a complete training run folder.")
    model = _read_json(run / MODEL_JSON)
    config = _read_json(run / CONFIG_JSON) if complete or (run / CONFIG_JSON).is_file() else {}
    status = _read_json(run / STATUS_JSON) if complete or (run / STATUS_JSON).is_file() else {}
    for key in MODEL_FIELDS:
        if key not in model and (complete or key != "callable"):
            raise ModelError(f"{run / MODEL_JSON}: has no {key!r} field; is it from `cartocell-bmz train`?")
    if tuple(model["channels"]) != CHANNELS:
        raise ModelError(f"{run / MODEL_JSON}: channels {model['channels']} differ from CartoCell's {list(CHANNELS)}.")
    try:
        spec = networks.get_spec(model["arch"])
        kwargs = networks.resolve_kwargs(model["arch"], model["kwargs"])
    except ConfigError as exc:
        raise ModelError(f"{run / MODEL_JSON}: {exc}") from None
    if model.get("callable", spec.callable) != spec.callable:
        raise ModelError(
            f"{run / MODEL_JSON}: callable {model['callable']!r} is not {spec.callable!r} of architecture {spec.name!r}."
        )
    source = run / str(model.get("source", spec.source))
    if not source.is_file():
        source = networks.source_path(spec.name)
    divisor = networks.divisor(spec.name, kwargs)
    try:
        declared = [int(d) for d in model["divisor"]]
    except (TypeError, ValueError):
        declared = None
    if declared != list(divisor):
        raise ModelError(
            f"{run / MODEL_JSON}: divisor {model['divisor']} differs from {list(divisor)} of its kwargs; "
            "the run folder is inconsistent."
        )
    return TrainingRun(
        path=run, arch=spec.name, callable=spec.callable, source=source, kwargs=kwargs,
        divisor=divisor,  # type: ignore[arg-type]
        target_mode=str(model.get("target_mode", "unknown")),
        n_parameters=int(model.get("n_parameters", 0)), config=config, status=status,
        weights=run / CHECKPOINTS_DIR / BEST_PT,
    )


def load_network(run: TrainingRun | str | os.PathLike, checkpoint: str = "best", *,
                 device: Any = "cpu") -> "torch.nn.Module":
    """The run's network with the weights of one checkpoint, in eval mode.

    The network class comes from the run's architecture source file, built
    with the kwargs of ``model.json``; the checkpoint is loaded with
    ``weights_only=True`` (a pickle that would run code is refused).

    Parameters
    ----------
    run : TrainingRun or path-like
        A run (:func:`read_run`), or its folder (read with ``complete=False``).
    checkpoint : {"best", "last"}
        Which weights.
    device : str or torch.device
        Where the network is put (:func:`~cartocell_bmz.run.device.resolve_device`).

    Raises
    ------
    ModelError
        The checkpoint is missing, damaged or does not fit the network.
    """
    from cartocell_bmz.run.device import resolve_device

    if not isinstance(run, TrainingRun):
        run = read_run(run, complete=False)
    path = run.checkpoint(checkpoint)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found; the run has not finished an epoch yet.")
    cls = _load_callable(run.source, run.callable)
    try:
        net = cls(**run.kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{run.source}: cannot build {run.callable} with the kwargs of model.json ({exc}).") from None
    state = read_state_dict(path)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
        raise ModelError(f"{path}: does not fit the network of model.json ({first}).") from None
    return net.to(resolve_device(device)).eval()


def fingerprint(run: TrainingRun | str | os.PathLike, checkpoint: str = "best") -> str:
    """sha256 of a run's checkpoint (``best.pt`` by default): what identifies its weights.

    Raises
    ------
    ModelError
        The checkpoint does not exist (yet).
    """
    from cartocell_bmz.io.hashing import sha256_file

    path = checkpoint_path(run.path if isinstance(run, TrainingRun) else run, checkpoint)
    if not path.is_file():
        raise ModelError(f"{path}: not found; has the training run finished an epoch?")
    return sha256_file(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot be read as JSON ({type(exc).__name__}); the run folder is damaged.") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: holds {type(data).__name__}, not a JSON object; the run folder is damaged.")
    return data


def read_state_dict(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """A checkpoint's tensors, loaded with ``weights_only=True``, contiguous on the CPU.

    Raises
    ------
    ModelError
        The file is damaged, would run code when loaded, or is not a mapping of names to tensors.
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused it: objects that would run code when loaded
        raise ModelError(f"{path}: is not a plain state dict of tensors (it would run code when loaded); "
                         "refusing to load it.") from None
    except Exception as exc:  # torch raises many types for damaged files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: cannot load the trained network ({reason}); is the file truncated?") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: is not a pure state dict (a mapping of names to tensors).")
    return {str(k): v.detach().cpu().contiguous() for k, v in state.items()}


def _load_callable(source: Path, name: str):
    import importlib.util

    module_name = f"_cartocell_arch_{hashlib.sha256(str(source).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, source)
    if spec is None or spec.loader is None:
        raise ModelError(f"{source}: cannot be imported as a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelError(f"{source}: fails to import ({type(exc).__name__}: {exc}).") from None
    if not hasattr(module, name):
        raise ModelError(f"{source}: defines no {name!r}.")
    return getattr(module, name)


__all__ = [
    "BEST_PT",
    "CHARTS_DIR",
    "CHECKPOINTS",
    "CHECKPOINTS_DIR",
    "CONFIG_JSON",
    "LAST_PT",
    "MODEL_JSON",
    "RESUME_PT",
    "RUN_REQUIRED",
    "STATUS_JSON",
    "TRAIN_LOG_CSV",
    "TrainingRun",
    "checkpoint_path",
    "fingerprint",
    "is_training_run",
    "load_network",
    "read_run",
    "read_state_dict",
]
