"""M1 against M2 over several pipeline runs (seeds): per run and pooled over every test cyst.

Usage::

    .venv/bin/python benchmarks/m1_vs_m2.py RUN [RUN ...] [--model M2]

Each ``RUN`` is the ``--out`` folder of one ``cartocell-bmz pipeline`` run.  For each run
it prints M1's and the model's F1@0.5 (the figures of ``RUN/comparison.json``), the mean
per-cyst difference and its paired bootstrap 95 % interval (as in ``comparison.md``);
then the same over the cysts of all runs pooled (a cyst of seed 0 and a cyst of seed 1
are different cysts, so the pooled interval resamples all of them), and the channel IoUs
of both models.  Bootstrap: :func:`cartocell_bmz.core.bootstrap.paired_bootstrap`, 10 000
resamples, seed 0.  Output is a Markdown table, reproducible to the last digit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cartocell_bmz.core.bootstrap import paired_bootstrap
from cartocell_bmz.phases.pipeline import per_image_f1

CHANNELS = ("iou_B", "iou_C", "iou_M")


def _run_rows(run: Path, model: str) -> tuple[dict, list[float], list[float]]:
    if not (run / "comparison.json").is_file():
        raise SystemExit(f"{run}: no comparison.json; is it the --out folder of a finished `cartocell-bmz pipeline`?")
    comparison = json.loads((run / "comparison.json").read_text())
    if "M1" not in comparison or model not in comparison:
        raise SystemExit(f"{run}: comparison.json has no M1 and {model} (models: {sorted(comparison)})")
    ref, other = per_image_f1(run / "eval_M1"), per_image_f1(run / f"eval_{model}")
    shared = sorted(set(ref) & set(other))
    if not shared:
        raise SystemExit(f"{run}: no test cyst evaluated for both M1 and {model}")
    seed = json.loads((run / "pipeline.json").read_text()).get("seed")
    return ({"run": run.name, "seed": seed, "m1": comparison["M1"], "m2": comparison[model]},
            [ref[k] for k in shared], [other[k] for k in shared])


def _ci(a: list[float], b: list[float]) -> str:
    r = paired_bootstrap(a, b)
    return f"{r.difference:+.3f} | [{r.low:+.3f}, {r.high:+.3f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--model", default="M2", help="Model compared with M1 (a name in comparison.json).")
    args = ap.parse_args(argv)
    pooled_a: list[float] = []
    pooled_b: list[float] = []
    lines = ["| run | seed | cysts | M1 F1@0.5 | M2 F1@0.5 | M2 - M1 | 95% CI | IoU B M1 / M2 | IoU C M1 / M2 | IoU M M1 / M2 |",
             "|---|---:|---:|---:|---:|---:|---|---|---|---|"]
    wins = 0
    for run in args.runs:
        info, a, b = _run_rows(run, args.model)
        pooled_a += a
        pooled_b += b
        m1, m2 = info["m1"], info["m2"]
        wins += m2["f1@0.5"] > m1["f1@0.5"]
        ious = " | ".join(f"{m1[c]:.3f} / {m2[c]:.3f}" for c in CHANNELS)
        lines.append(f"| {info['run']} | {info['seed']} | {len(a)} | {m1['f1@0.5']:.3f} | {m2['f1@0.5']:.3f} | "
                     f"{_ci(a, b)} | {ious} |")
    mean_a, mean_b = sum(pooled_a) / len(pooled_a), sum(pooled_b) / len(pooled_b)
    lines.append(f"| all runs pooled | - | {len(pooled_a)} | {mean_a:.3f} | {mean_b:.3f} | {_ci(pooled_a, pooled_b)} "
                 f"| | | |")
    print("\n".join(lines))
    print(f"\n{args.model} above M1 (F1@0.5) on {wins} of {len(args.runs)} runs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
