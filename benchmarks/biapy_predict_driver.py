"""Run BiaPy 3.7.1's tiled inference scheme on one volume; print JSON.

Run by ``bench_predict.py`` with the Python of BiaPy's own virtual environment::

    .biapy-venv/bin/python benchmarks/biapy_predict_driver.py PACKAGE VOLUME.npy OUT.npy [BATCH]

PACKAGE is a model package folder (its ``rdf.yaml``, architecture file and
state dict); VOLUME.npy a ``(Z, Y, X)`` image.  The image is normalised over the
whole volume (zero mean, unit variance, as the package's preprocessing), cut by
BiaPy's own ``crop_3D_data_with_overlap`` into 80^3 tiles with 16 voxels of
reflect padding and no overlap (BiaPy's ``DATA.TEST.PADDING = (16, 16, 16)``,
``DATA.TEST.OVERLAP = (0, 0, 0)``, as in CartoCell's configuration), the
network (the package's architecture file and weights, in eval mode, under
``torch.no_grad``) predicts BATCH tiles at a time, the sigmoid is applied, and
BiaPy's ``merge_3D_data_with_overlap`` drops the padding and reassembles the
volume.  ``OUT.npy`` receives the ``(3, Z, Y, X)`` probabilities.

BiaPy's functions are imported from the installed wheel, unmodified; only the
package initialisers are bypassed (they load BiaPy's training machinery, which
the cropping and merging functions do not use).

Printed JSON: ``seconds`` (normalisation, cropping, prediction, merging),
``tiles``, ``peak_mib`` (VmHWM of this process) and ``base_mib`` (resident size
after loading the model and the volume).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np


def _import_biapy_3d():
    spec = importlib.util.find_spec("biapy")
    if spec is None or spec.origin is None:
        raise SystemExit("biapy is not installed in this Python environment")
    root = Path(spec.origin).parent
    for name, path in (("biapy", root), ("biapy.data", root / "data")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    import biapy.data.data_3D_manipulation as d3

    return d3


def _memory_mib() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024.0
    return out


def _load_network(package: Path):
    import torch
    import yaml

    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    w = rdf["weights"]["pytorch_state_dict"]
    arch = w["architecture"]
    spec = importlib.util.spec_from_file_location("package_architecture", package / arch["source"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = getattr(module, arch["callable"])(**arch.get("kwargs", {}))
    net.load_state_dict(torch.load(package / w["source"], map_location="cpu", weights_only=True))
    return net.eval()


def main(argv: list[str]) -> None:
    import torch

    package, volume_path, out_path = Path(argv[0]), Path(argv[1]), Path(argv[2])
    batch = int(argv[3]) if len(argv) > 3 else 1
    d3 = _import_biapy_3d()
    net = _load_network(package)
    volume = np.load(volume_path).astype(np.float32)
    base = _memory_mib()["VmRSS"]
    t0 = time.perf_counter()
    x = (volume - volume.mean(dtype=np.float64)) / (volume.std(dtype=np.float64) + 1e-6)
    patches, _ = d3.crop_3D_data_with_overlap(
        x.astype(np.float32)[..., None], (80, 80, 80, 1), overlap=(0, 0, 0), padding=(16, 16, 16),
        verbose=False, pad_type="reflect",
    )
    preds = np.empty((patches.shape[0], 80, 80, 80, 3), np.float32)
    with torch.no_grad():
        for i in range(0, patches.shape[0], batch):
            chunk = torch.from_numpy(np.ascontiguousarray(patches[i:i + batch, ..., 0]))[:, None]
            preds[i:i + batch] = torch.sigmoid(net(chunk)).permute(0, 2, 3, 4, 1).numpy()
    merged = d3.merge_3D_data_with_overlap(preds, (*volume.shape, 3), overlap=(0, 0, 0), padding=(16, 16, 16),
                                           verbose=False)
    probs = np.ascontiguousarray(np.moveaxis(merged, -1, 0))
    seconds = time.perf_counter() - t0
    np.save(out_path, probs)
    mem = _memory_mib()
    print(json.dumps({"seconds": seconds, "tiles": int(patches.shape[0]), "peak_mib": mem["VmHWM"], "base_mib": base}))


if __name__ == "__main__":
    main(sys.argv[1:])
