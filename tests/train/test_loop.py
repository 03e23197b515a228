"""Tests of training (cartocell_bmz.train.loop): learning, the run folder, resuming, progress, predicting a trained run, the train command."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from cartocell_bmz.errors import CartoCellWarning, ConfigError
from cartocell_bmz.train.augment import Augmentations
from cartocell_bmz.train.config import TrainConfig
from cartocell_bmz.train.loop import train
from cartocell_bmz.train.run import LOG_COLUMNS, read_log, read_status

torch = pytest.importorskip("torch")

#: A very small network and schedule: a few seconds per run on 2 cores.
SMALL = dict(
    arch_kwargs={"feature_maps": [4, 8], "z_down": [1]},
    patch_size=(16, 32, 32),
    batch_size=2,
    patches_per_epoch=2,
    device="cpu",
)


def small_config(**changes) -> TrainConfig:
    values = {**SMALL, **changes}
    return TrainConfig.from_preset("tiny", arch=values.pop("arch", "resunet"), **values)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the test machine's 2 cores are shared, and oversubscribed
    OpenMP threads make training many times slower (results are the same)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


class Interrupt(Exception):
    """Raised by a callback to simulate a kill after an epoch."""


class Events(list):
    """A ``progress(done, total, message)`` callback that keeps its events."""

    def __call__(self, done: int, total: int, message: str = "") -> None:
        self.append((done, total, message))


# --------------------------------------------------------------------------- learning


def test_tiny_model_overfits_one_cyst(tmp_path, small_cyst):
    """Without augmentation a tiny ResUNet fits one 16x48x48 cyst in 48 steps: loss from ~1.8 to below 0.3."""
    from cartocell_bmz.io.volumes import write_volume

    for sub, data in (("x", small_cyst.raw), ("y", small_cyst.labels)):
        write_volume(tmp_path / "one" / sub / "cyst.tif", data, small_cyst.spacing)
    cfg = small_config(
        patch_size=(16, 48, 48), batch_size=1, patches_per_epoch=8, epochs=6, lr=1e-2,
        augment=Augmentations(enabled=False), patience=50,
    )
    summary = train(cfg, tmp_path / "one", tmp_path / "one", tmp_path / "run")
    log = read_log(tmp_path / "run")
    assert log[0]["train_loss"] > 1.2
    assert summary.best_val_loss < 0.3, log
    assert log[-1]["train_loss"] < 0.3
    assert summary.best_iou["M"] > 0.7 and summary.best_iou["C"] > 0.7


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_dataset):
    """A 3-epoch run trained without interruption, and its progress events."""
    run = tmp_path_factory.mktemp("straight") / "run"
    events = Events()
    summary = train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                    progress=events)
    return run, summary, events


def test_run_folder_follows_the_contract(straight_run, tiny_dataset):
    run, summary, _ = straight_run
    assert summary.finished and summary.epochs == 3 and 1 <= summary.best_epoch <= 3
    model = json.loads((run / "model.json").read_text())
    assert set(model) == {"arch", "callable", "source", "kwargs", "divisor", "channels", "target_mode", "n_parameters"}
    assert (model["arch"], model["callable"], model["source"]) == ("resunet", "ResUNet", "resunet.py")
    assert model["channels"] == ["B", "C", "M"] and model["divisor"] == [1, 2, 2]
    assert model["kwargs"]["feature_maps"] == [4, 8]
    config = json.loads((run / "config.json").read_text())
    assert TrainConfig.from_dict(config["train"]) == small_config(epochs=3)
    assert config["data"]["patch_size"] == [16, 32, 32] and config["data"]["steps_per_epoch"] == 1
    assert config["data"]["train_volumes"] == sorted(p.name for p in (tiny_dataset / "train_M1" / "x").iterdir())
    status = read_status(run)
    assert status["finished"] is True and status["best_epoch"] == summary.best_epoch
    log = read_log(run)
    assert [r["epoch"] for r in log] == [1, 2, 3] and list(log[0]) == list(LOG_COLUMNS)
    assert min(r["val_loss"] for r in log) == pytest.approx(summary.best_val_loss, rel=1e-5)
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        from cartocell_bmz.networks import build_network

        build_network(model["arch"], **model["kwargs"]).load_state_dict(state)
    for chart in ("loss.png", "iou.png"):
        assert (run / "charts" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # denormals are flushed only while the network runs, not left on for numpy afterwards
    assert (np.array([1e-40], np.float32) * np.float32(1.0))[0] != 0


def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_dataset, straight_run):
    straight, _, _ = straight_run
    run = tmp_path / "run"

    def kill_after_first(row):
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
              on_epoch_end=kill_after_first)
    assert read_status(run)["finished"] is False and len(read_log(run)) == 1
    events = Events()
    summary = train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                    progress=events)
    assert summary.finished and summary.resumed_from == 1
    # the resumed run's progress starts at the epoch already done
    assert events[0] == (1, 3, "continuing from epoch 1") and events[-1][:2] == (3, 3)
    assert sorted({done for done, _, _ in events}) == [1, 2, 3]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_log(run)) == strip(read_log(straight))
    for name in ("best.pt", "last.pt"):
        a = torch.load(run / "checkpoints" / name, weights_only=True)
        b = torch.load(straight / "checkpoints" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_returns_at_once_and_other_configs_are_refused(tmp_path, tiny_dataset, straight_run):
    straight, summary, _ = straight_run
    run = tmp_path / "copy"
    shutil.copytree(straight, run)
    # the copy points at the same data, so it is the same run
    before = (run / "checkpoints" / "best.pt").stat().st_mtime_ns
    events = Events()
    again = train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                  progress=events)
    assert events == [(3, 3, "already finished after 3 epochs")]  # said through progress, never printed
    assert again.best_val_loss == summary.best_val_loss
    assert (run / "checkpoints" / "best.pt").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="lr"):
        train(small_config(epochs=3, lr=1e-2), tiny_dataset / "train_M1", tiny_dataset / "validation", run)
    fresh = train(small_config(epochs=1, lr=1e-2), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                  resume=False)
    assert fresh.epochs == 1 and len(read_log(run)) == 1


def test_rebalance_weights_the_minority_class_of_chosen_channels(tmp_path, tiny_dataset):
    summary = train(small_config(epochs=1, rebalance=["C"]), tiny_dataset / "train_M1", tiny_dataset / "validation",
                    tmp_path / "run")
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    frac, weight = data["positive_fraction"], data["pos_weight"]
    assert weight["B"] == weight["M"] == 1.0
    assert weight["C"] == pytest.approx((1 - frac["C"]) / frac["C"], rel=1e-5) and weight["C"] > 2
    assert summary.finished


def test_early_stopping_stops_after_patience(tmp_path, tiny_dataset):
    cfg = small_config(epochs=20, patience=1, lr=0.5, schedule="constant", optimizer="adam")
    summary = train(cfg, tiny_dataset / "train_M1", tiny_dataset / "validation", tmp_path / "run")
    log = read_log(tmp_path / "run")
    assert summary.stopped_early and summary.epochs < 20
    # stopped exactly `patience` epochs after the best one
    assert log[-1]["epoch"] == summary.best_epoch + 1


# --------------------------------------------------------------------------- reporting


def test_progress_counts_the_epochs(straight_run):
    """progress(done, total, message): (0, 3), ..., (3, 3), done never decreasing, the epoch's figures said."""
    _, summary, events = straight_run
    assert events[0] == (0, 3, "training resunet") and events[-1][:2] == (3, 3)
    dones = [done for done, _, _ in events]
    assert dones == sorted(dones) and sorted(set(dones)) == [0, 1, 2, 3]
    assert {total for _, total, _ in events} == {3}
    steps = [(done, message) for done, _, message in events if ": step " in message]
    assert len(steps) == 3 and all(message.startswith(f"epoch {done + 1}: step 1/1 loss ") for done, message in steps)
    ends = [(done, message) for done, _, message in events if ": loss " in message]  # one line per epoch
    assert [done for done, _ in ends] == [1, 2, 3] and all(m.startswith(f"epoch {done}: loss ") for done, m in ends)
    assert " val " in ends[-1][1] and "IoU B/C/M" in ends[-1][1]
    assert ends[summary.best_epoch - 1][1].endswith("(best)")


