"""Benchmark: post-processing (watershed by channels + Voronoi) of cartocell-bmz vs BiaPy 3.7.1.

Both run on the same synthetic probabilities, each in its own fresh process (ours in
the project's environment, BiaPy's through ``biapy_postprocess_driver.py`` in
BiaPy's own virtual environment), one after the other, with the same thread limits.
For each step the table gives the fastest wall-clock time of ``--repeat`` runs and
the peak memory (rise of the peak resident set size above the resident size before
the step, inputs already loaded),
the ratios BiaPy / ours, and how the segmentations agree: F1@0.5 of each against the
ground truth, of ours against BiaPy's, and the share of the lumen each Voronoi fills.

A second table times the flooding alone, in one child process: our hierarchical-queue
:func:`cartocell_bmz.core.watershed.flood` against ``skimage.segmentation.watershed``
on the same inputs (the seeds, the 8-bit quantised surface ``-B`` and the growth mask
of the default ``watershed_by_channels``, 6-connectivity), with the share of the
mask's voxels to which both give the same label.

Synthetic data: a cyst-like shell (ellipsoid, one layer of radial cells from a
spherical Voronoi of jittered points) of the requested size and cell count, its
B, C, M targets (:func:`cartocell_bmz.core.targets.make_targets`), blurred (Gaussian,
``--blur`` micrometres) with Gaussian noise (``--noise``), clipped to [0, 1].

Usage::

    .venv/bin/python benchmarks/bench_postprocess.py            # 128 x 384 x 384, 400 cells
    .venv/bin/python benchmarks/bench_postprocess.py --quick    # 48 x 128 x 128, 60 cells
    .venv/bin/python benchmarks/bench_postprocess.py --size 64 256 256 --cells 200 --markdown

BiaPy's environment defaults to ``.biapy-venv`` beside this folder (``--biapy-python``);
``--no-biapy`` runs ours only (and the flood comparison, which needs no BiaPy).
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


# --------------------------------------------------------------------------- data


def fast_cyst_labels(shape, spacing, n_cells: int, seed: int = 0) -> np.ndarray:
    """A cyst-like shell of ``n_cells`` radial cells, fast enough for large volumes.

    An ellipsoidal shell (semi-axes 42% of the extent, thickness 22% of the smallest
    semi-axis but at least 8 voxels) cut into cells by a spherical Voronoi of jittered Fibonacci points.
    Returns ``uint16`` labels ``1..n`` (0 = background and lumen).
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing = np.asarray(spacing, float)
    extent = np.asarray(shape) * spacing
    semi = 0.42 * extent * rng.uniform(0.93, 1.0, 3)
    centre = extent / 2
    thickness = max(0.22 * semi.min(), 8 * spacing.max())
    inner = 1.0 - thickness / semi.mean()
    axes = [((np.arange(n, dtype=np.float32) + 0.5) * s - c) / a for n, s, c, a in zip(shape, spacing, centre, semi)]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    shell = (r2 <= 1.0) & (r2 >= inner**2)
    del r2
    idx = np.flatnonzero(shell)
    del shell
    z, y, x = np.unravel_index(idx, shape)
    u = np.stack([axes[0][z], axes[1][y], axes[2][x]], 1)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    i = np.arange(n_cells) + 0.5
    phi = np.arccos(1 - 2 * i / n_cells)
    theta = np.pi * (1 + 5**0.5) * i
    pts = np.stack([np.cos(phi), np.sin(phi) * np.sin(theta), np.sin(phi) * np.cos(theta)], 1)
    pts += rng.normal(scale=0.25 * np.sqrt(4 * np.pi / n_cells), size=pts.shape)
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    _, owner = cKDTree(pts).query(u, k=1, workers=-1)
    labels = np.zeros(shape, np.uint16)
    labels.flat[idx] = owner.astype(np.uint16) + 1
    # Drop ids no voxel took and make them sequential.
    present = np.zeros(n_cells + 2, bool)
    present[labels.flat[idx]] = True
    lut = np.zeros(n_cells + 2, np.uint16)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint16)
    labels.flat[idx] = lut[labels.flat[idx]]
    return labels


