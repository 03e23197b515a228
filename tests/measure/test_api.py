"""Tests of cartocell_bmz.measure.api (pandas tables, folders, resuming) and cartocell_bmz.measure.plots."""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from cartocell_bmz.core.morphology import CELL_COLUMNS, measure_cyst
from cartocell_bmz.core.phantoms import make_cyst
from cartocell_bmz.errors import CartoCellWarning, ConfigError, InputError
from cartocell_bmz.io.volumes import write_volume
from cartocell_bmz.measure import api
from cartocell_bmz.measure.api import (
    MeasureTables, group_of, measure_files, measure_volume, read_tables, summarise_against, summarise_groups,
)

SPACING = (1.0, 0.5, 0.5)
NAMES = {"cyst_day4_a": ("day4", 1), "cyst_day7_b": ("day7", 2), "cyst_day7_c": ("day7", 3)}


@pytest.fixture(scope="module")
def cysts():
    return {name: make_cyst((20, 56, 56), SPACING, stage=stage, seed=seed) for name, (stage, seed) in NAMES.items()}


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory, cysts):
    d = tmp_path_factory.mktemp("measure") / "y"
    d.mkdir()
    for name, c in cysts.items():
        write_volume(d / f"{name}.tif", c.labels, c.spacing)
    return d


