"""The output tree: paths, the storage rule (types, compression), atomic writes, the finished check, cell counts."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cartocell_bmz.errors import OutputError
from cartocell_bmz.io.outputs import (
    count_cells, is_finished, label_array, output_paths, write_cells, write_probabilities,
)
from cartocell_bmz.io.volumes import read_volume, write_volume
from cartocell_bmz.layout import INSTANCES_DIR, PROBS_DIR, VORONOI_DIR

SPACING = (2.0, 0.5, 0.25)


def _labels(top: int, dtype=np.int64) -> np.ndarray:
    lab = np.zeros((2, 4, 5), dtype)
    lab[0, 0, :3] = [1, 2, 2]
    lab[1, 3, 4] = top
    return lab


def _stored(path):
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].dtype, tif.pages[0].compression


def test_paths_follow_the_layout(tmp_path):
    p = output_paths(tmp_path, "a.tif")
    assert p == (tmp_path / PROBS_DIR / "a.tif", tmp_path / INSTANCES_DIR / "a.tif", tmp_path / VORONOI_DIR / "a.tif")
    assert p.voronoi == tmp_path / VORONOI_DIR / "a.tif"


@pytest.mark.parametrize("top, dtype", [(7, np.uint16), (65535, np.uint16), (65536, np.uint32)])
def test_labels_take_the_smallest_unsigned_type_uncompressed(tmp_path, top, dtype):
    lab = _labels(top)
    assert label_array(lab).dtype == dtype
    paths = write_cells(tmp_path, "a.tif", lab, lab, SPACING)
    for path in (paths.instances, paths.voronoi):
        stored_dtype, compression = _stored(path)
        assert stored_dtype == dtype and compression == 1  # 1: none
        vol = read_volume(path, "labels")
        assert np.array_equal(vol.data, lab) and vol.spacing == pytest.approx(SPACING)
    assert not paths.probabilities.exists()


def test_labels_bytes_are_those_of_a_plain_write(tmp_path):
    """What predict (and so the benchmark) wrote before the output tree had its own module."""
    lab = _labels(9, np.uint16)
    paths = write_cells(tmp_path / "new", "a.tif", lab, lab, SPACING)
    old = write_volume(tmp_path / "old.tif", lab, SPACING)
    assert paths.voronoi.read_bytes() == old.read_bytes()


@pytest.mark.parametrize("float16, dtype", [(False, np.float32), (True, np.float16)])
def test_probabilities_are_float32_or_float16_uncompressed(tmp_path, float16, dtype):
    probs = np.random.default_rng(0).random((3, 2, 4, 5))  # float64 in, float32 stored
    path = write_probabilities(tmp_path, "a.tif", probs, SPACING, float16=float16)
    assert path == output_paths(tmp_path, "a.tif").probabilities
    assert _stored(path) == (dtype, 1)
    vol = read_volume(path, "probabilities")
    np.testing.assert_allclose(vol.data, probs, atol=1e-3 if float16 else 1e-7)
    assert vol.spacing == pytest.approx(SPACING)


def test_float32_probabilities_bytes_are_those_of_a_plain_write(tmp_path):
    probs = np.random.default_rng(1).random((3, 2, 4, 5), dtype=np.float32)
    path = write_probabilities(tmp_path / "new", "a.tif", probs, SPACING)
    assert path.read_bytes() == write_volume(tmp_path / "old.tif", probs, SPACING).read_bytes()


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    lab = _labels(5, np.uint16)
    real = tifffile.imwrite

    def dies_midway(path, data, **kwargs):
        real(path, data[:1], **kwargs)  # part of the file is on disk...
        raise OSError(28, "No space left on device")  # ...when the disk fills

    monkeypatch.setattr(tifffile, "imwrite", dies_midway)
    with pytest.raises(OutputError, match="cannot be written"):
        write_cells(tmp_path, "a.tif", lab, lab, SPACING)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no partial file, not even a hidden one
    assert not is_finished(tmp_path, "a.tif", probabilities=False)


def test_finished_means_the_files_exist(tmp_path):
    lab = _labels(3, np.uint16)
    assert not is_finished(tmp_path, "a.tif")
    write_cells(tmp_path, "a.tif", lab, lab, SPACING)
    assert is_finished(tmp_path, "a.tif", probabilities=False)
    assert not is_finished(tmp_path, "a.tif")  # predict also needs the probabilities
    write_probabilities(tmp_path, "a.tif", np.zeros((3, *lab.shape), np.float32), SPACING)
    assert is_finished(tmp_path, "a.tif")
    output_paths(tmp_path, "a.tif").voronoi.unlink()
    assert not is_finished(tmp_path, "a.tif")
    assert not is_finished(tmp_path, "b.tif")


@pytest.mark.parametrize(
    "labels, n",
    [
        (np.zeros((2, 3, 3), np.uint16), 0),
        (np.zeros((0, 3, 3), np.uint16), 0),
        (np.array([[[0, 1, 1, 5, 5, 5, 9]]], np.uint16), 3),  # gaps in the numbering: ids, not the largest
        (np.array([[[0, 2**40, 2**40, 3]]], np.uint64), 2),  # huge ids: no table of 2**40 entries
        (np.array([[[0, 4, 2]]], np.int32), 2),
    ],
)
def test_cells_are_the_distinct_non_zero_labels(labels, n):
    assert count_cells(labels) == n == len(set(np.unique(labels)) - {0})
