"""Peak memory and wall time of ``cartocell-bmz crop`` on a large synthetic acquisition.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_crop.py --gib 2.0 --stub              # the 2 GiB stack, a stand-in network
    .venv/bin/python benchmarks/bench_crop.py --gib 0.02 --model synthetic-unet   # the packaged model, on CPU

The stack is one :func:`cartocell_bmz.core.stack_phantoms.make_stack` phantom
(28 x 160 x 208) tiled in z, y and x up to ``--gib`` GiB of uint16, written
uncompressed (ImageJ TIFF, voxel size 1 x 0.5 x 0.5 µm).  Then, in a fresh
process, either the ``crop`` command itself (``--model``) or, with ``--stub``,
:func:`cartocell_bmz.run.crop.crop_stacks` with a stand-in network (a fixed 3x3x3
smoothing convolution thresholded into B, C, M: the same reading,
normalisation, blocks, tiling, scratch mask, components, classification and
crops, without a U-Net's cost: predicting 2 GiB with a real network on 2 CPU
cores takes hours).  Printed: stack size, wall time, peak resident memory of
the child (its own ``VmHWM`` at exit, and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` beside it,
which measured more than that on the 2 GiB run, probably the parent's pages held between fork and exec), candidates
and crops.
"""

from __future__ import annotations

import argparse
import csv
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_stack(path: Path, gib: float) -> tuple[int, int, int]:
    """Tile one stack phantom up to ``gib`` GiB; returns the shape written."""
    import tifffile

    from cartocell_bmz.core.stack_phantoms import make_stack

    s = make_stack(seed=0)
    base = np.asarray(s.raw, np.uint16)
    voxels = gib * (1 << 30) / 2
    k = max(1.0, (voxels / base.size) ** (1 / 3))
    reps = [max(1, int(round(k))) for _ in range(3)]
    while math.prod(reps) * base.size < voxels:  # at least the size asked for
        reps[int(np.argmin(reps))] += 1
    shape = tuple(n * r for n, r in zip(base.shape, reps))
    data = tifffile.memmap(path, shape=shape, dtype=np.uint16, imagej=True,
                           resolution=(1 / s.spacing[2], 1 / s.spacing[1]),
                           metadata={"spacing": s.spacing[0], "unit": "um", "axes": "ZYX"})
    for iz in range(reps[0]):
        for iy in range(reps[1]):
            for ix in range(reps[2]):
                data[iz * base.shape[0]:(iz + 1) * base.shape[0], iy * base.shape[1]:(iy + 1) * base.shape[1],
                     ix * base.shape[2]:(ix + 1) * base.shape[2]] = base
        data.flush()
    del data
    return shape  # type: ignore[return-value]


def stub_backend():
    """A stand-in network: smoothed intensity -> M, B (same), C (none); no pooling."""
    import torch

    from cartocell_bmz.run.backends import TorchBackend

    conv = torch.nn.Conv3d(1, 3, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = conv.weight[2] = 4.0 / 27
        conv.bias[:] = torch.tensor([-2.0, -20.0, -2.0])
    conv.eval()
    return TorchBackend(conv, (1, 1, 1), name="stub")


def child(stack: str, out: str, stub: bool, model: str) -> None:
    """What runs in the fresh process: the crop command (or crop_stacks with the stand-in); then its VmHWM."""
    try:
        if stub:
            import torch

            from cartocell_bmz.run.crop import crop_stacks

            torch.set_num_threads(2)
            crop_stacks(stub_backend(), [stack], out, device="cpu")
        else:
            from cartocell_bmz.cli.app import app

            app([ "crop", stack, "--model", model, "--out", out, "--device", "cpu", "--trust"], standalone_mode=False)
    finally:
        hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")]
        print(f"VmHWM {hwm[0] if hwm else 0}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="Stack size in GiB (uint16).")
    parser.add_argument("--model", default="synthetic-unet", help="Model for the crop command.")
    parser.add_argument("--stub", action="store_true", help="A stand-in network instead of --model.")
    parser.add_argument("--workdir", type=Path, default=None, help="Where the stack goes (default a temporary folder).")
    parser.add_argument("--child", nargs=2, metavar=("STACK", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.stub, args.model)
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-crop-"))
    work.mkdir(parents=True, exist_ok=True)
    stack, out = work / "stack.tif", work / "out"
    t0 = time.perf_counter()
    shape = write_stack(stack, args.gib)
    size = stack.stat().st_size
    print(f"stack {' x '.join(map(str, shape))} uint16, {size / (1 << 30):.2f} GiB on disk "
          f"(written in {time.perf_counter() - t0:.0f} s)")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(stack), str(out), "--model", args.model,
               *(["--stub"] if args.stub else [])]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    rusage = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1 << 20)  # KiB -> GiB
    hwm = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("VmHWM")]
    peak = int(hwm[-1]) / (1 << 20) if hwm else float("nan")
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:])
        raise SystemExit(f"crop failed with exit code {proc.returncode}")
    with open(out / "candidates.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = sum(r["kept"] == "True" for r in rows)
    what = "stand-in network" if args.stub else f"model {args.model}"
    print(f"crop ({what}, CPU): {wall:.0f} s wall, peak RSS {peak:.2f} GiB (the child's VmHWM; "
          f"{peak * (1 << 30) / size:.2f} x the stack; getrusage of children says {rusage:.2f} GiB); "
          f"{len(rows)} candidates, {kept} kept")


if __name__ == "__main__":
    main()
