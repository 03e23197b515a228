"""``cartocell-bmz predict --measure`` (cartocell_bmz/cli/commands/predict.py): predict, then measure every cyst.

A tiny look-alike package (one-level U-Net, 32^3 tiles) segments two 16 x 48 x 48 cysts;
``--measure`` writes the morphology tables of ``measure_files`` into ``OUT/measure/``, one
cyst row per segmented volume, and a rerun reads the cysts back instead of measuring them again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from builders import ONE_LEVEL
from cartocell_bmz.cli.app import app
from cartocell_bmz.io.volumes import read_volume, write_volume
from cartocell_bmz.layout import MEASURE_DIR, VORONOI_DIR
from lookalike import build_lookalike

SPACING = (1.0, 0.5, 0.5)
NAMES = ("a.tif", "b.tif")


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A tiny look-alike CartoCell package whose id is not one of the published ones."""
    pkg = build_lookalike(tmp_path_factory.mktemp("pkg") / "tiny-model", "happy-honeybee", size=32, kwargs=ONE_LEVEL)
    rdf = yaml.safe_load((pkg / "rdf.yaml").read_text())
    rdf["id"] = "cartocell-bmz-predict-measure-test"
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return pkg


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    from cartocell_bmz.core.phantoms import make_cyst

    d = tmp_path_factory.mktemp("raw")
    for seed, name in enumerate(NAMES, start=1):
        write_volume(d / name, make_cyst((16, 48, 48), SPACING, stage="day7", seed=seed).raw.astype(np.float32), SPACING)
    return d


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CARTOCELL_BMZ_MODEL_PACKAGES", str(tmp_path / "no_packages"))


def predict(raw_dir: Path, package: Path, out: Path, *extra):
    args = ["predict", raw_dir, "--model", package, "--out", out, "--trust", "--device", "cpu", *extra]
    return CliRunner().invoke(app, [str(a) for a in args])


def test_predict_measure_writes_one_cyst_row_per_volume_and_resumes(raw_dir, package, tmp_path):
    out = tmp_path / "out"
    result = predict(raw_dir, package, out, "--measure")
    assert result.exit_code == 0, result.output
    tables = out / MEASURE_DIR
    for name in ("cells.csv", "neighbours.csv", "cysts.csv", "measure_params.json", "measure_summary.png"):
        assert (tables / name).is_file(), name
    cysts = pd.read_csv(tables / "cysts.csv", dtype={"cyst": str})
    assert list(cysts["cyst"]) == ["a", "b"]
    cells = pd.read_csv(tables / "cells.csv", dtype={"cyst": str})
    assert len(cells) > 0
    for stem, name in zip(("a", "b"), NAMES):  # each cyst's cells are the Voronoi labels predict wrote
        labels = read_volume(out / VORONOI_DIR / name, "labels").data
        assert sorted(cells.loc[cells["cyst"] == stem, "cell"]) == sorted(set(np.unique(labels)) - {0})
    assert cysts["spacing_z"].tolist() == [1.0, 1.0] and cysts["spacing_x"].tolist() == [0.5, 0.5]
    assert f"tables in {tables}" in result.stdout and f"measured 2 cyst(s), {len(cells)} cells" in result.stdout

    stamps = {p.name: p.stat().st_mtime_ns for p in (tables / "per_cyst").iterdir()}
    assert sorted(stamps) == ["a.npz", "b.npz"]
    again = predict(raw_dir, package, out, "--measure")
    assert again.exit_code == 0, again.output
    assert "0 computed, 2 already done" in again.stdout
    # read back, not measured again; the same tables
    assert {p.name: p.stat().st_mtime_ns for p in (tables / "per_cyst").iterdir()} == stamps
    assert pd.read_csv(tables / "cysts.csv", dtype={"cyst": str}).equals(cysts)


def test_predict_without_measure_writes_no_tables(raw_dir, package, tmp_path):
    out = tmp_path / "out"
    result = predict(raw_dir / "a.tif", package, out)
    assert result.exit_code == 0, result.output
    assert not (out / MEASURE_DIR).exists() and "measured" not in result.stdout


def test_measure_folder_that_is_a_file_is_one_line_before_any_prediction(raw_dir, package, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MEASURE_DIR).write_text("keep me")
    result = predict(raw_dir, package, out, "--measure")
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(out / MEASURE_DIR) in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert (out / MEASURE_DIR).read_text() == "keep me"
    assert not (out / VORONOI_DIR).exists()  # refused before predicting
