"""Training a CartoCell network on a folder of raw volumes and instance labels.

The loop follows CartoCell's recipe: targets B, C, M computed from the labels
(:func:`cartocell_bmz.core.targets.make_targets`), whole-image zero-mean unit-variance
normalisation *before* patching, random 3D patches biased towards the cells,
the CartoCell augmentations (:mod:`cartocell_bmz.train.augment`), a loss that sums
the binary cross-entropy of each channel (optionally re-weighting each
channel's minority class), AdamW with a one-cycle schedule (or the legacy
Adam), validation on whole volumes every epoch (loss and IoU of B, C and M at
probability 0.5), early stopping, and checkpoints.

A training run is a folder (see ``docs/DEVELOPING.md``)::

    RUN/config.json            the full configuration (TrainConfig + data)
    RUN/model.json             architecture, kwargs, divisor, channels, target mode
    RUN/checkpoints/best.pt    state_dict with the lowest validation loss
    RUN/checkpoints/last.pt    state_dict of the last epoch
    RUN/checkpoints/resume.pt  everything needed to continue (the commit point)
    RUN/train_log.csv          one row per epoch
    RUN/charts/loss.png, RUN/charts/iou.png
    RUN/status.json            {"finished": ..., "best_epoch": ..., ...}

``resume.pt`` is written last at the end of every epoch and holds the model,
optimizer, scheduler, random states, the best weights and the log, so that a
run killed at any moment continues from its last finished epoch and ends
exactly as an uninterrupted run would (on CPU, bit for bit).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from cartocell_bmz.core.metrics import binary_channel_iou
from cartocell_bmz.train.augment import Augmentations, random_patch
from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.layout import CHANNELS, LABEL_DIR, RAW_DIR
from cartocell_bmz.train.run import (
    BEST_PT, CHARTS_DIR, CHECKPOINTS_DIR, CONFIG_JSON, LAST_PT, MODEL_JSON, RESUME_PT, STATUS_JSON, TRAIN_LOG_CSV,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Optimisers and learning-rate schedules understood by :class:`TrainConfig`.
OPTIMIZERS: tuple[str, ...] = ("adamw", "adam")
SCHEDULES: tuple[str, ...] = ("onecycle", "constant")

#: Columns of ``RUN/train_log.csv``.
LOG_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "iou_B", "iou_C", "iou_M", "lr", "seconds")

#: Files and folders a run owns (removed by a fresh start; nothing else is touched).
RUN_FILES: tuple[str, ...] = (CONFIG_JSON, MODEL_JSON, CHECKPOINTS_DIR, TRAIN_LOG_CSV, CHARTS_DIR, STATUS_JSON)

#: Training presets: ``paper`` is CartoCell's configuration; ``tiny`` trains in
#: minutes on 2 CPU cores on the synthetic cysts of ``cartocell-bmz phantoms``
#: (a network of about 75 k parameters, 320 steps of 2 patches of 40 x 64 x 64).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "preset": "paper",
        "patch_size": (80, 80, 80),
        "batch_size": 2,
        "epochs": 1300,
        "patches_per_epoch": None,
        "lr": 1e-3,
        "weight_decay": 0.02,
        "optimizer": "adamw",
        "schedule": "onecycle",
        "patience": 100,
    },
    "tiny": {
        "preset": "tiny",
        "patch_size": (40, 64, 64),
        "batch_size": 2,
        "epochs": 40,
        "patches_per_epoch": 16,
        "lr": 3e-3,
        "weight_decay": 0.02,
        "optimizer": "adamw",
        "schedule": "onecycle",
        "patience": 12,
    },
}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as ``RUN/config.json``).

    Defaults are CartoCell's (``paper``) settings; :meth:`from_preset` gives the
    ``tiny`` and ``paper`` presets.  Invalid values raise
    :class:`~cartocell_bmz.errors.ConfigError` naming the field.

    Attributes
    ----------
    arch : str
        Architecture name (see :data:`cartocell_bmz.networks.ARCHITECTURES`).
    preset : {"tiny", "paper"} or None
        Network size preset the constructor arguments start from; ``None`` uses
        the architecture's defaults.
    arch_kwargs : dict
        Constructor arguments that override the preset (``feature_maps``, ...).
    patch_size : tuple of 3 ints
        Training patch ``(z, y, x)``; cut down to the smallest training volume and
        to a multiple of the network's divisor.
    batch_size : int
        Patches per optimisation step.
    epochs : int
        Largest number of epochs.
    patches_per_epoch : int or None
        Random patches per epoch; ``None``: as many as tile the training volumes.
    lr : float
        Learning rate (the peak of the one-cycle schedule).
    weight_decay : float
        Weight decay (AdamW: decoupled; Adam: L2).
    optimizer : {"adamw", "adam"}
    schedule : {"onecycle", "constant"}
    patience : int
        Epochs without a lower validation loss before stopping.
    target_mode : str
        Target definition passed to :func:`cartocell_bmz.core.targets.make_targets`.
    rebalance : bool or tuple of str
        Weight each channel's positive class by ``negatives / positives`` of the
        training targets (clipped to 0.02-50), so the minority class counts as
        much; ``True`` for every channel, or the channels to rebalance (``("C",)``).
    augment : Augmentations
        Augmentations of the training patches.
    foreground_bias : float
        Probability that a patch is centred on a cell voxel.
    seed : int
        Seed of weights, patches and augmentations.
    device : str
        ``"auto"`` (CUDA if available, else CPU with all cores), ``"cpu"``, ``"cuda[:N]"``.
    """

    arch: str = "resunet"
    preset: str | None = "paper"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_size: tuple[int, int, int] = (80, 80, 80)
    batch_size: int = 2
    epochs: int = 1300
    patches_per_epoch: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.02
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    patience: int = 100
    target_mode: str = "cartocell"
    rebalance: bool | tuple[str, ...] = False
    augment: Augmentations = field(default_factory=Augmentations)
    foreground_bias: float = 0.9
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", _as_patch(self.patch_size))
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs or {}))
        if isinstance(self.rebalance, (list, str)):
            items = [self.rebalance] if isinstance(self.rebalance, str) else self.rebalance
            object.__setattr__(self, "rebalance", tuple(items))
        if isinstance(self.augment, Mapping):
            object.__setattr__(self, "augment", _augment_from(self.augment))
        problems = self._problems()
        if problems:
            raise ConfigError(problems[0] + ".")

    def _problems(self) -> list[str]:
        from cartocell_bmz.networks import ARCHITECTURES, PRESET_SIZES

        out: list[str] = []

        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                out.append(f"{name} must be an integer >= {minimum}, got {value!r}")

        def number(name: str, value: Any, lo: float, hi: float = math.inf, lo_open: bool = False) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
            if not ok:
                bound = f"> {lo}" if lo_open else f">= {lo}"
                out.append(f"{name} must be a number {bound}" + (f" and <= {hi}" if hi < math.inf else "") + f", got {value!r}")

        if self.arch not in ARCHITECTURES:
            out.append(f"arch must be one of {', '.join(sorted(ARCHITECTURES))}, got {self.arch!r}")
        if self.preset is not None and self.preset not in PRESET_SIZES:
            out.append(f"preset must be one of {', '.join(PRESET_SIZES)} or null, got {self.preset!r}")
        if self.patch_size is None:
            out.append("patch_size must be three positive integers (z, y, x)")
        positive_int("batch_size", self.batch_size)
        positive_int("epochs", self.epochs)
        if self.patches_per_epoch is not None:
            positive_int("patches_per_epoch", self.patches_per_epoch)
        number("lr", self.lr, 0.0, 1.0, lo_open=True)
        number("weight_decay", self.weight_decay, 0.0)
        if self.optimizer not in OPTIMIZERS:
            out.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            out.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        positive_int("patience", self.patience)
        from cartocell_bmz.core.targets import TARGET_MODES

        if self.target_mode not in TARGET_MODES:
            out.append(f"target_mode must be one of {', '.join(TARGET_MODES)}, got {self.target_mode!r}")
        if not isinstance(self.rebalance, bool) and not (
            isinstance(self.rebalance, tuple) and self.rebalance and set(self.rebalance) <= set(CHANNELS)
        ):
            out.append(f"rebalance must be true, false or channel names among {', '.join(CHANNELS)}, got {self.rebalance!r}")
        if not isinstance(self.augment, Augmentations):
            out.append(f"augment must be an Augmentations object or a mapping, got {self.augment!r}")
        else:
            out.extend(self.augment.problems())
        number("foreground_bias", self.foreground_bias, 0.0, 1.0)
        positive_int("seed", self.seed, 0)
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            out.append(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if not out and self.arch in ARCHITECTURES:
            try:
                self.network_kwargs()
            except ConfigError as exc:
                out.append(f"arch_kwargs: {str(exc).rstrip('.')}")
        return out

    # ------------------------------------------------------------------ helpers

    @classmethod
    def from_preset(cls, preset: str, *, arch: str = "resunet", **overrides: Any) -> "TrainConfig":
        """The ``tiny`` or ``paper`` training preset for ``arch``, with ``overrides``.

        Examples
        --------
        >>> cfg = TrainConfig.from_preset("tiny", arch="unet", epochs=3)
        >>> cfg.arch, cfg.preset, cfg.epochs, cfg.patch_size
        ('unet', 'tiny', 3, (40, 64, 64))
        """
        if preset not in TRAIN_PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(TRAIN_PRESETS)}, got {preset!r}.")
        values = dict(TRAIN_PRESETS[preset])
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["arch"] = arch
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a plain mapping (as saved in ``config.json``); unknown keys are errors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid options are {', '.join(sorted(names))}.")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able mapping of every field."""
        out = dataclasses.asdict(self)
        out["patch_size"] = list(self.patch_size)
        return out

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def network_kwargs(self) -> dict[str, Any]:
        """Complete constructor arguments of the network (preset + ``arch_kwargs``)."""
        from cartocell_bmz.networks import preset_kwargs, resolve_kwargs

        base = preset_kwargs(self.arch, self.preset) if self.preset else {}
        fm = self.arch_kwargs.get("feature_maps")
        if base and isinstance(fm, (list, tuple)) and fm:
            # another depth than the preset's: per-level values follow it unless given
            if "z_down" not in self.arch_kwargs:
                base["z_down"] = [base["z_down"][0] if base["z_down"] else 1] * (len(fm) - 1)
            if "dropout" not in self.arch_kwargs:
                base["dropout"] = [base["dropout"][0]] * len(fm)
        base.update(self.arch_kwargs)
        return resolve_kwargs(self.arch, base)


