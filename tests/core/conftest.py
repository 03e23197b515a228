"""Fixtures of the core tests: well-sampled synthetic cysts and noisy probabilities made from labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi


def corrupt_targets(labels, spacing, blur_um=0.5, noise=0.1, seed=0) -> np.ndarray:
    """Targets of ``labels`` blurred by ``blur_um`` micrometres, plus Gaussian noise, clipped."""
    from cartocell_bmz.core.targets import make_targets

    rng = np.random.default_rng(seed)
    sigma = [blur_um / s for s in spacing]
    t = make_targets(labels).astype(np.float32)
    out = np.stack([ndi.gaussian_filter(ch, sigma) + rng.normal(0, noise, ch.shape) for ch in t])
    return np.clip(out, 0, 1).astype(np.float32)


@pytest.fixture(scope="session")
def corrupt():
    """:func:`corrupt_targets`: ``corrupt(labels, spacing, blur_um=0.5, noise=0.1, seed=0)``."""
    return corrupt_targets


@pytest.fixture(scope="session")
def cysts():
    """Three synthetic cysts of well-sampled cells (48 x 96 x 96, about 30-65 cells)."""
    from cartocell_bmz.core.phantoms import make_cyst

    spacing = (1.0, 0.5, 0.5)
    return [
        make_cyst((48, 96, 96), spacing, stage=stage, max_cells=70, seed=seed)
        for seed, stage in ((1, "day7"), (2, "day10"), (3, "day4"))
    ]
