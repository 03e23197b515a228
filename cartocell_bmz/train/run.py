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
The training loop (:mod:`cartocell_bmz.train.loop`) writes the folder through
the functions below (:func:`write_config`, :func:`write_status`,
:func:`write_epoch_files`, :func:`write_resume`, ...): every file is written
atomically, ``resume.pt`` last at the end of an epoch (the commit point: the
other files are derived from it).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

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
#: Columns of ``RUN/train_log.csv``.
LOG_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "iou_B", "iou_C", "iou_M", "lr", "seconds")
#: Files and folders a run owns (removed by a fresh start; nothing else is touched).
RUN_FILES: tuple[str, ...] = (CONFIG_JSON, MODEL_JSON, CHECKPOINTS_DIR, TRAIN_LOG_CSV, CHARTS_DIR, STATUS_JSON)


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


# --------------------------------------------------------------------------- writing (the training loop)


def clean_run(run_dir: str | os.PathLike) -> None:
    """Remove the files and folders of :data:`RUN_FILES` from ``run_dir`` (a fresh start); nothing else."""
    for name in RUN_FILES:
        p = Path(run_dir) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def read_saved_config(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``RUN/config.json`` as a dict, ``None`` when it is missing or unreadable."""
    path = Path(run_dir) / CONFIG_JSON
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def write_config(run_dir: str | os.PathLike, config: Mapping[str, Any], model: Mapping[str, Any]) -> None:
    """Write ``RUN/config.json`` (the full run configuration) and ``RUN/model.json`` (fields of :data:`MODEL_FIELDS` and more)."""
    _json_dump(Path(run_dir) / CONFIG_JSON, config)
    _json_dump(Path(run_dir) / MODEL_JSON, model)


def write_status(run_dir: str | os.PathLike, status: Mapping[str, Any]) -> None:
    """Write ``RUN/status.json`` (``{"finished": ..., "epoch": ..., "best_epoch": ..., ...}``)."""
    _json_dump(Path(run_dir) / STATUS_JSON, status)


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/status.json`` as a dict (``{"finished": False}`` when missing or unreadable)."""
    path = Path(run_dir) / STATUS_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"finished": False}


def read_log(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of ``RUN/train_log.csv`` as dicts of numbers (``epoch`` as int); ``[]`` when there is none."""
    path = Path(run_dir) / TRAIN_LOG_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)
        ]


def write_epoch_files(run_dir: str | os.PathLike, state: Mapping[str, Any], weights: Mapping[str, "torch.Tensor"],
                      *, charts: bool = True) -> None:
    """Write what is derived from the training state: ``last.pt``, ``best.pt``, the log and the charts.

    Parameters
    ----------
    run_dir : path-like
        The run folder.
    state : mapping
        The training state: ``rows`` (the log rows, columns :data:`LOG_COLUMNS`),
        ``best_model`` (state dict of the best epoch, or ``None``) and ``best_epoch``.
    weights : mapping of str to torch.Tensor
        The network's current state dict (``last.pt``).
    charts : bool
        Also draw ``charts/loss.png`` and ``charts/iou.png`` (they take a moment).
    """
    from cartocell_bmz.train.charts import plot_training_curves

    run = Path(run_dir)
    _save_torch({k: v.detach().cpu() for k, v in weights.items()}, run / CHECKPOINTS_DIR / LAST_PT)
    if state.get("best_model") is not None:
        _save_torch(state["best_model"], run / CHECKPOINTS_DIR / BEST_PT)
    _write_log(run / TRAIN_LOG_CSV, state["rows"])
    if charts and state["rows"]:
        plot_training_curves(state["rows"], run / CHARTS_DIR, best_epoch=int(state["best_epoch"]) or None)


def remove_weights(run_dir: str | os.PathLike) -> None:
    """Remove ``best.pt`` and ``last.pt`` (a run that starts without ``resume.pt`` must not keep old weights)."""
    for name in (BEST_PT, LAST_PT):
        (Path(run_dir) / CHECKPOINTS_DIR / name).unlink(missing_ok=True)


def resume_path(run_dir: str | os.PathLike) -> Path:
    """``RUN/checkpoints/resume.pt``.

    Examples
    --------
    >>> resume_path("RUN").as_posix()
    'RUN/checkpoints/resume.pt'
    """
    return Path(run_dir) / CHECKPOINTS_DIR / RESUME_PT


def write_resume(run_dir: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Write ``resume.pt``: everything needed to continue the run (the commit point of an epoch)."""
    _save_torch(dict(payload), resume_path(run_dir))


def read_resume(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``resume.pt`` loaded with ``weights_only=True``; torch's own error when it is missing or damaged."""
    import torch

    return torch.load(resume_path(run_dir), map_location="cpu", weights_only=True)


def jsonable(data: Any) -> Any:
    """``data`` as plain JSON types (tuples as lists, numpy numbers as Python numbers, paths as strings).

    Examples
    --------
    >>> import numpy as np
    >>> jsonable({"patch": (8, 16, 16), "lr": np.float32(0.5), "where": Path("a")})
    {'patch': [8, 16, 16], 'lr': 0.5, 'where': 'a'}
    """
    return json.loads(json.dumps(data, default=_json_default))


def _json_dump(path: Path, data: Any) -> None:
    from cartocell_bmz.io.volumes import atomic_open

    with atomic_open(path) as fh:
        json.dump(data, fh, indent=2, default=_json_default)
        fh.write("\n")


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_log(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    from cartocell_bmz.io.volumes import atomic_open

    with atomic_open(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in LOG_COLUMNS})


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    from cartocell_bmz.io.volumes import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


__all__ = [
    "BEST_PT",
    "CHARTS_DIR",
    "CHECKPOINTS",
    "CHECKPOINTS_DIR",
    "CONFIG_JSON",
    "LAST_PT",
    "LOG_COLUMNS",
    "MODEL_JSON",
    "RESUME_PT",
    "RUN_FILES",
    "RUN_REQUIRED",
    "STATUS_JSON",
    "TRAIN_LOG_CSV",
    "TrainingRun",
    "checkpoint_path",
    "clean_run",
    "fingerprint",
    "is_training_run",
    "jsonable",
    "load_network",
    "read_log",
    "read_resume",
    "read_run",
    "read_saved_config",
    "read_state_dict",
    "read_status",
    "remove_weights",
    "resume_path",
    "write_config",
    "write_epoch_files",
    "write_resume",
    "write_status",
]
