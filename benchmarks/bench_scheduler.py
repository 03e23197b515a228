"""Throughput of ``predict`` over 16 cysts on a local Dask cluster of 1 worker against 2 workers.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_scheduler.py                 # 16 cysts, synthetic-unet, 1 then 2 workers
    .venv/bin/python benchmarks/bench_scheduler.py --sync --repeat 2

Each run is one :func:`cartocell_bmz.run.batch.predict_folder` call with
``scheduler="local"`` (what ``cartocell-bmz predict --scheduler local --workers N``
does), on the same 16 synthetic cysts (:func:`cartocell_bmz.core.phantoms.make_cyst`,
``--shape``), recomputing every volume (``overwrite``): it includes starting the
cluster and each worker loading torch and the model, as a user's run does. The
worker processes share the cores (``cores // workers`` torch threads each). Printed:
the core count, the load average before and after each run (the machine may be
shared), wall time and volumes/s per run (in all, and after the first volume is
written: without the cluster start and the model loading), the 2-to-1 ratios, and
whether the outputs of every run are byte-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_cysts(folder: Path, n: int, shape: tuple[int, int, int]) -> Path:
    """``n`` synthetic cysts ``cyst_NN.tif`` (seeds 0 .. n-1) with their voxel size."""
    from cartocell_bmz.core.phantoms import make_cyst
    from cartocell_bmz.io.volumes import write_volume

    for i in range(n):
        cyst = make_cyst(shape, seed=i)
        write_volume(folder / f"cyst_{i:02d}.tif", cyst.raw, cyst.spacing)
    return folder


def digests(out: Path) -> dict[str, str]:
    """sha256 of every output volume."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.tif"))}


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def one_run(model: str, images: Path, out: Path, scheduler: str, workers: int | None) -> dict:
    from cartocell_bmz.run.batch import predict_folder

    before = load()
    finished: list[float] = []

    def heard(done, total, message=""):  # the time each volume is done (tile reports repeat the count)
        if done > len(finished):
            finished.append(time.perf_counter())

    t0 = time.perf_counter()
    summary = predict_folder(model, images, out, scheduler=scheduler, workers=workers, overwrite=True, device="cpu",
                             trust=True, progress=heard)
    seconds = time.perf_counter() - t0
    # steady rate: volumes finished after the first one, over the time since it (no start-up, no model loading)
    steady = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 2 else float("nan")
    return {"label": "sync (this process)" if scheduler == "sync" else f"local, {workers} worker(s)",
            "workers": workers, "seconds": seconds, "rate": summary.n_computed / seconds, "n": summary.n_computed,
            "steady": steady, "start": (finished[0] - t0) if finished else float("nan"),
            "load": f"{before} -> {load()}", "digests": digests(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "model_packages" / "synthetic-unet"))
    parser.add_argument("--n", type=int, default=16, help="cysts (default 16)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 96, 96), help="Z Y X of each cyst")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration, alternating")
    parser.add_argument("--sync", action="store_true", help="also time the run in this process")
    args = parser.parse_args(argv)

    cores = os.cpu_count() or 1
    print(f"cores: {cores}; load average (1/5/15 min) at start: {load()}")
    with tempfile.TemporaryDirectory(prefix="bench_scheduler_") as tmp:
        tmp = Path(tmp)
        images = write_cysts(tmp / "x", args.n, tuple(args.shape))
        print(f"{args.n} cysts {tuple(args.shape)}, model {Path(args.model).name}")
        configs = ([("sync", None)] if args.sync else []) + [("local", 1), ("local", 2)]
        runs = []
        for r in range(args.repeat):
            for scheduler, workers in configs:
                res = one_run(args.model, images, tmp / f"out_{scheduler}_{workers}", scheduler, workers)
                runs.append(res)
                print(f"  {res['label']:<22} {res['seconds']:7.1f} s  {res['rate']:.3f} volumes/s in all; "
                      f"first volume after {res['start']:.1f} s, then {res['steady']:.3f} volumes/s  "
                      f"(load {res['load']})", flush=True)
        best = {}
        for res in runs:
            key = res["label"]
            if key not in best or res["rate"] > best[key]["rate"]:
                best[key] = res
        one, two = best["local, 1 worker(s)"], best["local, 2 worker(s)"]
        same = all(res["digests"] == runs[0]["digests"] for res in runs) and len(runs[0]["digests"]) == 3 * args.n
        print(f"2 workers / 1 worker: {two['rate'] / one['rate']:.2f}x volumes/s in all "
              f"({two['rate']:.3f} vs {one['rate']:.3f}), {two['steady'] / one['steady']:.2f}x after the first volume "
              f"({two['steady']:.3f} vs {one['steady']:.3f}); best of {args.repeat}, on {cores} cores")
        print(f"outputs byte-identical across runs: {same}; load average at end: {load()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
