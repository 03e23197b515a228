"""Run BiaPy 3.7.1's watershed-by-channels and Voronoi on saved probabilities; print JSON.

Run by ``bench_postprocess.py`` with the Python of BiaPy's own virtual environment
(BiaPy is a benchmark dependency, not a runtime one)::

    .biapy-venv/bin/python benchmarks/biapy_postprocess_driver.py PROBS.npy OUT_DIR STEP [REPEAT]

``PROBS.npy`` holds ``(3, Z, Y, X)`` float32 probabilities in channel order B, C, M
(BiaPy calls them F, C, M).  STEP ``watershed`` writes ``OUT_DIR/biapy_instances.npy``;
STEP ``voronoi`` reads it and writes ``OUT_DIR/biapy_voronoi.npy``; each step runs in
a fresh process, so that its peak memory is measured from a clean heap.  BiaPy's functions are called exactly as its
``InstanceSegmentationWorkflow`` calls them for an F+C+M model with "auto"
thresholds (``biapy/engine/instance_seg.py``, ``check_configuration.py``): seeds
from F and C, growth mask and flooded surface from F, seeds of <= 5 voxels removed
before the watershed (CartoCell's setting), then ``voronoi_on_mask`` on the M
channel with an Otsu threshold and no erosion.

BiaPy's post-processing module is imported from the installed wheel, unmodified.
Only the package initialisers ``biapy/__init__.py`` and ``biapy/engine/__init__.py``
are bypassed: they load BiaPy's training and export machinery (bioimageio.core,
timm, torchvision), which the post-processing functions do not use and whose CUDA
build of torchvision cannot load next to a CPU-only torch.

Each step's time is the fastest of REPEAT wall-clock runs (``time.perf_counter``) and
its peak memory is the largest rise of the process's peak resident set size
(``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident size just
before the step.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np


def _import_biapy_postprocessing():
    spec = importlib.util.find_spec("biapy")
    if spec is None or spec.origin is None:
        raise SystemExit("biapy is not installed in this Python environment")
    root = Path(spec.origin).parent

    def package(name: str, path: Path | None = None) -> types.ModuleType:
        mod = types.ModuleType(name)
        if path is not None:
            mod.__path__ = [str(path)]
        sys.modules[name] = mod
        return mod

    package("biapy", root).__version__ = "3.7.1"
    package("biapy.engine", root / "engine")
    metrics = package("biapy.engine.metrics")  # only imported for a name, never called here

    def _unused(*args, **kwargs):
        raise NotImplementedError("biapy.engine.metrics is not loaded by this driver")

    metrics.jaccard_index_numpy = _unused
    from biapy.data.post_processing import post_processing

    return post_processing


def memory_kib() -> dict[str, int]:
    """Current (``VmRSS``) and peak (``VmHWM``) resident set size in KiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def reset_peak() -> None:
    """Reset the kernel's peak-RSS counter of this process (Linux)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def measure(func, *args, repeat: int = 1, **kwargs):
    """Call ``func`` ``repeat`` times; return its result, the fastest time (s) and the peak memory rise (MiB)."""
    best, rise, out = float("inf"), 0.0, None
    for _ in range(max(1, repeat)):
        out = None  # free the previous result before measuring again
        reset_peak()
        before = memory_kib()["VmRSS"]
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
        rise = max(rise, (memory_kib()["VmHWM"] - before) / 1024.0)
    return out, best, rise


def main(argv: list[str]) -> int:
    probs_path, out_dir, step = Path(argv[0]), Path(argv[1]), argv[2]
    repeat = int(argv[3]) if len(argv) > 3 else 1
    pp = _import_biapy_postprocessing()
    probs = np.load(probs_path)
    # BiaPy holds predictions channel-last, (z, y, x, channels).
    data = np.ascontiguousarray(np.moveaxis(probs, 0, -1))
    del probs
    if step == "watershed":
        labels, seconds, mib = measure(
            pp.watershed_by_channels,
            data,
            channels=["F", "C", "M"],
            seed_channels=["F", "C"],
            seed_channel_ths=["auto", "auto"],
            topo_surface_channel="F",
            growth_mask_channels=["F"],
            growth_mask_channel_ths=["auto"],
            remove_before=True,
            thres_small_before=5,
            verbose=False,
            repeat=repeat,
        )
        np.save(out_dir / "biapy_instances.npy", labels.astype(np.uint32))  # as the workflow returns them
    elif step == "voronoi":
        labels = np.load(out_dir / "biapy_instances.npy")
        voronoi, seconds, mib = measure(
            pp.voronoi_on_mask, labels, data[..., 2], th=0, erode_size=0, verbose=False, repeat=repeat
        )
        np.save(out_dir / "biapy_voronoi.npy", voronoi)
    else:
        raise SystemExit(f"unknown step {step!r}")
    print(json.dumps({"seconds": seconds, "mib": mib}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
