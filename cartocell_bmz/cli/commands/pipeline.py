"""``cartocell-bmz pipeline``: CartoCell's phases M1 -> pseudo-labels -> M2 -> test."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cartocell_bmz.engine.plan import SCHEDULER_HELP, WORKERS_HELP


def command(
    data_root: Path = typer.Argument(..., help="CartoCell-layout dataset: train_M1/{x,y}, validation/{x,y}, train_M2/x, test/{x,y}."),
    out: Path = typer.Option(..., "--out", help="Output folder (created; an interrupted pipeline there is continued)."),
    preset: str = typer.Option("tiny", "--preset", help="'tiny' (minutes on 2 CPU cores) or 'paper' (CartoCell's settings)."),
    arch_m1: str = typer.Option("resunet", "--arch-m1", help="Architecture of M1."),
    arch_m2: Optional[List[str]] = typer.Option(
        None, "--arch-m2", help="Architecture of M2 (repeat for several: each gets OUT/M2_<arch>); default resunet."
    ),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the preset's largest number of epochs."),
    seed: int = typer.Option(0, "--seed", help="Seed of both trainings."),
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu' or 'cuda[:N]'."),
    rounds: int = typer.Option(
        1, "--rounds", min=1,
        help="Rounds of pseudo-labelling: 1 is CartoCell's; each further round r pseudo-labels train_M2/x with the "
             "latest M2 (OUT/pseudo_labels_round<r>) and trains OUT/M2_round<r> on them (one --arch-m2 only).",
    ),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help=SCHEDULER_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Train M1, pseudo-label train_M2 with it, train M2 on the pseudo-labels, and compare M1 and M2 on test.

    Writes OUT/M1, OUT/pseudo_labels/{x,y}, OUT/M2 (or OUT/M2_<arch>), OUT/eval_M1, OUT/eval_M2 and OUT/comparison.{json,md} (F1, PQ, MTS at IoU 0.5 and 0.75; IoU of B, C, M; every M2's F1@0.5 difference from M1 with a paired bootstrap 95% interval over the test cysts). Run the same command again to continue after an interruption.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.phases.pipeline import run_pipeline

    with RichProgress(transient=True) as progress:
        result = run_pipeline(
            data_root, out, preset=preset, arch_m1=arch_m1, arch_m2=list(arch_m2) if arch_m2 else "resunet",
            seed=seed, device=device, overrides={"epochs": epochs} if epochs else None, rounds=rounds,
            scheduler=scheduler, workers=workers, progress=progress,
        )
    typer.echo(str(result))
