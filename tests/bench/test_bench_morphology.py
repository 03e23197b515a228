"""Morphology against the ground truth beside the ranking: morphology.csv / .md, the report, the metrics files.

The fake models of ``bench_fakes`` have known defects: ``perfect`` returns the truth and
``shift`` moves every cell by one voxel (the same shapes: no morphology error, although its
matching figures drop), while ``merge`` fuses pairs of cells (fewer neighbours, bigger cells).
The published ranking must not move: ``ranking.csv`` and ``ranking.md`` are compared, byte for
byte, with what the benchmark wrote for the same setup before the morphology existed.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from bench_fakes import FAKE_TASK, fake_models

from cartocell_bmz.bench import benchmark as bm
from cartocell_bmz.bench import morphology as bmorph
from cartocell_bmz.bench import tasks as bt
from cartocell_bmz.core.morphology import COMPARED
from cartocell_bmz.layout import VORONOI_DIR

#: ranking.csv and ranking.md of the three fakes on the conftest test set, as written before the morphology.
RANKING_CSV = """\
rank,model,score,IoU B,IoU C,IoU M,F1@0.5,PQ@0.5,MTS@0.5,F1@0.75,PQ@0.75,n_images,source
1,fake-perfect,1.0000,1.0000,1.0000,1.0000,1.0000,1.0000,1.0000,1.0000,1.0000,2,this benchmark
2,fake-shift,0.5402,0.4087,0.8060,0.7649,0.9583,0.6263,0.6263,0.0750,0.0564,2,this benchmark
3,fake-merge,0.4388,1.0000,0.0000,1.0000,0.6667,0.4134,0.3100,0.0667,0.0540,2,this benchmark
"""
RANKING_MD = """\
| rank | model | score | IoU B | IoU C | IoU M | F1@0.5 | PQ@0.5 | MTS@0.5 | F1@0.75 | PQ@0.75 | images |
|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| 1 | fake-perfect | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 2 |
| 2 | fake-shift | 0.540 | 0.409 | 0.806 | 0.765 | 0.958 | 0.626 | 0.626 | 0.075 | 0.056 | 2 |
| 3 | fake-merge | 0.439 | 1.000 | 0.000 | 1.000 | 0.667 | 0.413 | 0.310 | 0.067 | 0.054 | 2 |
"""


@pytest.fixture(scope="module")
def bench(test_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_morph") / "out"
    res = bm.run_benchmark(fake_models("merge", "perfect", "shift"), test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    return out, res


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ranking_tables_are_the_published_ones_byte_for_byte(bench):
    out, _ = bench
    assert (out / "ranking.csv").read_text() == RANKING_CSV
    assert (out / "ranking.md").read_text() == RANKING_MD
    assert "apical" not in (out / "ranking.json").read_text()  # nothing of the morphology in the ranking


def test_morphology_csv_has_the_truth_and_one_row_per_model(bench):
    out, res = bench
    rows = read_csv(out / "morphology.csv")
    assert tuple(rows[0]) == bmorph.csv_header()
    assert [r["model"] for r in rows] == ["ground truth", "fake-perfect", "fake-shift", "fake-merge"]  # ranked order
    assert [r["source"] for r in rows] == [bmorph.SOURCE_TRUTH] + [bmorph.SOURCE_BENCHMARK] * 3
    assert all(r["n_images"] == "2" for r in rows)
    truth, perfect, shift, merge = rows
    for k in COMPARED:
        assert math.isfinite(float(truth[k])) and truth[f"{k}_error"] == truth[f"{k}_bias"] == ""
        for r in (perfect, shift, merge):
            assert all(math.isfinite(float(r[c])) for c in (k, f"{k}_error", f"{k}_bias")), (r["model"], k)
        # the truth and a translated copy of it: the same cells, no error
        for r in (perfect, shift):
            assert float(r[f"{k}_error"]) == 0.0 and r[k] == truth[k]
    assert 3.0 < float(truth["mean_apical_neighbours"]) < 8.0 and float(truth["median_volume"]) > 0
    # fused pairs: fewer neighbours, more scutoids, cells about twice as big
    assert float(merge["mean_apical_neighbours_bias"]) < -0.3 and float(merge["mean_basal_neighbours_bias"]) < -0.3
    assert float(merge["median_volume_bias"]) > 0.5
    assert float(merge["median_volume_error"]) == pytest.approx(abs(float(merge["median_volume_bias"])))
    assert [r.model for r in res.morphology] == [r["model"] for r in rows]


def test_markdown_and_report_show_the_morphology(bench):
    out, _ = bench
    md = (out / "morphology.md").read_text().splitlines()
    assert md[0] == "| model | apical neighbours | basal neighbours | scutoid fraction | median cell volume (µm³) | images |"
    assert md[2].startswith("| ground truth | ") and md[3].startswith("| fake-perfect | ")
    assert "(err 0.00, bias +0.00)" in md[3] and "bias -" in md[5]
    page = (out / "report.html").read_text()
    section = page.index("Morphology against the ground truth: the question a biologist asks before trusting a model")
    assert page.index("<h2>Ranking</h2>") < section < page.index("<h2>Plots</h2>")
    assert all(name in page[section:page.index("<h2>Plots</h2>")] for name in ("ground truth", "fake-merge"))


def test_figures_are_those_of_the_measure_api_on_the_same_files(bench, test_set):
    from cartocell_bmz.measure.api import measure_files, summarise_against

    out, res = bench
    truth = measure_files([test_set / "y"])
    for row in res.morphology[1:]:
        pred = measure_files([out / row.model / VORONOI_DIR])
        expected = summarise_against(truth, pred)
        assert expected["cysts"] == row.n_images == 2
        for k in COMPARED:
            assert row.errors[k] == pytest.approx(expected[f"{k}_error"], abs=1e-9), (row.model, k)
            assert row.biases[k] == pytest.approx(expected[f"{k}_bias"], abs=1e-9), (row.model, k)
            assert row.values[k] == pytest.approx(pred.cysts[k].mean(), abs=1e-9)
    assert res.morphology[0].values["median_volume"] == pytest.approx(truth.cysts["median_volume"].mean())


def test_metrics_file_holds_the_morphology_and_an_older_format_is_recomputed(bench):
    out, _ = bench
    path = out / "fake-merge" / bt.METRICS_DIR / "cyst_000_day4.json"
    doc = json.loads(path.read_text())
    assert doc["format"] == bt.METRICS_FORMAT == 2
    morph = doc["morphology"]
    assert set(morph["truth"]) == set(morph["pred"]) == {*COMPARED, "valid_cells"} and set(morph["error"]) == set(COMPARED)
    assert morph["pred"]["valid_cells"] < morph["truth"]["valid_cells"]
    assert bt.read_morphology(path)["model"] == "fake-merge"
    # a metrics file of the format before the morphology: evaluated again (the prediction is reused)
    old = {k: v for k, v in doc.items() if k != "morphology"} | {"format": 1}
    path.write_text(json.dumps(old))
    voronoi = out / "fake-merge" / VORONOI_DIR / "cyst_000_day4.tif"
    stamp = voronoi.stat().st_mtime_ns
    image = bt.BenchImage("cyst_000_day4.tif", bench[1].test_dir / "x" / "cyst_000_day4.tif",
                          bench[1].test_dir / "y" / "cyst_000_day4.tif", fingerprint=doc["image_fingerprint"])
    task = bt.Task(model=fake_models("merge")[0], image=image, out=out / "fake-merge")
    assert bt.finished_result(task) is None
    assert FAKE_TASK(task)["reused"] is False
    assert json.loads(path.read_text()) == doc and voronoi.stat().st_mtime_ns == stamp


def test_undefined_figures_are_left_out_of_the_means():
    """A cyst without valid cells (no lumen, all cut...) has no figures: the others' means stand."""
    def record(image, pred):
        truth = dict.fromkeys(COMPARED, 2.0)
        values = dict.fromkeys(COMPARED, pred)
        error = {k: (None if pred is None else (pred / 2.0 - 1 if how == "relative" else pred - 2.0))
                 for k, how in COMPARED.items()}
        return {"model": "m", "image": image, "truth": truth, "pred": values, "error": error}

    rows = bmorph.morphology_table([record("a", 3.0), record("b", None)])
    assert rows[1].n_images == 2
    assert rows[1].values["scutoid_fraction"] == 3.0 and rows[1].errors["scutoid_fraction"] == 1.0
    assert rows[1].biases["median_volume"] == pytest.approx(0.5)
    empty = bmorph.morphology_table([record("b", None)])[1]
    assert all(math.isnan(v) for v in empty.errors.values())
    assert bmorph.format_csv([empty]).splitlines()[1] == "m" + "," * 12 + ",1,this benchmark"
    assert bmorph.cell_texts(empty) == ["–"] * len(COMPARED)


def test_image_morphology_notes_instead_of_warnings():
    from cartocell_bmz.core.phantoms import make_cyst

    c = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), stage="day7", seed=4)
    x = np.flatnonzero(c.labels.any(axis=(0, 1)))
    cut = c.labels[:, :, x[0] + 6:]  # the cyst cut by the volume border: measured, nothing raised or warned
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = bmorph.image_morphology(gt=c.labels, pred=cut, spacing=c.spacing)
    assert any(n.startswith("pred: ") and "border" in n for n in record["notes"])
    assert record["truth"]["valid_cells"] > record["pred"]["valid_cells"]
    json.dumps(record, allow_nan=False)  # JSON-ready: undefined values are None


def test_cli_prints_the_morphology_table_after_the_ranking(bench, capsys):
    from cartocell_bmz.cli.commands.benchmark import _print_table

    _print_table(bench[1])
    text = capsys.readouterr().out
    assert text.index("Ranking on") < text.index("Morphology against the ground truth") < text.index("morphology.csv")
    assert "fake-merge" in text.split("Morphology against the ground truth")[1]
