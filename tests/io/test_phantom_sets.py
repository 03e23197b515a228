"""Tests of cartocell_bmz.io.phantom_sets: synthetic datasets on disk."""

from __future__ import annotations

import hashlib
import json

import pytest

from cartocell_bmz.core.phantoms import PhantomConfig
from cartocell_bmz.io.phantom_sets import make_dataset
from cartocell_bmz.io.volumes import read_volume


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dataset_layout_is_deterministic_and_carries_spacing(tmp_path):
    cfg = PhantomConfig(seed=1, shape=(16, 48, 48), counts={"train_M1": 1, "validation": 1, "train_M2": 2, "test": 1})
    first = make_dataset(tmp_path / "a", cfg, preview=True)
    make_dataset(tmp_path / "b", cfg)
    for split in ("train_M1", "validation", "train_M2", "test"):
        for label_path in first[split]:
            twin = tmp_path / "b" / split / "y" / label_path.name
            assert _digest(label_path) == _digest(twin)
            raw_path = tmp_path / "a" / split / "x" / label_path.name
            assert raw_path.exists()
            vol = read_volume(label_path, "labels")
            assert vol.spacing_known and vol.spacing == (1.0, 0.5, 0.5)
            assert read_volume(raw_path).data.shape == vol.data.shape
    assert len(list((tmp_path / "a" / "previews").glob("*.png"))) == 5
    assert (tmp_path / "a" / "dataset.json").exists()


def test_progress_is_reported_through_the_callback(tmp_path):
    calls = []
    cfg = PhantomConfig(seed=2, shape=(8, 16, 16), counts={"validation": 1, "test": 2})
    written = make_dataset(tmp_path / "d", cfg, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert {k: len(v) for k, v in written.items()} == {"validation": 1, "test": 2}
    saved = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert saved["generator"] == "cartocell_bmz.core.phantoms" and saved["counts"] == cfg.counts


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown split"):
        make_dataset(tmp_path / "d", PhantomConfig(counts={"training": 1}))