def test_training_writes_nothing_to_the_terminal(tmp_path, tiny_dataset, capfd):
    """Without a progress callback, training is silent: no prints, no bars, no warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(small_config(epochs=1), tiny_dataset / "train_M1", tiny_dataset / "validation", tmp_path / "run")
    assert summary.finished
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [w for w in caught if issubclass(w.category, CartoCellWarning)]


# --------------------------------------------------------------------------- prediction


def test_a_trained_run_is_predicted_by_the_predictor(straight_run, small_cyst):
    """The run folder training writes is what :class:`~cartocell_bmz.run.predictor.Predictor` reads."""
    from cartocell_bmz.run.predictor import Predictor, predict_whole

    run, _, _ = straight_run
    with Predictor(run, device="cpu") as p:
        probs = p.predict(small_cyst.raw)
        whole = predict_whole(p, small_cyst.raw)
    assert probs.shape == (3,) + small_cyst.raw.shape and probs.dtype == np.float32
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    assert np.abs(probs - whole).max() < 1e-5  # a small volume is one tile
    with Predictor(run, device="cpu", tile=(8, 24, 24), margin=(2, 4, 4), overlap=2) as p:
        assert p.plan(small_cyst.raw.shape).n_tiles > 1
        tiled = p.predict(small_cyst.raw)
    assert np.mean(np.abs(whole - tiled)) < 0.02
    assert np.mean((whole > 0.5) == (tiled > 0.5)) > 0.98


# --------------------------------------------------------------------------- command line


def test_train_command(tmp_path, tiny_dataset):
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    runner = CliRunner()
    args = ["train", "--train", str(tiny_dataset / "train_M1"), "--val", str(tiny_dataset / "validation"),
            "--arch", "unet", "--out", str(tmp_path / "run"), "--preset", "tiny", "--epochs", "1",
            "--patch", "16", "32", "32", "--patches-per-epoch", "2", "--device", "cpu", "--no-augment"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert read_status(tmp_path / "run")["finished"] is True
    assert f"{tmp_path / 'run'}: finished after 1 epochs" in result.output  # the command prints the summary
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["augment"]["enabled"] is False and config["train"]["arch"] == "unet"
    bad = runner.invoke(app, args[:5] + ["--arch", "vgg"] + args[7:])
    assert bad.exit_code == 2 and "arch must be one of" in bad.output and "Traceback" not in bad.output


def test_train_command_arch_kwargs_go_over_the_preset(tmp_path, tiny_dataset):
    """--arch-kwargs sets network arguments over the preset's; the run (and a package from it) keeps them."""
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app
    from cartocell_bmz.networks import TINY_SE_WINDOW

    args = ["train", "--train", str(tiny_dataset / "train_M1"), "--val", str(tiny_dataset / "validation"),
            "--arch", "seunet", "--preset", "tiny", "--epochs", "1", "--patch", "16", "32", "32",
            "--patches-per-epoch", "2", "--device", "cpu", "--no-augment"]
    runner = CliRunner()
    plain = runner.invoke(app, args + ["--out", str(tmp_path / "tiny")])
    assert plain.exit_code == 0, plain.output
    assert json.loads((tmp_path / "tiny" / "model.json").read_text())["kwargs"]["se_window"] == TINY_SE_WINDOW
    result = runner.invoke(app, args + ["--out", str(tmp_path / "global"), "--arch-kwargs",
                                        '{"se_window": null, "feature_maps": [4, 8]}'])
    assert result.exit_code == 0, result.output
    kwargs = json.loads((tmp_path / "global" / "model.json").read_text())["kwargs"]
    assert kwargs["se_window"] is None and kwargs["feature_maps"] == [4, 8] and kwargs["z_down"] == [1]
