"""BiaPy 3.7.1's own test workflow runs our packages: its probabilities against ours.

Usage (from the repository root)::

    .venv/bin/python benchmarks/biapy_runs_package.py                       # all six packages
    .venv/bin/python benchmarks/biapy_runs_package.py model_packages/synthetic-unet

For each package, on the same synthetic cysts (``cartocell-bmz phantoms``, test split):

* ours: ``cartocell-bmz predict`` (tiled, our margins) writes ``per_image/`` probabilities;
* BiaPy: its test workflow with ``MODEL.SOURCE: bmz`` (``benchmarks/biapy_bmz_test_driver.py``
  in BiaPy's own virtual environment, ``--biapy-python``): BiaPy reads the description,
  rewrites its configuration to it (F+C+M, zero mean / unit variance over each volume, the
  patch size), builds the network, tiles, predicts and saves its ``per_image``
  probabilities before its post-processing.  Its one network call, ``find_bmz_models``,
  is answered from the local package.  It runs twice: ``tiled`` (BiaPy's tiling: patches of
  the description's smallest input, ``DATA.TEST.PADDING`` 0 as BiaPy's default, or
  ``--padding``) and ``single`` (one patch as large as the volume, so tiling plays no part).

Channel k of BiaPy (F, C, M) is compared with channel k of ours (B, C, M): at threshold 0.5
(the share of voxels on the same side) and as mean |difference|, over the voxels at least
``--border`` (16) voxels from the volume border.  Exit status 1 when the single-patch
agreement is below ``--min-agreement`` (99 %) on any channel of any package.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BIAPY_PYTHON = ROOT / ".biapy-venv" / "bin" / "python"
DRIVER = ROOT / "benchmarks" / "biapy_bmz_test_driver.py"
CHANNELS = ("B", "C", "M")


def _run(cmd: list, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n" + "\n".join(tail))
    return proc


def compare(ours: np.ndarray, theirs: np.ndarray, border: int, threshold: float = 0.5) -> list[tuple[float, float]]:
    """Per channel: (share of voxels on the same side of ``threshold``, mean |difference|).

    Both arrays are ``(Z, C, Y, X)``; only voxels at least ``border`` from every face count.

    Examples
    --------
    >>> a = np.zeros((40, 3, 40, 40), np.float32); b = a.copy(); b[20, 0, 20, 20] = 1.0
    >>> [(round(s, 6), round(d, 6)) for s, d in compare(a, b, border=16)]
    [(0.998047, 0.001953), (1.0, 0.0), (1.0, 0.0)]
    """
    if ours.shape != theirs.shape:
        raise SystemExit(f"shapes differ: ours {ours.shape}, BiaPy's {theirs.shape}")
    inner = (slice(border, -border), slice(None), slice(border, -border), slice(border, -border))
    a, b = ours[inner].astype(np.float64), theirs[inner].astype(np.float64)
    if a.size == 0:
        raise SystemExit(f"no voxel is {border} or more from the border of a {ours.shape} volume")
    return [(float(((a[:, c] >= threshold) == (b[:, c] >= threshold)).mean()), float(np.abs(a[:, c] - b[:, c]).mean()))
            for c in range(a.shape[1])]


def _read_all(folder: Path, names: list[str]) -> np.ndarray:
    import tifffile

    return np.stack([np.asarray(tifffile.imread(folder / name), np.float32) for name in names])


def run_package(package: Path, images: Path, work: Path, args: argparse.Namespace) -> dict:
    """Ours and BiaPy's two runs on one package; the figures per run and channel."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    names = sorted(p.name for p in images.glob("*.tif"))
    out = work / package.name
    t0 = time.perf_counter()
    _run([Path(sys.executable).parent / "cartocell-bmz", "predict", images, "-m", package, "-o", out / "ours",
          "--device", "cpu", "--trust", "--overwrite"], env)
    seconds = {"ours": time.perf_counter() - t0}
    ours = _read_all(out / "ours" / "per_image", names)
    rows = {}
    for mode in ("tiled", "single"):
        t0 = time.perf_counter()
        _run([args.biapy_python, DRIVER, package, images, out / "biapy", mode, "--padding", *args.padding], env)
        seconds[mode] = time.perf_counter() - t0
        report = json.loads((out / "biapy" / f"bmz_{mode}.json").read_text())
        theirs = _read_all(Path(report["per_image"]), names)
        figures = [compare(o, t, args.border) for o, t in zip(ours, theirs)]
        rows[mode] = {"patch": report["patch"], "channels": report["channels"],
                      "agreement": [float(np.mean([f[c][0] for f in figures])) for c in range(3)],
                      "mean_abs_diff": [float(np.mean([f[c][1] for f in figures])) for c in range(3)]}
    return {"package": package.name, "rows": rows, "seconds": seconds, "volumes": len(names),
            "shape": [int(ours.shape[1]), int(ours.shape[3]), int(ours.shape[4])]}


