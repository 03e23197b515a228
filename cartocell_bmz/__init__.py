"""cartocell-bmz: the CartoCell 3D cyst segmentation pipeline for the BioImage Model Zoo.

The public Python API, re-exported lazily from the rooms that own it (so
``import cartocell_bmz`` stays light and ``--help`` fast; torch, bioimageio.core
and dask load only when a name that needs them is first used):

>>> import cartocell_bmz as cc
>>> sorted(cc.__all__)[:4]
['CartoCellError', 'CartoCellWarning', 'ConfigError', 'InputError']

The layout, room by room (``docs/DEVELOPING.md`` has the arrows allowed between them):
``core`` (numpy only: targets, watershed, Voronoi, matching, metrics, tiling, phantoms),
``io`` (volumes, output tree, hashing), ``networks``, ``train`` (config, loop, run folder),
``bmz`` (known models, resolve, verify, export, validate), ``run`` (device, backends,
predictor, batch, segment), ``phases`` (M1 -> pseudo-labels -> M2), ``bench`` (benchmark,
ranking, report) and ``cli``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> module that owns it (``module:attribute`` where the names differ).
_EXPORTS: dict[str, str] = {
    # errors and warnings
    "CartoCellError": "cartocell_bmz.errors",
    "CartoCellWarning": "cartocell_bmz.errors",
    "ConfigError": "cartocell_bmz.errors",
    "InputError": "cartocell_bmz.errors",
    "ModelError": "cartocell_bmz.errors",
    "OutputError": "cartocell_bmz.errors",
    # core: arrays in, arrays out
    "make_targets": "cartocell_bmz.core.targets",
    "PostprocessConfig": "cartocell_bmz.core.postprocess",
    "postprocess": "cartocell_bmz.core.postprocess",
    "watershed_by_channels": "cartocell_bmz.core.postprocess",
    "voronoi_on_mask": "cartocell_bmz.core.postprocess",
    "match": "cartocell_bmz.core.matching",
    "channel_iou": "cartocell_bmz.core.metrics",
    "make_cyst": "cartocell_bmz.core.phantoms",
    # files
    "read_volume": "cartocell_bmz.io.volumes",
    "write_volume": "cartocell_bmz.io.volumes",
    # models
    "resolve_model": "cartocell_bmz.bmz.resolve",
    "validate_package": "cartocell_bmz.bmz.validate",
    "Predictor": "cartocell_bmz.run.predictor",
    "segment": "cartocell_bmz.run.segment",
    "predict_one": "cartocell_bmz.run.batch",
    "predict_folder": "cartocell_bmz.run.batch",
    "evaluate_volume": "cartocell_bmz.run.evaluate",
    "evaluate_folder": "cartocell_bmz.run.evaluate",
    # training and the CartoCell phases
    "TrainConfig": "cartocell_bmz.train.config",
    "train_network": "cartocell_bmz.train.loop:train",  # not "train": that is the room's name
    "pseudo_label": "cartocell_bmz.phases.pseudo_label",
    "run_pipeline": "cartocell_bmz.phases.pipeline",
    # measuring cells
    "measure_cyst": "cartocell_bmz.core.morphology",
    "measure_volume": "cartocell_bmz.measure.api",
    "measure_files": "cartocell_bmz.measure.api",
    # ranking
    "run_benchmark": "cartocell_bmz.bench.benchmark",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name from its home on first use (PEP 562)."""
    try:
        home = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'cartocell_bmz' has no attribute {name!r}") from None
    module, _, attr = home.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
