"""Training a CartoCell network on a folder of raw volumes and instance labels.

The loop follows CartoCell's recipe: targets B, C, M computed from the labels
(:func:`cartocell_bmz.core.targets.make_targets`), whole-image zero-mean unit-variance
normalisation *before* patching, random 3D patches biased towards the cells
(:mod:`cartocell_bmz.train.data`), the CartoCell augmentations
(:mod:`cartocell_bmz.train.augment`), a loss that sums the binary cross-entropy
of each channel (optionally re-weighting each channel's minority class), AdamW
with a one-cycle schedule (or the legacy Adam), validation on whole volumes
every epoch (loss and IoU of B, C and M at probability 0.5), early stopping,
and checkpoints.

:func:`train` is a short sequence of steps: check what the run folder already
holds, start (load the data, build the network, continue from ``resume.pt`` or
start afresh), then one epoch after the other (train, validate, commit), and
finish.  The run folder and its files belong to :mod:`cartocell_bmz.train.run`
(see ``docs/DEVELOPING.md``); ``resume.pt`` is written last at the end of every
epoch and holds the model, optimizer, scheduler, random states, the best weights
and the log, so that a run killed at any moment continues from its last finished
epoch and ends exactly as an uninterrupted run would (on CPU, bit for bit).

Training reports through ``progress(done, total, message)`` (epochs done of the
largest number of epochs, :mod:`cartocell_bmz.io.progress`); it never prints.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from cartocell_bmz.core.metrics import binary_channel_iou
from cartocell_bmz.errors import ConfigError
from cartocell_bmz.io.progress import ProgressCallback, report
from cartocell_bmz.layout import CHANNELS
from cartocell_bmz.train.config import TrainConfig, request_differences, run_request
from cartocell_bmz.train.data import TrainingData, load_training_data, sample_batch
from cartocell_bmz.train.run import (
    checkpoint_path, clean_run, read_resume, read_saved_config, read_status, remove_weights, resume_path,
    write_config, write_epoch_files, write_resume, write_status,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Charts take a moment: they are drawn at the first and last epoch of a session
#: and otherwise at most once in this many seconds.
CHART_INTERVAL_S = 30.0


@dataclass
class RunSummary:
    """The outcome of :func:`train`.

    Attributes
    ----------
    run_dir : pathlib.Path
    finished : bool
        The run reached its last epoch or stopped early.
    epochs : int
        Epochs completed.
    best_epoch : int
        Epoch of ``checkpoints/best.pt``.
    best_val_loss : float
    best_iou : dict
        Validation IoU of B, C and M at the best epoch.
    stopped_early : bool
        Stopped by patience before ``epochs``.
    resumed_from : int
        Epoch the run continued from (0 for a fresh run).
    seconds : float
        Training time summed over all sessions of the run.
    """

    run_dir: Path
    finished: bool
    epochs: int
    best_epoch: int
    best_val_loss: float
    best_iou: dict[str, float]
    stopped_early: bool = False
    resumed_from: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        iou = " ".join(f"{c}={self.best_iou.get(c, float('nan')):.3f}" for c in CHANNELS)
        state = "finished" if self.finished else "unfinished"
        early = ", stopped early" if self.stopped_early else ""
        return (
            f"{self.run_dir}: {state} after {self.epochs} epochs{early}; best epoch {self.best_epoch} "
            f"(val loss {self.best_val_loss:.4f}, IoU {iou}); {self.seconds:.0f} s"
        )

    @classmethod
    def from_status(cls, run_dir: Path, status: Mapping[str, Any]) -> "RunSummary":
        """The summary that ``RUN/status.json`` records."""
        return cls(
            run_dir=run_dir,
            finished=bool(status.get("finished")),
            epochs=int(status.get("epoch", 0)),
            best_epoch=int(status.get("best_epoch", 0)),
            best_val_loss=float(status.get("best_val_loss", math.nan)),
            best_iou={c: float(v) for c, v in status.get("best_iou", {}).items()},
            stopped_early=bool(status.get("stopped_early", False)),
            resumed_from=int(status.get("resumed_from", 0)),
            seconds=float(status.get("seconds", 0.0)),
        )


@dataclass
class _Session:
    """One session of a run: its data, the network and optimiser, and the training state."""

    config: TrainConfig
    run_dir: Path
    data: TrainingData
    div: tuple[int, ...]
    device: Any  # torch.device
    net: Any  # torch.nn.Module
    opt: Any
    sched: Any
    rng: np.random.Generator
    pos_weight: Any  # torch.Tensor or None
    n_params: int
    state: dict[str, Any]
    resumed_from: int = 0

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    @property
    def done(self) -> bool:
        return self.epoch >= self.config.epochs or bool(self.state["stopped_early"])

    def status(self, finished: bool) -> dict[str, Any]:
        """The content of ``RUN/status.json``."""
        state = self.state
        return {
            "finished": finished,
            "epoch": self.epoch,
            "epochs": self.config.epochs,
            "best_epoch": int(state["best_epoch"]),
            "best_val_loss": float(state["best_val_loss"]),
            "best_iou": state["best_iou"],
            "stopped_early": bool(state["stopped_early"]),
            "resumed_from": self.resumed_from,
            "seconds": float(state["seconds"]),
            "arch": self.config.arch,
            "n_parameters": self.n_params,
        }


def train(
    config: TrainConfig,
    train_dir: str | os.PathLike,
    val_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> RunSummary:
    """Train a network and write a run folder; continue an interrupted run.

    Parameters
    ----------
    config : TrainConfig
        The run's configuration.
    train_dir, val_dir : path-like
        Folders with ``x/`` (raw) and ``y/`` (instance labels, same file names).
    run_dir : path-like
        Run folder (created).
    resume : bool
        Continue from ``checkpoints/resume.pt`` when the folder holds an unfinished
        run with the same configuration, and return its summary at once when it
        holds a finished one.  ``False`` deletes the run's files and starts afresh.
    progress : callable, optional
        ``progress(done, total, message)`` (:mod:`cartocell_bmz.io.progress`):
        ``done`` epochs of ``total = config.epochs``, from the epochs already done
        (``"continuing from epoch N"``) to ``total``, the message saying the
        optimisation step and its loss, then the epoch's losses and IoU; a run
        stopped early ends with ``(total, total, "stopped early ...")``, a run
        found finished reports ``(total, total, "already finished ...")`` only.
    on_epoch_end : callable, optional
        Called with each epoch's log row after its checkpoints are written
        (an exception raised there stops training, as an interruption would).

    Returns
    -------
    RunSummary

    Raises
    ------
    ConfigError
        If the folder holds a run with another configuration (use ``resume=False``).
    InputError
        For unusable training or validation data.
    """
    from cartocell_bmz.io.volumes import ensure_output_dir
    from cartocell_bmz.run.device import flush_denormal, resolve_device

    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}.")
    run_dir = ensure_output_dir(run_dir)
    train_dir, val_dir = Path(train_dir).resolve(), Path(val_dir).resolve()
    device = resolve_device(config.device, threads=True)
    request = run_request(config, train_dir, val_dir)
    finished = _finished_run(run_dir, request, resume)
    if finished is not None:  # a finished run is left as it is (a resumed pipeline meets them all the time)
        report(progress, config.epochs, config.epochs, f"already finished after {finished.epochs} epochs")
        return finished
    session = _start(config, train_dir, val_dir, run_dir, request, device, resume=resume)
    report(progress, session.epoch, config.epochs,
           f"continuing from epoch {session.epoch}" if session.resumed_from else f"training {config.arch}")
    last_chart = time.perf_counter()
    with flush_denormal():
        while not session.done:
            row = _one_epoch(session, progress)
            charts = session.done or session.epoch == session.resumed_from + 1 \
                or time.perf_counter() - last_chart > CHART_INTERVAL_S
            _commit(session, charts=charts)
            if charts:
                last_chart = time.perf_counter()
            report(progress, session.epoch, config.epochs, _describe(row, session.state))
            if on_epoch_end is not None:
                on_epoch_end(dict(row))
    return _finish(session, progress)


# --------------------------------------------------------------------------- the steps of train()


def _finished_run(run_dir: Path, request: Mapping[str, Any], resume: bool) -> RunSummary | None:
    """Clear the folder (``resume=False``), refuse another run's folder, or return a finished run's summary."""
    if not resume:
        clean_run(run_dir)
        return None
    saved = read_saved_config(run_dir)
    if saved is None:
        return None
    diff = request_differences(saved, request)
    if diff:
        raise ConfigError(
            f"{run_dir} holds a run with another configuration ({diff}); "
            "use another output folder or start afresh (--fresh)."
        )
    status = read_status(run_dir)
    if status.get("finished") and checkpoint_path(run_dir, "best").is_file():
        return RunSummary.from_status(run_dir, status)
    return None


def _start(config: TrainConfig, train_dir: Path, val_dir: Path, run_dir: Path, request: Mapping[str, Any],
           device: "torch.device", *, resume: bool) -> _Session:
    """Load the data, build the network and optimiser, continue or start, and write the run's description."""
    import torch

    from cartocell_bmz.networks import build_network, count_parameters, divisor

    kwargs = config.network_kwargs()
    div = divisor(config.arch, kwargs)
    data = load_training_data(config, train_dir, val_dir, div)
    pos_weight = None if data.pos_weight is None else torch.tensor(data.pos_weight, dtype=torch.float32, device=device)
    torch.manual_seed(config.seed)
    net = build_network(config.arch, **kwargs).to(device)
    optimizer = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    opt = optimizer(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = None
    if config.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * data.steps)
    session = _Session(
        config=config, run_dir=run_dir, data=data, div=tuple(div), device=device, net=net, opt=opt, sched=sched,
        rng=np.random.default_rng(config.seed), pos_weight=pos_weight, n_params=count_parameters(net),
        state=_fresh_state(),
    )
    if resume and resume_path(run_dir).is_file():
        _restore(session)
    else:
        remove_weights(run_dir)
    write_config(run_dir, _full_config(session, request), _model_info(config, kwargs, div, session.n_params))
    if session.resumed_from:
        write_epoch_files(run_dir, session.state, net.state_dict())  # rewrite the files derived from resume.pt
    if not session.done:
        write_status(run_dir, session.status(False))
    return session


