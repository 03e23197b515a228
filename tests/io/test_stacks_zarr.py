"""OME-Zarr input: NGFF 0.4 (Zarr v2) and 0.5 (Zarr v3) images read by boxes with their voxel size; bad metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cartocell_bmz.errors import InputError
from cartocell_bmz.io.stacks import open_stack

pytest.importorskip("zarr", minversion="3")  # the writer in builders uses the Zarr 3 API
from builders import write_ome_zarr  # noqa: E402


@pytest.fixture(scope="module")
def volume():
    return np.random.default_rng(0).integers(0, 4000, (10, 40, 36)).astype(np.uint16)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_boxes_and_voxel_size(tmp_path, volume, version):
    path = write_ome_zarr(tmp_path / "a.ome.zarr", volume, (2.0, 0.5, 0.5), version=version)
    with open_stack(path) as stack:
        assert stack.shape == volume.shape and stack.dtype == volume.dtype and stack.mode == "zarr"
        assert stack.spacing == (2.0, 0.5, 0.5)
        np.testing.assert_array_equal(stack[2:7, 5:33, 3:20], volume[2:7, 5:33, 3:20])
        np.testing.assert_array_equal(stack[:], volume)


def test_time_and_channel_axes_of_one_and_units(tmp_path, volume):
    path = write_ome_zarr(tmp_path / "b.zarr", volume[None, None], (1, 1, 2000.0, 500.0, 500.0), axes="tczyx",
                          unit="nanometer")
    with open_stack(path) as stack:
        assert stack.shape == volume.shape and stack.spacing == pytest.approx((2.0, 0.5, 0.5))
        np.testing.assert_array_equal(stack[1:3, :, 4:9], volume[1:3, :, 4:9])
    with open_stack(path, spacing=(1.0, 1.0, 1.0)) as stack:
        assert stack.spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("change, words", [
    ("two channels", "axis 'c' has 2 entries"),
    ("no multiscales", "without OME-NGFF 'multiscales'"),
    ("2d", "z, y and x axes is needed"),
    ("furlong", "unit 'furlong'"),
])
def test_bad_images_are_one_line(tmp_path, volume, change, words):
    path = tmp_path / "bad.zarr"
    if change == "two channels":
        write_ome_zarr(path, np.stack([volume, volume]), (1, 1, 1, 1), axes="czyx")
    elif change == "2d":
        write_ome_zarr(path, volume[0], (1, 1), axes="yx", chunks=(16, 16))
    elif change == "furlong":
        write_ome_zarr(path, volume, (1, 1, 1), unit="furlong")
    else:
        write_ome_zarr(path, volume, (1, 1, 1))
        (path / ".zattrs").write_text(json.dumps({}))
    with pytest.raises(InputError, match=words):
        open_stack(path)


def test_a_folder_that_is_not_zarr(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        open_stack(tmp_path)
