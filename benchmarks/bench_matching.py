"""Benchmark: instance matching at three IoU thresholds, ours vs StarDist vs BiaPy 3.7.1.

All three match the same pair of label volumes (a synthetic cyst and a perturbed
copy of it: shifted by one voxel, some cells merged, split or deleted, a few
false positives, non-sequential ids) at IoU 0.3, 0.5 and 0.75, each in its own
fresh process (same measuring code for all):

* ours: :func:`cartocell_bmz.core.matching.match` (one overlap count for all thresholds);
* StarDist: ``stardist.matching.matching(gt, pred, thresh=[...])`` (numba overlap);
* BiaPy 3.7.1: ``biapy.utils.matching.matching(gt, pred, thresh=[...])``, its
  fastest use (one call with the list of thresholds), run with BiaPy's own
  virtual environment (``--biapy-python``, default ``.biapy-venv/bin/python``).

Each worker first matches a tiny pair (imports, numba compilation), then the
timed runs follow.  Time is the best of ``--repeat`` runs (BiaPy: one run); peak memory is the rise of
the process's resident set size (VmHWM after the call minus VmRSS before, with the
peak reset through ``/proc/self/clear_refs``), i.e. what the call itself needs on
top of the two volumes.  The script asserts that all implementations report the
same figures (counts equal, ratios to 1e-9), prints the table and the ratios, and
checks the targets (>= 50x faster than BiaPy, no slower than StarDist);
``--strict`` turns a missed target into exit code 1.

Usage::

    .venv/bin/python benchmarks/bench_matching.py                 # 128 x 384 x 384, ~400 cells
    .venv/bin/python benchmarks/bench_matching.py --size 32 96 96 --cells 40   # quick check

The functions ``time_*`` / ``peakmem_*`` of :class:`MatchingSuite` follow the asv
conventions for tracking our own speed over time.
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

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.3, 0.5, 0.75)
FIGURES = (
    "tp", "fp", "fn", "n_true", "n_pred", "precision", "recall", "accuracy", "f1",
    "mean_matched_score", "mean_true_score", "panoptic_quality",
)
IMPLEMENTATIONS = ("ours", "stardist", "biapy")
LABELS = {"ours": "cartocell-bmz", "stardist": "StarDist 0.9 matching", "biapy": "BiaPy 3.7.1 matching"}


# --------------------------------------------------------------------------- data


def make_pair(shape=(128, 384, 384), cells=420, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic cyst's labels and a perturbed copy (the "prediction")."""
    from cartocell_bmz.core.phantoms import make_cyst

    gt = make_cyst(shape, (1.0, 0.5, 0.5), stage="day10", max_cells=cells, seed=seed).labels
    return gt, perturb(gt, np.random.default_rng(seed + 1))