def _fresh_state() -> dict[str, Any]:
    """The training state of a run before its first epoch (what ``resume.pt`` saves besides the tensors)."""
    return {
        "epoch": 0, "best_epoch": 0, "best_val_loss": math.inf, "best_iou": {}, "bad_epochs": 0,
        "rows": [], "seconds": 0.0, "stopped_early": False, "best_model": None,
    }


def _restore(session: _Session) -> None:
    """Continue from ``resume.pt``: network, optimiser, schedule, random states and training state."""
    import torch

    try:
        saved = read_resume(session.run_dir)
        session.net.load_state_dict(saved["model"])
        session.opt.load_state_dict(saved["optimizer"])
        if session.sched is not None:
            session.sched.load_state_dict(saved["scheduler"])
        session.rng.bit_generator.state = json.loads(saved["numpy_rng"])
        torch.set_rng_state(saved["torch_rng"])
        if session.device.type == "cuda" and saved.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        session.state = {key: saved[key] for key in session.state}
    except Exception as exc:  # a corrupt or foreign resume file: say so, do not guess
        raise ConfigError(
            f"{resume_path(session.run_dir)}: cannot continue from this checkpoint ({type(exc).__name__}); "
            "start afresh with --fresh."
        ) from None
    session.resumed_from = session.epoch


