"""Tests of the training configuration (cartocell_bmz.train.config): checks, presets, the resume request."""

from __future__ import annotations

import json

import pytest

from cartocell_bmz.errors import ConfigError
from cartocell_bmz.train.config import TrainConfig, request_differences, run_request


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


def test_a_run_continues_only_with_the_same_request():
    """The device may change between sessions; data folders and training options may not."""
    cfg = TrainConfig.from_preset("tiny", rebalance=("C",), epochs=3)
    saved = json.loads(json.dumps(run_request(cfg, "/data/train", "/data/val")))
    assert saved["train"]["rebalance"] == ["C"]  # plain JSON, as config.json holds it
    assert request_differences(saved, run_request(cfg.replace(device="cpu"), "/data/train", "/data/val")) == ""
    assert request_differences(saved, run_request(cfg.replace(epochs=4), "/data/train", "/data/val")) == "epochs 3 -> 4"
    assert request_differences(saved, run_request(cfg, "/data/other", "/data/val")) == "train_dir /data/train -> /data/other"
    many = run_request(cfg.replace(epochs=4, lr=0.5, seed=2, patience=3), "/data/train", "/data/val")
    assert request_differences(saved, many).endswith("; ...") and request_differences(saved, many).count(";") == 3
