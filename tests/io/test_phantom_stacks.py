"""io.phantom_stacks: synthetic stacks on disk with their voxel size, labels and truth table."""

from __future__ import annotations

import csv
import json

import numpy as np

from cartocell_bmz.io.phantom_stacks import TRUTH_COLUMNS, TRUTH_CSV, make_stacks
from cartocell_bmz.io.volumes import read_volume


def test_stacks_labels_and_truth(tmp_path):
    mix = {"single": 2, "cut": 1, "debris": 1}
    paths = make_stacks(tmp_path, 2, shape=(24, 96, 112), cyst_shape=(18, 40, 40), mix=mix, seed=4)
    assert [p.name for p in paths] == ["stack_000.tif", "stack_001.tif"]
    raw = read_volume(paths[0])
    labels = read_volume(tmp_path / "y" / "stack_000.tif", "labels")
    assert raw.spacing_known and raw.spacing == (1.0, 0.5, 0.5) and raw.data.shape == (24, 96, 112)
    assert labels.data.shape == raw.data.shape and labels.data.max() > 10
    with open(tmp_path / TRUTH_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == TRUTH_COLUMNS
    assert {r["kind"] for r in rows} <= set(mix) and {r["stack"] for r in rows} == {p.name for p in paths}
    for r in rows:  # each true box holds cells of the labels
        box = tuple(slice(int(r[a]), int(r[b])) for a, b in (("z0", "z1"), ("y0", "y1"), ("x0", "x1")))
        lab = read_volume(tmp_path / "y" / r["stack"], "labels").data
        assert np.count_nonzero(lab[box]) > 0
    meta = json.loads((tmp_path / "stacks.json").read_text())
    assert meta["n_stacks"] == 2 and meta["mix"] == mix
    # the same seed gives the same stacks
    again = make_stacks(tmp_path / "again", 1, shape=(24, 96, 112), cyst_shape=(18, 40, 40), mix=mix, seed=4)
    assert np.array_equal(read_volume(again[0]).data, raw.data)
