"""cartocell-bmz: the CartoCell 3D cyst segmentation pipeline for the BioImage Model Zoo.

The public surface is kept light to import; heavy dependencies (torch,
bioimageio.core, dask) are imported by the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from cartocell_bmz.errors import CartoCellError, InputError, ModelError  # noqa: E402

__all__ = ["__version__", "CartoCellError", "InputError", "ModelError"]
