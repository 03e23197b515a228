"""``cartocell-bmz train``: train a CartoCell network on a folder of cysts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer


def command(
    train: Path = typer.Option(..., "--train", help="Training folder with x/ (raw) and y/ (labels, same file names)."),
    val: Path = typer.Option(..., "--val", help="Validation folder with x/ and y/."),
    arch: str = typer.Option(..., "--arch", help="Architecture: unet, attention_unet, seunet, resunetpp, resunet, resunet_se."),
    out: Path = typer.Option(..., "--out", help="Run folder (created; an unfinished run there is continued)."),
    preset: str = typer.Option("paper", "--preset", help="Settings to start from: 'paper' (CartoCell's) or 'tiny' (minutes on a CPU)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Largest number of epochs (paper 1300, tiny 30)."),
    patch: Optional[Tuple[int, int, int]] = typer.Option(None, "--patch", help="Training patch size Z Y X (paper 80 80 80)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Patches per step (2)."),
    patches_per_epoch: Optional[int] = typer.Option(None, "--patches-per-epoch", min=1, help="Random patches per epoch (paper: as many as tile the volumes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (paper 1e-3)."),
    patience: Optional[int] = typer.Option(None, "--patience", min=1, help="Epochs without a better validation loss before stopping (paper 100)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="'adamw' with one-cycle (paper) or 'adam' (legacy, constant rate)."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights, patches and augmentations."),
    device: str = typer.Option("auto", "--device", help="'auto' (GPU if any, else all CPU cores), 'cpu' or 'cuda[:N]'."),
    target_mode: str = typer.Option("cartocell", "--target-mode", help="Target definition: 'cartocell' (B without contours) or 'biapy37'."),
    rebalance: bool = typer.Option(False, "--rebalance", help="Weight each channel's minority class up in the loss."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Train on plain random crops (no rotation, flips, elastic, brightness)."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the run in --out and start again instead of continuing it."),
    arch_kwargs: Optional[str] = typer.Option(None, "--arch-kwargs", help="Network arguments over the preset's, as JSON: e.g. '{\"se_window\": null}' (global squeeze-and-excitation, as published) or '{\"feature_maps\": [16, 32, 48]}'."),
) -> None:
    """Train a network (B, C, M outputs) on raw cysts and their instance labels.

    Writes the run folder OUT: config.json, model.json, checkpoints/{best,last}.pt, train_log.csv, charts/{loss,iou}.png and status.json. Run the same command again to continue an interrupted run; a finished run is reported and left as it is.
    """
    from cartocell_bmz.cli.progress import RichProgress
    from cartocell_bmz.train.augment import Augmentations
    from cartocell_bmz.train.config import TrainConfig
    from cartocell_bmz.train.loop import train as run_training

    extra = {}
    if optimizer is not None:
        extra["optimizer"] = optimizer
        extra["schedule"] = "onecycle" if optimizer == "adamw" else "constant"
    if no_augment:
        extra["augment"] = Augmentations(enabled=False)
    if arch_kwargs is not None:
        import json

        from cartocell_bmz.errors import ConfigError

        try:
            parsed = json.loads(arch_kwargs)
        except ValueError as exc:
            raise ConfigError(f"--arch-kwargs: not valid JSON ({exc}); give an object such as '{{\"se_window\": null}}'.") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"--arch-kwargs: give a JSON object of network arguments, got {arch_kwargs!r}.")
        extra["arch_kwargs"] = parsed
    config = TrainConfig.from_preset(
        preset, arch=arch, epochs=epochs, patch_size=tuple(patch) if patch else None, batch_size=batch_size,
        patches_per_epoch=patches_per_epoch, lr=lr, patience=patience, seed=seed, device=device,
        target_mode=target_mode, rebalance=rebalance, **extra,
    )
    with RichProgress() as progress:
        summary = run_training(config, train, val, out, resume=not fresh, progress=progress)
    typer.echo(str(summary))
    if not summary.finished:
        raise typer.Exit(1)
