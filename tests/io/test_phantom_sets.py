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


#: Fingerprint (:func:`cartocell_bmz.bench.inputs.file_fingerprint`) of the ``test`` folder of
#: ``PhantomConfig(seed=0)``: the benchmark's embedded test set, which must never change.
EMBEDDED_TEST_FINGERPRINT = "82be21b2eccb217e6d7cebe49c9d24d289dc8f169a483b7188ead685282ff246"


def test_simple_kind_keeps_the_benchmarks_embedded_test_set(tmp_path):
    from cartocell_bmz.bench.inputs import file_fingerprint

    make_dataset(tmp_path / "d", PhantomConfig(seed=0, counts={"test": 4}), optics="simple")
    assert file_fingerprint(tmp_path / "d" / "test") == EMBEDDED_TEST_FINGERPRINT
    assert "optics" not in json.loads((tmp_path / "d" / "dataset.json").read_text())


def test_cartocell_kind_images_the_splits_with_their_acquisitions(tmp_path):
    from cartocell_bmz.io.phantom_sets import CARTOCELL_COUNTS, OPTICS_PREVIEW, default_counts

    assert default_counts("cartocell") == CARTOCELL_COUNTS
    assert CARTOCELL_COUNTS["train_M2"] > 4 * CARTOCELL_COUNTS["train_M1"]
    assert CARTOCELL_COUNTS["test"] > CARTOCELL_COUNTS["train_M1"] + CARTOCELL_COUNTS["validation"]
    cfg = PhantomConfig(seed=1, shape=(12, 32, 32), counts={"train_M1": 1, "validation": 1, "train_M2": 1, "test": 1})
    first = make_dataset(tmp_path / "a", cfg, optics="cartocell", preview=True)
    make_dataset(tmp_path / "b", cfg, optics="cartocell")
    simple = make_dataset(tmp_path / "s", cfg)
    for split, paths in first.items():
        for p in paths:
            raw = tmp_path / "a" / split / "x" / p.name
            assert _digest(raw) == _digest(tmp_path / "b" / split / "x" / p.name)
            assert _digest(raw) != _digest(tmp_path / "s" / split / "x" / p.name)
            assert read_volume(raw).data.shape == (12, 32, 32)
    saved = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert saved["optics"] == "cartocell"
    assert saved["acquisitions"] == {"train_M1": "high_resolution", "validation": "high_resolution",
                                     "train_M2": "low_resolution", "test": "low_resolution"}
    assert saved["acquisition_parameters"]["low_resolution"]["psf_sigma"][0] > 0.5
    assert (tmp_path / "a" / "previews" / OPTICS_PREVIEW).is_file()
    assert set(simple) == set(first)
    with pytest.raises(ValueError, match="unknown optics"):
        make_dataset(tmp_path / "c", cfg, optics="fancy")
