"""Tiled prediction: bioimageio.core's whole-volume prediction vs BiaPy's tiling scheme vs ours.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_predict.py --state-dict RUN/checkpoints/best.pt --arch resunet
    .venv/bin/python benchmarks/bench_predict.py --package model_packages/NAME      # a parameterised package
    .venv/bin/python benchmarks/bench_predict.py --memory                           # 128 x 512 x 512, published size
    .venv/bin/python benchmarks/bench_predict.py --onnx --package model_packages/NAME  # onnxruntime vs torch, CPU

Each method runs in its own fresh process on the same model and the same
synthetic cyst, and reports its wall time (normalisation to probabilities, the
model already loaded), its peak resident memory (``VmHWM``) and its rise above
the process's resident size once the model and volume are loaded:

* ``whole``: bioimageio.core's ``predict_sample_without_blocking`` on the whole
  volume (its pre- and post-processing; memory grows with the volume);
* ``biapy``: BiaPy 3.7.1's scheme, BiaPy's own cropping and merging functions
  (80^3 tiles, 16 voxels of reflect padding, the central 48^3 kept), run in
  BiaPy's virtual environment (``benchmarks/biapy_predict_driver.py``);
  fixed 80^3 packages only;
* ``ours``: :class:`cartocell_bmz.run.predictor.Predictor` with its measured margins
  (measured once beforehand and cached; the one-time cost is printed apart).

The largest probability difference from ``whole`` is taken over voxels at least
``--border`` voxels from the volume border (there every method sees the image
edge differently).  Useful throughput = volume voxels / seconds.

Scenarios:

* fixed: a look-alike of a published package (fixed 80^3 tiles, sigmoid
  postprocessing) carrying the given trained weights (``--state-dict`` and
  ``--arch``, at the tiny preset unless ``--kwargs-json``);
* parameterised: the same network as a package with parameterised sizes
  (``min + n * step``), or ``--package`` (e.g. one of ``model_packages/``);
* memory (``--memory``): our runner only, with the published network size
  (feature maps 52, 68, 84) on a 128 x 512 x 512 volume on CPU.  Predicting all
  200 tiles takes 10-17 minutes on 2 cores; the peak is reached with the first
  batch (input, normalised copy and output are allocated before it; later tiles
  reuse the same buffers), so by default the run stops after ``--memory-tiles``
  tiles and says so (measured: 1.90 GiB after 4 tiles, 1.92 GiB after all 200).
* onnx (``--onnx``): our runner on CPU with the package's ``pytorch_state_dict``
  weights (torch, channels-last) and with its ``onnx`` weights (onnxruntime), each in
  a fresh process on the same volume (``--param-shape``), tile and ``--threads``
  (torch's and onnxruntime's intra-op threads); throughput of each, the ratio
  onnxruntime / torch and the largest probability difference between the two.
  Each measures (and caches) its own margins beforehand, as a user's first run does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the look-alike builder
DEFAULT_BIAPY_PYTHON = ROOT / ".biapy-venv" / "bin" / "python"


# --------------------------------------------------------------------------- child processes


def _memory_mib() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024.0
    return out


class _Stop(Exception):
    pass


def child(method: str, package: str, volume_path: str, out_path: str, tile: str, batch: int, max_tiles: int) -> None:
    """Run one method in this (fresh) process; print JSON."""
    import torch

    from cartocell_bmz.run.predictor import Predictor, predict_whole

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    tile_t = tuple(int(t) for t in tile.split(",")) if tile else None
    volume = np.load(volume_path, mmap_mode="r" if method == "ours" else None)
    weights = os.environ.get("BENCH_WEIGHTS") or None  # None: the runner's default
    with Predictor(package, trust=True, tile=tile_t, batch_size=batch, device="cpu", weights=weights) as p:
        plan = p.plan(volume.shape) if method == "ours" else None
        if max_tiles:
            forward, calls = p.forward, [0]

            def limited(tiles):
                calls[0] += 1
                if calls[0] > max_tiles:
                    raise _Stop
                return forward(tiles)

            p.forward = limited
        base = _memory_mib()["VmRSS"]
        t0 = time.perf_counter()
        stopped = False
        try:
            if method == "whole":
                probs = predict_whole(p, np.asarray(volume), core=True)
            else:
                probs = p.predict(volume)
        except _Stop:
            stopped, probs = True, None
        seconds = time.perf_counter() - t0
        mem = _memory_mib()
        em = p.edge_margins(p.geometry(volume.shape)) if method == "ours" else None
    if probs is not None:
        np.save(out_path, probs)
    print(json.dumps({
        "seconds": seconds, "peak_mib": mem["VmHWM"], "base_mib": base, "stopped": stopped, "weights": p.weights,
        "tiles": plan.n_tiles if plan is not None else 1,
        "tiles_run": min(plan.n_tiles, max_tiles) if (plan is not None and max_tiles) else None,
        "margin": list(em.margin) if em else None, "overlap": list(em.overlap) if em else None,
    }))


def _run(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- scenarios


def _network(args):
    import torch

    from cartocell_bmz.networks import build_network, preset_kwargs

    kwargs = json.loads(args.kwargs_json) if args.kwargs_json else preset_kwargs(args.arch, args.size)
    net = build_network(args.arch, **kwargs)
    if args.state_dict:
        net.load_state_dict(torch.load(args.state_dict, map_location="cpu", weights_only=True))
        net.eval()
    else:
        from lookalike import calibrated_network

        net = calibrated_network(args.arch, kwargs)
    return net, kwargs


def _published_id(arch: str) -> str:
    from cartocell_bmz.networks import ARCHITECTURES

    return ARCHITECTURES[arch].published_id


def _compare(results: dict, outs: dict, border: int, voxels: int) -> list[dict]:
    ref = np.load(outs["whole"]) if "whole" in outs and Path(outs["whole"]).is_file() else None
    rows = []
    for name, res in results.items():
        diff = float("nan")
        if ref is not None and Path(outs[name]).is_file():
            got = np.load(outs[name])
            b = border
            inner = (slice(None), slice(b, -b), slice(b, -b), slice(b, -b))
            diff = float(np.abs(got[inner] - ref[inner]).max())
        rows.append({"method": name, **res, "voxels_per_s": voxels / res["seconds"], "max_diff": diff})
    return rows


def _table(title: str, rows: list[dict], shape) -> str:
    whole = next((r for r in rows if r["method"] == "whole"), None)
    biapy = next((r for r in rows if r["method"] == "biapy"), None)
    lines = [f"### {title} ({' x '.join(map(str, shape))} voxels)", "",
             "| method | tiles | time (s) | useful voxels/s | peak RSS (MiB) | rise (MiB) | max diff vs whole | "
             "throughput vs whole | vs BiaPy | memory rise vs whole |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rise = r["peak_mib"] - r["base_mib"]
        vs_whole = r["voxels_per_s"] / whole["voxels_per_s"] if whole else float("nan")
        vs_biapy = r["voxels_per_s"] / biapy["voxels_per_s"] if biapy else float("nan")
        mem_ratio = rise / (whole["peak_mib"] - whole["base_mib"]) if whole else float("nan")
        lines.append(
            f"| {r['method']} | {r.get('tiles', '')} | {r['seconds']:.1f} | {r['voxels_per_s']:,.0f} | "
            f"{r['peak_mib']:.0f} | {rise:.0f} | {r['max_diff']:.4f} | {vs_whole:.2f}x | {vs_biapy:.2f}x | "
            f"{mem_ratio:.2f}x |"
        )
    extra = [f"ours: margins {r['margin']}, blending ramps {r['overlap']}" for r in rows if r.get("margin")]
    return "\n".join(lines + ([""] + extra if extra else []))


def scenario(name: str, package: Path, volume: np.ndarray, work: Path, env: dict, args, methods) -> str:
    vol_path = work / f"{name}_volume.npy"
    np.save(vol_path, volume)
    results, outs = {}, {}
    for method in methods:
        outs[method] = str(work / f"{name}_{method}.npy")
        if method == "biapy":
            cmd = [args.biapy_python, str(ROOT / "benchmarks" / "biapy_predict_driver.py"), str(package),
                   str(vol_path), outs[method], str(args.batch)]
        else:
            cmd = [sys.executable, __file__, "--child", method, str(package), str(vol_path), outs[method],
                   args.tile or "", str(args.batch), "0"]
        print(f"  {name}: {method} ...", file=sys.stderr, flush=True)
        results[method] = _run(cmd, env)
    rows = _compare(results, outs, args.border, int(np.prod(volume.shape)))
    return _table(name, rows, volume.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resunet", help="Architecture of the network (registry name).")
    ap.add_argument("--state-dict", help="Trained weights of that architecture (default: random, calibrated).")
    ap.add_argument("--size", default="tiny", help="Preset size of the network (tiny or paper).")
    ap.add_argument("--kwargs-json", help="Network kwargs as JSON (instead of --size).")
    ap.add_argument("--package", help="A parameterised package to benchmark instead of a look-alike.")
    ap.add_argument("--shape", type=int, nargs=3, default=(80, 176, 176), help="Volume of the fixed scenario.")
    ap.add_argument("--param-shape", type=int, nargs=3, default=(96, 256, 256),
                    help="Volume of the parameterised scenario.")
    ap.add_argument("--tile", default="", help="Tile Z,Y,X for parameterised packages (default: the runner's).")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--border", type=int, default=16)
    ap.add_argument("--scenarios", default="fixed,param", help="Comma-separated: fixed, param.")
    ap.add_argument("--memory", action="store_true", help="Only the 128 x 512 x 512 memory run.")
    ap.add_argument("--onnx", action="store_true",
                    help="Only onnxruntime vs torch on CPU: --package (default model_packages/synthetic-unet), "
                         "--param-shape, --threads.")
    ap.add_argument("--memory-shape", type=int, nargs=3, default=(128, 512, 512))
    ap.add_argument("--memory-tiles", type=int, default=4)
    ap.add_argument("--biapy-python", default=str(DEFAULT_BIAPY_PYTHON))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="--onnx: runs of each weight format (fastest kept).")
    ap.add_argument("--child", nargs=7, metavar=("METHOD", "PKG", "VOL", "OUT", "TILE", "BATCH", "MAXTILES"))
    args = ap.parse_args()
    if args.child:
        m, pkg, vol, out, tile, batch, max_tiles = args.child
        child(m, pkg, vol, out, tile, int(batch), int(max_tiles))
        return

    from cartocell_bmz.core.phantoms import make_cyst
    from lookalike import build_lookalike

    work = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    env = {**os.environ, "CARTOCELL_BMZ_CACHE": str(work / "cache"), "BENCH_THREADS": str(args.threads),
           "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    print(f"work folder {work}", file=sys.stderr)
    sections = []
    if args.onnx:
        pkg = Path(args.package or ROOT / "model_packages" / "synthetic-unet")
        vol = make_cyst(tuple(args.param_shape), (1.0, 0.5, 0.5), stage="day10", seed=12).raw.astype(np.float32)
        sections.append(onnx_scenario(pkg, vol, work, env, args))
    elif args.memory:
        from cartocell_bmz.networks import preset_kwargs

        kwargs = preset_kwargs(args.arch, "paper")
        pkg = build_lookalike(work / "paper", _published_id(args.arch), size=80, kwargs=kwargs)
        vol = np.random.default_rng(0).normal(100, 20, size=tuple(args.memory_shape)).astype(np.float32)
        np.save(work / "memory_volume.npy", vol)
        del vol
        # margins as measured for a trained tiny network of the same depth (random paper-size weights
        # reach much farther; memory does not depend on the margins)
        env_m = dict(env)
        cmd = [sys.executable, __file__, "--child", "ours", str(pkg), str(work / "memory_volume.npy"),
               str(work / "memory_ours.npy"), "", str(args.batch), str(args.memory_tiles)]
        _seed_margins(pkg, work / "cache")
        res = _run(cmd, env_m)
        sections.append(
            f"### Memory: published network size ({args.arch}, feature maps 52, 68, 84), "
            f"{' x '.join(map(str, args.memory_shape))} voxels, CPU\n\n"
            f"ours: peak RSS {res['peak_mib']:.0f} MiB ({res['peak_mib'] / 1024:.2f} GiB; rise "
            f"{res['peak_mib'] - res['base_mib']:.0f} MiB above the loaded process), {res['tiles']} tiles planned, "
            f"stopped after {res['tiles_run']} tiles ({res['seconds']:.0f} s, "
            f"{res['seconds'] / max(res['tiles_run'], 1):.1f} s per 80^3 tile incl. normalisation); "
            f"margins {res['margin']}."
        )
    else:
        net, kwargs = _network(args)
        t0 = time.perf_counter()
        vol_fixed = make_cyst(tuple(args.shape), (1.0, 0.5, 0.5), stage="day10", seed=11).raw.astype(np.float32)
        scen = args.scenarios.split(",")
        if "fixed" in scen:
            pkg = build_lookalike(work / "fixed", _published_id(args.arch), size=80, kwargs=kwargs, net=net)
            t1 = time.perf_counter()
            _measure_once(pkg, env, work, vol_fixed.shape)
            print(f"  margins measured once in {time.perf_counter() - t1:.1f} s (cached)", file=sys.stderr)
            sections.append(scenario("fixed 80^3 package", pkg, vol_fixed, work, env, args, ["whole", "biapy", "ours"]))
        if "param" in scen:
            if args.package:
                pkg = Path(args.package)
            else:
                pkg = build_lookalike(work / "param", _published_id(args.arch), sizes="parameterized", halo=0,
                                      min_size=(8, 16, 16), step=(1, 4, 4), kwargs=kwargs, net=net)
            vol_param = make_cyst(tuple(args.param_shape), (1.0, 0.5, 0.5), stage="day10", seed=12).raw.astype(np.float32)
            _measure_once(pkg, env, work, vol_param.shape)
            sections.append(scenario("parameterised package", pkg, vol_param, work, env, args, ["whole", "ours"]))
        print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print("\n\n".join(sections))


def onnx_scenario(package: Path, volume: np.ndarray, work: Path, env: dict, args) -> str:
    """Our runner with the package's torch weights, then its ONNX weights: same volume, tile, threads."""
    vol_path = work / "onnx_volume.npy"
    np.save(vol_path, volume)
    rows: dict = {}
    names = ("pytorch_state_dict", "onnx")
    for weights in names:
        _measure_once(package, {**env, "BENCH_WEIGHTS": weights}, work, volume.shape)
    for i in range(args.repeat):  # alternating, so that a busy spell of the machine hits both; fastest kept
        for weights in names:
            out = str(work / f"onnx_{weights}.npy")
            print(f"  {package.name}: {weights} (run {i + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", "ours", str(package), str(vol_path), out, args.tile or "",
                   str(args.batch), "0"]
            res = {**_run(cmd, {**env, "BENCH_WEIGHTS": weights}), "out": out}
            assert res["weights"] == weights, res["weights"]
            runs = rows.get(weights, {}).get("runs", []) + [res["seconds"]]
            rows[weights] = min(rows.get(weights, res), res, key=lambda r: r["seconds"]) | {"runs": runs}
    torch_row, onnx_row = rows["pytorch_state_dict"], rows["onnx"]
    diff = float(np.abs(np.load(onnx_row["out"]) - np.load(torch_row["out"])).max())
    voxels = int(np.prod(volume.shape))
    lines = [f"### onnxruntime vs torch on CPU: {package.name}, {' x '.join(map(str, volume.shape))} voxels, "
             f"{args.threads} thread(s), {os.cpu_count()} CPU(s)", "",
             "| weights | runs on | tiles | margins | time (s), fastest | runs (s) | voxels/s | peak RSS (MiB) | "
             "max diff vs torch |",
             "|---|---|---:|---|---:|---|---:|---:|---:|"]
    for weights, r in rows.items():
        engine = "onnxruntime" if weights == "onnx" else "torch"
        lines.append(f"| {weights} | {engine} | {r['tiles']} | {r['margin']} | {r['seconds']:.1f} | "
                     f"{', '.join(f'{t:.1f}' for t in r['runs'])} | {voxels / r['seconds']:,.0f} | {r['peak_mib']:.0f} | "
                     f"{diff if weights == 'onnx' else 0.0:.2g} |")
    ratio = torch_row["seconds"] / onnx_row["seconds"]
    lines += ["", f"throughput ratio onnxruntime / torch: {ratio:.2f}x "
                  f"({'faster' if ratio > 1 else 'slower'}); largest probability difference {diff:.2g}"]
    return "\n".join(lines)


