"""Tests of cartocell_bmz.core.postprocess: the configuration and the chained watershed + Voronoi."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cartocell_bmz.core.matching import match
from cartocell_bmz.core.postprocess import LEGACY_THRESHOLDS, PostprocessConfig, postprocess
from cartocell_bmz.errors import ConfigError


def f1(gt, pred, threshold=0.5) -> float:
    return match(gt=gt, pred=pred, thresholds=(threshold,))[0].f1


def lumen_core(labels) -> np.ndarray:
    """The lumen of a cyst (enclosed background) less two voxels next to the cells."""
    lumen = ndi.binary_fill_holes(labels > 0) & (labels == 0)
    return ndi.binary_erosion(lumen, iterations=2)


# --------------------------------------------------------------------------- configuration


def test_config_defaults_and_legacy():
    cfg = PostprocessConfig()
    assert (cfg.seed_b_threshold, cfg.seed_c_threshold, cfg.growth_threshold, cfg.mask_threshold) == ("auto",) * 4
    assert cfg.min_seed_size == 5 and cfg.max_hole_size == "auto"
    assert not cfg.clear_border and not cfg.smooth
    legacy = PostprocessConfig.legacy(clear_border=True)
    assert (legacy.seed_b_threshold, legacy.seed_c_threshold, legacy.growth_threshold) == LEGACY_THRESHOLDS == (0.2, 0.2, 0.25)
    assert legacy.clear_border and legacy.mask_threshold == "auto"
    assert PostprocessConfig(seed_b_threshold="0.4").seed_b_threshold == 0.4
    assert cfg.as_dict()["min_seed_size"] == 5


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"seed_b_threshold": "high"}, "seed_b_threshold"),
        ({"seed_c_threshold": float("nan")}, "seed_c_threshold"),
        ({"growth_threshold": None}, "growth_threshold"),
        ({"mask_threshold": True}, "mask_threshold"),
        ({"min_seed_size": 2.5}, "min_seed_size"),
        ({"min_seed_size": -1}, "min_seed_size"),
        ({"max_hole_size": -3}, "max_hole_size"),
        ({"max_hole_size": "big"}, "max_hole_size"),
        ({"clear_border": "yes"}, "clear_border"),
        ({"smooth": 1}, "smooth"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field) as info:
        PostprocessConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_is_frozen():
    with pytest.raises(Exception):
        PostprocessConfig().min_seed_size = 3  # type: ignore[misc]


def test_public_names_are_reexported():
    from cartocell_bmz.core import thresholds, voronoi, watershed
    from cartocell_bmz.core.postprocess import (
        check_hole_size, check_threshold, otsu_threshold, voronoi_on_mask, watershed_by_channels,
    )

    assert watershed_by_channels is watershed.watershed_by_channels
    assert voronoi_on_mask is voronoi.voronoi_on_mask
    assert (check_threshold, check_hole_size, otsu_threshold) == (
        thresholds.check_threshold, thresholds.check_hole_size, thresholds.otsu_threshold)


# --------------------------------------------------------------------------- acceptance


def test_pipeline_recovers_synthetic_cysts(cysts, corrupt):
    """Targets -> blurred, noisy probabilities -> watershed -> Voronoi: F1@0.5 >= 0.98."""
    for i, cyst in enumerate(cysts):
        p = corrupt(cyst.labels, cyst.spacing, blur_um=0.5, noise=0.1, seed=i)
        inst, vor = postprocess(p, spacing=cyst.spacing)
        f1_ws, f1_vor = f1(cyst.labels, inst), f1(cyst.labels, vor)
        assert f1_vor >= 0.98, (i, f1_ws, f1_vor)
        assert f1_vor >= f1_ws, (i, f1_ws, f1_vor)
        # The lumen stays empty (BiaPy 3.7.1's hole filling hands it all to the cells).
        core = lumen_core(cyst.labels)
        assert core.sum() > 1000
        assert not vor[core].any()
        # Voronoi only grows cells: every watershed voxel inside the result keeps its label.
        kept = (inst > 0) & (vor > 0)
        assert np.array_equal(vor[kept], inst[kept])
        assert (vor > 0).sum() > (inst > 0).sum()
