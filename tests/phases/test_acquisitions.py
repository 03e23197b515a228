"""analyse_stacks: a small acquisition cropped, segmented and measured in one call, resumed, and bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from cartocell_bmz.errors import CartoCellWarning, InputError
from cartocell_bmz.io.phantom_stacks import make_stacks
from cartocell_bmz.layout import RAW_DIR, VORONOI_DIR
from cartocell_bmz.phases.acquisitions import ANALYSIS_JSON, CROP_DIR, MEASURE_DIR, PREDICT_DIR, analyse_stacks

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "model_packages" / "synthetic-unet"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacks")
    (path,) = make_stacks(out, 1, shape=(22, 56, 72), cyst_shape=(18, 44, 44), mix={"single": 1, "debris": 1}, seed=4)
    return path


def test_a_stack_ends_as_measured_cells_and_a_rerun_resumes(tmp_path, stack):
    summary = analyse_stacks(PACKAGE, [stack], tmp_path, device="cpu", scheduler="sync", plots=False)
    assert summary.candidates >= 2 and summary.kept == 1, summary
    assert summary.rejected.get("too small") == 1
    crops = sorted(p.name for p in (tmp_path / CROP_DIR / RAW_DIR).glob("*.tif"))
    assert crops == sorted(p.name for p in (tmp_path / PREDICT_DIR / VORONOI_DIR).glob("*.tif"))
    assert all(name.startswith(stack.stem + "_cyst_") for name in crops)
    cysts = summary.tables.cysts
    assert sorted(cysts["cyst"]) == sorted(Path(c).stem for c in crops)
    assert (cysts["cells"] >= 8).all() and summary.cells == int(cysts["cells"].sum())
    saved = json.loads((tmp_path / ANALYSIS_JSON).read_text())
    assert saved["kept"] == 1 and saved["cells"] == summary.cells and set(saved["seconds"]) == {"crop", "predict", "measure"}

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / PREDICT_DIR / VORONOI_DIR).glob("*.tif")}
    again = analyse_stacks(PACKAGE, [stack], tmp_path, device="cpu", scheduler="sync", plots=False)
    assert again.as_dict() | {"seconds": None} == summary.as_dict() | {"seconds": None}
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing predicted again
    assert (tmp_path / MEASURE_DIR / "cells.csv").read_bytes()  # tables still there


def test_no_kept_cyst_warns_and_writes_the_candidates(tmp_path):
    (path,) = make_stacks(tmp_path / "s", 1, shape=(16, 48, 48), cyst_shape=(12, 32, 32), mix={"debris": 2}, seed=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        summary = analyse_stacks(PACKAGE, [path], tmp_path / "out", device="cpu", scheduler="sync")
    assert summary.kept == 0 and summary.cells == 0 and summary.tables is None
    assert any(issubclass(w.category, CartoCellWarning) and "no cyst" in str(w.message) for w in seen)
    assert (tmp_path / "out" / CROP_DIR / "candidates.csv").is_file()
    assert not (tmp_path / "out" / PREDICT_DIR).exists()
    assert json.loads((tmp_path / "out" / ANALYSIS_JSON).read_text())["kept"] == 0


def test_no_stacks_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no stacks given"):
        analyse_stacks(PACKAGE, [], tmp_path)
