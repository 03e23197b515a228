"""``cartocell-bmz evaluate``: score predicted cells against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cartocell_bmz.layout import DEFAULT_IOU_THRESHOLDS


def command(
    pred: Path = typer.Option(..., "--pred", help="Folder of predicted instance label TIFFs (Z, Y, X)."),
    gt: Path = typer.Option(..., "--gt", help="Folder of ground-truth label TIFFs with the same file names."),
    out: Path = typer.Option(..., "--out", help="Output folder (created)."),
    probs: Optional[Path] = typer.Option(
        None, "--probs", help="Folder of probability TIFFs (3, Z, Y, X; B, C, M) for the per-channel IoU."
    ),
    thresholds: Optional[List[str]] = typer.Option(
        None, "--thresholds", "-t",
        help="IoU thresholds of instance matching, e.g. --thresholds 0.3 0.5 0.75 (or 0.3,0.5,0.75). "
        f"Default: {' '.join(str(t) for t in DEFAULT_IOU_THRESHOLDS)}.",
    ),
    pooled: bool = typer.Option(
        False, "--pooled", help="Show dataset figures from pooled counts instead of the mean over images."
    ),
    colour_maps: bool = typer.Option(
        True, "--colour-maps/--no-colour-maps", help="Write the TP/FP/FN colour TIFFs."
    ),
    # the values after the first in "--thresholds 0.3 0.5 0.75" (an option takes one value)
    more_thresholds: Optional[List[str]] = typer.Argument(None, hidden=True, metavar="THRESHOLDS", show_default=False),
) -> None:
    """Evaluate predicted instance labels against ground truth (StarDist matching at IoU thresholds).

    Pairs files of --pred and --gt by name and writes OUT/metrics_per_image.csv (one row per image and threshold: tp, fp, fn, precision, recall, accuracy, f1, mean_matched_score, mean_true_score, panoptic_quality; plus iou_B, iou_C, iou_M with --probs), OUT/summary.json (dataset figures, by image and pooled) and OUT/instance_associations/ (per image and threshold: matched pairs, false positives and a colour TIFF with TP green, FP blue, FN red).
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.run.evaluate import evaluate_folder

    thrs = _parse_thresholds((thresholds or []) + (more_thresholds or [])) or DEFAULT_IOU_THRESHOLDS
    with RichProgress() as progress:
        summary = evaluate_folder(
            gt_dir=gt, pred_dir=pred, out_dir=out, probs_dir=probs, thresholds=thrs,
            by="pooled" if pooled else "image", colour_maps=colour_maps, progress=progress,
        )
    _print_summary(summary, out)


def _parse_thresholds(values: list[str]) -> tuple[float, ...]:
    from cartocell_bmz.errors import ConfigError

    out = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                out.append(float(part))
            except ValueError:
                raise ConfigError(f"--thresholds: {part!r} is not a number; give IoU thresholds such as 0.3 0.5 0.75.") from None
    return tuple(out)


def _print_summary(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from rich import box

    how = "mean over images" if summary["by"] == "image" else "pooled over images"
    table = Table(
        title=f"{summary['n_images']} image(s), {how}", box=box.SIMPLE_HEAD, padding=(0, 1),
        caption="MMS mean matched score, MTS mean true score, PQ panoptic quality",
    )
    for name in ("IoU", "TP", "FP", "FN", "prec", "recall", "acc", "F1", "MMS", "MTS", "PQ"):
        table.add_column(name, justify="right", no_wrap=True)
    for thr, f in summary["dataset"].items():
        table.add_row(
            thr, str(f["tp"]), str(f["fp"]), str(f["fn"]),
            *(f"{f[k]:.3f}" for k in ("precision", "recall", "accuracy", "f1", "mean_matched_score",
                                       "mean_true_score", "panoptic_quality")),
        )
    console = Console()
    console.print(table)
    if summary["channel_iou"]:
        console.print("channel IoU (mean over images): "
                      + ", ".join(f"{c} {v:.3f}" for c, v in summary["channel_iou"].items()))
    console.print(f"wrote {out}")