@pytest.fixture(scope="module")
def measured(label_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("measure_out") / "out"
    return out, measure_files([label_dir], out, group=r"day(\d+)")


def test_measure_volume_matches_the_core_tables(cysts):
    c = cysts["cyst_day7_b"]
    t = measure_volume(c.labels, c.spacing, name="b", group="7")
    m = measure_cyst(c.labels, c.spacing)
    assert isinstance(t, MeasureTables)
    assert list(t.cells.columns) == ["cyst", "group", *CELL_COLUMNS]
    assert (t.cells["cyst"] == "b").all() and (t.cells["group"] == "7").all()
    np.testing.assert_allclose(t.cells["volume"], m.cells["volume"])
    assert len(t.neighbours) == len(m.neighbours["cell_a"])
    assert len(t.cysts) == 1 and t.cysts["cells"][0] == int(c.labels.max())


def test_folder_writes_tables_params_and_figures(measured, cysts):
    out, tables = measured
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([api.CELLS_CSV, api.NEIGHBOURS_CSV, api.CYSTS_CSV, api.GROUPS_CSV, api.PARAMS_JSON,
                            api.SUMMARY_PNG, api.MONTAGE_PNG, api.PER_CYST_DIR])
    back = read_tables(out)
    assert list(back.cysts["cyst"]) == sorted(NAMES) and list(back.cysts["group"]) == ["4", "7", "7"]
    assert len(back.cells) == sum(int(c.labels.max()) for c in cysts.values())
    pd.testing.assert_frame_equal(back.cysts, tables.cysts, check_dtype=False)
    params = json.loads((out / api.PARAMS_JSON).read_text())
    assert params["params"]["contact_threshold"] == 0.005 and params["params"]["group"] == r"day(\d+)"
    assert params["spacing"]["cyst_day4_a"] == list(SPACING)  # read from the files
    for png in (api.SUMMARY_PNG, api.MONTAGE_PNG):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    groups = pd.read_csv(out / api.GROUPS_CSV, dtype={"group": str})
    assert list(groups["group"]) == ["4", "7"] and list(groups["cysts"]) == [1, 2]
    assert not list(out.rglob("*.part"))


def test_resume_reads_back_and_changes_are_measured_again(measured, label_dir, monkeypatch):
    out, first = measured
    calls = []
    real = api.measure_cyst
    monkeypatch.setattr(api, "measure_cyst", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = measure_files([label_dir], out, group=r"day(\d+)", plots=False)
    assert calls == []  # nothing measured again
    pd.testing.assert_frame_equal(again.cells, first.cells)
    measure_files([label_dir], out, group=r"day(\d+)", plots=False, contact_threshold=0.02)
    assert len(calls) == 3  # another parameter: all again
    path = label_dir / "cyst_day4_a.tif"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    calls.clear()
    measure_files([label_dir], out, group=r"day(\d+)", plots=False, contact_threshold=0.02)
    assert len(calls) == 1  # the touched file only
    measure_files([label_dir], out, group=r"day(\d+)")  # leave the folder as the other tests expect


def test_fixed_spacing_overrides_the_files(label_dir, tmp_path):
    t = measure_files([label_dir / "cyst_day4_a.tif"], tmp_path / "o", spacing=(2.0, 1.0, 1.0), plots=False)
    ref = measure_files([label_dir / "cyst_day4_a.tif"], None)
    assert t.cells["volume"].sum() == pytest.approx(8 * ref.cells["volume"].sum())
    assert "group" not in t.cysts.columns and not (tmp_path / "o" / api.GROUPS_CSV).exists()


def test_group_of():
    assert group_of("day10_cyst3", r"day(\d+)") == "10"
    assert group_of("day10_cyst3", r"cyst\d") == "cyst3"
    with pytest.raises(ConfigError, match="does not match"):
        group_of("week1", r"day(\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        group_of("a", "(")


def test_bad_inputs(label_dir, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        measure_files([tmp_path / "none.tif"], tmp_path / "o")
    other = tmp_path / "other"
    other.mkdir()
    write_volume(other / "cyst_day4_a.tif", np.zeros((4, 8, 8), np.uint16), SPACING)
    with pytest.raises(InputError, match="same name"):
        measure_files([label_dir, other], tmp_path / "o")
    with pytest.raises(InputError, match="no label volume"):
        measure_files([], tmp_path / "o")
    with pytest.raises(InputError, match="not found"):
        read_tables(tmp_path)


def test_empty_volume_is_a_row_and_a_warning(tmp_path):
    d = tmp_path / "y"
    d.mkdir()
    write_volume(d / "empty.tif", np.zeros((4, 8, 8), np.uint16), SPACING)
    with pytest.warns(CartoCellWarning, match="empty.tif: the label volume holds no cell"):
        t = measure_files([d], tmp_path / "o")
    assert len(t.cells) == 0 and t.cysts["cells"][0] == 0
    assert (tmp_path / "o" / api.CELLS_CSV).exists()


def test_summarise_against(measured, cysts):
    _, truth = measured
    same = summarise_against(truth, truth)
    assert same["cysts"] == 3 and all(v == 0 for k, v in same.items() if k != "cysts")
    # a prediction that merged pairs of cells: fewer neighbours, bigger cells
    pred_parts = []
    for name, c in cysts.items():
        merged = np.where(c.labels % 2 == 0, c.labels - 1, c.labels) * (c.labels > 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CartoCellWarning)
            pred_parts.append(measure_volume(merged, c.spacing, name=name))
    pred = api.concat(pred_parts)
    diff = summarise_against(truth, pred)
    assert diff["cysts"] == 3
    assert diff["median_volume_bias"] > 0.5 and diff["mean_apical_neighbours_bias"] < 0
    assert diff["median_volume_error"] == pytest.approx(diff["median_volume_bias"])
    none = summarise_against(truth, pred.cysts.assign(cyst="other"))
    assert none["cysts"] == 0 and math.isnan(none["scutoid_fraction_error"])


def test_summarise_groups_orders_numbers_by_value():
    cysts = pd.DataFrame({"cyst": list("abcd"), "group": ["10", "4", "7", "4"], "scutoid_fraction": [0.4, 0.1, 0.2, 0.3]})
    g = summarise_groups(cysts)
    assert list(g["group"]) == ["4", "7", "10"] and list(g["cysts"]) == [2, 1, 1]
    assert g["scutoid_fraction"].tolist() == pytest.approx([0.2, 0.2, 0.4])


def test_plots_without_groups(measured, tmp_path):
    from cartocell_bmz.measure.plots import plot_montage, plot_summary

    _, t = measured
    plot_summary(t.cells, t.cysts, tmp_path / "s.png")
    slices = {name: np.zeros((8, 8), np.int64) for name in t.cysts["cyst"]}
    plot_montage(slices, t.cells, t.cysts, {name: SPACING for name in slices}, tmp_path / "m.png", columns=2)
    assert (tmp_path / "s.png").stat().st_size > 10_000 and (tmp_path / "m.png").stat().st_size > 5_000
