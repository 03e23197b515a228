"""ONNX weights for a package: exported from the state dict, checked against it, inspected for consumers.

deepImageJ (JDLL) and ilastik run ONNX where they cannot run a ``pytorch_state_dict``
or a TorchScript file from a recent torch, so every package carries ``weights.onnx``
(:data:`~cartocell_bmz.bmz.contents.ONNX_FILE`) beside its TorchScript:

- :func:`export_onnx` writes it with torch's TorchScript-based exporter
  (``dynamo=False``), opset :data:`ONNX_OPSET`, dynamic batch, z, y and x axes, and
  always as **one file** (an exporter that writes the weights into a ``.onnx.data``
  side file is undone with ``onnx.save(..., save_as_external_data=False)``);
- :func:`check_onnx` runs it with onnxruntime on the package's test input and
  fails unless its probabilities equal the state dict's within
  :data:`ONNX_TOLERANCE`, and unless the file's layout is what the consumers need
  (:func:`layout_problems`: one file, opset <= :data:`MAX_OPSET`, one input, one output);
- :func:`inspect_onnx` reads those facts from a file or its bytes (what
  ``validate --consumers`` reports).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import numpy as np

from cartocell_bmz.errors import CartoCellError, ModelError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Opset the packages are exported with.
ONNX_OPSET = 17
#: Newest opset that deepImageJ / JDLL's ONNX engines run.
MAX_OPSET = 18
#: Largest difference allowed between ONNX and state-dict probabilities on the test input.
ONNX_TOLERANCE = 1e-4
#: Names of the graph's input and output (the output is logits: the sigmoid is the package's postprocessing).
GRAPH_INPUT = "raw"
GRAPH_OUTPUT = "logits"
#: What installs the runtime (for one-line errors).
ONNXRUNTIME_INSTALL = "pip install onnxruntime"


@dataclass(frozen=True)
class OnnxFacts:
    """What a consumer sees of an ONNX file.

    Attributes
    ----------
    opset : int
        The default-domain opset version.
    n_inputs, n_outputs : int
        Graph inputs (initialisers excluded) and outputs.
    external_data : bool
        Whether any tensor refers to a side file (``.onnx.data``).
    input_dims : tuple
        The input's dimensions: an int for a fixed size, a name for a dynamic one.
    size_bytes : int
        Size of the file.
    """

    opset: int
    n_inputs: int
    n_outputs: int
    external_data: bool
    input_dims: tuple[int | str, ...]
    size_bytes: int

    @property
    def dynamic_spatial(self) -> bool:
        """Whether the last three input dimensions (z, y, x) are dynamic."""
        return len(self.input_dims) == 5 and all(isinstance(d, str) for d in self.input_dims[2:])

    def __str__(self) -> str:
        layout = "one file" if not self.external_data else "weights in an external data file"
        dims = "dynamic z, y, x" if self.dynamic_spatial else f"input {list(self.input_dims)}"
        return (f"opset {self.opset}, {layout} ({self.size_bytes / 1e6:.1f} MB), {self.n_inputs} input, "
                f"{self.n_outputs} output, {dims}")


@dataclass(frozen=True)
class OnnxCheck:
    """The outcome of :func:`check_onnx`.

    Attributes
    ----------
    facts : OnnxFacts
        The file's layout.
    max_difference : float
        Largest |ONNX - state dict| of the probabilities on the test input.
    tolerance : float
        The bound it had to meet.
    """

    facts: OnnxFacts
    max_difference: float
    tolerance: float


def inspect_onnx(source: str | os.PathLike | bytes) -> OnnxFacts:
    """The layout facts of an ONNX model, from its file or its bytes (weights are not loaded).

    Raises
    ------
    ModelError
        When the bytes are not an ONNX model.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        model = onnx.load_model_from_string(data)  # from bytes: external data is never loaded
    except Exception as exc:
        name = "the ONNX bytes" if isinstance(source, bytes) else str(source)
        raise ModelError(f"{name}: is not an ONNX model ({one_line(exc)}).") from None
    graph = model.graph
    initialisers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    external = any(uses_external_data(t) for t in graph.initializer) or any(
        uses_external_data(a.t) for n in graph.node for a in n.attribute if a.HasField("t"))
    dims: tuple[int | str, ...] = ()
    if inputs:
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in inputs[0].type.tensor_type.shape.dim)
    return OnnxFacts(int(opset), len(inputs), len(graph.output), bool(external), dims, len(data))


