"""What a package cartocell-bmz builds holds, by name: channels, tensor ids, files, tags, citations.

Written by :mod:`~cartocell_bmz.bmz.export` (the files), :mod:`~cartocell_bmz.bmz.description`
(the ``rdf.yaml``) and :mod:`~cartocell_bmz.bmz.docs` (``documentation.md``, the cover);
read back by the runner, which finds the channel order from :data:`CHANNEL_NAMES`.
"""

from __future__ import annotations

from cartocell_bmz.layout import CHANNELS

_CHANNEL_SHORT: dict[str, str] = {"B": "cell_body", "C": "contours", "M": "mask"}
assert tuple(_CHANNEL_SHORT) == CHANNELS, "one short name per channel of layout.CHANNELS"

#: Output channel names written into packages, in channel order.  Each name
#: starts with its channel letter (B, C, M), which is how readers (the
#: cartocell-bmz runner) find the channel order of a package.
CHANNEL_NAMES: tuple[str, ...] = tuple(f"{c}_{_CHANNEL_SHORT[c]}" for c in CHANNELS)

#: Ids of the package's input and output tensors.
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"

#: Tags every package carries; other CartoCell tools recognise packages by them.  BiaPy
#: (``check_bmz_model_compatibility``) reads F + C + M channels, which are our B, C, M, only
#: from ``biapy`` with ``cyst``, ``3d`` and ``fluorescence``, and picks its instance workflow
#: from ``instance-segmentation``: the tags BiaPy's own CartoCell packages carry.
BASE_TAGS: tuple[str, ...] = (
    "instance-segmentation", "cyst", "3d", "fluorescence", "biapy", "pytorch", "cartocell",
    "cartocell-bmz", "epithelium", "cell-segmentation", "synthetic-training-data",
)

#: The rdf.yaml ``format_version`` packages are written in: the newest that bioimageio.spec
#: 0.5.7.4 (BiaPy 3.7.1's pin) knows; newer spec releases (0.5.12, 0.5.14) update it on loading.
#: In this form ``covers`` and ``documentation`` are plain file names (0.5.7.4 rejects the
#: ``{source, sha256}`` objects that format 0.5.12 writes).
FORMAT_VERSION = "0.5.7"

#: The CartoCell paper and BiaPy, cited by every package (text, doi).
CARTOCELL_CITATION: tuple[str, str] = (
    "Andres-San Roman J.A., Gordillo-Vazquez C., Franco-Barranco D. et al. CartoCell, a "
    "high-content pipeline for 3D image analysis, unveils cell morphology patterns in "
    "epithelia. Cell Reports Methods 3(10), 100597 (2023).",
    "10.1016/j.crmeth.2023.100597",
)
BIAPY_CITATION: tuple[str, str] = (
    "Franco-Barranco D. et al. BiaPy: accessible deep learning on bioimages. "
    "Nature Methods (2025).",
    "10.1038/s41592-025-02699-y",
)

#: File names inside a package.
WEIGHTS_FILE = "weights_state_dict.pt"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
ONNX_FILE = "weights.onnx"
TEST_INPUT_FILE = "test_input.npy"
TEST_OUTPUT_FILE = "test_output.npy"
COVER_FILE = "cover.png"
DOC_FILE = "documentation.md"


__all__ = [
    "BASE_TAGS",
    "BIAPY_CITATION",
    "CARTOCELL_CITATION",
    "CHANNEL_NAMES",
    "COVER_FILE",
    "DOC_FILE",
    "FORMAT_VERSION",
    "INPUT_ID",
    "ONNX_FILE",
    "OUTPUT_ID",
    "TEST_INPUT_FILE",
    "TEST_OUTPUT_FILE",
    "TORCHSCRIPT_FILE",
    "WEIGHTS_FILE",
]
