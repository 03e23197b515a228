"""Run BiaPy 3.7.1's ``measure_morphological_props_and_filter`` on saved labels; print JSON.

Run by ``bench_measure.py`` with the Python of BiaPy's own virtual environment (BiaPy is
a benchmark dependency, not a runtime one)::

    .biapy-venv/bin/python benchmarks/biapy_measure_driver.py LABELS.npy Z Y X [REPEAT] [BALL.npy:Z,Y,X ...]

The function is called as BiaPy's ``InstanceSegmentationWorkflow`` calls it when
``TEST.POST_PROCESSING.MEASURE_PROPERTIES.ENABLE`` is set (``biapy/engine/instance_seg.py``):
the labels, the voxel size as ``resolution``, the default ``EXTRA_PROPS = []``, no
filtering.  Its raw image (``intensity_image``) is only used for intensity properties,
none of which are asked for, so ``None`` is passed.  BiaPy's post-processing module is
imported unmodified, with the package initialisers bypassed as in
``biapy_postprocess_driver.py``.

Printed: the fastest time of REPEAT runs (s), the peak memory rise (MiB, as in
``biapy_postprocess_driver.measure``), the number of cells, and for each ``BALL.npy``
(one object, label 1, with its voxel size) the surface area BiaPy reports (its
``perimeters`` column: in voxel units, whatever the voxel size).
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np

from biapy_postprocess_driver import _import_biapy_postprocessing, measure


def _quiet(func, *args, **kwargs):
    """Call ``func`` with BiaPy's progress prints kept off stdout (stdout carries the JSON)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return func(*args, **kwargs)


def main(argv: list[str]) -> int:
    labels_path, spacing = argv[0], [float(v) for v in argv[1:4]]
    repeat = int(argv[4]) if len(argv) > 4 else 1
    balls = argv[5:]
    pp = _import_biapy_postprocessing()
    labels = np.load(labels_path)
    call = pp.measure_morphological_props_and_filter
    (_, result), seconds, mib = measure(_quiet, call, labels, None, spacing, extra_props=[], repeat=repeat)
    areas = []
    for spec in balls:
        path, sizes = spec.rsplit(":", 1)
        ball = np.load(path)
        _, d = _quiet(call, ball, None, [float(v) for v in sizes.split(",")], extra_props=[])
        areas.append(float(d["perimeters"][0]))
    print(json.dumps({"seconds": seconds, "mib": mib, "cells": int(len(result["labels"])), "ball_areas": areas}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
