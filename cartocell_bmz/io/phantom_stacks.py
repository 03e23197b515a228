"""Synthetic whole acquisitions on disk: stacks of :mod:`cartocell_bmz.core.stack_phantoms` and their truth.

:func:`make_stacks` writes::

    OUT/x/stack_NNN.tif    membrane image (uint16) with its voxel size
    OUT/y/stack_NNN.tif    cell labels (unique over the stack)
    OUT/cysts.csv          one row per object: stack, cyst, kind, stage, expected, z0, y0, x0, z1, y1, x1
    OUT/stacks.json        the parameters

Files are written atomically; progress goes through a ``progress(done, total, message)`` callback.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from cartocell_bmz.core.labels import as_label_dtype
from cartocell_bmz.core.stack_phantoms import (
    DEFAULT_CYST_SHAPE, DEFAULT_MIX, DEFAULT_STACK_SHAPE, DEFAULT_STACK_SPACING, make_stack,
)
from cartocell_bmz.io.progress import ProgressCallback, report
from cartocell_bmz.layout import LABEL_DIR, RAW_DIR

#: Name of the truth table of a folder of synthetic stacks.
TRUTH_CSV = "cysts.csv"
#: Columns of :data:`TRUTH_CSV`.
TRUTH_COLUMNS: tuple[str, ...] = ("stack", "cyst", "kind", "stage", "expected", "z0", "y0", "x0", "z1", "y1", "x1")


def make_stacks(
    out: str | Path,
    n_stacks: int = 3,
    *,
    shape: Sequence[int] = DEFAULT_STACK_SHAPE,
    spacing: Sequence[float] = DEFAULT_STACK_SPACING,
    cyst_shape: Sequence[int] = DEFAULT_CYST_SHAPE,
    mix: dict[str, int] | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Write synthetic multi-cyst stacks, their labels and their truth table.

    Stack ``i`` depends only on ``(seed, i)``.

    Parameters
    ----------
    out : path-like
        Output folder (created).
    n_stacks : int
        Number of stacks.
    shape, spacing, cyst_shape, mix :
        See :func:`~cartocell_bmz.core.stack_phantoms.make_stack`.
    seed : int
        Random seed.
    progress : callable, optional
        ``progress(done, total, message)`` once before the first stack and after each.

    Returns
    -------
    list of pathlib.Path
        The written raw stacks.
    """
    from cartocell_bmz.io.volumes import atomic_open, ensure_output_dir, write_volume

    out = ensure_output_dir(out)
    rows: list[dict] = []
    written: list[Path] = []
    report(progress, 0, n_stacks, "stacks")
    for i in range(int(n_stacks)):
        stack = make_stack(shape, spacing, cyst_shape=cyst_shape, mix=mix or dict(DEFAULT_MIX), raw=True,
                           seed=np.random.SeedSequence([seed, i]))
        name = f"stack_{i:03d}.tif"
        written.append(write_volume(out / RAW_DIR / name, stack.raw, stack.spacing))
        write_volume(out / LABEL_DIR / name, as_label_dtype(stack.labels), stack.spacing, compress=True)
        for c in stack.cysts:
            rows.append({"stack": name, "cyst": c.index, "kind": c.kind, "stage": c.stage, "expected": c.expected,
                         **dict(zip(TRUTH_COLUMNS[5:], c.box))})
        report(progress, i + 1, n_stacks, name)
    with atomic_open(out / TRUTH_CSV, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TRUTH_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    with atomic_open(out / "stacks.json") as fh:
        json.dump({"generator": "cartocell_bmz.core.stack_phantoms", "n_stacks": int(n_stacks), "seed": int(seed),
                   "shape": list(shape), "spacing": list(spacing), "cyst_shape": list(cyst_shape),
                   "mix": mix or DEFAULT_MIX}, fh, indent=2)
    return written


__all__ = ["TRUTH_CSV", "TRUTH_COLUMNS", "make_stacks"]
