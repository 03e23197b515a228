"""Names in a BioImage Model Zoo package that several modules need: description files, weight formats.

The one home of these facts: :mod:`~cartocell_bmz.bmz.safety` finds a package's
description with :data:`RDF_NAMES`, :mod:`~cartocell_bmz.bmz.validate` tests
every format of :data:`WEIGHT_FORMATS`, :mod:`~cartocell_bmz.bmz.resolve` lists
those a package has, and the runner (:mod:`cartocell_bmz.run.predictor`) and the
packager (:mod:`cartocell_bmz.bmz.export`) use :data:`RUNNABLE_WEIGHT_FORMATS`.
"""

from __future__ import annotations

#: File names of a package's description, in order of preference.
RDF_NAMES: tuple[str, ...] = ("rdf.yaml", "bioimageio.yaml")
#: The name cartocell-bmz writes a description under (packages it builds, models it downloads).
RDF_FILE: str = RDF_NAMES[0]

#: Weight formats of bioimageio.spec 0.5 model descriptions (in bioimageio.spec's order),
#: all of which bioimageio.core can test.
WEIGHT_FORMATS: tuple[str, ...] = (
    "keras_hdf5", "keras_v3", "onnx", "pytorch_state_dict", "tensorflow_saved_model_bundle", "torchscript",
)

#: Weight formats cartocell-bmz writes into its packages and runs (state dict and TorchScript
#: through bioimageio.core's torch backends, ONNX through onnxruntime), in order of preference
#: (the runner's CPU default is :func:`cartocell_bmz.run.backends.default_weights`).
RUNNABLE_WEIGHT_FORMATS: tuple[str, ...] = ("pytorch_state_dict", "torchscript", "onnx")

assert set(RUNNABLE_WEIGHT_FORMATS) <= set(WEIGHT_FORMATS), "cartocell-bmz runs only formats bioimageio knows"

__all__ = ["RDF_FILE", "RDF_NAMES", "RUNNABLE_WEIGHT_FORMATS", "WEIGHT_FORMATS"]
