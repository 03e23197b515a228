from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cartocell_bmz.core.phantoms import STAGES, make_cyst


def _check_cyst_labels(labels: np.ndarray) -> None:
    n = int(labels.max())
    assert n >= 5
    assert np.array_equal(np.unique(labels), np.arange(n + 1)), "labels are sequential"
    # one 6-connected component per cell
    for lab, sl in enumerate(ndi.find_objects(labels), start=1):
        assert ndi.label(labels[sl] == lab)[1] == 1, f"cell {lab} is in pieces"
    # the shell is one piece and hollow: the lumen (centre) is background, enclosed by cells
    shell = labels > 0
    assert ndi.label(shell)[1] == 1
    background, n_bg = ndi.label(~shell)
    assert n_bg == 2, "outside and lumen are two separate background regions"
    centre = tuple(s // 2 for s in labels.shape)
    assert labels[centre] == 0
    # cells tile the shell: no unlabelled voxel between two touching cells
    lumen = background == background[centre]
    assert not (lumen & ~ndi.binary_erosion(lumen)).sum() == 0
    # every cell touches both the lumen (apical) and the outside (basal): it spans the shell
    outside = (background > 0) & ~lumen
    near_lumen = ndi.binary_dilation(lumen) & shell
    near_out = ndi.binary_dilation(outside) & shell
    apical = set(np.unique(labels[near_lumen])) - {0}
    basal = set(np.unique(labels[near_out])) - {0}
    spanning = len(apical & basal) / n
    assert spanning >= 0.9, f"only {spanning:.0%} of the cells span the shell"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_cyst_is_a_hollow_tiled_monolayer(stage):
    cyst = make_cyst((24, 64, 64), (1.0, 0.5, 0.5), stage=stage, seed=11)
    assert cyst.labels.dtype == np.uint16 and cyst.raw.dtype == np.uint16
    _check_cyst_labels(cyst.labels)


def test_stages_grow_in_size_and_cell_count():
    cysts = [make_cyst((24, 64, 64), stage=s, seed=5) for s in ("day4", "day7", "day10")]
    volumes = [int((c.labels > 0).sum()) for c in cysts]
    cells = [int(c.labels.max()) for c in cysts]
    assert volumes == sorted(volumes) and cells == sorted(cells)
    assert cells[2] > 1.5 * cells[0]


def test_cells_vary_in_size():
    labels = make_cyst((24, 64, 64), stage="day10", seed=2).labels
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.std() / sizes.mean() > 0.15


def test_raw_shows_membranes_brighter_than_cytoplasm():
    from skimage.segmentation import find_boundaries

    cyst = make_cyst((24, 64, 64), stage="day7", seed=4)
    membrane = find_boundaries(cyst.labels, mode="inner")
    interior = (cyst.labels > 0) & ~find_boundaries(cyst.labels, mode="thick")
    raw = cyst.raw.astype(float)
    assert raw[membrane].mean() > 1.5 * raw[interior].mean()
    assert raw[interior].mean() > raw[cyst.labels == 0].mean() * 0.5  # background is not zero
    assert raw[cyst.labels == 0].std() > 0  # noise


def test_blur_is_stronger_in_z():
    cyst = make_cyst((24, 64, 64), (1.0, 0.5, 0.5), stage="day7", seed=4)
    raw = cyst.raw.astype(float)
    # mean absolute gradient per micrometre is lower along the blurrier axis
    gz = np.abs(np.diff(raw, axis=0)).mean() / 1.0
    gx = np.abs(np.diff(raw, axis=2)).mean() / 0.5
    assert gz < gx


def test_same_seed_same_cyst_and_different_seed_differs():
    a = make_cyst((16, 48, 48), seed=3)
    b = make_cyst((16, 48, 48), seed=3)
    c = make_cyst((16, 48, 48), seed=4)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.raw, b.raw)
    assert not np.array_equal(a.labels, c.labels)


def test_oversampled_m1_cysts_are_valid():
    cyst = make_cyst((16, 48, 48), stage="day10", oversampling=2, seed=9)
    assert cyst.labels.shape == (16, 48, 48)
    _check_cyst_labels(cyst.labels)


def test_make_cyst_rejects_bad_arguments():
    with pytest.raises(ValueError, match="stage"):
        make_cyst(stage="day99")
    with pytest.raises(ValueError, match="shape"):
        make_cyst((4, 48, 48))
