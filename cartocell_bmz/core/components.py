"""Connected components of a mask too large for memory, labelled slab by slab.

:func:`component_boxes` reads a ``(Z, Y, X)`` mask a few z-planes at a time,
labels each slab (6-connectivity, as :func:`scipy.ndimage.label`), joins labels
that meet across slab boundaries (union-find) and returns every component's
box, voxel count and one voxel inside it.  Memory: one slab of labels (int32)
and a plane of the previous slab; nothing of the size of the mask.  A caller
then reads each component's box alone (the component is the connected piece
of the box's mask through its seed voxel).

Examples
--------
>>> m = np.zeros((6, 4, 4), bool)
>>> m[0:5, 1, 1] = True          # one column across slabs
>>> m[2, 3, 3] = True            # a single voxel
>>> [(c.box, c.voxels) for c in component_boxes(lambda a, b: m[a:b], m.shape, planes=2)]
[((0, 1, 1, 5, 2, 2), 5), ((2, 3, 3, 3, 4, 4), 1)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

Box = tuple[int, int, int, int, int, int]


@dataclass(frozen=True)
class Component:
    """One connected component.

    Attributes
    ----------
    box : tuple of 6 ints
        ``(z0, y0, x0, z1, y1, x1)``, half-open.
    voxels : int
        Its voxel count.
    seed : tuple of 3 ints
        One of its voxels ``(z, y, x)``.
    """

    box: Box
    voxels: int
    seed: tuple[int, int, int]


def component_boxes(
    read: Callable[[int, int], np.ndarray],
    shape: Sequence[int],
    *,
    planes: int = 32,
) -> list[Component]:
    """Boxes of the connected components of a mask read slab by slab.

    Parameters
    ----------
    read : callable
        ``read(z0, z1)`` returns the mask's planes ``z0:z1`` as a ``(z1 - z0, Y, X)``
        array (nonzero = in the mask).
    shape : sequence of 3 ints
        ``(Z, Y, X)`` of the mask.
    planes : int
        Planes per slab.

    Returns
    -------
    list of Component
        Sorted by box; the same components as :func:`scipy.ndimage.label` of the whole mask.
    """
    from scipy import ndimage as ndi

    n_z = int(shape[0])
    step = max(1, int(planes))
    lo: list[list[int]] = []
    hi: list[list[int]] = []
    counts: list[int] = []
    seeds: list[tuple[int, int, int]] = []
    parent: list[int] = []
    previous: np.ndarray | None = None  # last plane of the previous slab, global ids + 1
    for z0 in range(0, n_z, step):
        z1 = min(n_z, z0 + step)
        labels, n = ndi.label(np.asarray(read(z0, z1)) != 0)
        base = len(parent)
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            for i, sl in enumerate(ndi.find_objects(labels), start=1):
                first = np.unravel_index(int(np.argmax(labels[sl] == i)), labels[sl].shape)
                seeds.append((z0 + sl[0].start + int(first[0]), sl[1].start + int(first[1]),
                              sl[2].start + int(first[2])))
                lo.append([z0 + sl[0].start, sl[1].start, sl[2].start])
                hi.append([z0 + sl[0].stop, sl[1].stop, sl[2].stop])
                counts.append(int(sizes[i]))
                parent.append(base + i - 1)
            if previous is not None:
                first_plane = labels[0]
                both = (previous > 0) & (first_plane > 0)
                if both.any():
                    pairs = np.unique(np.stack([previous[both] - 1, first_plane[both] + base - 1], 1), axis=0)
                    for a, b in pairs:
                        _union(parent, int(a), int(b))
        last = labels[-1]
        previous = np.where(last > 0, last + base, 0)
        del labels
    return _merge(parent, lo, hi, counts, seeds)


def _find(parent: list[int], i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


def _union(parent: list[int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra != rb:
        parent[max(ra, rb)] = min(ra, rb)


def _merge(parent, lo, hi, counts, seeds) -> list[Component]:
    """One component per union-find root: the union of its pieces' boxes, their summed counts."""
    groups: dict[int, list[int]] = {}
    for i in range(len(parent)):
        groups.setdefault(_find(parent, i), []).append(i)
    out = []
    for root, members in groups.items():
        box_lo = np.min([lo[m] for m in members], axis=0)
        box_hi = np.max([hi[m] for m in members], axis=0)
        box = (*(int(v) for v in box_lo), *(int(v) for v in box_hi))
        out.append(Component(box, int(sum(counts[m] for m in members)), seeds[root]))  # type: ignore[arg-type]
    return sorted(out, key=lambda c: c.box)


__all__ = ["Component", "component_boxes"]
