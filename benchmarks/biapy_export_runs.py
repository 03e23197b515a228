"""A package exported by BiaPy 3.7.1 runs through ``cartocell-bmz predict``: its probabilities against BiaPy's.

Usage (from the repository root)::

    .venv/bin/python benchmarks/biapy_export_runs.py --predict-venv /work/biapy-extra-venv \\
        [--template cartocell_training_latest.yaml] [--epochs 3] [--checkpoint CKPT.pth]

Steps, each in its own process:

1. ``cartocell-bmz phantoms`` (this venv) makes synthetic cysts: ``train_M1/{x,y}`` (raw images
   and instance labels, BiaPy's training layout), ``validation/{x,y}`` and ``test/x``.
2. BiaPy (``--biapy-python``, ``benchmarks/biapy_export_driver.py``) trains its CartoCell
   configuration for ``--epochs`` epochs (``--checkpoint``: a checkpoint of an earlier run, no
   training), tests it on ``test/x`` (its ``per_image`` probabilities, before its
   post-processing) and exports a BMZ package (``MODEL.BMZ.EXPORT.ENABLE``): a zip whose
   ``model.py`` imports torchvision.
3. ``cartocell-bmz predict`` runs that zip twice: with the README's install (this venv, no
   torchvision: it must fail in one line naming the install command) and with the
   ``[biapy]`` extra (``--predict-venv``, made by
   ``python3 -m venv V && V/bin/pip install -c constraints-biapy.txt -e '.[biapy]'``).
4. Per test volume and channel: mean |difference| over all voxels and over the voxels at least
   ``--border`` from the border, and the share of voxels on the same side of 0.5.

Exit status 1 when the extra's run fails, when the README install's run does not fail with
that message, or when a volume's mean |difference| exceeds ``--max-mean-diff`` (0.01).
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from biapy_runs_package import compare  # noqa: E402  (the same comparison as for our packages)

DEFAULT_BIAPY_PYTHON = ROOT / ".biapy-venv" / "bin" / "python"
DRIVER = ROOT / "benchmarks" / "biapy_export_driver.py"
EXTRA_COMMAND = "pip install -c constraints-biapy.txt -e '.[biapy]'"


def _run(cmd: list, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n" + "\n".join(tail))
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--predict-venv", type=Path, required=True,
                        help="a venv made with the [biapy] extra (its bin/cartocell-bmz runs the export)")
    parser.add_argument("--biapy-python", type=Path, default=DEFAULT_BIAPY_PYTHON)
    parser.add_argument("--template", type=Path, help="BiaPy's cartocell_training_latest.yaml (default: restated)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint", type=Path, help="skip training: a checkpoint of an earlier run")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "biapy_export_runs")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--n-test", type=int, default=2)
    parser.add_argument("--border", type=int, default=16)
    parser.add_argument("--max-mean-diff", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    here = Path(sys.executable).parent / "cartocell-bmz"
    theirs_cli = args.predict_venv.resolve() / "bin" / "cartocell-bmz"
    seconds = {}

    data = work / f"phantoms_seed{args.seed}_test{args.n_test}"
    if not (data / "test" / "x").is_dir():
        _run([here, "phantoms", data, "--seed", args.seed, "--n-train-m1", 4, "--n-validation", 1,
              "--n-train-m2", 0, "--n-test", args.n_test], env)

    t0 = time.perf_counter()
    cmd = [args.biapy_python, DRIVER, data, work / "biapy", "--epochs", args.epochs]
    cmd += ["--template", args.template.resolve()] if args.template else []
    cmd += ["--checkpoint", args.checkpoint.resolve()] if args.checkpoint else []
    _run(cmd, env)
    seconds["biapy train + test + export" if not args.checkpoint else "biapy test + export"] = time.perf_counter() - t0
    report = json.loads((work / "biapy" / "cartocell_export.json").read_text())
    zips = sorted(Path(report["bmz_files"]).glob("*.zip"))
    if len(zips) != 1:
        raise SystemExit(f"expected one exported zip in {report['bmz_files']}, found {[z.name for z in zips]}")
    package = zips[0]

    plain = _run([here, "predict", data / "test" / "x", "-m", package, "-o", work / "ours_readme_install",
                  "--device", "cpu", "--trust", "--overwrite"], env, check=False)
    plain_error = (plain.stderr.strip().splitlines() or [""])[-1]
    plain_ok = plain.returncode != 0 and "torchvision" in plain_error and EXTRA_COMMAND in plain_error

    t0 = time.perf_counter()
    _run([theirs_cli, "predict", data / "test" / "x", "-m", package, "-o", work / "ours_biapy_extra",
          "--device", "cpu", "--trust", "--overwrite"], env)
    seconds["cartocell-bmz predict ([biapy] extra)"] = time.perf_counter() - t0

    import tifffile

    rows, worst = [], 0.0
    for path in sorted((data / "test" / "x").glob("*.tif")):
        ours = np.asarray(tifffile.imread(work / "ours_biapy_extra" / "per_image" / path.name), np.float32)
        biapy = np.asarray(tifffile.imread(Path(report["per_image"]) / path.name), np.float32)
        whole = float(np.abs(ours.astype(np.float64) - biapy).mean())
        worst = max(worst, whole)
        rows.append((path.name, tuple(ours.shape[i] for i in (0, 2, 3)), whole,
                     [float(np.abs(ours[:, c].astype(np.float64) - biapy[:, c]).mean()) for c in range(3)],
                     compare(ours, biapy, args.border)))

    print(f"BiaPy 3.7.1 export: {package.name} ({report['epochs']} epochs, patch {tuple(report['patch'])}, "
          f"BiaPy test padding {tuple(report['padding'])}, template {report['template']})")
    print(f"README install ({here.parent.parent.name}): "
          + ("fails as it should: " if plain_ok else f"UNEXPECTED (exit {plain.returncode}): ") + plain_error)
    print(f"[biapy] extra ({args.predict_venv}): runs")
    print(f"\nBiaPy's per_image (F, C, M) against cartocell-bmz predict (B, C, M); >= {args.border} = voxels "
          f"{args.border} or more from the border")
    print("| volume (z, y, x) | mean abs diff, all voxels | B / C / M mean abs diff | "
          f"B / C / M mean abs diff >= {args.border} | B / C / M agree at 0.5 >= {args.border} |")
    print("|---|---:|---|---|---|")
    for name, shape, whole, per_channel, inner in rows:
        print(f"| {name} {shape} | {whole:.4f} | " + " / ".join(f"{d:.4f}" for d in per_channel) + " | "
              + " / ".join(f"{d:.4f}" for _, d in inner) + " | "
              + " / ".join(f"{100 * a:.2f} %" for a, _ in inner) + " |")
    print("\n" + ", ".join(f"{k}: {v:.0f} s" for k, v in seconds.items()))
    passed = plain_ok and worst <= args.max_mean_diff
    print(("PASS" if passed else "FAIL") + f": largest mean |diff| {worst:.4f} (limit {args.max_mean_diff})"
          + ("" if plain_ok else "; the README install's error does not name the extra"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
