"""Benchmark: per-cell morphology of a segmented cyst -- cartocell-bmz against BiaPy 3.7.1 and a baseline.

Three ways to measure the cells of the same synthetic cyst, each in its own fresh process
with the same thread limits, one after the other:

* **ours**: :func:`cartocell_bmz.core.morphology.measure_cyst` (every feature of the
  ``cells``, ``neighbours`` and ``cyst`` tables);
* **regionprops baseline**: the straightforward way to the same features with
  scikit-image -- ``regionprops(labels, spacing=...)`` for volume, centroid, axes and
  solidity, then per cell (a loop over its padded crop): marching cubes with the spacing
  for the surface area, face counts against each neighbour, the lumen and the outside
  (rescaled to the marching-cubes area, as CartoCell does), the apical and basal layers
  and their neighbours, the height and the connected pieces (:func:`regionprops_baseline`);
* **BiaPy 3.7.1**: ``measure_morphological_props_and_filter`` (volume, surface area,
  sphericity, bounding-box diameter; no neighbours), in BiaPy's own virtual environment
  through ``biapy_measure_driver.py``.

And, as the target, the time of our watershed + Voronoi
(:func:`cartocell_bmz.core.postprocess.postprocess`) on probabilities made from the same
cyst (as ``bench_postprocess.py`` makes them).  For each method the table gives the fastest
wall-clock time of ``--repeat`` runs (the baseline and BiaPy: one run; ours and the target in
``--rounds`` fresh processes each, alternating, so that a busy machine slows both alike), the peak memory (rise
of the peak resident set above the resident size before the call, inputs loaded), and the
error of the surface area it reports for a digital ball of radius 10 voxels (isotropic) and of
radius 5 µm at spacing (1, 0.5, 0.5) µm.

Usage::

    .venv/bin/python benchmarks/bench_measure.py            # 128 x 384 x 384, 400 cells
    .venv/bin/python benchmarks/bench_measure.py --quick    # 48 x 128 x 128, 60 cells
    .venv/bin/python benchmarks/bench_measure.py --markdown --no-biapy
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_BIAPY_PYTHON = ROOT / ".biapy-venv" / "bin" / "python"
#: The analytic balls: (name, radius in µm, spacing).
BALLS = (("ball r=10 vox", 10.0, (1.0, 1.0, 1.0)), ("ball r=5 um @ (1, 0.5, 0.5)", 5.0, (1.0, 0.5, 0.5)))


def ball(radius: float, spacing) -> np.ndarray:
    """``uint16`` digital ball (label 1) of ``radius`` µm, centred off the voxel grid."""
    spacing = np.asarray(spacing, float)
    shape = tuple(int(np.ceil(radius / s)) * 2 + 7 for s in spacing)
    centre = np.asarray(shape) * spacing / 2 + np.array([0.3, 0.1, 0.2]) * spacing
    axes = [(np.arange(n) + 0.5) * s - c for n, s, c in zip(shape, spacing, centre)]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return (z**2 + y**2 + x**2 <= radius**2).astype(np.uint16)


# --------------------------------------------------------------------------- the baseline


def regionprops_baseline(labels: np.ndarray, spacing, contact_threshold: float = 0.005) -> dict:
    """The same cell features, the straightforward way: ``regionprops`` and a loop over the cells' crops."""
    from scipy import ndimage as ndi
    from skimage.measure import marching_cubes, mesh_surface_area, regionprops

    sp = np.asarray(spacing, float)
    face = np.array([sp[1] * sp[2], sp[0] * sp[2], sp[0] * sp[1]])
    cross = ndi.generate_binary_structure(3, 1)
    fg = labels > 0
    filled = ndi.binary_fill_holes(fg)
    enclosed, n_enclosed = ndi.label(filled & ~fg)
    code = labels.astype(np.int64)
    lumen_code, outside_code = int(labels.max()) + 1, int(labels.max()) + 2
    if n_enclosed:
        code[enclosed == np.argmax(np.bincount(enclosed.ravel())[1:]) + 1] = lumen_code
    code[~filled] = outside_code
    cells, contact = {}, {}
    for r in regionprops(labels, spacing=tuple(sp)):
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in r.slice)
        crop = code[sl]
        mask = crop == r.label
        verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=tuple(sp))
        area = mesh_surface_area(verts, faces)
        counts: dict[int, float] = {}
        for axis in range(3):
            for step in (1, -1):
                a = np.moveaxis(mask, axis, 0)
                c = np.moveaxis(crop, axis, 0)
                inner, other = (a[:-1], c[1:]) if step == 1 else (a[1:], c[:-1])
                touching = other[inner & (other != r.label)]
                for value, n in zip(*np.unique(touching, return_counts=True)):
                    counts[int(value)] = counts.get(int(value), 0.0) + n * face[axis]
        scale = area / max(sum(counts.values()), 1e-12)  # face counts rescaled to the marching-cubes area
        layers = {}
        for name, value in (("apical", lumen_code), ("basal", outside_code)):
            layers[name] = mask & ndi.binary_dilation(crop == value, cross)
        centre = {k: (np.argwhere(v).mean(axis=0) * sp if v.any() else None) for k, v in layers.items()}
        near = {}
        for name, value in (("apical", lumen_code), ("basal", outside_code)):
            others = ndi.binary_dilation(layers[name], cross) & ~mask & (crop < lumen_code) & (crop > 0)
            others &= ndi.binary_dilation(crop == value, cross)
            near[name] = set(np.unique(crop[others]).tolist())
        lateral = {k: v * scale for k, v in counts.items() if 0 < k < lumen_code}
        for j, v in lateral.items():
            contact[(r.label, j)] = v
        cells[r.label] = {
            "volume": r.area, "surface_area": area, "apical_area": counts.get(lumen_code, 0.0) * scale,
            "basal_area": counts.get(outside_code, 0.0) * scale, "lateral_area": sum(lateral.values()),
            "height": (float(np.linalg.norm(centre["apical"] - centre["basal"]))
                       if centre["apical"] is not None and centre["basal"] is not None else np.nan),
            "near": near, "pieces": ndi.label(mask, np.ones((3, 3, 3)))[1],
            "solidity": r.solidity, "axis_major": r.axis_major_length, "axis_minor": r.axis_minor_length,
            "centroid": r.centroid, "sphericity": np.pi ** (1 / 3) * (6 * r.area) ** (2 / 3) / area,
        }
    for i, c in cells.items():  # neighbours: 0.5 % of each lateral area, dropped symmetrically
        nb = {j for (a, j), v in contact.items() if a == i
              and v >= contact_threshold * c["lateral_area"] and v >= contact_threshold * cells[j]["lateral_area"]}
        c["apical_neighbours"], c["basal_neighbours"] = nb & c["near"]["apical"], nb & c["near"]["basal"]
        c["neighbours"] = len(nb)
        c["transitions"] = len(c["apical_neighbours"] ^ c["basal_neighbours"])
        c["scutoid"] = c["transitions"] > 0
        c["valid"] = bool(c["apical_area"] > 0 and c["basal_area"] > 0 and c["pieces"] == 1)
    return cells


