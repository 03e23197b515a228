"""ONNX weights in the runner (cartocell_bmz.run.onnx_runtime, PackageBackend): tiled onnxruntime
prediction equals the torch one, runs on request (not the default: slower on CPU) on torch's threads,
and a missing onnxruntime is one line naming what to install."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from builders import SMALL_KWARGS
from cartocell_bmz.bmz.portable import add_onnx
from cartocell_bmz.errors import ConfigError, ModelError
from cartocell_bmz.run.backends import default_weights
from cartocell_bmz.run.onnx_runtime import onnx_providers
from cartocell_bmz.run.predictor import Predictor
from lookalike import build_lookalike

#: Context of the two-level network (SMALL_KWARGS): margins that make tiles exact.
MARGIN = (6, 10, 10)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(2)
    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A parameterised look-alike package with ONNX weights added from its state dict."""
    folder = build_lookalike(tmp_path_factory.mktemp("onnx") / "param", "happy-honeybee", sizes="parameterized",
                             kwargs=SMALL_KWARGS, min_size=(12, 16, 16), step=(2, 8, 8), halo=4)
    add_onnx(folder)
    return folder


def test_tiled_onnx_prediction_equals_torch(package):
    from cartocell_bmz.core.phantoms import make_cyst

    cyst = make_cyst((20, 56, 56), (1.0, 0.5, 0.5), stage="day10", seed=5).raw.astype(np.float32)
    probs = {}
    for weights in ("pytorch_state_dict", "onnx"):
        with Predictor(package, weights=weights, trust=True, device="cpu", tile=(20, 40, 40), margin=(4, 8, 8),
                       overlap=2, batch_size=2) as p:
            assert p.weights == weights and p.plan(cyst.shape).n_tiles >= 4  # really tiled
            probs[weights] = p.predict(cyst)
    assert probs["onnx"].shape == (3, *cyst.shape) and probs["onnx"].std() > 0.01
    assert np.abs(probs["onnx"] - probs["pytorch_state_dict"]).max() < 1e-4


def test_onnx_runs_on_request_on_torchs_threads_and_is_not_the_default(package):
    import torch

    with Predictor(package, trust=True, device="cpu", margin=MARGIN) as p:
        assert p.weights == "pytorch_state_dict"  # onnxruntime is slower on CPU (bench_predict --onnx)
    with Predictor(package, weights="onnx", trust=True, device="cpu", margin=MARGIN) as p:
        p.backend.load()
        _device, session = p.backend.pipeline._adapter._model_queue.queue[0]
        assert session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    assert default_weights(("onnx", "torchscript")) == "torchscript"
    assert default_weights(("onnx",)) == "onnx" and default_weights(("keras_hdf5",)) is None


def test_missing_onnxruntime_is_one_line_naming_the_package(package, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ModelError, match=r"onnxruntime, which is not installed: pip install onnxruntime\.$") as err:
        Predictor(package, weights="onnx", trust=True, device="cpu")
    assert "\n" not in str(err.value)


def test_devices_onnxruntime_cannot_use_are_refused():
    import onnxruntime

    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(ConfigError, match="runs on CPU only \\(pip install onnxruntime-gpu for CUDA\\)"):
            onnx_providers("cuda:0")
    else:
        assert onnx_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(ConfigError, match="--device mps with --weights onnx"):
        onnx_providers("mps")
