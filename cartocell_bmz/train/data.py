"""Training data: volume pairs of a folder, their normalised images and targets, patches and batches.

A training (or validation) folder holds ``x/`` (raw images) and ``y/`` (instance
labels of the same file names).  Each volume is normalised whole (zero mean,
unit variance) *before* patching, as CartoCell does, and its targets B, C, M
are computed once (:func:`cartocell_bmz.core.targets.make_targets`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cartocell_bmz.errors import InputError
from cartocell_bmz.layout import CHANNELS, LABEL_DIR, RAW_DIR
from cartocell_bmz.train.augment import random_patch

if TYPE_CHECKING:  # pragma: no cover
    from cartocell_bmz.train.config import TrainConfig

#: Most cell voxels kept per volume to centre patches on (a regular subsample beyond).
MAX_FOREGROUND = 200_000


@dataclass
class TrainingVolume:
    """One volume ready for training.

    Attributes
    ----------
    name : str
        File name.
    image : numpy.ndarray
        Normalised float32 ``(Z, Y, X)``.
    targets : numpy.ndarray
        uint8 ``(3, Z, Y, X)``: B, C, M.
    foreground : numpy.ndarray
        Flat indices of cell voxels (subsampled to :data:`MAX_FOREGROUND`).
    """

    name: str
    image: np.ndarray
    targets: np.ndarray
    foreground: np.ndarray


@dataclass
class TrainingData:
    """The training and validation volumes of a run and what follows from them.

    Attributes
    ----------
    train, val : list of TrainingVolume
    patch : tuple of 3 int
        Patch size (:func:`fit_patch`).
    patches_per_epoch : int
    steps : int
        Optimisation steps per epoch.
    fractions : numpy.ndarray
        Mean fraction of positive voxels of B, C, M over the training volumes.
    pos_weight : numpy.ndarray or None
        Loss weight of each channel's positive class (``None``: no rebalancing).
    """

    train: list[TrainingVolume]
    val: list[TrainingVolume]
    patch: tuple[int, ...]
    patches_per_epoch: int
    steps: int
    fractions: np.ndarray
    pos_weight: np.ndarray | None


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


def load_volumes(folder: str | os.PathLike, target_mode: str, min_shape: Sequence[int] = (1, 1, 1)) -> list[TrainingVolume]:
    """The volumes of a training folder, normalised, with their targets.

    Parameters
    ----------
    folder : path-like
        Folder with ``x/`` and ``y/`` (:func:`training_pairs`).
    target_mode : str
        Target definition (:func:`cartocell_bmz.core.targets.make_targets`).
    min_shape : sequence of 3 int
        A smaller volume is padded (symmetric) to this shape (the network's divisor).

    Raises
    ------
    InputError
        For a missing folder, a missing label volume or a raw and label volume of different shapes.
    """
    return [_load_volume(raw, lab, target_mode, min_shape) for raw, lab in training_pairs(folder)]


def _load_volume(raw: Path, lab: Path, target_mode: str, min_shape: Sequence[int]) -> TrainingVolume:
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
    if len(fg) > MAX_FOREGROUND:
        fg = fg[:: int(math.ceil(len(fg) / MAX_FOREGROUND))]
    return TrainingVolume(raw.name, image, targets, fg)


def fit_patch(config_patch: Sequence[int], shapes: Sequence[Sequence[int]], div: Sequence[int]) -> tuple[int, ...]:
    """Patch size cut down to the smallest volume and rounded down to the divisor.

    Examples
    --------
    >>> fit_patch((80, 80, 80), [(16, 48, 48), (32, 96, 96)], (1, 4, 4))
    (16, 48, 48)
    """
    smallest = np.min(np.asarray(shapes), axis=0)
    return tuple(max(d, (min(int(p), int(s)) // d) * d) for p, s, d in zip(config_patch, smallest, div))


def tiling_patches(shapes: Sequence[Sequence[int]], patch: Sequence[int]) -> int:
    """How many patches tile the volumes of ``shapes`` (the default patches per epoch).

    Examples
    --------
    >>> tiling_patches([(16, 48, 48), (20, 48, 48)], (16, 32, 32))
    12
    """
    return int(sum(np.prod([math.ceil(s / p) for s, p in zip(shape, patch)]) for shape in shapes))


def positive_weights(fractions: np.ndarray, rebalance: bool | Sequence[str]) -> np.ndarray | None:
    """Loss weight of each channel's positive class: ``negatives / positives``, clipped to 0.02-50.

    Parameters
    ----------
    fractions : numpy.ndarray
        Fraction of positive voxels of B, C, M.
    rebalance : bool or sequence of str
        ``True``: every channel; channel names: those (the others weigh 1); ``False``: none (``None``).

    Examples
    --------
    >>> positive_weights(np.array([0.5, 0.1, 0.999]), ("C",)).tolist()
    [1.0, 9.0, 1.0]
    >>> positive_weights(np.array([0.5, 0.1, 0.999]), True).round(3).tolist()
    [1.0, 9.0, 0.02]
    """
    if not rebalance:
        return None
    pw = np.clip((1 - fractions) / np.maximum(fractions, 1e-6), 0.02, 50.0)
    if rebalance is not True:
        pw = np.where([c in rebalance for c in CHANNELS], pw, 1.0)
    return pw


def load_training_data(config: "TrainConfig", train_dir: str | os.PathLike, val_dir: str | os.PathLike,
                       div: Sequence[int]) -> TrainingData:
    """Load the training and validation volumes of a run and derive its patch size, steps and loss weights.

    Raises
    ------
    InputError
        For unusable training or validation data.
    """
    train_set = load_volumes(train_dir, config.target_mode, div)
    val_set = load_volumes(val_dir, config.target_mode, div)
    patch = fit_patch(config.patch_size, [v.image.shape for v in train_set], div)
    if config.patches_per_epoch is None:
        patches_per_epoch = tiling_patches([v.image.shape for v in train_set], patch)
    else:
        patches_per_epoch = int(config.patches_per_epoch)
    fractions = np.mean([v.targets.reshape(v.targets.shape[0], -1).mean(1) for v in train_set], axis=0)
    return TrainingData(
        train=train_set, val=val_set, patch=patch, patches_per_epoch=patches_per_epoch,
        steps=max(1, math.ceil(patches_per_epoch / config.batch_size)), fractions=fractions,
        pos_weight=positive_weights(fractions, config.rebalance),
    )


def sample_batch(data: TrainingData, config: "TrainConfig", rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One batch of random (augmented) training patches: images ``(N, 1, z, y, x)``, targets ``(N, 3, z, y, x)``.

    Each patch comes from a volume drawn at random, centred on a cell voxel with
    probability ``config.foreground_bias`` (:func:`~cartocell_bmz.train.augment.random_patch`).
    """
    xs, ys = [], []
    for _ in range(config.batch_size):
        vol = data.train[int(rng.integers(len(data.train)))]
        x, y = random_patch(
            vol.image, vol.targets, data.patch, rng, augment=config.augment,
            foreground=vol.foreground, foreground_bias=config.foreground_bias,
        )
        xs.append(x)
        ys.append(y)
    return np.stack(xs)[:, None], np.stack(ys)


__all__ = [
    "MAX_FOREGROUND", "TrainingData", "TrainingVolume", "fit_patch", "load_training_data", "load_volumes",
    "positive_weights", "sample_batch", "tiling_patches", "training_pairs",
]
