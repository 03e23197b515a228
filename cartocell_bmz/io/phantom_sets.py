"""Synthetic datasets on disk: cysts of :mod:`cartocell_bmz.core.phantoms` in the CartoCell folder layout.

* :func:`make_dataset` -- ``OUT/{train_M1,validation,train_M2,test}/{x,y}/cyst_NNN_<stage>.tif``
  (raw image and labels of the same name and voxel size) plus ``OUT/dataset.json``,
  and PNG previews on request.
* :func:`save_preview` -- a PNG of the mid slices of one cyst.

Files are written atomically; progress is reported through a ``progress(done, total)``
callback (the CLI draws it as a bar), never printed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from cartocell_bmz.core.phantoms import STAGES, Cyst, PhantomConfig, make_cyst
from cartocell_bmz.layout import LABEL_DIR, RAW_DIR, SPLITS


def make_dataset(
    out: str | Path,
    config: PhantomConfig | None = None,
    *,
    preview: bool = False,
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
        Also write a PNG of the mid slices of every cyst.
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
    unknown = set(config.counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; splits are {SPLITS}")
    out = ensure_output_dir(out)
    stages = list(STAGES)
    written: dict[str, list[Path]] = {}
    jobs = [(split, i) for split in SPLITS for i in range(config.counts.get(split, 0))]
    if progress is not None:
        progress(0, len(jobs))
    for done, (split, i) in enumerate(jobs, start=1):
        seq = np.random.SeedSequence([config.seed, SPLITS.index(split), i])
        stage = stages[(i + SPLITS.index(split)) % len(stages)]
        cyst = make_cyst(
            config.shape, config.spacing, stage=stage, max_cells=config.max_cells,
            oversampling=config.m1_oversampling if split == "train_M1" else 1, seed=seq,
        )
        name = f"cyst_{i:03d}_{stage}.tif"
        write_volume(out / split / RAW_DIR / name, cyst.raw, cyst.spacing)
        write_volume(out / split / LABEL_DIR / name, cyst.labels, cyst.spacing, compress=True)
        written.setdefault(split, []).append(out / split / LABEL_DIR / name)
        if preview:
            save_preview(out / "previews" / f"{split}_{Path(name).stem}.png", cyst)
        if progress is not None:
            progress(done, len(jobs))
    with atomic_open(out / "dataset.json") as fh:
        json.dump({"generator": "cartocell_bmz.core.phantoms", **asdict(config)}, fh, indent=2)
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

    from cartocell_bmz.io.volumes import atomic_path

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
