"""Synthetic datasets on disk: cysts of :mod:`cartocell_bmz.core.phantoms` in the CartoCell folder layout.

* :func:`make_dataset` -- ``OUT/{train_M1,validation,train_M2,test}/{x,y}/cyst_NNN_<stage>.tif``
  (raw image and labels of the same name and voxel size) plus ``OUT/dataset.json``,
  and PNG previews on request.
* :func:`save_preview` -- a PNG of the mid slices of one cyst.
* :func:`save_acquisition_preview` -- the two acquisitions of an ``optics="cartocell"``
  set side by side.

Two kinds of set (:data:`OPTICS_KINDS`):

* ``"simple"`` (default): every split imaged by the original simple camera model
  (``train_M1`` made at twice the resolution and averaged down).  The benchmark's embedded
  test set is the ``test`` split of this kind with seed 0; it is unchanged.
* ``"cartocell"``: the two acquisitions of the CartoCell dataset
  (:data:`SPLIT_ACQUISITIONS`): ``train_M1`` and ``validation`` high-resolution stacks
  averaged down to the dataset's voxel size, ``train_M2`` and ``test`` direct
  low-resolution acquisitions (:mod:`cartocell_bmz.core.optics`), with more of the latter
  (:data:`CARTOCELL_COUNTS`).

Files are written atomically; progress is reported through a ``progress(done, total)``
callback (the CLI draws it as a bar), never printed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from cartocell_bmz.core.optics import HIGH_RESOLUTION, LOW_RESOLUTION, Acquisition
from cartocell_bmz.core.phantoms import STAGES, Cyst, PhantomConfig, make_cyst
from cartocell_bmz.layout import LABEL_DIR, RAW_DIR, SPLITS

#: File name (in ``OUT/previews/``) of the side-by-side preview of the two acquisitions.
OPTICS_PREVIEW = "acquisitions.png"
#: Kinds of synthetic set: ``"simple"`` (one camera model, the default) or ``"cartocell"``
#: (the paper's two acquisitions).
OPTICS_KINDS: tuple[str, ...] = ("simple", "cartocell")
#: Acquisition of each split in a ``"cartocell"`` set.
SPLIT_ACQUISITIONS: dict[str, Acquisition] = {
    "train_M1": HIGH_RESOLUTION, "validation": HIGH_RESOLUTION,
    "train_M2": LOW_RESOLUTION, "test": LOW_RESOLUTION,
}
#: Volumes per split of a ``"cartocell"`` set: the real dataset's 19 + 2 curated
#: high-resolution cysts against 293 + 60 low-resolution ones, scaled down so the tiny
#: preset stays in minutes on 2 cores (about 1 : 8 between train_M1 and train_M2).
CARTOCELL_COUNTS: dict[str, int] = {"train_M1": 3, "validation": 1, "train_M2": 24, "test": 10}


def default_counts(optics: str = "simple") -> dict[str, int]:
    """Volumes per split of a set of kind ``optics`` (see :data:`OPTICS_KINDS`).

    Examples
    --------
    >>> default_counts("cartocell")["train_M2"], default_counts()["train_M2"]
    (24, 8)
    """
    from cartocell_bmz.core.phantoms import DEFAULT_COUNTS

    _check_optics(optics)
    return dict(CARTOCELL_COUNTS if optics == "cartocell" else DEFAULT_COUNTS)


def _check_optics(optics: str) -> None:
    if optics not in OPTICS_KINDS:
        raise ValueError(f"unknown optics {optics!r}; choose one of {list(OPTICS_KINDS)}")


def make_dataset(
    out: str | Path,
    config: PhantomConfig | None = None,
    *,
    preview: bool = False,
    optics: str = "simple",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[Path]]:
    """Write a synthetic dataset in the CartoCell folder layout.

    ``OUT/{train_M1,validation,train_M2,test}/{x,y}/cyst_NNN_<stage>.tif``, raw
    and labels with the same file name and voxel size, plus ``OUT/dataset.json``
    (the configuration) and, with ``preview``, ``OUT/previews/*.png``.

    Volume ``i`` of a split depends only on ``(seed, split, i)``, so adding
    volumes to one split never changes the others.

    Parameters
    ----------
    out : path-like
        Output folder (created).
    config : PhantomConfig, optional
        Seed, shape, spacing and volumes per split; default ``PhantomConfig()``.
    preview : bool
        Also write a PNG of the mid slices of every cyst (and, with ``optics="cartocell"``,
        ``OPTICS_PREVIEW``: the first cyst of each acquisition side by side).
    optics : {"simple", "cartocell"}
        Kind of set (see the module's documentation).  ``"cartocell"`` adds ``optics``
        and ``acquisitions`` to ``dataset.json``; ``"simple"`` writes exactly the files
        it always wrote.
    progress : callable, optional
        Called as ``progress(done, total)``: once with ``done = 0`` before the first
        cyst, then after each cyst is written.

    Returns
    -------
    dict
        Split name -> list of written label files.
    """
    from cartocell_bmz.io.volumes import atomic_open, ensure_output_dir, write_volume

    config = config or PhantomConfig()
    _check_optics(optics)
    unknown = set(config.counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
    out = ensure_output_dir(out)
    stages = list(STAGES)
    written: dict[str, list[Path]] = {}
    jobs = [(split, i) for split in SPLITS for i in range(config.counts.get(split, 0))]
    firsts: dict[str, Cyst] = {}
    if progress is not None:
        progress(0, len(jobs))
    for done, (split, i) in enumerate(jobs, start=1):
        seq = np.random.SeedSequence([config.seed, SPLITS.index(split), i])
        stage = stages[(i + SPLITS.index(split)) % len(stages)]
        cyst = make_cyst(
            config.shape, config.spacing, stage=stage, max_cells=config.max_cells,
            oversampling=config.m1_oversampling if split == "train_M1" else 1,
            acquisition=SPLIT_ACQUISITIONS[split] if optics == "cartocell" else None, seed=seq,
        )
        name = f"cyst_{i:03d}_{stage}.tif"
        write_volume(out / split / RAW_DIR / name, cyst.raw, cyst.spacing)
        write_volume(out / split / LABEL_DIR / name, cyst.labels, cyst.spacing, compress=True)
        written.setdefault(split, []).append(out / split / LABEL_DIR / name)
        if preview:
            save_preview(out / "previews" / f"{split}_{Path(name).stem}.png", cyst)
            if optics == "cartocell":
                firsts.setdefault(SPLIT_ACQUISITIONS[split].name, cyst)
        if progress is not None:
            progress(done, len(jobs))
    if firsts:
        save_acquisition_preview(out / "previews" / OPTICS_PREVIEW, firsts)
    description = {"generator": "cartocell_bmz.core.phantoms", **asdict(config)}
    if optics != "simple":
        acquisitions = {split: SPLIT_ACQUISITIONS[split].name for split in SPLITS}
        description.update(optics=optics, acquisitions=acquisitions,
                           acquisition_parameters={a.name: a.as_dict() for a in SPLIT_ACQUISITIONS.values()})
    with atomic_open(out / "dataset.json") as fh:
        json.dump(description, fh, indent=2)
    return written


def save_preview(path: str | Path, cyst: Cyst) -> Path:
    """Write a PNG of the mid z-slice and mid y-slice of the raw image and its labels.

    Parameters
    ----------
    path : path-like
        Destination ``.png`` (its folder is created).
    cyst : Cyst
        The cyst to show.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z, y = cyst.raw.shape[0] // 2, cyst.raw.shape[1] // 2
    aspect = cyst.spacing[0] / cyst.spacing[2]
    fig, ax = plt.subplots(2, 2, figsize=(8, 6), gridspec_kw={"height_ratios": [3, 2]})
    lab_cmap = _label_cmap(int(cyst.labels.max()))
    ax[0, 0].imshow(cyst.raw[z], cmap="gray")
    ax[0, 1].imshow(cyst.labels[z], cmap=lab_cmap, interpolation="nearest")
    ax[1, 0].imshow(cyst.raw[:, y], cmap="gray", aspect=aspect)
    ax[1, 1].imshow(cyst.labels[:, y], cmap=lab_cmap, interpolation="nearest", aspect=aspect)
    for a, t in zip(ax.flat, ["raw, z mid-slice", "labels, z mid-slice", "raw, y mid-slice", "labels, y mid-slice"]):
        a.set_title(t, fontsize=9)
        a.axis("off")
    fig.suptitle(f"synthetic cyst ({cyst.stage}, {int(cyst.labels.max())} cells)")
    return _save_figure(fig, path)


def save_acquisition_preview(path: str | Path, cysts: dict[str, Cyst]) -> Path:
    """Write a PNG with one column per acquisition: mid z-slice and mid y-slice of its raw image.

    Parameters
    ----------
    path : path-like
        Destination ``.png`` (its folder is created).
    cysts : dict
        Acquisition name -> a cyst imaged by it.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(cysts), 1)
    fig, ax = plt.subplots(2, n, figsize=(4 * n, 6), squeeze=False, gridspec_kw={"height_ratios": [3, 2]})
    for col, (name, cyst) in enumerate(cysts.items()):
        z, y = cyst.raw.shape[0] // 2, cyst.raw.shape[1] // 2
        ax[0, col].imshow(cyst.raw[z], cmap="gray")
        ax[1, col].imshow(cyst.raw[:, y], cmap="gray", aspect=cyst.spacing[0] / cyst.spacing[2])
        ax[0, col].set_title(f"{name} ({cyst.stage}), z mid-slice", fontsize=9)
        ax[1, col].set_title(f"{name}, y mid-slice", fontsize=9)
    for a in ax.flat:
        a.axis("off")
    fig.suptitle("the two acquisitions of an optics=cartocell set")
    return _save_figure(fig, path)


def _save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically, folders created) and close it."""
    import matplotlib.pyplot as plt

    from cartocell_bmz.io.volumes import atomic_path

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return path


def _label_cmap(n: int):
    from matplotlib.colors import ListedColormap

    rng = np.random.default_rng(12345)
    colours = rng.uniform(0.25, 1.0, size=(max(n, 1) + 1, 3))
    colours[0] = 0
    return ListedColormap(colours)
