"""Test helper: look-alikes of the six published CartoCell BMZ packages.

A look-alike keeps what matters to a runner from a published description
(``../shared/reference/bmz-cartocell/<id>.rdf.yaml``): format 0.5.3, input
``input0`` with axes b, c, z, y, x fixed at ``size``^3, preprocessing
zero_mean_unit_variance over (channel, z, y, x), output ``output0`` with 3
unnamed channels and a sigmoid postprocessing step, pytorch_state_dict weights
only, with the architecture carried as a source file + kwargs.  The network is
this project's file of the same class (``cartocell_bmz/networks/``) at the
tiny preset, its weights are this project's (random, with batch-norm
statistics calibrated on a synthetic cyst so the outputs are not flat), and
every sha256 is filled in.

Variants:

- ``style="biapy"``: a package as BiaPy 3.7 exports it: outputs the input's
  size with a halo of 10, preprocessing over (z, y, x), no sigmoid step (the
  network applies it, ``explicit_activations``), channels unnamed, tags of
  BiaPy.
- ``sizes="parameterized"``: min + n * step input sizes and outputs that
  follow the input with a halo (like this project's own packages), optionally
  with TorchScript weights too.
"""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "bmz-cartocell"

PUBLISHED_IDS = ("happy-honeybee", "heroic-otter", "idealistic-turtle", "intelligent-lion",
                 "merry-water-buffalo", "venomous-swan")

_BIAPY_WRAPPER = '''

class {cls}_BiaPy({cls}):
    """As exported by BiaPy 3.7: the network applies the sigmoid itself."""

    def __init__(self, explicit_activations: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.explicit_activations = explicit_activations

    def forward(self, x):
        y = super().forward(x)
        return torch.sigmoid(y) if self.explicit_activations else y
'''


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _arch_name(model_id: str) -> str:
    from cartocell_bmz.networks import ARCHITECTURES

    for name, spec in ARCHITECTURES.items():
        if spec.published_id == model_id:
            return name
    raise KeyError(model_id)


def calibrated_network(arch: str, kwargs: dict[str, Any], seed: int = 0, shape=(16, 64, 64)):
    """This project's network ``arch`` with random weights and batch-norm statistics from a cyst."""
    import torch

    from cartocell_bmz.networks import build_network
    from cartocell_bmz.core.phantoms import make_cyst

    torch.manual_seed(seed)
    net = build_network(arch, **kwargs)
    cyst = make_cyst(shape, (1.0, 0.5, 0.5), stage="day7", seed=seed)
    x = cyst.raw.astype(np.float32)
    x = (x - x.mean()) / (x.std() + 1e-6)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(x)[None, None])
    net.eval()
    return net


