"""io.stacks: lazy box reads of contiguous, page-per-plane and big-endian TIFFs; the scratch volume; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cartocell_bmz.errors import InputError
from cartocell_bmz.io.stacks import ScratchVolume, open_stack
from cartocell_bmz.io.volumes import write_volume

BOXES = [(slice(2, 5), slice(3, 20), slice(4, 40)), (slice(None),), (slice(1, 3), slice(None), slice(None)),
         (slice(0, 9), slice(0, 30), slice(5, 6)), (Ellipsis, slice(7, 9))]


@pytest.fixture()
def volume():
    return np.random.default_rng(0).integers(0, 4000, (9, 30, 41)).astype(np.uint16)


@pytest.mark.parametrize("compress, mode", [(False, "contiguous"), (True, "pages")])
def test_boxes_read_lazily(tmp_path, volume, compress, mode):
    path = write_volume(tmp_path / "s.tif", volume, (1.0, 0.5, 0.25), compress=compress)
    with open_stack(path) as stack:
        assert stack.mode == mode and stack.shape == volume.shape and stack.spacing == (1.0, 0.5, 0.25)
        for box in BOXES:
            assert np.array_equal(stack[box], volume[box]), box
        with pytest.raises(TypeError, match="slices"):
            stack[0, 1, 2]


def test_big_endian_and_given_spacing(tmp_path, volume):
    tifffile.imwrite(tmp_path / "be.tif", volume.astype(">u2"), byteorder=">")
    with pytest.raises(InputError, match="no voxel size; give it with --spacing"):
        open_stack(tmp_path / "be.tif")
    with open_stack(tmp_path / "be.tif", spacing=(2, 1, 1)) as stack:
        assert stack.spacing == (2.0, 1.0, 1.0) and stack.dtype == np.uint16
        assert np.array_equal(stack[2:5, 1:7, 3:9], volume[2:5, 1:7, 3:9])


def test_bad_input_is_one_line(tmp_path, volume):
    with pytest.raises(InputError, match="file not found"):
        open_stack(tmp_path / "missing.tif")
    tifffile.imwrite(tmp_path / "flat.tif", volume[0])
    with pytest.raises(InputError, match="2D image holds no 3D cysts"):
        open_stack(tmp_path / "flat.tif", spacing=(1, 1, 1))
    (tmp_path / "junk.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="cannot be read as a TIFF"):
        open_stack(tmp_path / "junk.tif")


def test_scratch_volume_writes_and_reads_boxes_and_is_removed(tmp_path):
    rng = np.random.default_rng(1)
    ref = np.zeros((5, 6, 7), np.uint8)
    with ScratchVolume(tmp_path, ref.shape) as scratch:
        assert np.array_equal(scratch[:], ref)  # starts at zero
        block = rng.integers(0, 4, (3, 4, 5)).astype(np.uint8)
        scratch[1:4, 2:6, 1:6] = block
        ref[1:4, 2:6, 1:6] = block
        scratch[0:2] = 3
        ref[0:2] = 3
        assert np.array_equal(scratch[:], ref) and np.array_equal(scratch[1:5, 2:4, 3:7], ref[1:5, 2:4, 3:7])
        path = scratch.path
        assert path.exists()
    assert not path.exists()