def _as_patch(value: Any) -> tuple[int, int, int] | None:
    try:
        items = [value] * 3 if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else list(value)
    except TypeError:
        return None
    if len(items) != 3 or any(isinstance(v, bool) or int(v) != v or v < 1 for v in items):
        return None
    return tuple(int(v) for v in items)  # type: ignore[return-value]


def _augment_from(data: Mapping[str, Any]) -> Augmentations:
    names = {f.name for f in dataclasses.fields(Augmentations)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown augmentation option(s) {', '.join(unknown)}; valid options are {', '.join(sorted(names))}.")
    return Augmentations(**dict(data))


@dataclass
class RunSummary:
    """The outcome of :func:`train`.

    Attributes
    ----------
    run_dir : pathlib.Path
    finished : bool
        The run reached its last epoch or stopped early.
    epochs : int
        Epochs completed.
    best_epoch : int
        Epoch of ``checkpoints/best.pt``.
    best_val_loss : float
    best_iou : dict
        Validation IoU of B, C and M at the best epoch.
    stopped_early : bool
        Stopped by patience before ``epochs``.
    resumed_from : int
        Epoch the run continued from (0 for a fresh run).
    seconds : float
        Training time summed over all sessions of the run.
    """

    run_dir: Path
    finished: bool
    epochs: int
    best_epoch: int
    best_val_loss: float
    best_iou: dict[str, float]
    stopped_early: bool = False
    resumed_from: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        iou = " ".join(f"{c}={self.best_iou.get(c, float('nan')):.3f}" for c in CHANNELS)
        state = "finished" if self.finished else "unfinished"
        early = ", stopped early" if self.stopped_early else ""
        return (
            f"{self.run_dir}: {state} after {self.epochs} epochs{early}; best epoch {self.best_epoch} "
            f"(val loss {self.best_val_loss:.4f}, IoU {iou}); {self.seconds:.0f} s"
        )


# --------------------------------------------------------------------------- data


@dataclass
class _Volume:
    name: str
    image: np.ndarray  # normalised float32 (Z, Y, X)
    targets: np.ndarray  # uint8 (3, Z, Y, X)
    foreground: np.ndarray  # flat indices of cell voxels (subsampled)


def training_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(raw, labels)`` file pairs of a training folder with ``x/`` and ``y/``.

    Raises
    ------
    InputError
        If a sub-folder is missing or a raw volume has no label volume of the same name.
    """
    from cartocell_bmz.io.volumes import list_volumes

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: training folder not found.")
    x_dir, y_dir = folder / RAW_DIR, folder / LABEL_DIR
    for sub, what in ((x_dir, "raw images"), (y_dir, "label volumes")):
        if not sub.is_dir():
            raise InputError(f"{folder}: needs sub-folders {RAW_DIR}/ (raw images) and {LABEL_DIR}/ (labels); {sub.name}/ ({what}) is missing.")
    raws = list_volumes(x_dir, what="raw images")
    labels = {p.name: p for p in list_volumes(y_dir, what="label volumes")}
    pairs = []
    for raw in raws:
        lab = labels.get(raw.name)
        if lab is None:
            raise InputError(f"{raw}: no label volume of the same name in {y_dir}.")
        pairs.append((raw, lab))
    return pairs


def _load_volume(raw: Path, lab: Path, target_mode: str, min_shape: Sequence[int] = (1, 1, 1)) -> _Volume:
    from cartocell_bmz.core.normalize import zero_mean_unit_variance as normalize
    from cartocell_bmz.core.targets import make_targets
    from cartocell_bmz.io.volumes import check_same_shape, read_volume

    image = read_volume(raw, "image").data
    labels = read_volume(lab, "labels").data
    check_same_shape(image.shape, labels.shape, raw, lab)
    image = normalize(image)
    targets = np.asarray(make_targets(labels, mode=target_mode), np.uint8)
    pad = [(0, max(0, int(m) - s)) for m, s in zip(min_shape, image.shape)]
    if any(b for _, b in pad):
        image = np.pad(image, pad, mode="symmetric")
        targets = np.pad(targets, [(0, 0)] + pad, mode="symmetric")
    fg = np.flatnonzero(targets[2] if targets.shape[0] > 2 else targets.max(0))
    if len(fg) > 200_000:
        fg = fg[:: int(math.ceil(len(fg) / 200_000))]
    return _Volume(raw.name, image, targets, fg)


def _load_set(folder: Path, target_mode: str, min_shape: Sequence[int]) -> list[_Volume]:
    return [_load_volume(raw, lab, target_mode, min_shape) for raw, lab in training_pairs(folder)]


def _patch_for(config_patch: Sequence[int], shapes: Sequence[Sequence[int]], div: Sequence[int]) -> tuple[int, ...]:
    """Patch size cut down to the smallest volume and rounded down to the divisor."""
    smallest = np.min(np.asarray(shapes), axis=0)
    return tuple(max(d, (min(int(p), int(s)) // d) * d) for p, s, d in zip(config_patch, smallest, div))


# --------------------------------------------------------------------------- loss and metrics


def _loss(logits: "torch.Tensor", targets: "torch.Tensor", pos_weight: "torch.Tensor | None") -> "torch.Tensor":
    """Sum over channels of the mean binary cross-entropy on logits."""
    import torch.nn.functional as F

    pw = None if pos_weight is None else pos_weight.view(1, -1, 1, 1, 1)
    per_voxel = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction="none")
    return per_voxel.mean(dim=(0, 2, 3, 4)).sum()


def _validate(net, volumes: list[_Volume], patch, div, device, pos_weight) -> tuple[float, list[float]]:
    import torch

    from cartocell_bmz.run.backends import TorchBackend
    from cartocell_bmz.run.predictor import Predictor

    net.eval()
    # the prediction tiler on the network in memory, logits out: a volume of up to four patches'
    # voxels in one piece, else tiles of at most that with fixed margins (nothing is measured)
    eighth = [int(p) // 8 for p in patch]
    predictor = Predictor(TorchBackend(net, div, sigmoid=False), margin=eighth, overlap=eighth,
                          max_tile_voxels=4 * math.prod(int(p) for p in patch))
    losses, ious = [], []
    for vol in volumes:
        logits = predictor.predict_normalized(vol.image)
        with torch.inference_mode():
            t = torch.from_numpy(vol.targets[None].astype(np.float32))
            lw = None if pos_weight is None else pos_weight.cpu()
            losses.append(float(_loss(torch.from_numpy(logits[None]), t, lw)))
        ious.append(binary_channel_iou(pred=logits > 0, target=vol.targets.astype(bool)))
    return float(np.mean(losses)), [float(v) for v in np.mean(ious, axis=0)]


# --------------------------------------------------------------------------- run folder


def _json_dump(path: Path, data: Any) -> None:
    from cartocell_bmz.io.volumes import atomic_open

    with atomic_open(path) as fh:
        json.dump(data, fh, indent=2, default=_json_default)
        fh.write("\n")


def _json_default(value: Any) -> Any:
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


def read_log(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of ``RUN/train_log.csv`` as dicts of numbers (``epoch`` as int)."""
    path = Path(run_dir) / TRAIN_LOG_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [
            {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)
        ]


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``RUN/status.json`` as a dict (``{"finished": False}`` when missing or unreadable)."""
    path = Path(run_dir) / STATUS_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"finished": False}


def _save_torch(obj: Any, path: Path) -> None:
    import torch

    from cartocell_bmz.io.volumes import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _clean_run(run_dir: Path) -> None:
    for name in RUN_FILES:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _comparable(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a saved configuration that must match to continue a run."""
    train = dict(saved.get("train", {}))
    train.pop("device", None)
    data = saved.get("data", {})
    return {"train": train, "train_dir": data.get("train_dir"), "val_dir": data.get("val_dir")}


def _summary_from_status(run_dir: Path, status: Mapping[str, Any]) -> RunSummary:
    return RunSummary(
        run_dir=run_dir,
        finished=bool(status.get("finished")),
        epochs=int(status.get("epoch", 0)),
        best_epoch=int(status.get("best_epoch", 0)),
        best_val_loss=float(status.get("best_val_loss", math.nan)),
        best_iou={c: float(v) for c, v in status.get("best_iou", {}).items()},
        stopped_early=bool(status.get("stopped_early", False)),
        resumed_from=int(status.get("resumed_from", 0)),
        seconds=float(status.get("seconds", 0.0)),
    )


# --------------------------------------------------------------------------- training


def train(
    config: TrainConfig,
    train_dir: str | os.PathLike,
    val_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    resume: bool = True,
    show_progress: bool = True,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Train a network and write a run folder; continue an interrupted run.

    Parameters
    ----------
    config : TrainConfig
        The run's configuration.
    train_dir, val_dir : path-like
        Folders with ``x/`` (raw) and ``y/`` (instance labels, same file names).
    run_dir : path-like
        Run folder (created).
    resume : bool
        Continue from ``checkpoints/resume.pt`` when the folder holds an unfinished
        run with the same configuration, and return at once when it holds a
        finished one.  ``False`` deletes the run's files and starts afresh.
    show_progress : bool
        Show a progress bar and one line per epoch.
    on_epoch_end : callable, optional
        Called with each epoch's log row after its checkpoints are written
        (an exception raised there stops training, as an interruption would).

    Returns
    -------
    RunSummary

    Raises
    ------
    ConfigError
        If the folder holds a run with another configuration (use ``resume=False``).
    InputError
        For unusable training or validation data.
    """
    import torch

    from cartocell_bmz.run.device import flush_denormal, resolve_device
    from cartocell_bmz.networks import build_network, count_parameters, divisor, get_spec, source_path
    from cartocell_bmz.io.volumes import ensure_output_dir

    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}.")
    run_dir = ensure_output_dir(run_dir)
    train_dir, val_dir = Path(train_dir).resolve(), Path(val_dir).resolve()
    device = resolve_device(config.device, threads=True)
    kwargs = config.network_kwargs()
    div = divisor(config.arch, kwargs)
    spec = get_spec(config.arch)
    wanted = json.loads(json.dumps(
        {"train": config.to_dict(), "data": {"train_dir": str(train_dir), "val_dir": str(val_dir)}}, default=_json_default
    ))

    config_path = run_dir / CONFIG_JSON
    if not resume:
        _clean_run(run_dir)
    elif config_path.is_file():
        try:
            saved = json.loads(config_path.read_text())
        except ValueError:
            saved = None
        if saved is not None and _comparable(saved) != _comparable(wanted):
            diff = _differences(_comparable(saved), _comparable(wanted))
            raise ConfigError(
                f"{run_dir} holds a run with another configuration ({diff}); "
                "use another output folder or start afresh (--fresh)."
            )
        status = read_status(run_dir)
        if saved is not None and status.get("finished") and (run_dir / CHECKPOINTS_DIR / BEST_PT).is_file():
            summary = _summary_from_status(run_dir, status)
            if show_progress:
                print(f"already finished: {summary}")
            return summary

    # ---- data
    progress = _Progress(show_progress)
    stack = contextlib.ExitStack()
    train_set = _load_set(train_dir, config.target_mode, div)
    val_set = _load_set(val_dir, config.target_mode, div)
    patch = _patch_for(config.patch_size, [v.image.shape for v in train_set], div)
    if config.patches_per_epoch is None:
        patches_per_epoch = int(sum(np.prod([math.ceil(s / p) for s, p in zip(v.image.shape, patch)]) for v in train_set))
    else:
        patches_per_epoch = int(config.patches_per_epoch)
    steps = max(1, math.ceil(patches_per_epoch / config.batch_size))
    fractions = np.mean([v.targets.reshape(v.targets.shape[0], -1).mean(1) for v in train_set], axis=0)
    pos_weight = None
    if config.rebalance:
        pw = np.clip((1 - fractions) / np.maximum(fractions, 1e-6), 0.02, 50.0)
        if config.rebalance is not True:
            pw = np.where([c in config.rebalance for c in CHANNELS], pw, 1.0)
        pos_weight = torch.tensor(pw, dtype=torch.float32, device=device)

    # ---- network and optimiser
    torch.manual_seed(config.seed)
    net = build_network(config.arch, **kwargs).to(device)
    n_params = count_parameters(net)
    if config.optimizer == "adamw":
        opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = None
    if config.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps)
    rng = np.random.default_rng(config.seed)

    full_config = {
        **wanted,
        "data": {
            **wanted["data"],
            "train_volumes": [v.name for v in train_set],
            "val_volumes": [v.name for v in val_set],
            "patch_size": list(patch),
            "patches_per_epoch": patches_per_epoch,
            "steps_per_epoch": steps,
            "positive_fraction": {c: float(f) for c, f in zip(CHANNELS, fractions)},
            "pos_weight": None if pos_weight is None else {c: float(w) for c, w in zip(CHANNELS, pos_weight.tolist())},
        },
        "device": str(device),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "cartocell_bmz": _version()},
    }
    model_info = {
        "arch": config.arch,
        "callable": spec.callable,
        "source": source_path(config.arch).name,
        "kwargs": kwargs,
        "divisor": list(div),
        "channels": list(CHANNELS),
        "target_mode": config.target_mode,
        "n_parameters": n_params,
    }
    ckpt = run_dir / CHECKPOINTS_DIR
    ckpt.mkdir(exist_ok=True)

    # ---- resume
    state = {
        "epoch": 0, "best_epoch": 0, "best_val_loss": math.inf, "best_iou": {}, "bad_epochs": 0,
        "rows": [], "seconds": 0.0, "stopped_early": False, "best_model": None,
    }
    resumed_from = 0
    resume_path = ckpt / RESUME_PT
    if resume and resume_path.is_file():
        try:
            saved_state = torch.load(resume_path, map_location="cpu", weights_only=True)
            net.load_state_dict(saved_state["model"])
            opt.load_state_dict(saved_state["optimizer"])
            if sched is not None:
                sched.load_state_dict(saved_state["scheduler"])
            rng.bit_generator.state = json.loads(saved_state["numpy_rng"])
            torch.set_rng_state(saved_state["torch_rng"])
            if device.type == "cuda" and saved_state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state_all(saved_state["cuda_rng"])
            for key in state:
                state[key] = saved_state[key]
            resumed_from = int(state["epoch"])
        except Exception as exc:  # a corrupt or foreign resume file: say so, do not guess
            raise ConfigError(
                f"{resume_path}: cannot continue from this checkpoint ({type(exc).__name__}); start afresh with --fresh."
            ) from None
    else:
        for name in (BEST_PT, LAST_PT):
            (ckpt / name).unlink(missing_ok=True)
    _json_dump(config_path, full_config)
    _json_dump(run_dir / MODEL_JSON, model_info)
    if resumed_from:
        _materialise(run_dir, state, net)  # rewrite files derived from resume.pt

    def status(finished: bool) -> dict[str, Any]:
        return {
            "finished": finished,
            "epoch": int(state["epoch"]),
            "epochs": config.epochs,
            "best_epoch": int(state["best_epoch"]),
            "best_val_loss": float(state["best_val_loss"]),
            "best_iou": state["best_iou"],
            "stopped_early": bool(state["stopped_early"]),
            "resumed_from": resumed_from,
            "seconds": float(state["seconds"]),
            "arch": config.arch,
            "n_parameters": n_params,
        }

    done = state["epoch"] >= config.epochs or state["stopped_early"]
    if not done:
        _json_dump(run_dir / STATUS_JSON, status(False))
    progress.start(config.epochs, steps, int(state["epoch"]))
    last_chart = time.perf_counter()
    try:
        stack.enter_context(flush_denormal())
        while not done:
            epoch = int(state["epoch"]) + 1
            t0 = time.perf_counter()
            net.train()
            total = 0.0
            for step in range(steps):
                xs, ys = [], []
                for _ in range(config.batch_size):
                    vol = train_set[int(rng.integers(len(train_set)))]
                    x, y = random_patch(
                        vol.image, vol.targets, patch, rng, augment=config.augment,
                        foreground=vol.foreground, foreground_bias=config.foreground_bias,
                    )
                    xs.append(x)
                    ys.append(y)
                xb = torch.from_numpy(np.stack(xs)[:, None]).to(device)
                yb = torch.from_numpy(np.stack(ys)).to(device)
                opt.zero_grad(set_to_none=True)
                loss = _loss(net(xb), yb, pos_weight)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach())
                progress.step(epoch, total / (step + 1))
            val_loss, ious = _validate(net, val_set, patch, div, device, pos_weight)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch, "train_loss": total / steps, "val_loss": val_loss,
                **{f"iou_{c}": v for c, v in zip(CHANNELS, ious)},
                "lr": float(opt.param_groups[0]["lr"]), "seconds": seconds,
            }
            state["rows"] = list(state["rows"]) + [row]
            state["epoch"] = epoch
            state["seconds"] = float(state["seconds"]) + seconds
            if val_loss < float(state["best_val_loss"]):
                state.update(best_val_loss=val_loss, best_epoch=epoch, bad_epochs=0,
                             best_iou={c: v for c, v in zip(CHANNELS, ious)},
                             best_model={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
            else:
                state["bad_epochs"] = int(state["bad_epochs"]) + 1
            if int(state["bad_epochs"]) >= config.patience and epoch < config.epochs:
                state["stopped_early"] = True
            done = epoch >= config.epochs or bool(state["stopped_early"])
            # resume.pt is the commit point: everything else is derived from it.
            _save_torch(
                {
                    **state,
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "numpy_rng": json.dumps(rng.bit_generator.state),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                },
                resume_path,
            )
            # Charts take a moment: draw them at the first and last epoch and every half minute.
            charts = done or epoch == resumed_from + 1 or time.perf_counter() - last_chart > 30
            _materialise(run_dir, state, net, charts=charts)
            if charts:
                last_chart = time.perf_counter()
            _json_dump(run_dir / STATUS_JSON, status(done))
            progress.epoch(row, state)
            if on_epoch_end is not None:
                on_epoch_end(dict(row))
    finally:
        stack.close()
        progress.stop()
    if state["epoch"] and not (ckpt / BEST_PT).is_file():
        _materialise(run_dir, state, net)
    _json_dump(run_dir / STATUS_JSON, status(True))
    summary = _summary_from_status(run_dir, status(True))
    if show_progress:
        print(summary)
    return summary


def _materialise(run_dir: Path, state: Mapping[str, Any], net, *, charts: bool = True) -> None:
    """Write best.pt, last.pt, the log and (with ``charts``) the charts from the training state."""
    from cartocell_bmz.train.charts import plot_training_curves

    ckpt = run_dir / CHECKPOINTS_DIR
    _save_torch({k: v.detach().cpu() for k, v in net.state_dict().items()}, ckpt / LAST_PT)
    if state.get("best_model") is not None:
        _save_torch(state["best_model"], ckpt / BEST_PT)
    _write_log(run_dir / TRAIN_LOG_CSV, state["rows"])
    if charts and state["rows"]:
        plot_training_curves(state["rows"], run_dir / CHARTS_DIR, best_epoch=int(state["best_epoch"]) or None)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    diffs = []
    for key in ("train_dir", "val_dir"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)} -> {new.get(key)}")
    a, b = old.get("train", {}), new.get("train", {})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            diffs.append(f"{key} {a.get(key)!r} -> {b.get(key)!r}")
    return "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")


def _version() -> str:
    from cartocell_bmz import __version__

    return __version__


class _Progress:
    """A rich progress bar over all optimisation steps, plus one line per epoch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.task = None

    def start(self, epochs: int, steps: int, done_epochs: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.steps = steps
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("training", total=epochs * steps, completed=done_epochs * steps)
        if done_epochs:
            self.bar.console.print(f"continuing from epoch {done_epochs}")

    def step(self, epoch: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=f"epoch {epoch} loss {loss:.4f}")

    def epoch(self, row: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        if self.bar is None:
            return
        mark = " *" if state["best_epoch"] == row["epoch"] else ""
        self.bar.console.print(
            f"epoch {row['epoch']:>4} loss {row['train_loss']:.3f} val {row['val_loss']:.3f} "
            f"IoU B/C/M {row['iou_B']:.2f}/{row['iou_C']:.2f}/{row['iou_M']:.2f} {row['seconds']:.0f}s{mark}",
            soft_wrap=True,
        )

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