def _measure_once(pkg: Path, env: dict, work: Path, shape) -> None:
    """Measure (and cache) the runner's margins for this package before timing it."""
    code = ("import os, sys, numpy as np, torch; torch.set_num_threads(%d)\n"
            "from cartocell_bmz.run.predictor import Predictor\n"
            "p = Predictor(sys.argv[1], trust=True, device='cpu', weights=os.environ.get('BENCH_WEIGHTS') or None)\n"
            "g = p.geometry(%r); print(p.edge_margins(g))"
            % (int(env.get("BENCH_THREADS", "2")), tuple(shape)))
    proc = subprocess.run([sys.executable, "-c", code, str(pkg)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    print("  " + proc.stdout.strip().splitlines()[-1][:400], file=sys.stderr)


def _seed_margins(pkg: Path, cache: Path) -> None:
    """Store margins for the memory run (so it does not measure a random paper-size network)."""
    from cartocell_bmz.bmz.resolve import resolve_model
    from cartocell_bmz.run.margins import EDGE_TOLERANCE
    from cartocell_bmz.io.volumes import atomic_open

    r = resolve_model(str(pkg), trust=True, cache_dir=cache)
    key = f"{r.rdf_sha256[:24]}-pytorch_state_dict-80x80x80-{EDGE_TOLERANCE:g}.json"
    with atomic_open(cache / "margins" / key) as f:
        json.dump({"tile": [80, 80, 80], "margin": [7, 14, 14], "overlap": [0, 0, 0], "error": [None] * 3,
                   "profiles": [[], [], []], "floor": [0, 0, 0]}, f)


if __name__ == "__main__":
    main()
