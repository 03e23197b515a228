"""Tests of the training data (cartocell_bmz.train.data): folder pairs and their errors, patch sizes, loss weights, batches."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cartocell_bmz.errors import InputError
from cartocell_bmz.train.config import TrainConfig
from cartocell_bmz.train.data import (
    fit_patch, load_training_data, positive_weights, sample_batch, tiling_patches, training_pairs,
)
from cartocell_bmz.train.loop import train

pytest.importorskip("torch")


def test_patch_is_cut_to_the_volume_and_the_divisor():
    assert fit_patch((80, 80, 80), [(16, 48, 48), (32, 96, 96)], (1, 4, 4)) == (16, 48, 48)
    assert fit_patch((80, 80, 80), [(30, 50, 50)], (2, 8, 8)) == (30, 48, 48)
    assert fit_patch((8, 20, 20), [(30, 50, 50)], (1, 8, 8)) == (8, 16, 16)


def test_patches_per_epoch_tile_the_volumes():
    assert tiling_patches([(16, 48, 48)], (16, 48, 48)) == 1
    assert tiling_patches([(16, 48, 48), (17, 48, 48)], (16, 32, 32)) == 4 + 8


def test_positive_weights_balance_the_chosen_channels():
    fractions = np.array([0.25, 0.01, 0.5])
    assert positive_weights(fractions, False) is None
    assert positive_weights(fractions, True).tolist() == pytest.approx([3.0, 50.0, 1.0])  # 99 clipped to 50
    assert positive_weights(fractions, ("B",)).tolist() == pytest.approx([3.0, 1.0, 1.0])


def test_training_folder_errors(tmp_path, tiny_dataset):
    cfg = TrainConfig.from_preset("tiny", epochs=1, device="cpu")
    with pytest.raises(InputError, match="y/"):
        (tmp_path / "only_x" / "x").mkdir(parents=True)
        train(cfg, tmp_path / "only_x", tiny_dataset / "validation", tmp_path / "run")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset / "train_M1", broken)
    victim = sorted((broken / "y").iterdir())[0]
    victim.unlink()
    with pytest.raises(InputError, match="no label volume"):
        train(cfg, broken, tiny_dataset / "validation", tmp_path / "run")
    from cartocell_bmz.io.volumes import write_volume

    write_volume(victim, np.zeros((8, 48, 48), np.uint16))
    with pytest.raises(InputError, match="shape"):
        train(cfg, broken, tiny_dataset / "validation", tmp_path / "run")
    with pytest.raises(InputError, match="not found"):
        training_pairs(tmp_path / "nowhere")


def test_training_data_of_a_folder(tiny_dataset):
    """Volumes normalised whole, targets 0/1, patch cut to the 16 x 48 x 48 volumes, batches drawn reproducibly."""
    cfg = TrainConfig.from_preset("tiny", patch_size=(32, 32, 32), batch_size=2, rebalance=True)
    cfg = cfg.replace(patches_per_epoch=None)  # as many as tile the volumes (the paper's setting)
    data = load_training_data(cfg, tiny_dataset / "train_M1", tiny_dataset / "validation", (1, 2, 2))
    assert [v.name for v in data.train] == [p.name for p, _ in training_pairs(tiny_dataset / "train_M1")]
    assert len(data.val) == 1 and data.patch == (16, 32, 32)
    assert data.patches_per_epoch == 2 * 4 and data.steps == 4
    for vol in data.train:
        assert abs(float(vol.image.mean())) < 1e-3 and abs(float(vol.image.std()) - 1) < 1e-3
        assert vol.targets.shape == (3,) + vol.image.shape and set(np.unique(vol.targets)) <= {0, 1}
        assert np.all(vol.targets[2].ravel()[vol.foreground] == 1)
    assert data.pos_weight is not None and data.pos_weight.shape == (3,)
    x, y = sample_batch(data, cfg, np.random.default_rng(0))
    assert x.shape == (2, 1, 16, 32, 32) and y.shape == (2, 3, 16, 32, 32)
    again = sample_batch(data, cfg, np.random.default_rng(0))
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