def _full_config(session: _Session, request: Mapping[str, Any]) -> dict[str, Any]:
    """``RUN/config.json``: the request, what the data made of it, the device and the versions."""
    import torch

    data, pos_weight = session.data, session.pos_weight
    return {
        **request,
        "data": {
            **request["data"],
            "train_volumes": [v.name for v in data.train],
            "val_volumes": [v.name for v in data.val],
            "patch_size": list(data.patch),
            "patches_per_epoch": data.patches_per_epoch,
            "steps_per_epoch": data.steps,
            "positive_fraction": {c: float(f) for c, f in zip(CHANNELS, data.fractions)},
            "pos_weight": None if pos_weight is None else {c: float(w) for c, w in zip(CHANNELS, pos_weight.tolist())},
        },
        "device": str(session.device),
        "versions": {"torch": torch.__version__, "numpy": np.__version__, "cartocell_bmz": _version()},
    }


def _model_info(config: TrainConfig, kwargs: Mapping[str, Any], div: Any, n_params: int) -> dict[str, Any]:
    """``RUN/model.json``: what rebuilds the network (:func:`cartocell_bmz.train.run.load_network`)."""
    from cartocell_bmz.networks import get_spec, source_path

    return {
        "arch": config.arch,
        "callable": get_spec(config.arch).callable,
        "source": source_path(config.arch).name,
        "kwargs": kwargs,
        "divisor": list(div),
        "channels": list(CHANNELS),
        "target_mode": config.target_mode,
        "n_parameters": n_params,
    }