def layout_problems(facts: OnnxFacts, *, dynamic: bool = True) -> list[str]:
    """What in an ONNX file's layout keeps a consumer from running it (empty: nothing).

    Examples
    --------
    >>> layout_problems(OnnxFacts(20, 1, 1, True, ("b", 1, "z", "y", "x"), 10))
    ['opset 20 is newer than 18, the newest deepImageJ runs', 'its weights are in an external data file, not in the one file']
    """
    found = []
    if facts.opset > MAX_OPSET:
        found.append(f"opset {facts.opset} is newer than {MAX_OPSET}, the newest deepImageJ runs")
    if facts.external_data:
        found.append("its weights are in an external data file, not in the one file")
    if (facts.n_inputs, facts.n_outputs) != (1, 1):
        found.append(f"has {facts.n_inputs} inputs and {facts.n_outputs} outputs, not one of each")
    if dynamic and not facts.dynamic_spatial:
        found.append(f"input dimensions {list(facts.input_dims)} are not dynamic in z, y, x")
    return found


# --------------------------------------------------------------------------- export


def export_onnx(net: "torch.nn.Module", out: str | os.PathLike, example: np.ndarray, *,
                dynamic: bool = True, opset: int = ONNX_OPSET) -> Path:
    """Export a network to one self-contained ONNX file.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``(N, 1, z, y, x)`` to ``(N, 3, z, y, x)`` logits; exported in eval mode.
    out : path-like
        The ``.onnx`` file to write (atomically).
    example : numpy.ndarray
        An input ``(1, 1, z, y, x)`` the network accepts (traced once).
    dynamic : bool
        Batch, z, y and x as dynamic axes (parameterised packages); ``False``: the example's sizes.
    opset : int
        Opset version, at most :data:`MAX_OPSET`.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    ModelError
        When the export fails or ``opset`` is out of range.
    """
    import onnx
    import torch

    from cartocell_bmz.io.volumes import atomic_path

    if not 7 <= int(opset) <= MAX_OPSET:
        raise ModelError(f"ONNX opset {opset}: use 7 to {MAX_OPSET} (deepImageJ runs up to {MAX_OPSET}).")
    example = np.asarray(example, dtype=np.float32)
    if example.ndim != 5 or example.shape[:2] != (1, 1):
        raise ModelError(f"ONNX export: the example input has shape {example.shape}, not (1, 1, z, y, x).")
    out = Path(out)
    axes = {0: "batch", 2: "z", 3: "y", 4: "x"} if dynamic else None
    was_training = net.training
    net.eval()
    try:
        with atomic_path(out) as tmp, _quiet(), torch.no_grad():
            torch.onnx.export(
                net, (torch.from_numpy(np.ascontiguousarray(example)),), str(tmp), dynamo=False,
                opset_version=int(opset), input_names=[GRAPH_INPUT], output_names=[GRAPH_OUTPUT],
                dynamic_axes={GRAPH_INPUT: axes, GRAPH_OUTPUT: axes} if axes else None,
            )
            side = [p for p in tmp.parent.iterdir() if p.name.startswith(tmp.name) and p != tmp]
            if side or inspect_onnx(tmp).external_data:  # fold the external data back into the one file
                model = onnx.load(str(tmp), load_external_data=True)
                onnx.save(model, str(tmp), save_as_external_data=False)
                for p in side:
                    p.unlink()
    except CartoCellError:
        raise
    except Exception as exc:
        raise ModelError(f"{out.name}: ONNX export of {type(net).__name__} failed ({one_line(exc)}).") from None
    finally:
        net.train(was_training)
    return out


