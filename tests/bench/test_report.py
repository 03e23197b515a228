"""Report: tables written deterministically, PNG plots non-empty, HTML embeds every plot."""

from __future__ import annotations

import base64
import csv
import io
import re

import numpy as np
import pytest

from cartocell_bmz.bench import ranking as rk
from cartocell_bmz.bench import report


def per_image_rows():
    rows = []
    for m, base in (("beta", 0.9), ("alpha", 0.6)):
        for i, image in enumerate(("c.tif", "a.tif", "b.tif")):
            for t in (0.75, 0.3, 0.5):
                v = base - 0.1 * i - (0.2 if t == 0.75 else 0)
                rows.append(dict(model=m, image=image, threshold=t, tp=5, fp=1, fn=2, n_true=7, n_pred=6,
                                 precision=v, recall=v, accuracy=v, f1=v, mean_matched_score=v, mean_true_score=v,
                                 panoptic_quality=v * 0.9, iou_B=0.8, iou_C=0.4, iou_M=0.85))
    return rows


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from cartocell_bmz.core.phantoms import make_cyst

    out = tmp_path_factory.mktemp("report")
    rows = per_image_rows()
    ranking = rk.rank_models(rows)
    cyst = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), stage="day4", seed=2)
    merged = ((cyst.labels.astype(np.int64) + 1) // 2).astype(np.uint16)
    montages = [report.Montage("beta", "a.tif", cyst.raw, cyst.labels, cyst.labels, cyst.spacing, "F1@0.5 = 1.000"),
                report.Montage("alpha", "a.tif", cyst.raw, cyst.labels, merged, cyst.spacing)]
    files = report.write_report(out, ranking, rows, published=rk.published_rows(), montages=montages,
                                notes=["Test set: synthetic."], extra_json={"test_set": ["a.tif"]})
    return out, files, rows


def test_every_file_is_written_and_plots_are_real_pngs(written):
    out, files, _ = written
    for p in (files.ranking_csv, files.ranking_md, files.ranking_json, files.per_image_csv, files.html):
        assert p.is_file() and p.stat().st_size > 0
    names = sorted(p.name for p in files.plots.values())
    assert names == ["montage_alpha.png", "montage_beta.png", "per_image_f1_pq.png", "ranking_bars.png"]
    for p in files.plots.values():
        w, h = png_size(p)
        assert w >= 300 and h >= 200 and p.stat().st_size > 5000


def test_html_embeds_every_plot_and_the_table(written):
    _, files, _ = written
    text = files.html.read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(uris) == len(files.plots)
    assert {base64.b64decode(u) for u in uris} == {p.read_bytes() for p in files.plots.values()}
    assert "<table>" in text and text.count('class="published"') == 6
    assert "beta" in text and "published (real CartoCell test set)" in text and rk.RANKING_RULE[:40] in text
    assert "http://" not in text and "https://" not in text  # opens offline: nothing to fetch


def test_tables_are_sorted_and_rewritten_identically(written, tmp_path):
    out, files, rows = written
    parsed = list(csv.DictReader(io.StringIO(files.per_image_csv.read_text())))
    keys = [(p["model"], p["image"], p["threshold"]) for p in parsed]
    assert keys == sorted(keys) and len(keys) == 18
    assert tuple(parsed[0]) == report.PER_IMAGE_COLUMNS
    # shuffled input rows, another folder: byte-identical tables
    again = report.write_report(tmp_path, rk.rank_models(rows[::-1]), rows[::-1], published=rk.published_rows(),
                                 extra_json={"test_set": ["a.tif"]})
    for name in ("ranking_csv", "ranking_md", "ranking_json", "per_image_csv"):
        assert getattr(again, name).read_bytes() == getattr(files, name).read_bytes(), name
    ranking = list(csv.DictReader(io.StringIO(files.ranking_csv.read_text())))
    assert [r["model"] for r in ranking[:2]] == ["beta", "alpha"] and len(ranking) == 8
    assert ranking[0]["F1@0.5"] == "0.8000"  # mean of 0.9, 0.8, 0.7


def test_ranking_json_holds_rule_and_rows(written):
    import json

    _, files, _ = written
    doc = json.loads(files.ranking_json.read_text())
    assert doc["rule"] == rk.RANKING_RULE and doc["columns"] == list(rk.COLUMN_NAMES)
    assert doc["rows"][0]["model"] == "beta" and doc["test_set"] == ["a.tif"]


def test_predicted_cells_matched_at_iou_half_take_the_colour_of_their_true_cell():
    gt = np.zeros((6, 6), np.uint16)
    gt[:3, :3], gt[:3, 3:], gt[3:, :] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[:3, :3] = 7  # = true cell 1 (IoU 1)
    pred[:3, 3:5] = 9  # 6 of the 9 voxels of true cell 2 (IoU 2/3)
    pred[3:, :2] = 4  # 6 of the 18 voxels of true cell 3 (IoU 1/3): unmatched
    pred[3:, 2:] = 5  # 12 of 18 (IoU 2/3)
    gt_rgb, pred_rgb = report.colour_labels_like_truth(gt, pred)
    assert np.allclose(pred_rgb[1, 1], gt_rgb[1, 1]) and np.allclose(pred_rgb[1, 4], gt_rgb[1, 4])
    assert np.allclose(pred_rgb[4, 4], gt_rgb[4, 4])
    r, g, b = pred_rgb[4, 0]
    assert r > 0.6 and g < 0.25 and b < 0.25  # red
    assert np.allclose(pred_rgb[0, 5], 0) and not np.allclose(gt_rgb[0, 5], 0)
    # colour tables: the same colours on every run
    again = report.label_colour_tables(gt, pred)
    assert all(np.array_equal(a, b) for a, b in zip(again, report.label_colour_tables(gt, pred)))


def test_per_image_csv_formats_missing_values_as_empty():
    row = dict(model="m", image="x.tif", threshold=0.5, tp=0, fp=0, fn=0, n_true=0, n_pred=0, precision=0.0,
               recall=0.0, accuracy=0.0, f1=0.0, mean_matched_score=float("nan"), mean_true_score=0.0,
               panoptic_quality=0.0)
    line = report.format_per_image_csv([row]).splitlines()[1]
    assert line == "m,x.tif,0.50,0,0,0,0,0,0.000000,0.000000,0.000000,0.000000,,0.000000,0.000000,,,"