def _one_epoch(session: _Session, progress: ProgressCallback | None) -> dict[str, Any]:
    """Train one epoch, validate, and record it in the training state; returns the epoch's log row."""
    epoch = session.epoch + 1
    t0 = time.perf_counter()
    train_loss = _train_steps(session, epoch, progress)
    val_loss, ious = _validate(session)
    row = {
        "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
        **{f"iou_{c}": v for c, v in zip(CHANNELS, ious)},
        "lr": float(session.opt.param_groups[0]["lr"]), "seconds": time.perf_counter() - t0,
    }
    _record(session, row, ious)
    return row


def _train_steps(session: _Session, epoch: int, progress: ProgressCallback | None) -> float:
    """The optimisation steps of one epoch; returns their mean loss."""
    import torch

    config, data = session.config, session.data
    session.net.train()
    total = 0.0
    for step in range(data.steps):
        xs, ys = sample_batch(data, config, session.rng)
        xb = torch.from_numpy(xs).to(session.device)
        yb = torch.from_numpy(ys).to(session.device)
        session.opt.zero_grad(set_to_none=True)
        loss = _loss(session.net(xb), yb, session.pos_weight)
        loss.backward()
        session.opt.step()
        if session.sched is not None:
            session.sched.step()
        total += float(loss.detach())
        report(progress, epoch - 1, config.epochs, f"epoch {epoch}: step {step + 1}/{data.steps} loss {total / (step + 1):.4f}")
    return total / data.steps


def _record(session: _Session, row: Mapping[str, Any], ious: list[float]) -> None:
    """Add an epoch's row to the state; keep the best weights; stop early after ``patience`` epochs without one."""
    state, epoch = session.state, int(row["epoch"])
    state["rows"] = list(state["rows"]) + [dict(row)]
    state["epoch"] = epoch
    state["seconds"] = float(state["seconds"]) + row["seconds"]
    if row["val_loss"] < float(state["best_val_loss"]):
        state.update(best_val_loss=row["val_loss"], best_epoch=epoch, bad_epochs=0,
                     best_iou={c: v for c, v in zip(CHANNELS, ious)},
                     best_model={k: v.detach().cpu().clone() for k, v in session.net.state_dict().items()})
    else:
        state["bad_epochs"] = int(state["bad_epochs"]) + 1
    if int(state["bad_epochs"]) >= session.config.patience and epoch < session.config.epochs:
        state["stopped_early"] = True


