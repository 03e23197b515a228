"""The configuration of a training run: :class:`TrainConfig`, its presets and checks.

A :class:`TrainConfig` is validated when built (a bad value raises
:class:`~cartocell_bmz.errors.ConfigError` naming the field) and saved as the
``"train"`` part of ``RUN/config.json``.  :func:`run_request` is what a run is
asked to do (the configuration and its data folders); a run folder is continued
only when its saved request is the same (:func:`request_differences`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from cartocell_bmz.errors import ConfigError
from cartocell_bmz.layout import CHANNELS
from cartocell_bmz.train.augment import Augmentations

#: Optimisers and learning-rate schedules understood by :class:`TrainConfig`.
OPTIMIZERS: tuple[str, ...] = ("adamw", "adam")
SCHEDULES: tuple[str, ...] = ("onecycle", "constant")

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
        return _from_fields(cls, data, "training")

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
    return _from_fields(Augmentations, data, "augmentation")


def _from_fields(cls: type, data: Mapping[str, Any], what: str) -> Any:
    """``cls(**data)``, refusing keys that are not fields of the dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {', '.join(unknown)}; valid options are {', '.join(sorted(names))}.")
    return cls(**dict(data))


def run_request(config: TrainConfig, train_dir: str | os.PathLike, val_dir: str | os.PathLike) -> dict[str, Any]:
    """What a run is asked to do, as plain JSON: ``{"train": config, "data": {"train_dir", "val_dir"}}``.

    Examples
    --------
    >>> request = run_request(TrainConfig.from_preset("tiny", epochs=2), "T", "V")
    >>> request["train"]["epochs"], request["train"]["patch_size"], request["data"]
    (2, [40, 64, 64], {'train_dir': 'T', 'val_dir': 'V'})
    """
    from cartocell_bmz.train.run import jsonable

    return jsonable({"train": config.to_dict(), "data": {"train_dir": str(train_dir), "val_dir": str(val_dir)}})


def request_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """How a saved run configuration differs from a request in what must match to continue ("" when not).

    The device may change between sessions; the data folders and every
    training option may not.

    Examples
    --------
    >>> a = run_request(TrainConfig.from_preset("tiny"), "T", "V")
    >>> request_differences(a, run_request(TrainConfig.from_preset("tiny", lr=0.1, device="cpu"), "T", "V"))
    'lr 0.003 -> 0.1'
    """
    old, new = _comparable(saved), _comparable(wanted)
    diffs = []
    for key in ("train_dir", "val_dir"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key} {old.get(key)} -> {new.get(key)}")
    a, b = old.get("train", {}), new.get("train", {})
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            diffs.append(f"{key} {a.get(key)!r} -> {b.get(key)!r}")
    return "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")


def _comparable(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a saved configuration that must match to continue a run."""
    train = dict(saved.get("train", {}))
    train.pop("device", None)
    data = saved.get("data", {})
    return {"train": train, "train_dir": data.get("train_dir"), "val_dir": data.get("val_dir")}


__all__ = ["OPTIMIZERS", "SCHEDULES", "TRAIN_PRESETS", "TrainConfig", "request_differences", "run_request"]
