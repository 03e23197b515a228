"""cartocell-bmz crop from the command line: one small stack with the synthetic-unet package; bad input is one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cartocell_bmz.cli.app import app
from cartocell_bmz.run.crop import CANDIDATE_COLUMNS, CANDIDATES_CSV

runner = CliRunner()
MODEL = str(Path(__file__).resolve().parents[2] / "model_packages" / "synthetic-unet")


def test_crop_one_small_stack(tmp_path):
    from cartocell_bmz.io.phantom_stacks import make_stacks
    from cartocell_bmz.io.volumes import read_volume

    (stack,) = make_stacks(tmp_path / "s", 1, shape=(24, 96, 112), cyst_shape=(18, 40, 40),
                           mix={"single": 2, "cut": 1}, seed=1)
    out = tmp_path / "out"
    result = runner.invoke(app, ["crop", str(stack), "--model", MODEL, "--out", str(out), "--device", "cpu",
                                 "--trust"])
    assert result.exit_code == 0, result.output
    assert "candidate(s): kept" in result.output
    with open(out / CANDIDATES_CSV, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CANDIDATE_COLUMNS
    kept = [r for r in rows if r["kept"] == "True"]
    assert len(kept) >= 1 and any(r["reason"] == "cut by the stack border" for r in rows)
    for r in kept:
        crop = read_volume(out / r["crop"])
        assert crop.spacing_known and crop.spacing == (1.0, 0.5, 0.5)
        # the crop holds the cyst's box and the 3 µm margin where the stack allows
        assert crop.data.shape[0] >= int(r["z1"]) - int(r["z0"]) and crop.data.shape[1] >= int(r["y1"]) - int(r["y0"]) + 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no scratch left


@pytest.mark.parametrize("case, message", [
    ("missing", "file not found"),
    ("flat", "2D image holds no 3D cysts"),
    ("no-spacing", "holds no voxel size; give it with --spacing"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case, message):
    path = tmp_path / f"{case}.tif"
    if case == "flat":
        tifffile.imwrite(path, np.zeros((32, 32), np.uint16))
    elif case == "no-spacing":
        tifffile.imwrite(path, np.zeros((8, 32, 32), np.uint16))
    out = tmp_path / "out"
    result = runner.invoke(app, ["crop", str(path), "--model", MODEL, "--out", str(out)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not out.exists()