# --------------------------------------------------------------------------- children


def _memory():
    sys.path.insert(0, str(HERE))
    from biapy_postprocess_driver import measure

    return measure


def _ball_areas(area_of) -> list[float]:
    return [float(area_of(ball(radius, sp), sp)) for _, radius, sp in BALLS]


def _run_child(kind: str, path: Path, spacing, repeat: int) -> dict:
    """Child process: one method, timed and measured like BiaPy's driver."""
    measure = _memory()
    import warnings

    warnings.simplefilter("ignore")
    data = np.load(path)
    if kind == "ours":
        from cartocell_bmz.core.morphology import measure_cyst

        measure_cyst(data[:40, :80, :80], spacing)  # warm-up: imports
        result, seconds, mib = measure(measure_cyst, data, spacing, repeat=repeat)
        cells = len(result.cells["cell"])
        areas = _ball_areas(lambda b, sp: measure_cyst(b, sp).cells["surface_area"][0])
    elif kind == "baseline":
        result, seconds, mib = measure(regionprops_baseline, data, spacing, repeat=1)
        cells = len(result)
        areas = _ball_areas(lambda b, sp: regionprops_baseline(b, sp)[1]["surface_area"])
    else:  # our watershed + Voronoi on the probabilities
        from cartocell_bmz.core.postprocess import postprocess

        postprocess(data[:, :24, :64, :64], spacing=spacing)  # warm-up
        (_, voronoi), seconds, mib = measure(postprocess, data, spacing=spacing, repeat=repeat)
        cells, areas = int(len(np.unique(voronoi)) - 1), []
    return {"seconds": seconds, "mib": mib, "cells": cells, "ball_areas": areas}


