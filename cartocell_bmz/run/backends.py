"""What runs a model for the :class:`~cartocell_bmz.run.predictor.Predictor`: a BMZ package or a torch network.

Both backends give the predictor the same things: the input sizes the model
takes (:class:`~cartocell_bmz.run.geometry.ModelSizes`: fixed or ``min + n * step``,
halo, pooling factor), its normalisation of a whole volume, the forward pass
of a batch of normalised tiles to B, C, M outputs, a fingerprint of its weights
(for the margin cache) and a name for messages.  The predictor does the rest
(tiling, blending, margins) the same way for every backend.

- :class:`PackageBackend`: a BMZ package run by bioimageio.core (its weight
  formats, its preprocessing, its sigmoid postprocessing), channels-last CPU
  weights, the architecture file's sha256 checked before it is imported; ONNX
  weights through onnxruntime on torch's thread count
  (:mod:`~cartocell_bmz.run.onnx_runtime`) when asked for (:func:`default_weights`).
- :class:`TorchBackend`: a torch network in memory, from a training run folder
  (:func:`~cartocell_bmz.train.run.load_network`) or during training; normalised
  with :func:`~cartocell_bmz.core.normalize.zero_mean_unit_variance`, the
  statistics bioimageio.core computes for a package.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

from cartocell_bmz.bmz.formats import RUNNABLE_WEIGHT_FORMATS
from cartocell_bmz.errors import ConfigError, ModelError, one_line
from cartocell_bmz.run.geometry import AxisSize, ModelSizes, channel_order

#: Weight formats of a package the runner can use (its home: :data:`cartocell_bmz.bmz.formats.RUNNABLE_WEIGHT_FORMATS`).
WEIGHT_FORMATS: tuple[str, ...] = RUNNABLE_WEIGHT_FORMATS


def default_weights(available: Any) -> str | None:
    """The weight format the runner uses when none is asked for, or ``None`` when none is runnable.

    The first of :data:`WEIGHT_FORMATS` the package has: pytorch_state_dict, then
    torchscript, then onnx, on every device.  ONNX is not the CPU default: onnxruntime
    ran the packages at 0.79x (synthetic-unet) and 0.82x (synthetic-resunet) of torch's
    channels-last throughput on the same volume and threads (``benchmarks/bench_predict.py
    --onnx``, 2 CPU cores); ``weights="onnx"`` runs it on request.

    Examples
    --------
    >>> default_weights(("onnx", "pytorch_state_dict", "torchscript"))
    'pytorch_state_dict'
    >>> default_weights(("onnx",))
    'onnx'
    >>> default_weights(("keras_hdf5",)) is None
    True
    """
    return next((w for w in WEIGHT_FORMATS if w in available), None)


class Backend:
    """The interface a predictor uses (see the module notes); subclasses implement it.

    Attributes
    ----------
    name : str
        The model's name, for messages.
    sizes : ModelSizes
        The input sizes the model takes.
    fingerprint : str or None
        Identifies the weights (margins are cached under it); ``None``: never cached.
    weights : str
        Which weights run (a package's weight format, a run's checkpoint).
    device : str
        Where they run.
    model : object
        The model behind it (a resolved package, a training run, or None).
    """

    name: str = "model"
    sizes: ModelSizes
    fingerprint: str | None = None
    weights: str = "torch"
    device: str = "cpu"
    model: Any = None

    def load(self) -> None:
        """Load the weights (called before the first forward pass; loading twice does nothing)."""

    def normalize(self, volume: np.ndarray) -> np.ndarray:
        """The model's preprocessing of a whole ``(Z, Y, X)`` volume: ``float32 (Z, Y, X)``."""
        raise NotImplementedError

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        """A batch ``(N, z, y, x)`` of normalised tiles -> ``(N, 3, z', y', x')`` outputs in B, C, M order."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the weights (GPU memory included)."""