def perturb(gt: np.ndarray, rng: np.random.Generator, merge=0.03, split=0.03, drop=0.02, n_fp=5) -> np.ndarray:
    """Shift by one voxel in x; merge, split and delete a few cells; add false positives; shuffle ids."""
    pred = np.roll(gt, 1, axis=2).astype(np.uint32)
    n = int(gt.max())
    lut = np.arange(n + 1, dtype=np.uint32)
    # merge cells with a touching neighbour (each cell in at most one merge)
    a, b = pred[:, :, :-1], pred[:, :, 1:]
    touching = (a != b) & (a > 0) & (b > 0)
    pairs = np.unique(np.stack([np.minimum(a[touching], b[touching]), np.maximum(a[touching], b[touching])], 1), axis=0)
    used: set[int] = set()
    for i in rng.permutation(len(pairs))[: int(merge * n) * 3]:
        p, q = (int(v) for v in pairs[i])
        if p not in used and q not in used and len(used) < 2 * int(merge * n):
            lut[q] = p
            used |= {p, q}
    # delete a few other cells
    free = np.setdiff1d(np.arange(1, n + 1), list(used))
    lut[rng.choice(free, int(drop * n), replace=False)] = 0
    pred = lut[pred]
    # split a few cells at their centroid along y
    ids = np.setdiff1d(np.unique(pred), [0])
    chosen = rng.choice(ids, int(split * n), replace=False)
    zz, yy, xx = np.nonzero(np.isin(pred, chosen))
    lab = pred[zz, yy, xx]
    sums = np.bincount(lab, weights=yy, minlength=n + 1)
    counts = np.maximum(np.bincount(lab, minlength=n + 1), 1)
    upper = yy > (sums / counts)[lab]
    pred[zz[upper], yy[upper], xx[upper]] = lab[upper] + n + 1
    # false positives: small boxes in the background
    for k in range(n_fp):
        for _ in range(100):
            z, y, x = (int(rng.integers(0, s - d)) for s, d in zip(gt.shape, (4, 8, 8)))
            if not pred[z:z + 4, y:y + 8, x:x + 8].any():
                pred[z:z + 4, y:y + 8, x:x + 8] = 2 * n + 2 + k
                break
    # shuffle ids into a sparse range
    uniq = np.unique(pred)
    new = np.zeros(uniq.size, np.uint32)
    new[1:] = rng.choice(np.arange(1, 60_000), uniq.size - 1, replace=False)
    return new[np.searchsorted(uniq, pred)].astype(np.uint16)


