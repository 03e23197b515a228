"""The integer type of label volumes: one rule for every writer.

Labels are stored in the smallest unsigned type that holds the largest label:
``uint16`` up to 65535 cells, then ``uint32``, then ``uint64``.
"""

from __future__ import annotations

import numpy as np

#: Label types, smallest first.
LABEL_DTYPES: tuple[type, ...] = (np.uint16, np.uint32, np.uint64)


def label_dtype(n_max: int) -> np.dtype:
    """The smallest of ``uint16``, ``uint32``, ``uint64`` that holds the label ``n_max``.

    Examples
    --------
    >>> label_dtype(0).name, label_dtype(65535).name, label_dtype(65536).name
    ('uint16', 'uint16', 'uint32')
    """
    n_max = int(n_max)
    if n_max < 0:
        raise ValueError(f"labels must be >= 0, got {n_max}")
    for dtype in LABEL_DTYPES:
        if n_max <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label {n_max} does not fit in 64 bits")


def as_label_dtype(labels: np.ndarray) -> np.ndarray:
    """``labels`` in :func:`label_dtype` of its largest value (no copy when already of that type).

    Examples
    --------
    >>> as_label_dtype(np.array([0, 3, 70000], np.int64)).dtype.name
    'uint32'
    """
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    return labels.astype(label_dtype(top), copy=False)
