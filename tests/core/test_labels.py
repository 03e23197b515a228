"""Tests of cartocell_bmz.core.labels: the one label-type rule."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.core.labels import as_label_dtype, label_dtype


@pytest.mark.parametrize(
    "n, dtype",
    [(0, np.uint16), (1, np.uint16), (65535, np.uint16), (65536, np.uint32), (2**32 - 1, np.uint32),
     (2**32, np.uint64), (2**64 - 1, np.uint64)],
)
def test_label_dtype_is_the_smallest_that_holds_the_label(n, dtype):
    assert label_dtype(n) == np.dtype(dtype)
    assert np.iinfo(label_dtype(n)).max >= n


def test_label_dtype_rejects_what_no_type_holds():
    with pytest.raises(ValueError):
        label_dtype(-1)
    with pytest.raises(ValueError):
        label_dtype(2**64)


def test_as_label_dtype_converts_without_needless_copies():
    small = np.array([[0, 7]], np.int64)
    assert as_label_dtype(small).dtype == np.uint16 and as_label_dtype(small).tolist() == [[0, 7]]
    same = np.array([1, 2], np.uint16)
    assert as_label_dtype(same) is same
    assert as_label_dtype(np.array([70000], np.uint64)).dtype == np.uint32
    assert as_label_dtype(np.zeros((0, 3), np.int32)).dtype == np.uint16