def build_lookalike(
    dest: str | Path,
    model_id: str = "happy-honeybee",
    *,
    size: int = 80,
    style: str = "published",
    sizes: str = "fixed",
    halo: int | None = None,
    min_size: tuple[int, int, int] = (12, 16, 16),
    step: tuple[int, int, int] = (4, 8, 8),
    torchscript: bool = False,
    channel_names: list[str] | None = None,
    kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    net: Any = None,
) -> Path:
    """Write a look-alike package folder of ``model_id`` into ``dest`` and return it.

    Parameters
    ----------
    dest : path-like
        Folder to create (the package root).
    model_id : str
        One of the six published ids: its description is the template.
    size : int
        Fixed input size per spatial axis (80 as published; smaller for speed).
    style : {"published", "biapy"}
        ``"biapy"``: as exported by BiaPy 3.7 (see module docstring).
    sizes : {"fixed", "parameterized"}
        Fixed ``size``^3 tiles or min + n * step sizes.
    halo : int, optional
        Output halo (default 0 published, 10 biapy, 4 parameterized).
    torchscript : bool
        Also write TorchScript weights.
    channel_names : list of str, optional
        Output channel names (default channel0..2).
    kwargs : dict, optional
        Network kwargs (default the tiny preset).
    seed : int
        Seed of the weights.
    net : torch.nn.Module, optional
        Use these weights instead (must match ``kwargs``).
    """
    import torch

    from cartocell_bmz.networks import preset_kwargs, source_path

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rdf = yaml.safe_load((REFERENCE / f"{model_id}.rdf.yaml").read_text(encoding="utf-8"))
    arch = _arch_name(model_id)
    kw = dict(kwargs or preset_kwargs(arch, "tiny"))
    if net is None:
        net = calibrated_network(arch, kw, seed=seed)
    biapy = style == "biapy"
    if halo is None:
        halo = 10 if biapy else (4 if sizes == "parameterized" else 0)

    # architecture file and weights
    wdescr = rdf["weights"]["pytorch_state_dict"]
    callable_ = wdescr["architecture"]["callable"]
    source = source_path(arch).read_text(encoding="utf-8")
    arch_kwargs = copy.deepcopy(kw)
    if biapy:
        source += _BIAPY_WRAPPER.format(cls=callable_)
        callable_ = f"{callable_}_BiaPy"
        arch_kwargs["explicit_activations"] = True
    arch_file = dest / wdescr["architecture"]["source"]
    arch_file.write_text(source, encoding="utf-8")
    weights_file = dest / "checkpoint.pth"
    torch.save(net.state_dict(), weights_file)
    wdescr["architecture"] = {"callable": callable_, "kwargs": arch_kwargs, "source": arch_file.name,
                              "sha256": _sha(arch_file)}
    wdescr["sha256"] = _sha(weights_file)
    wdescr["pytorch_version"] = torch.__version__.split("+")[0]
    if torchscript:
        ts_file = dest / "torchscript.pt"
        scripted = torch.jit.script(net)
        if biapy:
            raise ValueError("torchscript look-alikes are for the published style only")
        scripted.save(str(ts_file))
        rdf["weights"]["torchscript"] = {"source": ts_file.name, "sha256": _sha(ts_file),
                                         "pytorch_version": torch.__version__.split("+")[0],
                                         "parent": "pytorch_state_dict"}

    # tensors
    inp, out = rdf["inputs"][0], rdf["outputs"][0]
    if sizes == "fixed":
        for ax in inp["axes"][2:]:
            ax["size"] = int(size)
        test_shape = (size,) * 3
    else:
        for ax, mn, st in zip(inp["axes"][2:], min_size, step):
            ax["size"] = {"min": int(mn), "step": int(st)}
        test_shape = tuple(mn + 2 * st for mn, st in zip(min_size, step))
    for ax in out["axes"][2:]:
        if sizes == "fixed" and not biapy:
            ax["size"] = int(size)
        else:
            ax["size"] = {"tensor_id": "input0", "axis_id": ax["id"]}
        if halo:
            ax["halo"] = int(halo)
    out["axes"][1]["channel_names"] = list(channel_names or ["channel0", "channel1", "channel2"])
    if biapy:
        inp["preprocessing"] = [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["z", "y", "x"]}}]
        out["postprocessing"] = []
        rdf["tags"] = ["biapy", "cyst", "3d", "fluorescence", "instance-segmentation", "pytorch"]

    rng = np.random.default_rng(seed)
    x = (rng.normal(100.0, 20.0, size=(1, 1, *test_shape))).astype(np.float32)
    xn = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        logits = net(torch.from_numpy(xn)).numpy()
    y = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    for tensor, array, name in ((inp, x, "test-input.npy"), (out, y, "test-output.npy")):
        buf = io.BytesIO()
        np.save(buf, array)
        (dest / name).write_bytes(buf.getvalue())
        tensor["test_tensor"] = {"source": name, "sha256": _sha(dest / name)}

    # documentation and cover
    (dest / "documentation.md").write_text(f"# Look-alike of {model_id}\n\nTest package; not a trained model.\n")
    _write_png(dest / "cover.png")
    rdf.pop("config", None)
    rdf["name"] = f"Look-alike of {model_id} ({style} {sizes})"
    (dest / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return dest


def _write_png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(path, np.linspace(0, 1, 64 * 32).reshape(32, 64), cmap="gray")


def rdf_sha256(package: Path) -> str:
    """sha256 of a package's rdf.yaml."""
    return _sha(Path(package) / "rdf.yaml")
