"""Benchmark inputs: the default test set, bad test folders, --models values, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
from bench_fakes import FAKE_TASK, fake_models

from cartocell_bmz.bench import benchmark as bm
from cartocell_bmz.bench import inputs as bi
from cartocell_bmz.errors import ConfigError, InputError


def test_default_test_set_is_the_seed_0_test_split_and_reused(tmp_path):
    from cartocell_bmz.core.phantoms import DEFAULT_COUNTS

    test_dir = bi.default_test_set(tmp_path)
    names = sorted(p.name for p in (test_dir / "x").iterdir())
    assert len(names) == DEFAULT_COUNTS["test"] and names[0] == "cyst_000_day4.tif"
    stamp = (test_dir / "x" / names[0]).stat().st_mtime_ns
    assert bi.default_test_set(tmp_path) == test_dir
    assert (test_dir / "x" / names[0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    from cartocell_bmz.core.phantoms import make_cyst
    from cartocell_bmz.io.volumes import read_volume

    # volume i of the test split depends only on (seed, split, i): the cysts of the full seed-0 dataset
    cyst = make_cyst(stage="day4", seed=np.random.SeedSequence([0, 3, 0]))
    assert np.array_equal(read_volume(test_dir / "y" / names[0], "labels").data, cyst.labels)


@pytest.mark.parametrize("case, error, message", [
    ("missing", InputError, "test folder not found"),
    ("empty", InputError, "has no x/ folder"),
    ("no_y", InputError, "has no y/ folder"),
    ("empty_x", InputError, "no TIFF test images"),
    ("unpaired", InputError, "no ground truth for b.tif"),
])
def test_bad_test_folder_is_one_clear_error(tmp_path, case, error, message):
    d = tmp_path / "t"
    if case != "missing":
        d.mkdir()
    if case in ("no_y", "empty_x", "unpaired"):
        (d / "x").mkdir()
    if case in ("empty_x", "unpaired"):
        (d / "y").mkdir()
    if case == "unpaired":
        for name in ("a.tif", "b.tif"):
            (d / "x" / name).write_bytes(b"II*\0")
        (d / "y" / "a.tif").write_bytes(b"II*\0")
    with pytest.raises(error, match=message):
        bm.run_benchmark(fake_models("perfect"), d, tmp_path / "o", scheduler="sync", task_fn=FAKE_TASK)


def test_models_values_expand_published_and_split_commas():
    from cartocell_bmz.bmz.known_models import KNOWN_MODELS

    assert bi.expand_model_values(["a,b", "a", "published"]) == ["a", "b", *KNOWN_MODELS]


def test_no_local_packages_and_no_models_is_one_line(tmp_path, monkeypatch):
    from cartocell_bmz.bmz.resolve import MODEL_PACKAGES_ENV

    monkeypatch.setenv(MODEL_PACKAGES_ENV, str(tmp_path / "model_packages"))
    (tmp_path / "model_packages").mkdir()
    with pytest.raises(ConfigError, match="no model packages found"):
        bi.expand_model_values(None)
    pkg = tmp_path / "model_packages" / "tiny"
    pkg.mkdir()
    (pkg / "rdf.yaml").write_text("x: 1\n")
    (tmp_path / "model_packages" / "other.zip").write_bytes(b"PK")
    assert bi.expand_model_values(None) == ["other", "tiny"]


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "rdf.yaml").write_text("a")
    first = bi.file_fingerprint(tmp_path / "p")
    assert bi.file_fingerprint(tmp_path / "p") == first
    (tmp_path / "p" / "rdf.yaml").write_text("b")
    assert bi.file_fingerprint(tmp_path / "p") != first


def test_fingerprint_of_a_file_is_its_sha256_and_a_folder_counts_names(tmp_path):
    from cartocell_bmz.io.hashing import sha256_file

    (tmp_path / "a.tif").write_bytes(b"abc")
    assert bi.file_fingerprint(tmp_path / "a.tif") == sha256_file(tmp_path / "a.tif")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a").write_bytes(b"abc")
    first = bi.file_fingerprint(tmp_path / "p")
    (tmp_path / "p" / "a").rename(tmp_path / "p" / "b")
    assert bi.file_fingerprint(tmp_path / "p") != first  # same content, another name
