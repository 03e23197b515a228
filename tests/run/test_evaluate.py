"""Evaluating folders: exact CSV/JSON figures, association files, colour maps, errors, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cartocell_bmz.cli.app import app
from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.run.evaluate import (
    CSV_COLUMNS, FN_COLOUR, FP_COLOUR, TP_COLOUR, evaluate_folder, evaluate_volume, write_associations,
)
from cartocell_bmz.core.targets import make_targets
from cartocell_bmz.io.volumes import write_volume

SPACING = (2.0, 0.5, 0.5)
F32_06 = float(np.float32(0.6))  # IoU 48/80 as a float32, the precision StarDist reports


def image_a():
    """Two 4x4x4 cubes; the prediction shifts cube 1 by one voxel (IoU 0.6), misses cube 2, adds a FP."""
    gt = np.zeros((6, 12, 12), np.uint16)
    gt[1:5, 1:5, 1:5] = 1
    gt[1:5, 7:11, 7:11] = 2
    pred = np.zeros_like(gt)
    pred[1:5, 1:5, 2:6] = 10
    pred[1:5, 7:11, 1:5] = 20
    return gt, pred


def image_b():
    """Three cells predicted perfectly, with other ids."""
    gt = np.zeros((6, 12, 12), np.uint16)
    gt[0:6, 0:4, 0:12] = 4
    gt[0:6, 4:8, 0:12] = 5
    gt[0:6, 8:12, 0:6] = 6
    pred = gt * 7
    return gt, pred


@pytest.fixture()
def folders(tmp_path):
    for sub in ("pred", "gt", "probs"):
        (tmp_path / sub).mkdir()
    for name, (gt, pred) in {"a.tif": image_a(), "b.tif": image_b()}.items():
        write_volume(tmp_path / "gt" / name, gt, SPACING)
        write_volume(tmp_path / "pred" / name, pred, SPACING)
        probs = make_targets(gt).astype(np.float32)
        if name == "a.tif":
            probs[2] = 0.0  # M predicted empty: IoU 0
        write_volume(tmp_path / "probs" / name, probs, SPACING)
    return tmp_path


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_folder_writes_exact_figures(folders):
    out = folders / "out"
    summary = evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=out, probs_dir=folders / "probs",
                              thresholds=(0.5, 0.75))
    rows = read_csv(out / "metrics_per_image.csv")
    with open(out / "metrics_per_image.csv") as f:
        header = f.readline().strip().split(",")
    assert header == list(CSV_COLUMNS) + ["iou_B", "iou_C", "iou_M"]
    assert [(r["image"], r["threshold"]) for r in rows] == [
        ("a.tif", "0.5"), ("a.tif", "0.75"), ("b.tif", "0.5"), ("b.tif", "0.75")]
    a5, a75, b5, b75 = ({k: float(v) for k, v in r.items() if k != "image"} for r in rows)
    assert a5 == {
        "threshold": 0.5, "tp": 1, "fp": 1, "fn": 1, "n_true": 2, "n_pred": 2, "precision": 0.5,
        "recall": 0.5, "accuracy": 1 / 3, "f1": 0.5, "mean_matched_score": F32_06,
        "mean_true_score": float(np.float32(F32_06) / np.float32(2)), "panoptic_quality": F32_06 / 2,
        "iou_B": 1.0, "iou_C": 1.0, "iou_M": 0.0,
    }
    assert a75 == {**{k: 0.0 for k in a5}, "threshold": 0.75, "fp": 2, "fn": 2, "n_true": 2, "n_pred": 2,
                   "iou_B": 1.0, "iou_C": 1.0, "iou_M": 0.0}
    perfect = {"tp": 3, "fp": 0, "fn": 0, "n_true": 3, "n_pred": 3, **{k: 1.0 for k in (
        "precision", "recall", "accuracy", "f1", "mean_matched_score", "mean_true_score", "panoptic_quality",
        "iou_B", "iou_C", "iou_M")}}
    assert b5 == {"threshold": 0.5, **perfect} and b75 == {"threshold": 0.75, **perfect}

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["n_images"] == 2 and summary["images"] == ["a.tif", "b.tif"]
    assert summary["thresholds"] == [0.5, 0.75] and summary["by"] == "image"
    img, pooled = summary["by_image"]["0.5"], summary["pooled"]["0.5"]
    assert summary["dataset"] == summary["by_image"]
    assert img["precision"] == 0.75 and img["accuracy"] == pytest.approx((1 / 3 + 1) / 2)
    assert img["panoptic_quality"] == pytest.approx((F32_06 / 2 + 1) / 2)
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (4, 1, 1)
    assert pooled["precision"] == 0.8 and pooled["f1"] == 0.8
    assert pooled["mean_matched_score"] == pytest.approx((F32_06 + 3) / 4, abs=1e-12)
    assert pooled["panoptic_quality"] == pytest.approx((F32_06 + 3) / 5, abs=1e-12)
    assert summary["pooled"]["0.75"]["precision"] == 0.6
    assert summary["channel_iou"] == {"B": 1.0, "C": 1.0, "M": 0.5}
    assert not list(out.rglob(".*.part"))


def test_association_files(folders):
    out = folders / "out"
    evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=out, thresholds=(0.5, 0.75))
    assoc = out / "instance_associations"
    names = sorted(p.name for p in assoc.iterdir())
    assert names == sorted(f"{s}_iou{t}_{kind}" for s in "ab" for t in ("0.5", "0.75")
                           for kind in ("associations.csv", "fp.csv", "tp_fp_fn.tif"))
    assert (assoc / "a_iou0.5_associations.csv").read_text().splitlines() == [
        "gt_id,pred_id,iou,tag", f"1,10,{F32_06!r},TP", "2,-1,0.0,FN"]
    assert (assoc / "a_iou0.5_fp.csv").read_text() == "pred_id\n20\n"
    assert (assoc / "a_iou0.75_associations.csv").read_text().splitlines() == [
        "gt_id,pred_id,iou,tag", "1,-1,0.0,FN", "2,-1,0.0,FN"]
    assert (assoc / "a_iou0.75_fp.csv").read_text() == "pred_id\n10\n20\n"
    assert (assoc / "b_iou0.5_fp.csv").read_text() == "pred_id\n"
    assert [r["pred_id"] for r in read_csv(assoc / "b_iou0.75_associations.csv")] == ["28", "35", "42"]

    with tifffile.TiffFile(assoc / "a_iou0.5_tp_fp_fn.tif") as tif:
        rgb = tif.asarray()
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.0)
    gt, pred = image_a()
    assert rgb.shape == gt.shape + (3,) and rgb.dtype == np.uint8
    assert (rgb[pred == 10] == TP_COLOUR).all()
    assert (rgb[pred == 20] == FP_COLOUR).all()
    assert (rgb[gt == 2] == FN_COLOUR).all()
    assert (rgb[(gt == 1) & (pred == 0)] == 0).all()  # a matched object's missed voxels stay black
    assert (rgb[(gt == 0) & (pred == 0)] == 0).all()
    with tifffile.TiffFile(assoc / "a_iou0.75_tp_fp_fn.tif") as tif:
        rgb75 = tif.asarray()
    assert (rgb75[gt == 1] == FN_COLOUR).all()  # FN painted over the FP prediction 10
    assert (rgb75[(pred == 10) & (gt == 0)] == FP_COLOUR).all()


def test_pooled_summary_and_no_colour_maps(folders):
    out = folders / "out"
    summary = evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=out, thresholds=0.5, by="pooled", colour_maps=False)
    assert summary["dataset"] == summary["pooled"] and summary["by"] == "pooled"
    assert summary["channel_iou"] is None
    with open(out / "metrics_per_image.csv") as f:
        assert f.readline().strip().split(",") == list(CSV_COLUMNS)
    assert not list((out / "instance_associations").glob("*.tif"))


def test_evaluate_volume_and_write_associations(tmp_path):
    gt, pred = image_a()
    result = evaluate_volume(pred=pred, gt=gt, thresholds=(0.5,), probs=make_targets(gt).astype(np.float32))
    assert result.rows() == [{**result.matches[0].as_row(), "iou_B": 1.0, "iou_C": 1.0, "iou_M": 1.0}]
    assert "TP 1, FP 1, FN 1" in str(result) and "channel IoU" in str(result)
    files = write_associations(tmp_path / "assoc", "a.tif", result, pred=pred, gt=gt, spacing=SPACING)
    assert [p.name for p in files] == ["a_iou0.5_associations.csv", "a_iou0.5_fp.csv", "a_iou0.5_tp_fp_fn.tif"]
    assert all(p.exists() for p in files)


def test_ground_truth_and_prediction_are_keyword_only():
    """The argument-order trap is closed: positional volumes are refused, names decide the roles."""
    gt, pred = image_a()
    with pytest.raises(TypeError):
        evaluate_volume(gt, pred)  # type: ignore[misc]
    with pytest.raises(TypeError):
        evaluate_folder("pred", "gt", "out")  # type: ignore[misc]
    right = evaluate_volume(gt=gt, pred=pred, thresholds=(0.5,)).matches[0]
    again = evaluate_volume(pred=pred, gt=gt, thresholds=(0.5,)).matches[0]
    swapped = evaluate_volume(gt=pred, pred=gt, thresholds=(0.5,)).matches[0]
    assert right.as_row() == again.as_row()
    assert (swapped.fp, swapped.fn, swapped.n_true) == (right.fn, right.fp, right.n_pred)


# --------------------------------------------------------------------------- bad input


def one_line(exc):
    return "\n" not in str(exc.value)


def test_prediction_without_ground_truth(folders):
    write_volume(folders / "pred" / "c.tif", np.zeros((6, 12, 12), np.uint16))
    with pytest.raises(InputError, match=r"c\.tif: no ground truth") as exc:
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out")
    assert one_line(exc)


def test_ground_truth_without_prediction(folders):
    (folders / "pred" / "b.tif").unlink()
    with pytest.raises(InputError, match=r"b\.tif: no prediction") as exc:
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out")
    assert one_line(exc)


def test_shape_mismatch_names_the_file(folders):
    write_volume(folders / "pred" / "b.tif", np.zeros((6, 12, 11), np.uint16))
    with pytest.raises(InputError, match=r"b\.tif.*shape") as exc:
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out")
    assert one_line(exc)


def test_probability_errors(folders):
    (folders / "probs" / "a.tif").unlink()
    with pytest.raises(InputError, match="no probability volume"):
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out", probs_dir=folders / "probs")
    write_volume(folders / "probs" / "a.tif", np.zeros((2, 6, 12, 12), np.float32))
    with pytest.raises(InputError, match=r"a\.tif: has 2 channel"):
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out", probs_dir=folders / "probs")


def test_bad_folders_and_options(folders, tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        evaluate_folder(pred_dir=tmp_path / "nope", gt_dir=folders / "gt", out_dir=folders / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no TIFF"):
        evaluate_folder(pred_dir=tmp_path / "empty", gt_dir=folders / "gt", out_dir=folders / "out")
    with pytest.raises(ConfigError, match="outside"):
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out", thresholds=(0.5, 3))
    with pytest.raises(ConfigError, match="pooled"):
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out", by="sum")
    write_volume(folders / "gt" / "b.tiff", np.zeros((6, 12, 12), np.uint16))
    with pytest.raises(InputError, match="two files named b"):
        evaluate_folder(pred_dir=folders / "pred", gt_dir=folders / "gt", out_dir=folders / "out")


# --------------------------------------------------------------------------- CLI


def test_cli_evaluate(folders):
    out = folders / "cli_out"
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"),
                                      "--out", str(out), "--probs", str(folders / "probs"),
                                      "--thresholds", "0.3", "0.75", "--pooled"])
    assert result.exit_code == 0, result.output
    assert "pooled over images" in result.output and "0.800" in result.output  # precision at 0.3
    assert "M 0.500" in result.output
    rows = read_csv(out / "metrics_per_image.csv")
    assert [r["threshold"] for r in rows] == ["0.3", "0.75", "0.3", "0.75"]
    assert json.loads((out / "summary.json").read_text())["by"] == "pooled"


def test_cli_default_thresholds_and_comma_list(folders):
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"),
                                 "--out", str(folders / "o1")])
    assert r.exit_code == 0, r.output
    assert json.loads((folders / "o1" / "summary.json").read_text())["thresholds"] == [0.3, 0.5, 0.75]
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"),
                                 "--out", str(folders / "o2"), "-t", "0.5,0.9", "--no-colour-maps"])
    assert r.exit_code == 0, r.output
    assert json.loads((folders / "o2" / "summary.json").read_text())["thresholds"] == [0.5, 0.9]


@pytest.mark.parametrize("extra, message", [
    (["--thresholds", "0.5", "abc"], "'abc' is not a number"),
    (["--thresholds", "1.5"], "outside (0, 1]"),
])
def test_cli_errors_are_one_line(folders, extra, message):
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"),
                                 "--out", str(folders / "o")] + extra)
    assert r.exit_code == 2
    assert message in r.output and r.output.count("\n") == 1 and r.output.startswith("error:")


def test_cli_missing_ground_truth_is_one_line(folders):
    (folders / "gt" / "a.tif").unlink()
    r = CliRunner().invoke(app, ["evaluate", "--pred", str(folders / "pred"), "--gt", str(folders / "gt"),
                                 "--out", str(folders / "o")])
    assert r.exit_code == 2 and "a.tif: no ground truth" in r.output and r.output.count("\n") == 1
