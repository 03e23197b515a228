"""Training curves as PNG charts (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from cartocell_bmz.layout import CHANNELS

_COLOURS = {"B": "tab:green", "C": "tab:red", "M": "tab:blue"}


def plot_training_curves(
    rows: Sequence[Mapping[str, float]], out_dir: str | os.PathLike, *, best_epoch: int | None = None
) -> tuple[Path, Path]:
    """Write ``loss.png`` (train and validation loss) and ``iou.png`` (IoU of B, C, M).

    Parameters
    ----------
    rows : sequence of mappings
        One row per epoch with keys ``epoch``, ``train_loss``, ``val_loss``,
        ``iou_B``, ``iou_C``, ``iou_M`` (the rows of ``train_log.csv``).
    out_dir : path-like
        Folder of the charts (created).
    best_epoch : int, optional
        Epoch marked with a vertical line (the best checkpoint).

    Returns
    -------
    tuple of pathlib.Path
        The loss chart and the IoU chart.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cartocell_bmz.io.volumes import atomic_path

    out_dir = Path(out_dir)
    epochs = [int(r["epoch"]) for r in rows]

    def _finish(fig, ax, title, ylabel, name):
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.6", linestyle=":", label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = out_dir / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        return path

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [float(r["train_loss"]) for r in rows], marker=".", label="training")
    ax.plot(epochs, [float(r["val_loss"]) for r in rows], marker=".", label="validation")
    loss_png = _finish(fig, ax, "loss (sum of per-channel BCE)", "loss", "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for ch in CHANNELS:
        ax.plot(epochs, [float(r[f"iou_{ch}"]) for r in rows], marker=".", color=_COLOURS[ch], label=f"IoU {ch}")
    ax.set_ylim(0, 1)
    iou_png = _finish(fig, ax, "validation IoU per channel (probability > 0.5)", "IoU", "iou.png")
    return loss_png, iou_png