def _commit(session: _Session, *, charts: bool) -> None:
    """Write the epoch: ``resume.pt`` first (the commit point: everything else is derived from it), then the rest."""
    import torch

    payload = {
        **session.state,
        "model": session.net.state_dict(),
        "optimizer": session.opt.state_dict(),
        "scheduler": session.sched.state_dict() if session.sched is not None else None,
        "numpy_rng": json.dumps(session.rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if session.device.type == "cuda" else None,
    }
    write_resume(session.run_dir, payload)
    write_epoch_files(session.run_dir, session.state, session.net.state_dict(), charts=charts)
    write_status(session.run_dir, session.status(session.done))


def _finish(session: _Session, progress: ProgressCallback | None) -> RunSummary:
    """Mark the run finished and return its summary (a run stopped early reports its last event too)."""
    if session.epoch and not checkpoint_path(session.run_dir, "best").is_file():
        write_epoch_files(session.run_dir, session.state, session.net.state_dict())
    status = session.status(True)
    write_status(session.run_dir, status)
    total = session.config.epochs
    if session.epoch < total:
        report(progress, total, total, f"stopped early after epoch {session.epoch} (best epoch {status['best_epoch']})")
    return RunSummary.from_status(session.run_dir, status)


def _describe(row: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    """One line about an epoch: losses, validation IoU, time, and whether it is the best so far."""
    mark = " (best)" if state["best_epoch"] == row["epoch"] else ""
    return (
        f"epoch {row['epoch']}: loss {row['train_loss']:.3f} val {row['val_loss']:.3f} "
        f"IoU B/C/M {row['iou_B']:.2f}/{row['iou_C']:.2f}/{row['iou_M']:.2f} {row['seconds']:.0f}s{mark}"
    )


# --------------------------------------------------------------------------- loss and validation


def _loss(logits: "torch.Tensor", targets: "torch.Tensor", pos_weight: "torch.Tensor | None") -> "torch.Tensor":
    """Sum over channels of the mean binary cross-entropy on logits."""
    import torch.nn.functional as F

    pw = None if pos_weight is None else pos_weight.view(1, -1, 1, 1, 1)
    per_voxel = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pw, reduction="none")
    return per_voxel.mean(dim=(0, 2, 3, 4)).sum()


def _validate(session: _Session) -> tuple[float, list[float]]:
    """Loss and IoU of B, C, M (probability > 0.5) of the network on the whole validation volumes."""
    import torch

    from cartocell_bmz.run.backends import TorchBackend
    from cartocell_bmz.run.predictor import Predictor

    session.net.eval()
    patch = session.data.patch
    # the prediction tiler on the network in memory, logits out: a volume of up to four patches'
    # voxels in one piece, else tiles of at most that with fixed margins (nothing is measured)
    eighth = [int(p) // 8 for p in patch]
    predictor = Predictor(TorchBackend(session.net, session.div, sigmoid=False), margin=eighth, overlap=eighth,
                          max_tile_voxels=4 * math.prod(int(p) for p in patch))
    lw = None if session.pos_weight is None else session.pos_weight.cpu()
    losses, ious = [], []
    for vol in session.data.val:
        logits = predictor.predict_normalized(vol.image)
        with torch.inference_mode():
            t = torch.from_numpy(vol.targets[None].astype(np.float32))
            losses.append(float(_loss(torch.from_numpy(logits[None]), t, lw)))
        ious.append(binary_channel_iou(pred=logits > 0, target=vol.targets.astype(bool)))
    return float(np.mean(losses)), [float(v) for v in np.mean(ious, axis=0)]


def _version() -> str:
    from cartocell_bmz import __version__

    return __version__


__all__ = ["CHART_INTERVAL_S", "RunSummary", "train"]
