"""crop reads an OME-Zarr acquisition as it reads the same stack as a TIFF: the same candidates and crops."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cartocell_bmz.io.phantom_stacks import make_stacks
from cartocell_bmz.io.volumes import read_volume, write_volume
from cartocell_bmz.run.crop import CANDIDATES_CSV, CropSettings, crop_stacks

pytest.importorskip("zarr", minversion="3")  # the writer in builders uses the Zarr 3 API
from builders import write_ome_zarr  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_ome_zarr_and_tiff_give_the_same_crops(tmp_path):
    (made,) = make_stacks(tmp_path / "made", 1, shape=(22, 56, 72), cyst_shape=(18, 44, 44), mix={"single": 1, "debris": 1}, seed=4)
    vol = read_volume(made)
    tif = write_volume(tmp_path / "acq.tif", vol.data, vol.spacing)
    zarr_path = write_ome_zarr(tmp_path / "acq.ome.zarr", vol.data, vol.spacing, version="0.5")
    settings = CropSettings(block=(22, 56, 40))
    rows = {}
    for name, path in (("tif", tif), ("zarr", zarr_path)):
        rows[name] = crop_stacks(ROOT / "model_packages" / "synthetic-unet", [path], tmp_path / name,
                                 settings=settings, device="cpu", scheduler="sync")
    assert [r["crop"] for r in rows["zarr"]] == [r["crop"] for r in rows["tif"]]
    assert any(r["kept"] for r in rows["tif"]) and rows["zarr"][0]["crop"] == "x/acq_cyst_001.tif"
    strip = [{k: v for k, v in r.items() if k != "stack"} for r in rows["tif"]]
    assert [{k: v for k, v in r.items() if k != "stack"} for r in rows["zarr"]] == strip
    for r in rows["tif"]:
        if r["crop"]:
            np.testing.assert_array_equal(tifffile.imread(tmp_path / "zarr" / r["crop"]),
                                          tifffile.imread(tmp_path / "tif" / r["crop"]))
    with open(tmp_path / "zarr" / CANDIDATES_CSV, newline="") as fh:
        assert [r["stack"] for r in csv.DictReader(fh)] == ["acq.ome.zarr"] * len(rows["zarr"])