def synthetic_probabilities(labels, spacing, blur_um: float = 0.5, noise: float = 0.1, seed: int = 0) -> np.ndarray:
    """B, C, M targets of ``labels``, blurred (sigma in micrometres), noisy, clipped: float32 (3, Z, Y, X)."""
    from scipy import ndimage as ndi

    from cartocell_bmz.core.targets import make_targets

    rng = np.random.default_rng(seed)
    targets = make_targets(labels)
    out = np.empty(targets.shape, np.float32)
    sigma = [blur_um / s for s in spacing]
    for ch in range(3):
        ndi.gaussian_filter(targets[ch].astype(np.float32), sigma=sigma, output=out[ch])
        if noise:
            out[ch] += rng.standard_normal(out[ch].shape, dtype=np.float32) * np.float32(noise)
    np.clip(out, 0.0, 1.0, out=out)
    return out


# --------------------------------------------------------------------------- children


def _run_ours(probs_path: Path, out_dir: Path, spacing, smooth: bool, step: str, repeat: int = 1) -> dict:
    """Child process: one step of ours, timed and measured like BiaPy's driver."""
    sys.path.insert(0, str(HERE))
    from biapy_postprocess_driver import measure

    from cartocell_bmz.core.postprocess import PostprocessConfig, voronoi_on_mask, watershed_by_channels

    probs = np.load(probs_path)
    config = PostprocessConfig(smooth=smooth)
    # Warm-up on a tiny volume: imports (done at import time in BiaPy's module) are not timed.
    tiny = np.zeros((3, 8, 8, 8), np.float32)
    tiny[:, 2:6, 2:6, 2:6] = 1
    voronoi_on_mask(watershed_by_channels(tiny, config=config, spacing=spacing), tiny[2], spacing=spacing)
    tag = "ours_smooth" if smooth else "ours"
    if step == "watershed":
        labels, seconds, mib = measure(watershed_by_channels, probs, config=config, spacing=spacing, repeat=repeat)
        np.save(out_dir / f"{tag}_instances.npy", labels)
    else:
        labels = np.load(out_dir / f"{tag}_instances.npy")
        voronoi, seconds, mib = measure(
            voronoi_on_mask, labels, probs[2], threshold=config.mask_threshold, spacing=spacing,
            max_hole_size=config.max_hole_size, repeat=repeat,
        )
        np.save(out_dir / f"{tag}_voronoi.npy", voronoi)
    return {"seconds": seconds, "mib": mib}


