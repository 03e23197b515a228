"""From B, C, M probabilities to cells: watershed by channels, then a mask-bounded Voronoi.

* :class:`PostprocessConfig` -- the settings of both steps, validated on creation.
* :func:`postprocess` -- both steps, driven by a :class:`PostprocessConfig`:
  :func:`~cartocell_bmz.core.watershed.watershed_by_channels` (marker-controlled
  watershed of the B and C channels) then
  :func:`~cartocell_bmz.core.voronoi.voronoi_on_mask` (cells grown over the M mask
  until they touch, distances in micrometres).

The steps live in :mod:`cartocell_bmz.core.watershed`, :mod:`cartocell_bmz.core.voronoi`
and :mod:`cartocell_bmz.core.thresholds`; their public names are available here too.
CartoCell's manual thresholds are :data:`LEGACY_THRESHOLDS`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, Sequence

import numpy as np

from cartocell_bmz.core.thresholds import (
    AUTO,
    LEGACY_THRESHOLDS,
    Threshold,
    check_hole_size,
    check_threshold,
    otsu_threshold,
)
from cartocell_bmz.core.voronoi import AUTO_HOLE_FRACTION, voronoi_on_mask
from cartocell_bmz.core.watershed import N_LEVELS, check_probabilities, watershed_by_channels
from cartocell_bmz.errors import ConfigError

__all__ = [
    "AUTO", "AUTO_HOLE_FRACTION", "LEGACY_THRESHOLDS", "N_LEVELS", "PostprocessConfig", "Threshold",
    "check_hole_size", "check_threshold", "otsu_threshold", "postprocess", "voronoi_on_mask",
    "watershed_by_channels",
]


@dataclass(frozen=True)
class PostprocessConfig:
    """Settings of the post-processing (watershed and Voronoi), validated on creation.

    Attributes
    ----------
    seed_b_threshold : float or "auto"
        Seeds need ``B > seed_b_threshold``; "auto" = Otsu(B).
    seed_c_threshold : float or "auto"
        Seeds need ``C < seed_c_threshold``; "auto" = Otsu(C).
    growth_threshold : float or "auto"
        Cells grow only where ``B > growth_threshold``; "auto" = Otsu(B) / 2.
    min_seed_size : int
        Seeds of at most this many voxels are discarded (CartoCell: 5).
    mask_threshold : float or "auto"
        Voronoi territory is ``M > mask_threshold``; "auto" = Otsu(M).
    max_hole_size : float or "auto"
        Holes of the territory (background pieces it encloses) of at most this
        volume in cubic micrometres are filled before the Voronoi; the largest
        enclosed hole (the lumen) is never filled, whatever its size.  "auto" =
        half the median cell volume (a hole smaller than half a cell is a gap in the
        prediction, not a lumen); ``0`` fills nothing.
    clear_border : bool
        Remove cells that touch the volume border after the Voronoi.
    smooth : bool
        Smooth the flooded surface with a Gaussian (sigma 1 voxel along the finest
        axis, the same physical width on the others, truncated at 1 sigma), as
        BiaPy 3.7 does.  Off by default, as in CartoCell.

    Examples
    --------
    >>> PostprocessConfig().seed_b_threshold
    'auto'
    >>> PostprocessConfig.legacy().growth_threshold
    0.25
    >>> PostprocessConfig(min_seed_size=-1)
    Traceback (most recent call last):
    ...
    cartocell_bmz.errors.ConfigError: min_seed_size must be a whole number >= 0, got -1.
    """

    seed_b_threshold: Threshold = AUTO
    seed_c_threshold: Threshold = AUTO
    growth_threshold: Threshold = AUTO
    min_seed_size: int = 5
    mask_threshold: Threshold = AUTO
    max_hole_size: float | Literal["auto"] = AUTO
    clear_border: bool = False
    smooth: bool = False

    def __post_init__(self) -> None:
        for name in ("seed_b_threshold", "seed_c_threshold", "growth_threshold", "mask_threshold"):
            object.__setattr__(self, name, check_threshold(getattr(self, name), name))
        size = self.min_seed_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
            raise ConfigError(f"min_seed_size must be a whole number >= 0, got {size!r}.")
        object.__setattr__(self, "min_seed_size", int(size))
        object.__setattr__(self, "max_hole_size", check_hole_size(self.max_hole_size))
        for name in ("clear_border", "smooth"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")
            object.__setattr__(self, name, bool(getattr(self, name)))

    @classmethod
    def legacy(cls, **overrides) -> "PostprocessConfig":
        """CartoCell's manual thresholds (0.2, 0.2, 0.25); other fields as given."""
        tb, tc, tg = LEGACY_THRESHOLDS
        values = {"seed_b_threshold": tb, "seed_c_threshold": tc, "growth_threshold": tg}
        values.update(overrides)
        return cls(**values)

    def as_dict(self) -> dict:
        """The settings as a plain dictionary (for JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def postprocess(
    probs: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    config: PostprocessConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Watershed by channels, then Voronoi on the M mask.

    Parameters
    ----------
    probs : numpy.ndarray
        ``(3, Z, Y, X)`` probabilities in channel order B, C, M.
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` in micrometres.
    config : PostprocessConfig, optional
        Settings; default ``PostprocessConfig()``.

    Returns
    -------
    instances, voronoi : numpy.ndarray
        Labels after the watershed and after the Voronoi (same dtype).
    """
    config = config or PostprocessConfig()
    probs = check_probabilities(probs)
    instances = watershed_by_channels(probs, config=config, spacing=spacing)
    voronoi = voronoi_on_mask(
        instances, probs[2], threshold=config.mask_threshold, spacing=spacing,
        max_hole_size=config.max_hole_size, clear_border=config.clear_border,
    )
    return instances, voronoi
