"""A package's ONNX weights run by onnxruntime inside bioimageio.core's prediction pipeline.

bioimageio.core runs ONNX weights through its own adapter, whose onnxruntime session
takes as many threads as onnxruntime likes (every core).  :func:`onnx_adapter` gives
the pipeline the same adapter with a session on the threads torch uses in this
process (``torch.get_num_threads()``, which :func:`~cartocell_bmz.run.device.resolve_device`
and the benchmark's workers set), so that ONNX and torch weights compete for the same
cores and a Dask worker does not oversubscribe its machine.  Pre- and
post-processing stay bioimageio.core's.
"""

from __future__ import annotations

from typing import Any

from cartocell_bmz.bmz.onnx import import_onnxruntime, onnx_session
from cartocell_bmz.errors import ConfigError


def onnx_providers(device: str) -> list[Any]:
    """The onnxruntime execution providers for a resolved device (``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    Raises
    ------
    ConfigError
        For a CUDA device when the installed onnxruntime has no CUDA provider.

    Examples
    --------
    >>> onnx_providers("cpu")
    ['CPUExecutionProvider']
    """
    text = str(device)
    if text == "cpu":
        return ["CPUExecutionProvider"]
    if text.startswith("cuda"):
        ort = import_onnxruntime()
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(f"--device {text} with --weights onnx: the installed onnxruntime runs on CPU only "
                              "(pip install onnxruntime-gpu for CUDA); use --device cpu or other --weights.")
        index = int(text.split(":")[1]) if ":" in text else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ConfigError(f"--device {text} with --weights onnx: onnxruntime runs on cpu or cuda.")


def onnx_threads() -> int:
    """The intra-op threads of an ONNX session: as many as torch uses in this process."""
    import torch

    return max(1, int(torch.get_num_threads()))


def onnx_adapter(descr: Any, device: str, *, threads: int | None = None) -> Any:
    """bioimageio.core's ONNX model adapter for ``descr`` with a session on ``threads`` threads on ``device``.

    Parameters
    ----------
    descr : bioimageio.spec.model.v0_5.ModelDescr
        A description with ONNX weights.
    device : str
        A resolved device (:func:`~cartocell_bmz.run.device.resolve_device`).
    threads : int, optional
        Intra-op threads; default :func:`onnx_threads`.

    Returns
    -------
    bioimageio.core.backends.onnx_backend.ONNXModelAdapter
        For ``create_prediction_pipeline(..., model_adapter=...)``.

    Raises
    ------
    ModelError
        When onnxruntime is not installed (naming the package) or cannot load the weights.
    ConfigError
        For a device onnxruntime cannot run on here.
    """
    import_onnxruntime()  # a missing onnxruntime is a one-line error, before bioimageio.core imports it
    from bioimageio.core.backends.onnx_backend import ONNXModelAdapter

    providers = onnx_providers(device)
    n_threads = int(threads or onnx_threads())

    class ThreadedOnnxAdapter(ONNXModelAdapter):
        """bioimageio.core's ONNX adapter whose session runs on the given providers and threads."""

        def _parse_devices(self, devices: Any) -> list[Any]:
            return [None]

        def _init_model_on_device(self, device: Any) -> Any:
            session = onnx_session(self._onnx_descr.get_reader().read(), threads=n_threads, providers=providers)
            self._input_names = [str(i.name) for i in session.get_inputs()]
            return session

    return ThreadedOnnxAdapter(model_description=descr, devices=[str(device)])


__all__ = ["onnx_adapter", "onnx_providers", "onnx_threads"]
