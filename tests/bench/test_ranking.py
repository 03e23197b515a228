"""Ranking rule: means over images, mean score, competition ties, deterministic order, formats."""

from __future__ import annotations

import csv
import io
import math
import random

import pytest

from cartocell_bmz.bench import ranking as rk

METRICS = ("f1", "panoptic_quality", "mean_true_score")


def rows_for(model, per_image, ious=(0.9, 0.5, 0.9)):
    """Per-image rows: ``per_image`` = list of (image, {threshold: value}) used for every metric."""
    out = []
    for image, by_t in per_image:
        for t in (0.3, 0.5, 0.75):
            v = by_t.get(t, 0.0)
            out.append({"model": model, "image": image, "threshold": t, **dict.fromkeys(METRICS, v),
                        "iou_B": ious[0], "iou_C": ious[1], "iou_M": ious[2]})
    return out


def test_columns_are_means_over_images():
    rows = rows_for("m", [("a", {0.5: 1.0, 0.75: 0.5}), ("b", {0.5: 0.5, 0.75: 0.0}), ("c", {0.5: 0.0, 0.75: 0.1})],
                    ious=(0.8, 0.4, 0.6))
    (cols, n), = rk.model_columns(rows).values()
    assert n == 3
    assert cols["F1@0.5"] == pytest.approx(0.5)
    assert cols["PQ@0.75"] == pytest.approx(0.2)
    assert cols["MTS@0.5"] == pytest.approx(0.5)
    assert (cols["IoU B"], cols["IoU C"], cols["IoU M"]) == pytest.approx((0.8, 0.4, 0.6))
    # the score is the plain mean of the eight columns
    expected = (0.8 + 0.4 + 0.6 + 0.5 + 0.5 + 0.5 + 0.2 + 0.2) / 8
    assert rk.rank_models(rows)[0].score == pytest.approx(expected)


def test_csv_strings_and_threshold_spelling_are_accepted():
    rows = [{k: str(v) for k, v in r.items()} for r in rows_for("m", [("a", {0.5: 0.25, 0.75: 0.125})])]
    for r in rows:
        r["threshold"] = {"0.3": "0.30", "0.5": "0.50", "0.75": "0.750000"}[r["threshold"]]
    (cols, _), = rk.model_columns(rows).values()
    assert cols["F1@0.5"] == 0.25 and cols["F1@0.75"] == 0.125


def test_ties_share_a_rank_competition_style_and_are_ordered_by_name():
    data = {"zeta": 0.8, "alpha": 0.8, "mid": 0.7, "beta": 0.9, "omega": 0.7, "last": 0.1}
    rows = []
    for name, v in data.items():
        rows += rows_for(name, [("img", {0.5: v, 0.75: v})], ious=(v, v, v))
    ranked = rk.rank_models(rows)
    assert [(r.rank, r.model) for r in ranked] == [
        (1, "beta"), (2, "alpha"), (2, "zeta"), (4, "mid"), (4, "omega"), (6, "last")]


def test_scores_equal_at_the_printed_precision_tie():
    ranks = rk.competition_ranks({"a": 0.50004, "b": 0.50001, "c": 0.5002})
    assert ranks == [("c", 1), ("a", 2), ("b", 2)]


def test_order_of_input_rows_does_not_change_anything():
    rows = []
    for i, name in enumerate(["m3", "m1", "m2", "m0"]):
        rows += rows_for(name, [(f"i{j}", {0.5: (0.1 * i + 0.037 * j) % 1, 0.75: 0.3}) for j in range(5)])
    reference = rk.format_csv(rk.rank_models(rows))
    rng = random.Random(0)
    for _ in range(5):
        shuffled = rows[:]
        rng.shuffle(shuffled)
        assert rk.format_csv(rk.rank_models(shuffled)) == reference


def test_missing_column_means_no_rank_and_last():
    good = rows_for("good", [("a", {0.5: 0.2, 0.75: 0.1})])
    no_probs = [{k: v for k, v in r.items() if not k.startswith("iou_")}
                for r in rows_for("no-probs", [("a", {0.5: 0.9, 0.75: 0.9})])]
    ranked = rk.rank_models(good + no_probs)
    assert [(r.model, r.rank) for r in ranked] == [("good", 1), ("no-probs", None)]
    assert math.isnan(ranked[1].score) and math.isnan(ranked[1].values["IoU B"])
    line = rk.format_csv(ranked).splitlines()[2]
    assert line.startswith(",no-probs,,,,,0.9000")


def test_nan_in_one_image_is_left_out_of_that_mean():
    rows = rows_for("m", [("a", {0.5: 0.4, 0.75: 0.4}), ("b", {0.5: 0.8, 0.75: 0.8})])
    for r in rows:
        if r["image"] == "b":
            r["iou_C"] = float("nan")
    (cols, _), = rk.model_columns(rows).values()
    assert cols["IoU C"] == 0.5 and cols["F1@0.5"] == pytest.approx(0.6)


def test_published_figures_reproduce_the_published_order():
    from cartocell_bmz.bmz.known_models import PUBLISHED_RANKING

    rows = rk.published_rows()
    assert [r.rank for r in rows] == [p.rank for p in PUBLISHED_RANKING] == [1, 2, 3, 4, 5, 6]
    assert all(r.source == rk.SOURCE_PUBLISHED == "published (real CartoCell test set)" for r in rows)
    assert rows[0].model == "happy-honeybee" and rows[-1].model == "merry-water-buffalo"
    assert rows[0].values["PQ@0.5"] == 0.814 and rows[0].n_images == 60
    assert rows[0].score == pytest.approx(6.604 / 8)
    assert rows[1].model == "published #2 (not named)"


def test_csv_is_fixed_format_and_parses_back():
    rows = rows_for("b", [("x", {0.5: 2 / 3, 0.75: 1 / 3})]) + rows_for("a", [("x", {0.5: 0.1, 0.75: 0.0})])
    ranked = rk.rank_models(rows) + rk.published_rows()[:1]
    text = rk.format_csv(ranked)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [p["model"] for p in parsed] == ["b", "a", "happy-honeybee"]
    assert parsed[0]["F1@0.5"] == "0.6667" and parsed[0]["rank"] == "1" and parsed[0]["n_images"] == "1"
    assert parsed[2]["source"] == rk.SOURCE_PUBLISHED
    assert all(len(v.split(".")[1]) == 4 for p in parsed for k, v in p.items() if k in rk.COLUMN_NAMES)
    md = rk.format_markdown(ranked)
    assert md.count("\n") == 2 + 3
    assert "| happy-honeybee — *published (real CartoCell test set)* |" in md


def test_records_are_json_ready():
    import json

    rows = rk.rank_models(rows_for("m", [("x", {0.5: 0.5, 0.75: 0.25})]))
    doc = json.loads(json.dumps(rk.records(rows)))
    assert doc[0]["rank"] == 1 and doc[0]["F1@0.75"] == 0.25 and doc[0]["source"] == rk.SOURCE_BENCHMARK
