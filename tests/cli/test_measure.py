"""Tests of ``cartocell-bmz measure`` (cartocell_bmz/cli/commands/measure.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from cartocell_bmz.cli.app import app
from cartocell_bmz.core.phantoms import make_cyst
from cartocell_bmz.io.volumes import write_volume

SPACING = (1.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_measure") / "per_image_post_processing"
    d.mkdir()
    for i, stage in enumerate(["day4", "day7", "day7"]):
        c = make_cyst((20, 56, 56), SPACING, stage=stage, seed=10 + i)
        write_volume(d / f"{stage}_cyst{i}.tif", c.labels, c.spacing)
    return d


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_measure_writes_tables_and_prints_a_summary(labels, tmp_path):
    out = tmp_path / "out"
    result = run("measure", labels, "--out", out, "--group", r"day(\d+)")
    assert result.exit_code == 0, result.output
    for name in ("cells.csv", "neighbours.csv", "cysts.csv", "groups.csv", "measure_params.json",
                 "measure_summary.png", "measure_montage.png"):
        assert (out / name).is_file(), name
    cysts = pd.read_csv(out / "cysts.csv", dtype={"group": str})
    assert list(cysts["cyst"]) == ["day4_cyst0", "day7_cyst1", "day7_cyst2"] and list(cysts["group"]) == ["4", "7", "7"]
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells.columns) >= {"cyst", "group", "cell", "volume", "apical_area", "scutoid", "valid"}
    assert "day7_cyst1" in result.stdout and "group 7: 2 cyst(s)" in result.stdout
    assert json.loads((out / "measure_params.json").read_text())["params"]["group"] == r"day(\d+)"


def test_measure_resumes_and_respects_spacing(labels, tmp_path):
    out = tmp_path / "out"
    assert run("measure", labels / "day4_cyst0.tif", "--out", out, "--no-plots").exit_code == 0
    before = (out / "per_cyst" / "day4_cyst0.npz").stat().st_mtime_ns
    assert run("measure", labels / "day4_cyst0.tif", "--out", out, "--no-plots").exit_code == 0
    assert (out / "per_cyst" / "day4_cyst0.npz").stat().st_mtime_ns == before  # read back, not measured again
    first = pd.read_csv(out / "cells.csv")["volume"].sum()
    assert run("measure", labels / "day4_cyst0.tif", "--out", out, "--no-plots", "--spacing", 2, 1, 1).exit_code == 0
    assert pd.read_csv(out / "cells.csv")["volume"].sum() == pytest.approx(8 * first)
    assert not (out / "measure_summary.png").exists()


@pytest.mark.parametrize(
    "make, args, words",
    [
        (lambda d: tifffile.imwrite(d / "f.tif", np.full((4, 8, 8), 1.5, np.float32)), [], "fractional values"),
        (lambda d: tifffile.imwrite(d / "f.tif", np.ones((8, 8), np.uint16)), [], "3D volume (Z, Y, X) is needed"),
        (lambda d: write_volume(d / "f.tif", np.ones((4, 8, 8), np.uint16), SPACING), ["--group", "day(\\d+)"],
         "does not match the cyst name 'f'"),
        (lambda d: write_volume(d / "f.tif", np.ones((4, 8, 8), np.uint16), SPACING), ["--spacing", 1, 0, 1],
         "--spacing needs three positive sizes"),
        (lambda d: write_volume(d / "f.tif", np.ones((4, 8, 8), np.uint16), SPACING), ["--contact-threshold", 2],
         "contact_threshold must be a share"),
    ],
)
def test_bad_input_is_one_line_and_writes_no_table(tmp_path, make, args, words):
    d = tmp_path / "in"
    d.mkdir()
    make(d)
    out = tmp_path / "out"
    result = run("measure", d, "--out", out, *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
    assert not (out / "cells.csv").exists() and not list(tmp_path.rglob("*.part"))


def test_all_zero_volume_is_a_warning_not_an_error(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    write_volume(d / "zero.tif", np.zeros((4, 8, 8), np.uint16), SPACING)
    result = run("measure", d, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "zero.tif: the label volume holds no cell" in result.stderr
    assert pd.read_csv(tmp_path / "out" / "cysts.csv")["cells"].tolist() == [0]
