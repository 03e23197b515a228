"""Tests of the training run folder (cartocell_bmz.train.run): reading, checking, writing, the network, the fingerprint."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from builders import TINY, make_run
from cartocell_bmz.errors import ConfigError, ModelError
from cartocell_bmz.train.run import (
    BEST_PT,
    CHECKPOINTS_DIR,
    LOG_COLUMNS,
    MODEL_JSON,
    RUN_FILES,
    RUN_REQUIRED,
    TrainingRun,
    checkpoint_path,
    clean_run,
    fingerprint,
    is_training_run,
    load_network,
    read_log,
    read_resume,
    read_run,
    read_saved_config,
    read_status,
    remove_weights,
    write_config,
    write_epoch_files,
    write_resume,
    write_status,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run") / "run")


def _copy(run, tmp_path, name="copy"):
    return shutil.copytree(run, tmp_path / name)


def _edit_model(run, **changes):
    info = json.loads((run / MODEL_JSON).read_text())
    info.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del info[key]
    (run / MODEL_JSON).write_text(json.dumps(info))


def test_read_run_gives_the_typed_run(run):
    r = read_run(run)
    assert isinstance(r, TrainingRun) and r.path == run
    assert (r.arch, r.callable, r.divisor, r.target_mode) == ("resunet", "ResUNet", (1, 2, 2), "cartocell")
    assert r.kwargs["feature_maps"] == TINY["feature_maps"] and r.source.name == "resunet.py" and r.source.is_file()
    assert r.weights == run / CHECKPOINTS_DIR / BEST_PT == r.checkpoint("best")
    assert r.status["best_epoch"] == 2 and r.config["train"]["arch"] == "resunet"
    with pytest.raises(AttributeError):
        r.arch = "unet"  # frozen
    assert is_training_run(run) and not is_training_run(run / MODEL_JSON) and not is_training_run(run / "nowhere")


@pytest.mark.parametrize("missing", RUN_REQUIRED)
def test_a_missing_file_is_named(run, tmp_path, missing):
    bad = _copy(run, tmp_path)
    (bad / missing).unlink()
    with pytest.raises(ModelError, match=f"{missing}: missing; .* is not a complete training run folder") as e:
        read_run(bad)
    assert "\n" not in str(e.value)


def test_prediction_needs_only_model_json_and_best_pt(run, tmp_path):
    bare = _copy(run, tmp_path)
    for name in ("config.json", "status.json", "train_log.csv"):
        (bare / name).unlink()
    _edit_model(bare, callable=None)  # the architecture's own class
    r = read_run(bare, complete=False)
    assert r.config == {} and r.status == {} and r.callable == "ResUNet"
    with pytest.raises(ModelError, match="config.json: missing"):
        read_run(bare)


@pytest.mark.parametrize("changes, words", [
    ({"divisor": None}, "has no 'divisor' field"),
    ({"divisor": [1, 4, 4]}, r"divisor \[1, 4, 4\] differs from \[1, 2, 2\]"),
    ({"arch": "vnet"}, "unknown architecture 'vnet'"),
    ({"callable": "UNet"}, "callable 'UNet' is not 'ResUNet'"),
    ({"channels": ["C", "B", "M"]}, "channels .* differ from CartoCell's"),
    ({"kwargs": {"feature_maps": [4, 8], "z_down": [1], "colour": 1}}, "colour"),
])
def test_a_bad_model_json_field_is_named(run, tmp_path, changes, words):
    bad = _copy(run, tmp_path)
    _edit_model(bad, **changes)
    for complete in (True, False):
        with pytest.raises(ModelError, match=words) as e:
            read_run(bad, complete=complete)
        assert str(bad / MODEL_JSON) in str(e.value) and "\n" not in str(e.value)


def test_damaged_json_and_folders(run, tmp_path):
    with pytest.raises(ModelError, match="training run folder not found"):
        read_run(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not a folder"):
        read_run(run / MODEL_JSON)
    bad = _copy(run, tmp_path)
    (bad / "status.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="status.json: holds list, not a JSON object"):
        read_run(bad)
    (bad / MODEL_JSON).write_text("{not json")
    with pytest.raises(ModelError, match="model.json: cannot be read as JSON"):
        read_run(bad)


def test_fingerprint_is_the_sha256_of_best_pt(run, tmp_path):
    expected = hashlib.sha256((run / CHECKPOINTS_DIR / BEST_PT).read_bytes()).hexdigest()
    assert fingerprint(run) == fingerprint(read_run(run)) == expected
    other = make_run(tmp_path / "other", seed=1)
    assert fingerprint(other) != expected  # other weights, another fingerprint
    with pytest.raises(ModelError, match="last.pt: not found"):
        fingerprint(run, "last")
    assert checkpoint_path(run, "last") == run / CHECKPOINTS_DIR / "last.pt"
    with pytest.raises(ConfigError, match="'best' or 'last'"):
        checkpoint_path(run, "first")


def test_load_network_rebuilds_the_saved_weights(run, tmp_path):
    net = load_network(run)
    assert not net.training and next(net.parameters()).device.type == "cpu"
    saved = torch.load(run / CHECKPOINTS_DIR / BEST_PT, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in saved.items())
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 8, 16, 16)).astype(np.float32))
    with torch.no_grad():
        assert net(x).shape == (1, 3, 8, 16, 16)
    # the last checkpoint, when there is one
    two = _copy(run, tmp_path, "two")
    other = make_run(tmp_path / "seeded", seed=4)
    shutil.copyfile(other / CHECKPOINTS_DIR / BEST_PT, two / CHECKPOINTS_DIR / "last.pt")
    last = load_network(read_run(two), "last")
    assert not all(torch.equal(last.state_dict()[k], v) for k, v in saved.items())


def test_damaged_checkpoints_give_one_line_errors(run, tmp_path):
    truncated = _copy(run, tmp_path, "truncated")
    best = truncated / CHECKPOINTS_DIR / BEST_PT
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"best.pt: cannot load the trained network \(PytorchStreamReader") as e:
        load_network(truncated)
    assert "\n" not in str(e.value)

    evil = _copy(run, tmp_path, "evil")
    torch.save({"weights": _Runs()}, evil / CHECKPOINTS_DIR / BEST_PT)  # would run code if unpickled
    with pytest.raises(ModelError, match="not a plain state dict of tensors .* refusing"):
        load_network(evil)

    bigger = make_run(tmp_path / "bigger", kwargs={"feature_maps": [6, 8], "z_down": [1], "dropout": 0.0})
    other = _copy(run, tmp_path, "other")
    shutil.copyfile(bigger / CHECKPOINTS_DIR / BEST_PT, other / CHECKPOINTS_DIR / BEST_PT)
    with pytest.raises(ModelError, match="does not fit the network of model.json"):
        load_network(other)


def test_the_writers_make_a_folder_read_run_accepts(run, tmp_path):
    """What the training loop writes through train/run.py is read back by the same module."""
    out = tmp_path / "written"
    assert read_saved_config(out) is None and read_status(out) == {"finished": False} and read_log(out) == []
    write_config(out, {"train": {"patch_size": (16, 48, 48)}, "data": {}}, json.loads((run / MODEL_JSON).read_text()))
    assert read_saved_config(out)["train"]["patch_size"] == [16, 48, 48]
    write_status(out, {"finished": True, "epoch": 2, "best_epoch": 1, "best_val_loss": np.float32(0.25)})
    assert read_status(out)["best_val_loss"] == 0.25
    weights = torch.load(run / CHECKPOINTS_DIR / BEST_PT, weights_only=True)
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 0.5 / e, "iou_B": 0.1, "iou_C": 0.2, "iou_M": 0.3,
             "lr": 1e-3, "seconds": 1.5} for e in (1, 2)]
    write_epoch_files(out, {"rows": rows, "best_model": weights, "best_epoch": 1}, weights, charts=False)
    log = read_log(out)
    assert list(log[0]) == list(LOG_COLUMNS) and [r["epoch"] for r in log] == [1, 2] and log[1]["val_loss"] == 0.25
    assert not (out / "charts").exists()
    r = read_run(out)
    assert r.status["epoch"] == 2 and r.config["train"]["patch_size"] == [16, 48, 48]
    for name in ("best", "last"):
        saved = torch.load(r.checkpoint(name), weights_only=True)
        assert saved.keys() == weights.keys() and all(torch.equal(saved[k], v) for k, v in weights.items())
    write_resume(out, {"epoch": 2, "model": weights})
    assert read_resume(out)["epoch"] == 2
    remove_weights(out)
    assert not checkpoint_path(out, "best").exists() and not checkpoint_path(out, "last").exists()
    (out / "notes.txt").write_text("the user's")
    clean_run(out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the run's own files go
    assert set(RUN_FILES) >= {"config.json", "model.json", "checkpoints", "status.json"}


class _Runs:
    """A pickled object (not a tensor): ``weights_only`` loading refuses it."""