def _print_table(results: list[dict], border: int) -> None:
    print(f"\nagreement at 0.5 and mean |diff| per channel, voxels >= {border} from the border "
          "(BiaPy's F, C, M against our B, C, M)")
    head = "| package | BiaPy run | patch (z, y, x) | " + " | ".join(
        f"{c} agree % | {c} mean abs diff" for c in CHANNELS) + " | BiaPy s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for res in results:
        for mode, row in res["rows"].items():
            cells = " | ".join(f"{100 * a:.3f} | {d:.2g}" for a, d in zip(row["agreement"], row["mean_abs_diff"]))
            label = "one patch = volume" if mode == "single" else "tiled (BiaPy's patch)"
            print(f"| {res['package']} | {label} | {tuple(row['patch'][:3])} | {cells} | {res['seconds'][mode]:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("packages", nargs="*", type=Path,
                        help="package folders (default: every folder of model_packages/ with an rdf.yaml)")
    parser.add_argument("--images", type=Path, help="folder of test volumes (default: phantoms made here)")
    parser.add_argument("--shape", default="56,112,112", help="phantom size Z,Y,X")
    parser.add_argument("--n-test", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "biapy_runs_package")
    parser.add_argument("--biapy-python", type=Path, default=DEFAULT_BIAPY_PYTHON)
    parser.add_argument("--padding", nargs=3, default=["0", "0", "0"], help="BiaPy's DATA.TEST.PADDING when tiled")
    parser.add_argument("--border", type=int, default=16)
    parser.add_argument("--min-agreement", type=float, default=0.99)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    packages = args.packages or sorted(p.parent for p in (ROOT / "model_packages").glob("*/rdf.yaml"))
    args.work.mkdir(parents=True, exist_ok=True)
    images = args.images
    if images is None:
        phantoms = args.work / f"phantoms_{args.shape.replace(',', 'x')}_seed{args.seed}_n{args.n_test}"
        if not (phantoms / "test" / "x").is_dir():
            _run([Path(sys.executable).parent / "cartocell-bmz", "phantoms", phantoms, "--seed", args.seed,
                  "--n-train-m1", 0, "--n-validation", 0, "--n-train-m2", 0, "--n-test", args.n_test,
                  "--shape", *args.shape.split(",")])
        images = phantoms / "test" / "x"
    results = []
    for package in packages:
        res = run_package(package.resolve(), images.resolve(), args.work, args)
        results.append(res)
        print(json.dumps(res), flush=True)
    _print_table(results, args.border)
    failed = [(r["package"], CHANNELS[c]) for r in results for c, a in enumerate(r["rows"]["single"]["agreement"])
              if a < args.min_agreement]
    tiled_low = [(r["package"], CHANNELS[c]) for r in results for c, a in enumerate(r["rows"]["tiled"]["agreement"])
                 if a < args.min_agreement]
    print(f"\n{len(results)} package(s), {results[0]['volumes']} volume(s) of {tuple(results[0]['shape'])} "
          f"voxels each (z, y, x)")
    print("single patch: " + ("every channel agrees on >= {:.0%}".format(args.min_agreement) if not failed
                              else f"BELOW {args.min_agreement:.0%}: {failed}"))
    print("tiled: " + ("every channel agrees on >= {:.0%}".format(args.min_agreement) if not tiled_low
                       else f"below {args.min_agreement:.0%} (BiaPy's tiling): {tiled_low}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
