"""Figures of measured cysts, readable at a glance (matplotlib, Agg, written atomically).

* :func:`plot_summary` -- three panels: the polygon distributions (share of valid cells
  with 3 .. 10 neighbours) on the apical and on the basal surface; the scutoid fraction
  of each cyst; Lewis's law (mean apical area of the cells with ``n`` apical neighbours,
  normalised by their cyst's mean, against ``n``, with the law's ``(n - 2) / 4``).
* :func:`plot_montage` -- a mid-slice of each cyst, its cells coloured by their number of
  (lateral) neighbours.

With ``by="group"`` each panel shows the groups (conditions) side by side.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from cartocell_bmz.core.morphology import POLYGON_SIDES
from cartocell_bmz.measure.api import natural_key

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Colours of neighbour counts 3 .. 10 in the montage (and beyond: the last one).
NEIGHBOUR_COLOURS = ("#6a3d9a", "#1f78b4", "#33a02c", "#9e9e9e", "#ff7f00", "#e31a1c", "#b15928", "#000000")


def _groups(frame: "pd.DataFrame", by: str | None) -> list[tuple[str, "pd.DataFrame"]]:
    if by is None or by not in frame.columns:
        return [("all", frame)]
    parts = {str(g): part for g, part in frame.groupby(frame[by].astype(str))}
    return [(g, parts[g]) for g in sorted(parts, key=natural_key)]


def _save(fig, path: str | os.PathLike) -> None:
    from cartocell_bmz.io.volumes import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_summary(cells: "pd.DataFrame", cysts: "pd.DataFrame", path: str | os.PathLike, *, by: str | None = None) -> None:
    """Polygon distributions, scutoid fraction per cyst and Lewis's law, in one PNG.

    Parameters
    ----------
    cells, cysts : pandas.DataFrame
        The ``cells`` and ``cysts`` tables (:class:`cartocell_bmz.measure.api.MeasureTables`).
    path : path-like
        PNG file to write.
    by : str, optional
        Column that splits cysts into groups (``"group"``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid = cells[cells["valid"].astype(bool)]
    groups = _groups(valid, by)
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    _polygons(axes[0], groups, colours)
    _scutoids(axes[1], cysts, by, colours)
    _lewis(axes[2], groups, colours)
    n_valid, n_all = len(valid), len(cells)
    fig.suptitle(f"{len(cysts)} cyst(s), {n_valid} valid cell(s) of {n_all} (valid: touch lumen and outside, "
                 "one piece, not cut by the border)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _polygons(ax, groups, colours) -> None:
    sides = np.array(POLYGON_SIDES)
    width = 0.8 / (2 * len(groups))
    for g, (name, part) in enumerate(groups):
        for s, (surface, hatch) in enumerate((("apical", ""), ("basal", "//"))):
            counts = part[f"{surface}_neighbours"].to_numpy()
            share = [np.mean(counts == k) if len(counts) else 0.0 for k in sides]
            offset = (2 * g + s - len(groups) + 0.5) * width
            label = surface if len(groups) == 1 else f"{name} {surface}"
            ax.bar(sides + offset, share, width, color=colours[g % 10], alpha=1.0 if s == 0 else 0.55,
                   hatch=hatch, edgecolor="white", label=label)
    ax.set_xticks(sides)
    ax.set_xlabel("neighbours (polygon class)")
    ax.set_ylabel("share of valid cells")
    ax.set_title("polygon distribution, apical vs basal")
    ax.legend(fontsize=8)


def _scutoids(ax, cysts, by, colours) -> None:
    order = cysts.iloc[sorted(range(len(cysts)), key=lambda i: (natural_key(cysts[by].iloc[i]) if by else [],
                                                                   natural_key(cysts["cyst"].iloc[i])))]
    names = [str(c) for c in order["cyst"]]
    if by:
        keys = sorted(order[by].astype(str).unique(), key=natural_key)
        colour = [colours[keys.index(str(g)) % 10] for g in order[by]]
    else:
        colour = [colours[0]] * len(order)
    x = np.arange(len(order))
    ax.bar(x, order["scutoid_fraction"].fillna(0).to_numpy(), color=colour, label="any transition")
    if "t1_scutoid_fraction" in order.columns:
        ax.plot(x, order["t1_scutoid_fraction"].to_numpy(), "D", color="black", markersize=4,
                label="in a T1 quartet (partners swap)")
        ax.legend(fontsize=8, loc="upper right")
    if by:
        for g in keys:
            sel = (order[by].astype(str) == g).to_numpy()
            mean = order["scutoid_fraction"][sel].mean()
            ax.hlines(mean, x[sel].min() - 0.4, x[sel].max() + 0.4, colors="black", linestyles="--", linewidth=1)
            ax.text(x[sel].mean(), mean, f" {g}: {mean:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7 if len(names) > 12 else 8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("scutoid fraction (valid cells)")
    ax.set_title("scutoids per cyst")


def _lewis(ax, groups, colours) -> None:
    sides = np.array(POLYGON_SIDES)
    ax.plot(sides, (sides - 2) / 4, color="black", linestyle=":", label="Lewis: (n - 2) / 4")
    for g, (name, part) in enumerate(groups):
        if not len(part):
            continue
        norm = part["apical_area"] / part.groupby("cyst")["apical_area"].transform("mean")
        n = part["apical_neighbours"]
        mean = np.array([norm[n == k].mean() if (n == k).any() else np.nan for k in sides])
        std = np.array([norm[n == k].std() if (n == k).sum() > 1 else np.nan for k in sides])
        ok = np.isfinite(mean)
        ax.errorbar(sides[ok] + 0.08 * g, mean[ok], yerr=np.nan_to_num(std[ok]), marker="o", capsize=3,
                    color=colours[g % 10], label="apical" if len(groups) == 1 else str(name))
    ax.set_xticks(sides)
    ax.set_xlabel("apical neighbours n")
    ax.set_ylabel("apical area / mean of its cyst")
    ax.set_title("Lewis's law (apical surface)")
    ax.legend(fontsize=8)


def plot_montage(
    slices: Mapping[str, np.ndarray],
    cells: "pd.DataFrame",
    cysts: "pd.DataFrame",
    spacing: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    by: str | None = None,
    columns: int = 6,
) -> None:
    """A mid-slice of each cyst, cells coloured by their number of neighbours, in one PNG.

    Parameters
    ----------
    slices : mapping
        Cyst name -> ``(Y, X)`` labels of its mid z-slice.
    cells, cysts : pandas.DataFrame
        The ``cells`` and ``cysts`` tables.
    spacing : mapping
        Cyst name -> voxel size ``(z, y, x)`` (for the aspect ratio).
    path : path-like
        PNG file to write.
    by : str, optional
        Column naming each cyst's group (shown in its title).
    columns : int
        Tiles per row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = [str(c) for c in cysts["cyst"]]
    group = dict(zip(names, cysts[by].astype(str))) if by and by in cysts.columns else {}
    cols = max(1, min(columns, len(names)))
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.7 * rows + 0.6), squeeze=False)
    cmap = ListedColormap(["white", *NEIGHBOUR_COLOURS])
    for ax, name in zip(axes.flat, names):
        labels = np.asarray(slices[name])
        mine = cells[cells["cyst"].astype(str) == name]
        lut = np.zeros(int(max(labels.max(), mine["cell"].max() if len(mine) else 0)) + 1, np.int64)
        lut[mine["cell"].to_numpy(np.int64)] = np.clip(mine["neighbours"].to_numpy(np.int64), 3, 10) - 2
        image = lut[labels]
        edge = np.zeros(labels.shape, bool)  # thin white lines between cells
        edge[:-1] |= (labels[:-1] != labels[1:]) & (labels[1:] > 0)
        edge[:, :-1] |= (labels[:, :-1] != labels[:, 1:]) & (labels[:, 1:] > 0)
        image[edge & (labels > 0)] = 0
        dy, dx = spacing[name][1], spacing[name][2]
        ax.imshow(image, cmap=cmap, vmin=-0.5, vmax=len(NEIGHBOUR_COLOURS) + 0.5, interpolation="nearest",
                  extent=(0, labels.shape[1] * dx, labels.shape[0] * dy, 0))
        ax.set_title(f"{name} ({group[name]})" if name in group else name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    legend = [Patch(color=c, label=("<=" if k == 3 else "") + f"{k}" + ("+" if k == 10 else ""))
              for k, c in zip(POLYGON_SIDES, NEIGHBOUR_COLOURS)]
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, title="neighbours", title_fontsize=8)
    fig.suptitle("mid z-slice of each cyst, cells coloured by their number of neighbours", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    _save(fig, path)
    plt.close(fig)
