from __future__ import annotations

import numpy as np
import pytest
import tifffile

from cartocell_bmz.errors import InputError, OutputError
from cartocell_bmz.io.volumes import (
    atomic_open,
    atomic_path,
    check_same_shape,
    ensure_output_dir,
    list_volumes,
    read_spacing,
    read_volume,
    resolve_inputs,
    write_volume,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float16, np.uint32])
def test_roundtrip_keeps_data_and_spacing(tmp_path, dtype):
    data = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 200).astype(dtype)
    path = write_volume(tmp_path / "v.tif", data, (2.5, 0.4, 0.3))
    kind = "image" if np.dtype(dtype).kind == "f" else "labels"
    vol = read_volume(path, kind)
    np.testing.assert_array_equal(vol.data, data.astype(vol.data.dtype))
    np.testing.assert_allclose(vol.spacing, (2.5, 0.4, 0.3), rtol=1e-5)
    assert vol.spacing_known


def test_probabilities_czyx_roundtrip(tmp_path):
    probs = np.random.default_rng(0).random((3, 4, 8, 8), dtype=np.float32)
    write_volume(tmp_path / "p.tif", probs, (1.0, 0.5, 0.5))
    vol = read_volume(tmp_path / "p.tif", "probabilities")
    assert vol.data.shape == (3, 4, 8, 8)
    np.testing.assert_array_equal(vol.data, probs)
    assert read_spacing(tmp_path / "p.tif") == ((1.0, 0.5, 0.5), True)


def test_ome_spacing_in_nanometres_is_converted(tmp_path):
    data = np.zeros((3, 4, 5), np.uint16)
    tifffile.imwrite(
        tmp_path / "o.ome.tif", data, ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm",
                  "PhysicalSizeY": 250.0, "PhysicalSizeYUnit": "nm",
                  "PhysicalSizeZ": 1000.0, "PhysicalSizeZUnit": "nm"},
    )
    vol = read_volume(tmp_path / "o.ome.tif", "labels")
    np.testing.assert_allclose(vol.spacing, (1.0, 0.25, 0.25))


def test_file_without_metadata_has_unit_spacing(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((3, 4, 5), np.uint8))
    vol = read_volume(tmp_path / "plain.tif")
    assert vol.spacing == (1.0, 1.0, 1.0) and not vol.spacing_known


def test_singleton_axes_are_squeezed(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.ones((1, 3, 1, 4, 5), np.uint8), imagej=True)
    assert read_volume(tmp_path / "s.tif").data.shape == (3, 4, 5)


@pytest.mark.parametrize(
    "make, kind, message",
    [
        (lambda p: tifffile.imwrite(p, np.zeros((8, 8), np.uint8)), "image", "2 dimension(s)"),
        (lambda p: tifffile.imwrite(p, np.zeros((2, 2, 3, 4, 5), np.uint8)), "image", "5 dimension(s)"),
        (lambda p: tifffile.imwrite(p, np.zeros((3, 4, 5), np.uint8)), "probabilities", "CZYX"),
        (lambda p: tifffile.imwrite(p, np.full((3, 4, 5), np.nan, np.float32)), "image", "NaN or infinite"),
        (lambda p: tifffile.imwrite(p, np.full((3, 4, 5), np.inf, np.float32)), "probabilities", "dimension"),
        (lambda p: tifffile.imwrite(p, np.full((3, 4, 5), 1.5, np.float32)), "labels", "fractional"),
        (lambda p: tifffile.imwrite(p, np.full((3, 4, 5), -1, np.int16)), "labels", "negative"),
        (lambda p: p.write_bytes(b""), "image", "empty"),
        (lambda p: p.write_text("not a tiff at all"), "image", "cannot be read as a TIFF"),
    ],
)
def test_bad_input_raises_one_clear_error(tmp_path, make, kind, message):
    path = tmp_path / "bad.tif"
    make(path)
    with pytest.raises(InputError) as err:
        read_volume(path, kind)
    text = str(err.value)
    assert str(path) in text and message in text and "\n" not in text


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "t.tif"
    write_volume(path, np.ones((8, 32, 32), np.uint16), (1, 1, 1))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="t.tif"):
        read_volume(path)


def test_float_labels_with_whole_values_are_accepted(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.full((3, 4, 5), 7.0, np.float32))
    vol = read_volume(tmp_path / "f.tif", "labels")
    assert vol.data.dtype == np.uint16 and int(vol.data.max()) == 7


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_volume(tmp_path / "nope.tif")


def test_shape_mismatch_names_ground_truth(tmp_path):
    with pytest.raises(InputError, match=r"gt.tif: ground-truth shape \(1, 2, 3\) differs"):
        check_same_shape((1, 2, 4), (1, 2, 3), tmp_path / "img.tif", tmp_path / "gt.tif")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


def test_output_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        ensure_output_dir(f)


def test_list_and_resolve_inputs(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        list_volumes(tmp_path / "none")
    with pytest.raises(InputError, match="no TIFF"):
        list_volumes(tmp_path)
    for n in ("b.tif", "a.tiff", "c.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_volumes(tmp_path)] == ["a.tiff", "b.tif"]
    assert [p.name for p in resolve_inputs(str(tmp_path / "*.tif"))] == ["b.tif"]
    assert [p.name for p in resolve_inputs(tmp_path / "b.tif")] == ["b.tif"]
    with pytest.raises(InputError, match="matches no TIFF"):
        resolve_inputs(str(tmp_path / "*.png"))


def test_written_files_follow_the_umask(tmp_path):
    import os

    path = write_volume(tmp_path / "m.tif", np.zeros((2, 3, 4), np.uint8), (1, 1, 1))
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)
