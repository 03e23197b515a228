"""Tests of the training run folder (cartocell_bmz.train.run): reading, checking, the network, the fingerprint."""

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
    MODEL_JSON,
    RUN_REQUIRED,
    TrainingRun,
    checkpoint_path,
    fingerprint,
    is_training_run,
    load_network,
    read_run,
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


class _Runs:
    """A pickled object (not a tensor): ``weights_only`` loading refuses it."""