def onnx_session(source: str | os.PathLike | bytes, *, threads: int | None = None,
                 providers: list[Any] | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` on ``threads`` intra-op threads (default: onnxruntime's).

    Raises
    ------
    ModelError
        When onnxruntime is not installed (naming the package to install) or the file cannot be loaded.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    data = source if isinstance(source, bytes) else str(source)
    try:
        return ort.InferenceSession(data, options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX weights cannot be loaded by onnxruntime ({one_line(exc)}).") from None


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a one-line :class:`ModelError` saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"ONNX weights run through onnxruntime, which is not installed: {ONNXRUNTIME_INSTALL}.") from None
    return onnxruntime


def check_onnx(onnx_file: str | os.PathLike, net: "torch.nn.Module", test_input: np.ndarray, *,
               tolerance: float = ONNX_TOLERANCE, dynamic: bool = True) -> OnnxCheck:
    """Check an exported file: its layout, and its probabilities against the network's on the test input.

    Both run on the test input after the packages' preprocessing
    (:func:`~cartocell_bmz.core.normalize.zero_mean_unit_variance`) and are compared after
    the sigmoid (the packages' postprocessing), i.e. as the package's outputs.

    Parameters
    ----------
    onnx_file : path-like
        The exported file.
    net : torch.nn.Module
        The network with the state dict loaded.
    test_input : numpy.ndarray
        The package's raw test input, ``(1, 1, z, y, x)``.
    tolerance : float
        Largest difference allowed.
    dynamic : bool
        Whether z, y, x must be dynamic axes.

    Returns
    -------
    OnnxCheck

    Raises
    ------
    ModelError
        Naming the first layout problem or the difference found.
    """
    import torch

    from cartocell_bmz.core.normalize import zero_mean_unit_variance

    name = Path(onnx_file).name
    facts = inspect_onnx(onnx_file)
    problems = layout_problems(facts, dynamic=dynamic)
    if problems:
        raise ModelError(f"{name}: {problems[0]}.")
    raw = np.asarray(test_input, dtype=np.float32)
    if raw.ndim != 5 or raw.shape[:2] != (1, 1):
        raise ModelError(f"{name}: the test input has shape {raw.shape}, not (1, 1, z, y, x).")
    x = zero_mean_unit_variance(raw[0, 0])[None, None]
    session = onnx_session(onnx_file, threads=1)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
    finally:
        net.train(was_training)
    if got.shape != ref.shape:
        raise ModelError(f"{name}: gives an output of shape {got.shape}, the state dict {ref.shape}.")
    diff = float(np.abs(_sigmoid(got) - _sigmoid(ref)).max())
    if not diff <= tolerance:
        raise ModelError(f"{name}: its probabilities differ from the state dict's by {diff:.2g} on the test "
                         f"input (more than {tolerance:g}); the export is wrong.")
    return OnnxCheck(facts, diff, tolerance)


def network_from_file(arch_file: str | os.PathLike, callable_name: str, kwargs: Mapping[str, Any],
                      weights: str | os.PathLike) -> "torch.nn.Module":
    """The network of a package: its architecture file's class with the state dict loaded, in eval mode.

    Raises
    ------
    ModelError
        When the file, the class or the weights cannot be loaded.
    """
    import importlib.util

    import torch

    arch_file = Path(arch_file)
    try:
        spec = importlib.util.spec_from_file_location(f"cartocell_onnx_{arch_file.stem}", arch_file)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        net = getattr(module, callable_name)(**dict(kwargs))
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:
        raise ModelError(f"{arch_file}: cannot build {callable_name} with its state dict ({one_line(exc)}).") from None
    return net.eval()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch's exporter warns about tracing and its own deprecation: not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


__all__ = [
    "GRAPH_INPUT",
    "GRAPH_OUTPUT",
    "MAX_OPSET",
    "ONNXRUNTIME_INSTALL",
    "ONNX_OPSET",
    "ONNX_TOLERANCE",
    "OnnxCheck",
    "OnnxFacts",
    "check_onnx",
    "export_onnx",
    "import_onnxruntime",
    "inspect_onnx",
    "layout_problems",
    "network_from_file",
    "onnx_session",
]