# --------------------------------------------------------------------------- BMZ packages


class PackageBackend(Backend):
    """A BMZ package, run through bioimageio.core.

    Parameters
    ----------
    model : ResolvedModel
        From :func:`~cartocell_bmz.bmz.resolve.resolve_model`.
    weights : {None, "pytorch_state_dict", "torchscript", "onnx"}
        Default: :func:`default_weights` (pytorch_state_dict, then torchscript, then onnx).
    device : str
        A ``--device`` value (:func:`~cartocell_bmz.run.device.resolve_device`).
    """

    def __init__(self, model: Any, *, weights: str | None = None, device: Any = "auto") -> None:
        from cartocell_bmz.run.device import resolve_device

        self.model = model
        self.name = model.name
        available = model.weight_formats
        self.device = str(resolve_device(device))
        if weights is None:
            weights = default_weights(available)
            if weights is None:
                raise ModelError(f"model {model.name}: has no {', '.join(WEIGHT_FORMATS)} weights "
                                 f"({', '.join(available)}).")
        if weights not in WEIGHT_FORMATS:
            raise ConfigError(f"--weights {weights!r}: use {', '.join(WEIGHT_FORMATS)}.")
        if weights not in available:
            raise ModelError(f"model {model.name}: has no {weights} weights (it has {', '.join(available)}).")
        if weights == "pytorch_state_dict":
            check_architecture_hash(model)
        if weights == "onnx":  # a missing onnxruntime or a device it cannot use: one line, before any work
            from cartocell_bmz.bmz.onnx import import_onnxruntime
            from cartocell_bmz.run.onnx_runtime import onnx_providers

            import_onnxruntime()
            onnx_providers(self.device)
        self.weights = weights
        self.sizes = description_sizes(model.description)
        self.fingerprint = model.rdf_sha256
        out = model.description.outputs[0]
        self.has_sigmoid = any(str(p.id) == "sigmoid" for p in out.postprocessing)
        self.order = channel_order([str(n) for n in out.axes[1].channel_names])
        self.pipeline: Any = None
        self._checked_range = False
        self._stat: dict = {}

    def load(self) -> None:
        if self.pipeline is not None:
            return
        from bioimageio.core import create_prediction_pipeline

        adapter = None
        if self.weights == "onnx":
            from cartocell_bmz.run.onnx_runtime import onnx_adapter

            adapter = onnx_adapter(self.model.description, self.device)  # one-line errors of its own
        try:
            self.pipeline = create_prediction_pipeline(self.model.description, devices=[self.device],
                                                       weights_format=self.weights, model_adapter=adapter)
        except Exception as exc:
            missing = missing_module_message(exc)
            if missing:
                raise ModelError(f"model {self.name}: cannot load its {self.weights} weights: {missing}.") from None
            raise ModelError(f"model {self.name}: cannot load its {self.weights} weights ({one_line(exc)}).") from None
        if self.device == "cpu":
            use_channels_last(self.pipeline)
        if self.pipeline.has_non_blockwise_postprocessing:
            raise ModelError(
                f"model {self.name}: its postprocessing needs statistics of the whole output, "
                "which tiled prediction cannot give."
            )

    def close(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.unload()
            finally:
                self.pipeline = None

    def _sample(self, data: np.ndarray, stat: dict) -> Any:
        from bioimageio.core import Sample, Tensor

        inp = self.model.description.inputs[0]
        dims = tuple(a.id for a in inp.axes)
        return Sample(members={inp.id: Tensor(np.ascontiguousarray(data, dtype=np.float32), dims=dims)},
                      stat=stat, id=None)

    def _output(self, result: Any) -> np.ndarray:
        out = self.model.description.outputs[0]
        return np.asarray(result.members[out.id].transpose(tuple(a.id for a in out.axes)).to_numpy(), np.float32)

    def normalize(self, volume: np.ndarray) -> np.ndarray:
        self.load()
        inp = self.model.description.inputs[0]
        sample = self._sample(np.asarray(volume, dtype=np.float32)[None, None], {})
        try:
            self.pipeline.apply_preprocessing(sample)
        except Exception as exc:
            raise ModelError(f"model {self.name}: its preprocessing failed ({one_line(exc)}).") from None
        self._stat = sample.stat
        norm = sample.members[inp.id].transpose(tuple(a.id for a in inp.axes)).to_numpy()[0, 0]
        return np.ascontiguousarray(norm, dtype=np.float32)

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        self.load()
        sample = self._sample(tiles[:, None], self._stat)
        try:
            result = self.pipeline.predict_sample_without_blocking(
                sample, skip_preprocessing=True, skip_input_padding=True, skip_output_cropping=True
            )
        except MemoryError:
            raise
        except Exception as exc:
            if "out of memory" in str(exc).lower():
                raise MemoryError(str(exc)) from None
            raise ModelError(f"model {self.name}: prediction failed ({one_line(exc)}).") from None
        probs = self._output(result)
        if probs.ndim != 5 or probs.shape[:2] != (tiles.shape[0], 3):
            raise ModelError(f"model {self.name}: returned an output of shape {probs.shape}, expected ({tiles.shape[0]}, 3, Z, Y, X).")
        if not self.has_sigmoid and not self._checked_range:
            lo, hi = float(probs.min()), float(probs.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ModelError(
                    f"model {self.name}: outputs range from {lo:.3g} to {hi:.3g}, not probabilities, and its "
                    "description has no sigmoid postprocessing step; the package is incomplete."
                )
            self._checked_range = True
        if self.order != (0, 1, 2):
            probs = probs[:, list(self.order)]
        return probs

    def predict_core(self, volume: np.ndarray) -> np.ndarray:
        """bioimageio.core's own whole-volume prediction (its padding before its statistics), B, C, M order."""
        self.load()
        result = self.pipeline.predict_sample_without_blocking(self._sample(np.asarray(volume)[None, None], {}))
        return np.ascontiguousarray(self._output(result)[0][list(self.order)], dtype=np.float32)


def description_sizes(descr: Any) -> ModelSizes:
    """The input sizes a CartoCell-shaped BMZ description takes (:class:`~cartocell_bmz.run.geometry.ModelSizes`).

    Raises
    ------
    ModelError
        An input axis whose size refers to another tensor, or an output without fixed sizes.
    """
    from bioimageio.spec.model import v0_5

    inp, out = descr.inputs[0], descr.outputs[0]
    kw_div = _kwargs_divisor(descr)
    axes = []
    for d, (axis, out_axis) in enumerate(zip(inp.axes[2:], out.axes[2:])):
        size, halo = axis.size, int(getattr(out_axis, "halo", 0) or 0)
        div = kw_div[d] if kw_div is not None else None
        if isinstance(size, int):
            axes.append(AxisSize(str(axis.id), size, 0, fixed=True, halo=halo, divisor=div))
        elif isinstance(size, v0_5.ParameterizedSize):
            axes.append(AxisSize(str(axis.id), int(size.min), int(size.step), halo=halo, divisor=div))
        elif isinstance(size, v0_5.SizeReference):
            raise ModelError(f"model {descr.name!r}: input axis {axis.id} refers to another tensor; cannot tile it.")
        else:  # pragma: no cover - spec guarantees one of the above
            raise ModelError(f"model {descr.name!r}: unsupported size of input axis {axis.id}.")

    def output_size(tile: tuple[int, int, int]) -> tuple[int, int, int]:
        sizes = descr.get_output_tensor_sizes({inp.id: {a.id: s for a, s in zip(inp.axes[2:], tile)} | {
            inp.axes[0].id: 1, inp.axes[1].id: 1}})[out.id]
        found = []
        for axis in out.axes[2:]:
            o = sizes[axis.id]
            if not isinstance(o, int):
                raise ModelError(f"model {descr.name!r}: output axis {axis.id} has no fixed size; cannot tile it.")
            found.append(o)
        return tuple(found)  # type: ignore[return-value]

    return ModelSizes(str(descr.name), tuple(axes), output_size)  # type: ignore[arg-type]


def _kwargs_divisor(descr: Any) -> tuple[int, int, int] | None:
    """Pooling factor from U-Net style kwargs (``feature_maps``, ``z_down``) of the architecture."""
    w = descr.weights.pytorch_state_dict
    kwargs = dict(getattr(getattr(w, "architecture", None), "kwargs", None) or {}) if w is not None else {}
    fm, zd = kwargs.get("feature_maps"), kwargs.get("z_down")
    if not isinstance(fm, (list, tuple)) or not isinstance(zd, (list, tuple)) or len(zd) != len(fm) - 1:
        return None
    try:
        z = int(math.prod(int(v) for v in zd))
    except (TypeError, ValueError):
        return None
    yx = 2 ** len(zd)
    return (max(z, 1), yx, yx)


def use_channels_last(pipeline: Any) -> int:
    """Put the weights of the networks a bioimageio.core pipeline holds in channels-last order.

    On CPU, oneDNN runs 3D convolutions in channels-last (NDHWC) order; with
    weights in the default order it reorders data at every layer.  Converting the
    weights once makes each convolution's output channels-last too, so the
    whole forward pass stays in that order (measured on 80^3 tiles: 1.3-1.7x
    faster for the six architectures at the tiny preset, 1.4x for the published
    residual U-Net; outputs equal to within 1e-5).  Inputs need no change.

    Parameters
    ----------
    pipeline : bioimageio.core.PredictionPipeline
        A loaded pipeline with pytorch_state_dict or TorchScript weights.

    Returns
    -------
    int
        Number of networks converted (0 when the pipeline holds none that can
        be: another backend, or a core version that keeps its models elsewhere;
        prediction then runs unchanged).
    """
    queue = getattr(getattr(getattr(pipeline, "_adapter", None), "_model_queue", None), "queue", None)
    return sum(_channels_last(item[1]) for item in list(queue or ())
               if isinstance(item, tuple) and len(item) == 2)


def _channels_last(net: Any) -> int:
    """Convert one torch module to channels-last order; 1 when converted, else 0."""
    import torch

    if not isinstance(net, torch.nn.Module):
        return 0
    try:
        net.to(memory_format=torch.channels_last_3d)
    except Exception:  # pragma: no cover - a module that cannot change layout runs as it is
        return 0
    return 1


def missing_module_message(exc: BaseException) -> str | None:
    """What to install when a package's architecture file cannot be imported, or ``None``.

    Finds a ``ModuleNotFoundError`` in ``exc`` or its causes (bioimageio.core wraps it) and
    names the module and the command that installs it.  torchvision (which a BiaPy 3.7
    export's ``model.py`` imports) comes with the ``biapy`` extra of cartocell-bmz, which
    installs it together with the torch it was built for; a torchvision built for another
    torch fails with "operator torchvision::nms does not exist": the same advice.

    Examples
    --------
    >>> missing_module_message(ModuleNotFoundError("No module named 'skimage'", name="skimage"))
    "its architecture file imports skimage, which is not installed: pip install 'scikit-image'"
    >>> err = ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
    >>> print(missing_module_message(err))  # doctest: +NORMALIZE_WHITESPACE
    its architecture file imports torchvision, which is not installed: in the cartocell-bmz folder,
    pip install -c constraints-biapy.txt -e '.[biapy]' (torch 2.14.1 with the torchvision 0.29.1 built for it)
    >>> missing_module_message(ValueError("bad value")) is None
    True
    """
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    name = None
    for error in seen:
        if isinstance(error, ModuleNotFoundError) and error.name:
            name = error.name.split(".")[0]
            break
        text = str(error)
        if "No module named '" in text:
            name = text.split("No module named '", 1)[1].split("'", 1)[0].split(".")[0]
            break
        if "torchvision::" in text and "does not exist" in text:
            return "the installed torchvision was built for another torch (" + one_line(error)[:120] + "); " \
                + _install_command("torchvision")
    if name is None:
        return None
    return f"its architecture file imports {name}, which is not installed: {_install_command(name)}"


#: Import names whose package on the registry has another name (what `pip install` needs).
_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "cv2": "opencv-python", "PIL": "pillow",
                  "yaml": "pyyaml"}

#: Import names that an extra of cartocell-bmz installs (pyproject.toml), with what it pins.
#: Each extra has its constraints file, constraints-<extra>.txt, beside constraints.txt.
_EXTRAS = {"torchvision": ("biapy", "torch 2.14.1 with the torchvision 0.29.1 built for it")}


def _install_command(name: str) -> str:
    """The command that installs the module imported as ``name``."""
    if name in _EXTRAS:
        extra, brings = _EXTRAS[name]
        return f"in the cartocell-bmz folder, pip install -c constraints-{extra}.txt -e '.[{extra}]' ({brings})"
    return f"pip install '{_DISTRIBUTIONS.get(name, name)}'"


def check_architecture_hash(model: Any) -> None:
    """Refuse to import an architecture file whose sha256 the description does not declare.

    Every other file of the package was checked against its sha256 when it was
    resolved; Python code that cannot be checked is not run.
    """
    arch = model.description.weights.pytorch_state_dict.architecture
    source = getattr(arch, "source", None)
    if source is None or getattr(arch, "sha256", None) is not None:
        return  # an installed library (import_from), or a file with its hash
    name = getattr(source, "path", None) or str(source)
    plain = [f for f in ("torchscript", "onnx") if f in model.weight_formats]
    other = f"run it with --weights {' or '.join(plain)} (imports no Python file) or " if plain else ""
    raise ModelError(
        f"model {model.name}: its architecture file {name} has no sha256 in the description, so it cannot be "
        f"checked before it runs as Python code; {other}add the file's sha256 to the description."
    )


# --------------------------------------------------------------------------- torch networks


class TorchBackend(Backend):
    """A torch network in memory: a training run's, or the one being trained.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``(N, 1, z, y, x)`` to ``(N, 3, z, y, x)`` logits (B, C, M); used
        in eval mode as it is (the caller sets the mode).
    divisor : sequence of 3 int
        Input sizes must be multiples of these (the network's pooling factor).
    name : str
        For messages.
    fingerprint : str, optional
        Identifies the weights for the margin cache; ``None`` never caches.
    weights : str
        Label of the weights (part of the cache key).
    sigmoid : bool
        ``True``: probabilities; ``False``: the logits themselves (validation
        during training computes its loss on them).
    model : object, optional
        What the network came from (a :class:`~cartocell_bmz.train.run.TrainingRun`).
    loader : callable, optional
        Builds the network again after :meth:`close` (a run's); without it a
        closed backend cannot predict.
    """

    def __init__(self, net: Any, divisor: Any, *, name: str = "network", fingerprint: str | None = None,
                 weights: str = "torch", sigmoid: bool = True, model: Any = None,
                 loader: Callable[[], Any] | None = None) -> None:
        div = tuple(int(d) for d in divisor)
        if len(div) != 3 or min(div) < 1:
            raise ConfigError(f"divisor needs three positive sizes Z Y X, got {list(div)}.")
        self.net = net
        self.name = name
        self.fingerprint = fingerprint
        self.weights = weights
        self.sigmoid = bool(sigmoid)
        self.model = model
        self._loader = loader
        self.sizes = ModelSizes(name, tuple(AxisSize(a, d, d, divisor=d) for a, d in zip("zyx", div)))  # type: ignore[arg-type]
        param = next(iter(net.parameters()), None)
        self.device = str(param.device) if param is not None else "cpu"

    @classmethod
    def from_run(cls, run: Any, *, checkpoint: str = "best", device: Any = "auto") -> "TorchBackend":
        """The network of a training run folder (or :class:`~cartocell_bmz.train.run.TrainingRun`), channels-last on CPU."""
        from cartocell_bmz.train.run import TrainingRun, fingerprint, load_network, read_run

        if not isinstance(run, TrainingRun):
            run = read_run(run, complete=False)

        def loader() -> Any:
            net = load_network(run, checkpoint, device=device)
            if next(net.parameters()).device.type == "cpu":
                _channels_last(net)  # as packages run: oneDNN's 3D convolutions are faster channels-last
            return net

        return cls(loader(), run.divisor, name=run.path.name, fingerprint=fingerprint(run, checkpoint),
                   weights=f"run-{checkpoint}", model=run, loader=loader)

    def load(self) -> None:
        if self.net is None:
            if self._loader is None:
                raise ModelError(f"model {self.name}: the backend was closed and cannot load its network again.")
            self.net = self._loader()

    def normalize(self, volume: np.ndarray) -> np.ndarray:
        from cartocell_bmz.core.normalize import zero_mean_unit_variance

        return zero_mean_unit_variance(volume)

    def forward(self, tiles: np.ndarray) -> np.ndarray:
        import torch

        from cartocell_bmz.run.device import flush_denormal

        self.load()
        x = torch.from_numpy(np.ascontiguousarray(tiles[:, None], dtype=np.float32)).to(self.device)
        try:
            with torch.inference_mode(), flush_denormal():
                y = self.net(x)
                y = torch.sigmoid(y) if self.sigmoid else y
                out = y.float().cpu().numpy()
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise MemoryError(str(exc)) from None
            raise ModelError(f"model {self.name}: prediction failed ({one_line(exc)}).") from None
        if out.ndim != 5 or out.shape[:2] != (tiles.shape[0], 3):
            raise ModelError(f"model {self.name}: returned an output of shape {out.shape}, expected ({tiles.shape[0]}, 3, Z, Y, X).")
        return out

    def close(self) -> None:
        self.net = None


def open_backend(model: Any, *, weights: str | None = None, device: Any = "auto", trust: bool = False,
                 cache_dir: Any = None, checkpoint: str = "best") -> Backend:
    """The backend of a model: a :class:`Backend` as it is, a training run folder, or a BMZ package.

    Parameters
    ----------
    model : Backend, TrainingRun, path-like, str or ResolvedModel
        A training run folder (holding ``model.json``), or anything
        :func:`~cartocell_bmz.bmz.resolve.resolve_model` accepts.
    weights : str, optional
        A package's weight format (runs have one kind of weights).
    device, trust, cache_dir :
        Where it runs; passed to :func:`~cartocell_bmz.bmz.resolve.resolve_model`.
    checkpoint : {"best", "last"}
        Which checkpoint of a training run.
    """
    from cartocell_bmz.train.run import TrainingRun, is_training_run

    if isinstance(model, Backend):
        return model
    if isinstance(model, TrainingRun) or (isinstance(model, (str, os.PathLike)) and is_training_run(model)):
        if weights is not None:
            raise ConfigError(f"--weights {weights!r} is for BMZ packages; {model} is a training run.")
        return TorchBackend.from_run(model, checkpoint=checkpoint, device=device)
    from cartocell_bmz.bmz.resolve import resolve_model

    return PackageBackend(resolve_model(model, trust=trust, cache_dir=cache_dir), weights=weights, device=device)


__all__ = [
    "Backend",
    "PackageBackend",
    "TorchBackend",
    "WEIGHT_FORMATS",
    "check_architecture_hash",
    "default_weights",
    "description_sizes",
    "missing_module_message",
    "open_backend",
    "use_channels_last",
]