# --------------------------------------------------------------------------- workers (one process each)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_biapy_matching():
    """BiaPy's matching module, loaded from its file (biapy/__init__ would import torch and more)."""
    import importlib.util

    spec = importlib.util.find_spec("biapy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("biapy is not installed in this Python; give --biapy-python")
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "matching.py"
    mod_spec = importlib.util.spec_from_file_location("biapy_matching", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _worker(impl: str, data: Path, repeat: int) -> dict:
    gt = np.load(data / "gt.npy")
    pred = np.load(data / "pred.npy")
    if impl == "ours":
        sys.path.insert(0, str(REPO))
        from cartocell_bmz.core.matching import match

        def run(gt, pred):
            return [r.as_row() for r in match(gt=gt, pred=pred, thresholds=THRESHOLDS)]
    elif impl == "stardist":
        from stardist.matching import matching

        def run(gt, pred):
            return [r._asdict() for r in matching(gt, pred, thresh=list(THRESHOLDS))]
    elif impl == "biapy":
        matching = _load_biapy_matching().matching

        def run(gt, pred):
            return [dict(r) for r in matching(gt, pred, thresh=list(THRESHOLDS))]
    else:
        raise SystemExit(f"unknown implementation {impl}")
    tiny = np.zeros((4, 4, 4), np.uint16)
    tiny[1:3, 1:3, 1:3] = 1
    run(tiny, tiny)  # imports and compilation happen here, outside the measurement
    times, peaks, figures = [], [], None
    for _ in range(repeat):
        exact = _reset_peak()
        base = _status_kib("VmRSS")
        t0 = time.perf_counter()
        rows = run(gt, pred)
        times.append(time.perf_counter() - t0)
        peaks.append(_status_kib("VmHWM") - base if exact else float("nan"))
        figures = [{k: float(r[k]) for k in FIGURES} for r in rows]
    return {"impl": impl, "seconds": min(times), "all_seconds": times, "peak_mib": max(peaks) / 1024,
            "figures": figures, "numpy": np.__version__}


def _run_worker(python: str, impl: str, data: Path, repeat: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
           "NUMBA_NUM_THREADS": "2"}
    proc = subprocess.run(
        [python, __file__, "--worker", impl, "--data", str(data), "--repeat", str(repeat)],
        capture_output=True, text=True, env=env, cwd=str(REPO),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- comparison


def compare(results: dict[str, dict], reference: str = "ours", tol: float = 1e-9) -> None:
    """Assert that every implementation reports the reference's figures."""
    ref = results[reference]["figures"]
    for impl, res in results.items():
        for thr, a, b in zip(THRESHOLDS, ref, res["figures"]):
            for k in FIGURES:
                assert abs(a[k] - b[k]) <= tol, f"{impl} differs from {reference} at IoU {thr}: {k} {b[k]} vs {a[k]}"


def table(results: dict[str, dict]) -> str:
    ours = results["ours"]
    lines = ["| implementation | time (s) | peak memory (MiB) | time / ours | memory / ours |",
             "|---|---:|---:|---:|---:|"]
    for impl in IMPLEMENTATIONS:
        if impl not in results:
            continue
        r = results[impl]
        lines.append(f"| {LABELS[impl]} | {r['seconds']:.3f} | {r['peak_mib']:.0f} | "
                     f"{r['seconds'] / ours['seconds']:.1f}x | {r['peak_mib'] / max(ours['peak_mib'], 1e-9):.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=3, default=(128, 384, 384), metavar=("Z", "Y", "X"))
    p.add_argument("--cells", type=int, default=420, help="cells of the cyst (about)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="runs of ours and StarDist (best time kept)")
    p.add_argument("--biapy-python", default=str(REPO / ".biapy-venv" / "bin" / "python"))
    p.add_argument("--skip-biapy", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 when a speed target is missed")
    p.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args.data, args.repeat)))
        return 0

    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench_matching_") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        gt, pred = make_pair(tuple(args.size), args.cells, args.seed)
        np.save(data / "gt.npy", gt)
        np.save(data / "pred.npy", pred)
        n_true = int(np.unique(gt).size - 1)
        n_pred = int(np.unique(pred).size - 1)
        print(f"pair {gt.shape}: {n_true} true cells, {n_pred} predicted (max id {int(pred.max())}), "
              f"made in {time.perf_counter() - t0:.1f} s; IoU thresholds {THRESHOLDS}")
        del gt, pred
        results = {}
        for impl in IMPLEMENTATIONS:
            if impl == "biapy" and args.skip_biapy:
                continue
            python = args.biapy_python if impl == "biapy" else sys.executable
            results[impl] = _run_worker(python, impl, data, 1 if impl == "biapy" else args.repeat)
            print(f"  {LABELS[impl]}: {results[impl]['seconds']:.3f} s, peak +{results[impl]['peak_mib']:.0f} MiB")
    compare(results)
    print("figures: identical across implementations (counts equal, ratios within 1e-9)")
    for thr, f in zip(THRESHOLDS, results["ours"]["figures"]):
        print(f"  IoU {thr}: TP {f['tp']:.0f} FP {f['fp']:.0f} FN {f['fn']:.0f}  F1 {f['f1']:.3f}  "
              f"PQ {f['panoptic_quality']:.3f}  MTS {f['mean_true_score']:.3f}")
    print()
    print(table(results))
    print()
    ok = True
    ours = results["ours"]["seconds"]
    if "biapy" in results:
        speedup = results["biapy"]["seconds"] / ours
        hit = speedup >= 50
        ok &= hit
        print(f"target >= 50x faster than BiaPy: {speedup:.0f}x {'met' if hit else 'MISSED'}")
    speedup = results["stardist"]["seconds"] / ours
    hit = speedup >= 1
    ok &= hit
    print(f"target no slower than StarDist: {speedup:.1f}x {'met' if hit else 'MISSED'}")
    return 0 if ok or not args.strict else 1


class MatchingSuite:
    """asv-style suite: our matching at three thresholds on a mid-size cyst pair."""

    timeout = 600

    def setup(self):
        sys.path.insert(0, str(REPO))
        self.gt, self.pred = make_pair((64, 192, 192), 120, seed=0)

    def time_match_three_thresholds(self):
        from cartocell_bmz.core.matching import match

        match(gt=self.gt, pred=self.pred, thresholds=THRESHOLDS)

    def peakmem_match_three_thresholds(self):
        from cartocell_bmz.core.matching import match

        match(gt=self.gt, pred=self.pred, thresholds=THRESHOLDS)


if __name__ == "__main__":
    sys.exit(main())