def flood_inputs(probs: np.ndarray, min_seed_size: int = 5):
    """What the default ``watershed_by_channels`` floods: 8-bit surface, seeds, growth mask.

    Otsu thresholds of B and C; seeds ``(B > tB) & (C < tC)`` in the mask ``B > tB / 2``,
    6-connected, seeds of at most ``min_seed_size`` voxels dropped; surface ``-B`` in the
    256 bins of Otsu's histogram (level 0 = highest B).
    """
    from scipy import ndimage as ndi

    from cartocell_bmz.core.thresholds import bin_indices, otsu_threshold

    b, c = probs[0], probs[1]
    tb, tc = otsu_threshold(b), otsu_threshold(c)
    mask = b > tb / 2
    seeds, n = ndi.label((b > tb) & (c < tc) & mask, ndi.generate_binary_structure(3, 1))
    sizes = np.bincount(seeds.ravel())
    keep = sizes > min_seed_size
    keep[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    levels = (255 - bin_indices(b, float(b.min()), float(b.max()))).astype(np.uint8)
    return levels, lut[seeds], mask


def _run_flood(probs_path: Path, repeat: int = 1) -> dict:
    """Child process: our flood and scikit-image's watershed on the same inputs, timed one after the other."""
    sys.path.insert(0, str(HERE))
    from biapy_postprocess_driver import measure
    from skimage.segmentation import watershed

    from cartocell_bmz.core.watershed import flood

    levels, markers, mask = flood_inputs(np.load(probs_path))
    tiny = np.zeros((4, 4, 4), np.uint8)  # warm-up: imports are not timed
    flood(tiny, (tiny + 1).astype(np.int32)), watershed(tiny, (tiny + 1).astype(np.int32), connectivity=1)
    ours, ours_s, ours_mib = measure(flood, levels, markers, mask, repeat=repeat)
    ref, ref_s, ref_mib = measure(watershed, levels, markers, mask=mask, connectivity=1, repeat=repeat)
    same = (ours == ref)[mask]
    return {"ours_s": ours_s, "ours_mib": ours_mib, "skimage_s": ref_s, "skimage_mib": ref_mib,
            "agreement": float(same.mean()) if same.size else 1.0, "n_differ": int(same.size - same.sum()),
            "n_mask": int(mask.sum()), "n_seeds": int(markers.max())}


def _child(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:2])} failed:\n{proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- agreement


def f1_at(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """F1 of ``pred`` against ``gt`` (either may be a reference segmentation) at one IoU threshold."""
    from cartocell_bmz.core.matching import match

    return float(match(gt=gt, pred=pred, thresholds=(threshold,))[0].f1)


def lumen_mask(labels: np.ndarray, margin: int = 2) -> np.ndarray:
    """The lumen (background enclosed by the cells) less ``margin`` voxels next to the cells."""
    from scipy import ndimage as ndi

    lumen = ndi.binary_fill_holes(labels > 0) & (labels == 0)
    return ndi.binary_erosion(lumen, iterations=margin)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(128, 384, 384), metavar=("Z", "Y", "X"))
    parser.add_argument("--cells", type=int, default=400)
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.5, 0.5), metavar=("Z", "Y", "X"))
    parser.add_argument("--blur", type=float, default=0.5, help="Gaussian blur sigma in micrometres")
    parser.add_argument("--noise", type=float, default=0.1, help="standard deviation of the added noise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small volume (48 x 128 x 128, 60 cells)")
    parser.add_argument("--threads", type=int, default=2, help="thread limit of both children")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each step; the fastest is reported")
    parser.add_argument("--biapy-python", type=Path, default=DEFAULT_BIAPY_PYTHON)
    parser.add_argument("--no-biapy", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--child", choices=["ours", "ours_smooth", "flood"], help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=["watershed", "voronoi"], help=argparse.SUPPRESS)
    parser.add_argument("--probs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    spacing = tuple(args.spacing)

    if args.child == "flood":
        print(json.dumps(_run_flood(args.probs, args.repeat)))
        return 0
    if args.child:
        print(json.dumps(_run_ours(args.probs, args.out, spacing, args.child == "ours_smooth", args.step, args.repeat)))
        return 0
    if args.quick:
        args.size, args.cells = (48, 128, 128), 60

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")

    t0 = time.perf_counter()
    gt = fast_cyst_labels(args.size, spacing, args.cells, seed=args.seed)
    probs = synthetic_probabilities(gt, spacing, args.blur, args.noise, seed=args.seed)
    print(
        f"synthetic cyst {tuple(args.size)} spacing {spacing}: {int(gt.max())} cells, "
        f"blur {args.blur} um, noise {args.noise} (made in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_postprocess_") as tmp:
        tmp = Path(tmp)
        probs_path = tmp / "probs.npy"
        np.save(probs_path, probs)
        del probs
        me = [sys.executable, str(Path(__file__).resolve()), "--probs", str(probs_path), "--out", str(tmp),
              "--spacing", *map(str, spacing), "--repeat", str(args.repeat)]
        runs = {"ours": lambda step: me + ["--child", "ours", "--step", step],
                "ours, smoothed": lambda step: me + ["--child", "ours_smooth", "--step", step]}
        if not args.no_biapy:
            if not Path(args.biapy_python).exists():
                raise SystemExit(f"{args.biapy_python}: BiaPy's Python not found; pass --biapy-python or --no-biapy.")
            runs["BiaPy 3.7.1"] = lambda step: [str(args.biapy_python), str(HERE / "biapy_postprocess_driver.py"),
                                                str(probs_path), str(tmp), step, str(args.repeat)]
        for name, cmd in runs.items():
            ws = _child(cmd("watershed"), env)
            vor = _child(cmd("voronoi"), env)
            results[name] = {"watershed_s": ws["seconds"], "watershed_mib": ws["mib"],
                             "voronoi_s": vor["seconds"], "voronoi_mib": vor["mib"]}
            print(f"  ran {name}", flush=True)
        flood_row = _child(me + ["--child", "flood"], env)
        print("  ran flood: ours vs scikit-image", flush=True)
        files = {"ours": "ours", "ours, smoothed": "ours_smooth", "BiaPy 3.7.1": "biapy"}
        segs = {name: (np.load(tmp / f"{files[name]}_instances.npy"), np.load(tmp / f"{files[name]}_voronoi.npy"))
                for name in results}

    lumen = lumen_mask(gt)
    rows = []
    for name, r in results.items():
        inst, vor = segs[name]
        rows.append({
            "name": name, **r, "total_s": r["watershed_s"] + r["voronoi_s"],
            "peak_mib": max(r["watershed_mib"], r["voronoi_mib"]),
            "f1_ws": f1_at(gt, inst), "f1_vor": f1_at(gt, vor),
            "lumen": float((vor[lumen] > 0).mean()) if lumen.any() else 0.0,
            "n_ws": int(len(np.unique(inst)) - 1), "n_vor": int(len(np.unique(vor)) - 1),
        })
    agreement = {}
    if "BiaPy 3.7.1" in segs:
        b_inst, b_vor = segs["BiaPy 3.7.1"]
        for name in ("ours", "ours, smoothed"):
            agreement[name] = (f1_at(b_inst, segs[name][0]), f1_at(b_vor, segs[name][1]))
    _print_table(rows, agreement, markdown=False)
    print()
    _print_flood(flood_row, markdown=False)
    if args.markdown:
        header = (f"{tuple(args.size)} voxels, spacing {spacing} um, {int(gt.max())} cells, "
                  f"blur {args.blur} um, noise {args.noise}, {args.threads} threads, best of {args.repeat}")
        print()
        _print_table(rows, agreement, markdown=True, header=header)
        print()
        _print_flood(flood_row, markdown=True)
    return 0


def _print_flood(r: dict, markdown: bool) -> None:
    """The flood alone: ours against scikit-image's watershed on the same inputs."""
    cols = ["flood (same seeds, surface, mask)", "time s", "peak MiB", "time / ours", "equal labels"]
    agree = f"{100 * r['agreement']:.3f}% ({r['n_differ']} of {r['n_mask']} voxels differ)"
    lines = [["cartocell_bmz.core.watershed.flood", f"{r['ours_s']:.2f}", f"{r['ours_mib']:.0f}", "1.0x", agree],
             ["skimage.segmentation.watershed", f"{r['skimage_s']:.2f}", f"{r['skimage_mib']:.0f}",
              f"{r['skimage_s'] / max(r['ours_s'], 1e-9):.2f}x", "-"]]
    _print_rows(cols, lines, markdown)
    if not markdown:
        print(f"{r['n_seeds']} seeds, 6-connectivity; time / ours = scikit-image's time / ours (above 1: ours is faster).")


def _print_table(rows, agreement, markdown: bool, header: str = "") -> None:
    biapy = next((r for r in rows if r["name"].startswith("BiaPy")), None)
    cols = ["", "watershed s", "Voronoi s", "total s", "peak MiB (ws / Vor)", "speed-up", "memory ratio",
            "cells ws / Vor", "F1@0.5 vs GT ws / Vor", "F1@0.5 vs BiaPy ws / Vor", "lumen labelled"]
    lines = []
    for r in rows:
        ratio = mem = agree = "-"
        if biapy is not None and r is not biapy:
            ratio = f"{biapy['total_s'] / r['total_s']:.1f}x"
            mem = f"{r['peak_mib'] / max(biapy['peak_mib'], 1e-9):.2f}"
        if r["name"] in agreement:
            a, b = agreement[r["name"]]
            agree = f"{a:.3f} / {b:.3f}"
        lines.append([
            r["name"], f"{r['watershed_s']:.2f}", f"{r['voronoi_s']:.2f}", f"{r['total_s']:.2f}",
            f"{r['watershed_mib']:.0f} / {r['voronoi_mib']:.0f}", ratio, mem,
            f"{r['n_ws']} / {r['n_vor']}", f"{r['f1_ws']:.3f} / {r['f1_vor']:.3f}", agree, f"{100 * r['lumen']:.1f}%",
        ])
    if markdown and header:
        print(f"_{header}_\n")
    _print_rows(cols, lines, markdown)
    if not markdown:
        print("speed-up = BiaPy total time / ours; memory ratio = our peak / BiaPy's peak (lower is better).")


def _print_rows(cols: list[str], lines: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" for _ in cols) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *lines)]
    for line in [cols] + lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


if __name__ == "__main__":
    sys.exit(main())
