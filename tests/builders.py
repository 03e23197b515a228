"""Builders shared by the test modules: training-run folders, cysts on disk, tiny network kwargs, offline guards."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from cartocell_bmz import networks
from cartocell_bmz.layout import CHANNELS

#: A two-level residual U-Net with a few thousand parameters: divisor (1, 2, 2).
TINY = {"feature_maps": [4, 8], "z_down": [1], "dropout": 0.0}
SMALL_KWARGS = {"in_channels": 1, "out_channels": 3, "feature_maps": [4, 8], "z_down": [1],
                "normalization": "bn", "dropout": [0.0, 0.0], "activation": "elu", "k_size": 3,
                "upsample": "convtranspose"}


#: A one-level network: two 3x3x3 convolutions, so every output voxel sees +-2 voxels.
ONE_LEVEL = {**SMALL_KWARGS, "feature_maps": [4], "z_down": [], "dropout": [0.0]}

def make_run(run_dir: Path, arch: str = "resunet", kwargs: dict | None = None, seed: int = 0) -> Path:
    """Write a training run folder (docs/DEVELOPING.md contract) holding a fresh, seeded network."""
    import torch

    run = Path(run_dir)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    kw = networks.resolve_kwargs(arch, kwargs if kwargs is not None else TINY)
    torch.manual_seed(seed)
    net = networks.build_network(arch, **kw).eval()
    torch.save(net.state_dict(), run / "checkpoints" / "best.pt")
    spec = networks.get_spec(arch)
    (run / "model.json").write_text(json.dumps({
        "arch": arch, "callable": spec.callable, "source": spec.source, "kwargs": kw,
        "divisor": list(networks.divisor(arch, kw)), "channels": list(CHANNELS),
        "target_mode": "cartocell", "n_parameters": networks.count_parameters(net),
    }))
    (run / "config.json").write_text(json.dumps({
        "train": {"arch": arch, "lr": 0.001, "batch_size": 2, "optimizer": "adamw", "schedule": "onecycle",
                  "patch_size": [16, 48, 48]},
        "data": {"train_volumes": ["a.tif", "b.tif"], "val_volumes": ["c.tif"]},
    }))
    (run / "status.json").write_text(json.dumps({
        "finished": True, "epoch": 3, "best_epoch": 2, "best_val_loss": 0.5, "finished_at": "2024-05-01T12:00:00+00:00",
    }))
    (run / "train_log.csv").write_text("epoch,train_loss,val_loss\n1,0.9,0.8\n2,0.6,0.5\n3,0.5,0.55\n")
    return run


def write_cyst(path: Path, shape=(16, 48, 48), seed: int = 3) -> Path:
    from cartocell_bmz.core.phantoms import make_cyst
    from cartocell_bmz.io.volumes import write_volume

    cyst = make_cyst(shape, seed=seed)
    return write_volume(path, cyst.raw, cyst.spacing)


@contextlib.contextmanager
def no_network():
    """Make every socket connection or name lookup fail, and record the attempts."""
    attempts: list[str] = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network access attempted in an offline test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield attempts


@contextlib.contextmanager
def serve(root: Path):
    """A plain HTTP server on 127.0.0.1 serving ``root``; yields its port."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass




#: The project's own packages in model_packages/.
MODEL_PACKAGES = sorted(rdf.parent for rdf in (Path(__file__).resolve().parents[1] / "model_packages").glob("*/rdf.yaml"))
#: The package every default test run checks; the other five run with ``-m slow``.
DEFAULT_RUN_PACKAGE = "synthetic-unet"


def model_package_params() -> list:
    """One pytest param per package of model_packages/: synthetic-unet in the default run, the rest slow.

    A check of every package costs minutes (the largest halos need large volumes); the default
    run keeps one package so that the check itself is always exercised, and ``pytest -m slow``
    runs the other five before an issue touching packaging or prediction is closed.
    """
    return [pytest.param(p, id=p.name, marks=() if p.name == DEFAULT_RUN_PACKAGE else pytest.mark.slow(
        reason="every model package: run with -m slow before closing an issue on packaging or prediction"))
        for p in MODEL_PACKAGES]


def write_ome_zarr(path, data, scale, *, axes="zyx", unit="micrometer", version="0.4", chunks=(4, 16, 16)):
    """A one-level OME-Zarr image (what bioformats2raw / ome-zarr-py write, reduced to what a reader needs)."""
    import zarr

    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    chunks = tuple(1 for _ in axes[:-3]) + tuple(chunks)
    arr = group.create_array("0", shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[...] = data
    kinds = {"t": "time", "c": "channel"}
    ms = {"version": version, "axes": [{"name": a, "type": kinds.get(a, "space"), **({} if a in kinds else {"unit": unit})}
                                       for a in axes],
          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}]}
    if fmt == 2:
        group.attrs["multiscales"] = [ms]
    else:
        group.attrs["ome"] = {"version": version, "multiscales": [ms]}
    return path
