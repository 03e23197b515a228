"""The BiaPy-style output tree: where one image's results go, how they are stored, when it is finished.

For an input volume ``NAME.tif``::

    OUT/per_image/NAME.tif                   (3, Z, Y, X) probabilities B, C, M
    OUT/per_image_instances/NAME.tif         cells after the watershed
    OUT/per_image_post_processing/NAME.tif   cells after the Voronoi (the result)
    OUT/predict_summary.json                 the predict run (``cartocell-bmz predict``)

Every writer of this tree (``predict``, ``postprocess``, the benchmark, the pipeline's
evaluation) goes through this module, so the files follow one rule:

- probabilities are ``float32`` (``float16`` on request, half the disk space), uncompressed;
- labels are in the smallest unsigned type holding the largest label
  (:func:`cartocell_bmz.core.labels.label_dtype`: ``uint16`` up to 65535 cells), uncompressed
  (what ``predict`` and the benchmark have always written, byte for byte);
- every file is written atomically, probabilities first and Voronoi cells last, so a
  volume whose Voronoi file exists is finished (:func:`is_finished`).

Cells are counted one way, :func:`count_cells`: the distinct non-zero labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from cartocell_bmz.core.labels import as_label_dtype
from cartocell_bmz.io.volumes import write_volume
from cartocell_bmz.layout import INSTANCES_DIR, PROBS_DIR, VORONOI_DIR

#: Summary of a predict run, beside the outputs.
PREDICT_SUMMARY_JSON = "predict_summary.json"


class OutputPaths(NamedTuple):
    """The three output files of one volume."""

    probabilities: Path
    instances: Path
    voronoi: Path


def output_paths(out: str | os.PathLike, name: str) -> OutputPaths:
    """The three output files of volume ``name`` in the tree ``out``.

    Examples
    --------
    >>> p = output_paths("OUT", "a.tif")
    >>> p.voronoi.as_posix(), p._fields
    ('OUT/per_image_post_processing/a.tif', ('probabilities', 'instances', 'voronoi'))
    """
    out = Path(out)
    return OutputPaths(out / PROBS_DIR / name, out / INSTANCES_DIR / name, out / VORONOI_DIR / name)


def is_finished(out: str | os.PathLike, name: str, *, probabilities: bool = True) -> bool:
    """Whether the outputs of ``name`` exist (all three, or the two label files when not ``probabilities``).

    Files are renamed into place only when complete, so an existing file is a whole one.
    """
    paths = output_paths(out, name)
    wanted = paths if probabilities else (paths.instances, paths.voronoi)
    return all(p.is_file() for p in wanted)


def count_cells(labels: np.ndarray) -> int:
    """Number of distinct non-zero labels.

    Examples
    --------
    >>> count_cells(np.array([[[0, 3, 3, 7]]], np.uint16))
    2
    >>> count_cells(np.zeros((0, 2, 2), np.uint16))
    0
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return 0
    top = int(labels.max())
    if top <= 0:
        return 0
    if top <= 4 * labels.size + 65536:  # a table of label presence is cheap
        return int(np.count_nonzero(np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=top + 1)[1:]))
    return int(np.unique(labels[labels > 0]).size)


def label_array(labels: np.ndarray) -> np.ndarray:
    """``labels`` in the stored label type (no copy when already of it).

    Examples
    --------
    >>> label_array(np.array([[[0, 2, 70000]]], np.int64)).dtype.name
    'uint32'
    """
    return as_label_dtype(labels)


def write_probabilities(
    out: str | os.PathLike, name: str, probs: np.ndarray, spacing: Sequence[float], *, float16: bool = False
) -> Path:
    """Write the ``(3, Z, Y, X)`` probabilities of ``name`` (``float32``, or ``float16``), atomically."""
    data = np.asarray(probs).astype(np.float16 if float16 else np.float32, copy=False)
    return write_volume(output_paths(out, name).probabilities, data, spacing)


def write_cells(
    out: str | os.PathLike, name: str, instances: np.ndarray, voronoi: np.ndarray, spacing: Sequence[float]
) -> OutputPaths:
    """Write the watershed and Voronoi cells of ``name``, each atomically, the Voronoi last.

    Returns
    -------
    OutputPaths
        All three paths of ``name`` (the probabilities are not written here).
    """
    paths = output_paths(out, name)
    write_volume(paths.instances, label_array(instances), spacing)
    write_volume(paths.voronoi, label_array(voronoi), spacing)
    return paths


__all__ = ["OutputPaths", "PREDICT_SUMMARY_JSON", "count_cells", "is_finished", "label_array", "output_paths",
           "write_cells", "write_probabilities"]