def _child(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed:\n{proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(128, 384, 384), metavar=("Z", "Y", "X"))
    parser.add_argument("--cells", type=int, default=400)
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.5, 0.5), metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small volume (48 x 128 x 128, 60 cells)")
    parser.add_argument("--threads", type=int, default=2, help="thread limit of every child")
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours and of the post-processing; the fastest")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes of ours and of the target, alternating")
    parser.add_argument("--biapy-python", type=Path, default=DEFAULT_BIAPY_PYTHON)
    parser.add_argument("--no-biapy", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--child", choices=["ours", "baseline", "postprocess"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    spacing = tuple(args.spacing)
    if args.child:
        print(json.dumps(_run_child(args.child, args.data, spacing, args.repeat)))
        return 0
    if args.quick:
        args.size, args.cells = (48, 128, 128), 60

    sys.path.insert(0, str(HERE))
    from bench_postprocess import fast_cyst_labels, synthetic_probabilities

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    labels = fast_cyst_labels(args.size, spacing, args.cells, seed=args.seed)
    print(f"synthetic cyst {tuple(args.size)} spacing {spacing}: {int(labels.max())} cells "
          f"(made in {time.perf_counter() - t0:.1f} s)", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_measure_") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "probs.npy", synthetic_probabilities(labels, spacing))
        me = [sys.executable, str(Path(__file__).resolve()), "--spacing", *map(str, spacing), "--repeat", str(args.repeat)]
        runs = {"cartocell-bmz measure_cyst": me + ["--child", "ours", "--data", str(tmp / "labels.npy")]}
        if not args.no_baseline:
            runs["regionprops + per-cell contacts"] = me + ["--child", "baseline", "--data", str(tmp / "labels.npy")]
        if not args.no_biapy:
            if not Path(args.biapy_python).exists():
                raise SystemExit(f"{args.biapy_python}: BiaPy's Python not found; pass --biapy-python or --no-biapy.")
            balls = []
            for i, (_, radius, sp) in enumerate(BALLS):
                np.save(tmp / f"ball{i}.npy", ball(radius, sp))
                balls.append(f"{tmp / f'ball{i}.npy'}:{','.join(map(str, sp))}")
            runs["BiaPy 3.7.1 measure_morphological_props"] = [
                str(args.biapy_python), str(HERE / "biapy_measure_driver.py"), str(tmp / "labels.npy"),
                *map(str, spacing), "1", *balls]
        runs["target: our watershed + Voronoi"] = me + ["--child", "postprocess", "--data", str(tmp / "probs.npy")]
        again = ("cartocell-bmz measure_cyst", "target: our watershed + Voronoi")
        for round_ in range(args.rounds):  # ours and the target alternate, so that both see the same load
            for name, cmd in runs.items():
                if round_ and name not in again:
                    continue
                got = _child(cmd, env)
                if name not in results or got["seconds"] < results[name]["seconds"]:
                    results[name] = {**got, "mib": max(got["mib"], results.get(name, {}).get("mib", 0.0))}
                print(f"  ran {name}: {got['seconds']:.2f} s", flush=True)
    _print_table(results, markdown=False)
    if args.markdown:
        print()
        _print_table(results, markdown=True, header=(
            f"{tuple(args.size)} voxels, spacing {spacing} um, {int(labels.max())} cells, {args.threads} threads, "
            f"ours and the post-processing best of {args.repeat} runs x {args.rounds} processes"))
    return 0


def _print_table(results: dict, markdown: bool, header: str = "") -> None:
    ours = results["cartocell-bmz measure_cyst"]
    truths = [4 * np.pi * radius**2 for _, radius, _ in BALLS]
    cols = ["", "time (s)", "peak MiB", "cells", "time / ours"] + [f"area error, {name}" for name, _, _ in BALLS]
    lines = []
    for name, r in results.items():
        errors = [f"{100 * (a / t - 1):+.1f}%" for a, t in zip(r["ball_areas"], truths)] or ["-"] * len(BALLS)
        lines.append([name, f"{r['seconds']:.2f}", f"{r['mib']:.0f}", str(r["cells"]),
                      f"{r['seconds'] / ours['seconds']:.1f}x", *errors])
    if markdown:
        if header:
            print(f"_{header}_\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *lines)]
    for line in [cols] + lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


if __name__ == "__main__":
    sys.exit(main())
