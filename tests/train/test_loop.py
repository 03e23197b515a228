"""Tests of training (cartocell_bmz.train.loop), augmentation, predicting a trained run and the train command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cartocell_bmz.train.augment import Augmentations, random_patch
from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.train.loop import LOG_COLUMNS, TrainConfig, _patch_for, read_log, read_status, train

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


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"patch_size": (0, 32, 32)}, "patch_size"),
        ({"patch_size": (16, 32)}, "patch_size"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"schedule": "cosine"}, "schedule"),
        ({"arch": "vgg"}, "arch"),
        ({"target_mode": "thin"}, "target_mode"),
        ({"device": "tpu"}, "device"),
        ({"patience": 0}, "patience"),
        ({"foreground_bias": 1.5}, "foreground_bias"),
        ({"rebalance": ("B", "X")}, "rebalance"),
        ({"augment": {"rotation": "45"}}, "augment.rotation"),
        ({"augment": {"p_elastic": 2}}, "augment.p_elastic"),
        ({"arch_kwargs": {"feature_maps": "wide"}}, "feature_maps"),
        ({"arch_kwargs": {"colour": 1}}, "colour"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    values = {"arch": "resunet", **changes}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainConfig.from_dict(values)


def test_unknown_options_and_presets_are_errors():
    with pytest.raises(ConfigError, match="epochz"):
        TrainConfig.from_dict({"epochz": 3})
    with pytest.raises(ConfigError, match="huge"):
        TrainConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="sharpen"):
        TrainConfig.from_dict({"augment": {"sharpen": True}})


def test_paper_preset_is_cartocells_configuration():
    cfg = TrainConfig.from_preset("paper", arch="resunet")
    assert cfg.patch_size == (80, 80, 80) and cfg.batch_size == 2 and cfg.epochs == 1300
    assert (cfg.optimizer, cfg.schedule, cfg.lr, cfg.weight_decay, cfg.patience) == ("adamw", "onecycle", 1e-3, 0.02, 100)
    kw = cfg.network_kwargs()
    assert kw["feature_maps"] == [52, 68, 84] and kw["z_down"] == [1, 1] and kw["dropout"] == [0.1] * 3
    # The dict round trip (config.json) gives the same configuration back.
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_patch_is_cut_to_the_volume_and_the_divisor():
    assert _patch_for((80, 80, 80), [(16, 48, 48), (32, 96, 96)], (1, 4, 4)) == (16, 48, 48)
    assert _patch_for((80, 80, 80), [(30, 50, 50)], (2, 8, 8)) == (30, 48, 48)
    assert _patch_for((8, 20, 20), [(30, 50, 50)], (1, 8, 8)) == (8, 16, 16)


# --------------------------------------------------------------------------- augmentation


def _blob_image():
    """A normalised image equal to its own B target (a few boxes), so geometry can be checked."""
    mask = np.zeros((12, 40, 40), bool)
    mask[3:9, 5:20, 8:30] = True
    mask[2:10, 24:36, 14:22] = True
    targets = np.stack([mask, ~mask, mask]).astype(np.uint8)
    return mask.astype(np.float32) * 2 - 1, targets


@pytest.mark.parametrize("rotation", ["any", "90", "none"])
def test_augmented_patch_keeps_image_and_targets_aligned(rotation):
    image, targets = _blob_image()
    aug = Augmentations(rotation=rotation, elastic=True, p_elastic=1.0, brightness=False)
    agree = []
    for seed in range(6):
        x, y = random_patch(image, targets, (8, 24, 24), np.random.default_rng(seed), augment=aug)
        assert x.shape == (8, 24, 24) and y.shape == (3, 8, 24, 24)
        assert set(np.unique(y)) <= {0.0, 1.0}
        assert np.array_equal(y[0] + y[1], np.ones_like(y[0]))  # nearest-neighbour targets stay exclusive
        agree.append(np.mean((x > 0) == (y[0] > 0.5)))
    # linear (image) and nearest (targets) sampling differ only on a thin rim of each box
    assert min(agree) > 0.93


def test_patches_are_deterministic_and_biased_to_foreground():
    image, targets = _blob_image()
    fg = np.flatnonzero(targets[2])
    a = random_patch(image, targets, (4, 8, 8), np.random.default_rng(5), augment=Augmentations(), foreground=fg)
    b = random_patch(image, targets, (4, 8, 8), np.random.default_rng(5), augment=Augmentations(), foreground=fg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    rng = np.random.default_rng(0)
    biased = [random_patch(image, targets, (4, 8, 8), rng, foreground=fg, foreground_bias=1.0)[1][2].max()
              for _ in range(30)]
    assert min(biased) == 1.0  # every patch centred on a foreground voxel contains foreground


def test_brightness_changes_only_intensities():
    image, targets = _blob_image()
    aug = Augmentations(rotation="none", flip=False, elastic=False, brightness=True, p_brightness=1.0)
    x, y = random_patch(image, targets, (12, 40, 40), np.random.default_rng(1), augment=aug)
    plain, _ = random_patch(image, targets, (12, 40, 40), np.random.default_rng(1))
    assert np.array_equal(y, targets.astype(np.float32))
    slope = np.polyfit(plain.ravel(), x.ravel(), 1)[0]
    assert 0.85 <= slope <= 1.15 and not np.allclose(x, plain)


# --------------------------------------------------------------------------- data errors


def test_training_folder_errors(tmp_path, tiny_dataset):
    cfg = small_config(epochs=1)
    with pytest.raises(InputError, match="y/"):
        (tmp_path / "only_x" / "x").mkdir(parents=True)
        train(cfg, tmp_path / "only_x", tiny_dataset / "validation", tmp_path / "run", show_progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset / "train_M1", broken)
    victim = sorted((broken / "y").iterdir())[0]
    victim.unlink()
    with pytest.raises(InputError, match="no label volume"):
        train(cfg, broken, tiny_dataset / "validation", tmp_path / "run", show_progress=False)
    from cartocell_bmz.io.volumes import write_volume

    write_volume(victim, np.zeros((8, 48, 48), np.uint16))
    with pytest.raises(InputError, match="shape"):
        train(cfg, broken, tiny_dataset / "validation", tmp_path / "run", show_progress=False)


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
    summary = train(cfg, tmp_path / "one", tmp_path / "one", tmp_path / "run", show_progress=False)
    log = read_log(tmp_path / "run")
    assert log[0]["train_loss"] > 1.2
    assert summary.best_val_loss < 0.3, log
    assert log[-1]["train_loss"] < 0.3
    assert summary.best_iou["M"] > 0.7 and summary.best_iou["C"] > 0.7


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_dataset):
    """A 3-epoch run trained without interruption."""
    run = tmp_path_factory.mktemp("straight") / "run"
    summary = train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                    show_progress=False)
    return run, summary


def test_run_folder_follows_the_contract(straight_run, tiny_dataset):
    run, summary = straight_run
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
    straight, _ = straight_run
    run = tmp_path / "run"

    def kill_after_first(row):
        if row["epoch"] == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
              show_progress=False, on_epoch_end=kill_after_first)
    assert read_status(run)["finished"] is False and len(read_log(run)) == 1
    summary = train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                    show_progress=False)
    assert summary.finished and summary.resumed_from == 1
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_log(run)) == strip(read_log(straight))
    for name in ("best.pt", "last.pt"):
        a = torch.load(run / "checkpoints" / name, weights_only=True)
        b = torch.load(straight / "checkpoints" / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_returns_at_once_and_other_configs_are_refused(tmp_path, tiny_dataset, straight_run):
    straight, summary = straight_run
    run = tmp_path / "copy"
    shutil.copytree(straight, run)
    # the copy points at the same data, so it is the same run
    before = (run / "checkpoints" / "best.pt").stat().st_mtime_ns
    again = train(small_config(epochs=3), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                  show_progress=False)
    assert again.best_val_loss == summary.best_val_loss
    assert (run / "checkpoints" / "best.pt").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="lr"):
        train(small_config(epochs=3, lr=1e-2), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
              show_progress=False)
    fresh = train(small_config(epochs=1, lr=1e-2), tiny_dataset / "train_M1", tiny_dataset / "validation", run,
                  resume=False, show_progress=False)
    assert fresh.epochs == 1 and len(read_log(run)) == 1


def test_rebalance_weights_the_minority_class_of_chosen_channels(tmp_path, tiny_dataset):
    summary = train(small_config(epochs=1, rebalance=["C"]), tiny_dataset / "train_M1", tiny_dataset / "validation",
                    tmp_path / "run", show_progress=False)
    data = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    frac, weight = data["positive_fraction"], data["pos_weight"]
    assert weight["B"] == weight["M"] == 1.0
    assert weight["C"] == pytest.approx((1 - frac["C"]) / frac["C"], rel=1e-5) and weight["C"] > 2
    assert summary.finished


def test_early_stopping_stops_after_patience(tmp_path, tiny_dataset):
    cfg = small_config(epochs=20, patience=1, lr=0.5, schedule="constant", optimizer="adam")
    summary = train(cfg, tiny_dataset / "train_M1", tiny_dataset / "validation", tmp_path / "run", show_progress=False)
    log = read_log(tmp_path / "run")
    assert summary.stopped_early and summary.epochs < 20
    # stopped exactly `patience` epochs after the best one
    assert log[-1]["epoch"] == summary.best_epoch + 1


# --------------------------------------------------------------------------- prediction


def test_a_trained_run_is_predicted_by_the_predictor(straight_run, small_cyst):
    """The run folder training writes is what :class:`~cartocell_bmz.run.predictor.Predictor` reads."""
    from cartocell_bmz.run.predictor import Predictor, predict_whole

    run, _ = straight_run
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
