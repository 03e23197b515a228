"""Tests of cartocell_bmz.bmz.docs: the texts of a package (its documentation's figures, the figures a user gives).

The documentation of a built package is checked in test_export.py (``test_documentation_and_cover``).
"""

from __future__ import annotations

import json

import pytest

from cartocell_bmz.bmz.docs import evaluation_from_documentation, evaluation_record, figures_markdown, read_figures
from cartocell_bmz.errors import InputError


SUMMARY = {
    "n_images": 3, "target_mode": "cartocell", "channel_iou": {"B": 0.8, "C": 0.5, "M": 0.9},
    "dataset": {
        "0.3": {"precision": 1.0, "recall": 0.9, "f1": 0.95, "panoptic_quality": 0.8, "mean_true_score": 0.7,
                "tp": 9, "fp": 0, "fn": 1},
        "0.5": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "panoptic_quality": 0.7, "mean_true_score": 0.6,
                "tp": 8, "fp": 1, "fn": 2},
        "0.75": {"precision": 0.5, "recall": 0.4, "f1": 0.45, "panoptic_quality": 0.35, "mean_true_score": 0.3,
                 "tp": 4, "fp": 5, "fn": 6},
    },
    "by_image": {}, "pooled": {},
}


def test_evaluate_summary_becomes_the_published_columns():
    summary = SUMMARY
    lines = figures_markdown(summary)
    assert "| IoU B | IoU C | IoU M | F1@0.5 | PQ@0.5 | MTS@0.5 | F1@0.75 | PQ@0.75 |" in lines
    assert "| 0.800 | 0.500 | 0.900 | 0.850 | 0.700 | 0.600 | 0.450 | 0.350 |" in lines
    assert "| 0.75 | 0.500 | 0.400 | 0.450 | 0.350 | 0.300 | 4 | 5 | 6 |" in lines
    assert lines[0].startswith("Test set: 3 held-out cysts")


def test_evaluation_record_holds_the_ranking_columns_and_reads_back_from_the_documentation():
    record = evaluation_record(SUMMARY)
    assert record["figures"] == {"IoU B": 0.8, "IoU C": 0.5, "IoU M": 0.9, "F1@0.5": 0.85, "PQ@0.5": 0.7,
                                 "MTS@0.5": 0.6, "F1@0.75": 0.45, "PQ@0.75": 0.35}
    assert (record["sample_count"], record["target_mode"], record["dataset_role"]) == (3, "cartocell", "test")
    # a package without its summary.json (an existing folder) gets the same record from documentation.md
    text = "# Validation\n\n" + "\n".join(figures_markdown(SUMMARY)) + "\n\n## Limitations\n"
    assert evaluation_from_documentation(text) == record
    assert evaluation_record({"n_images": 4, "IoU_B": 0.81}) is None  # not a summary.json: no record
    assert evaluation_from_documentation("\n".join(figures_markdown(None))) is None


def test_read_figures(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"F1": 0.9}))
    assert read_figures(path) == {"F1": 0.9}
    assert read_figures('{"PQ": 0.7}') == {"PQ": 0.7}
    with pytest.raises(InputError, match="neither a JSON file nor a JSON object"):
        read_figures("{oops")
    with pytest.raises(InputError, match="must be a JSON object"):
        read_figures("[1, 2]")


def test_documentation_sections_in_order(tmp_path):
    """documentation.md: title, description, the sections in their order, blank lines between, a final newline."""
    from builders import make_run

    from cartocell_bmz.bmz.docs import default_description, documentation
    from cartocell_bmz.bmz.halo import AxisSizes, HaloChoice
    from cartocell_bmz.train.run import read_run

    run = read_run(make_run(tmp_path / "run"))
    halo = HaloChoice(halo=(2, 4, 4), max_difference=0.001, tolerance=0.005)
    text = documentation(run, name="cartocell-bmz synthetic test net", sizes=AxisSizes.from_halo((1, 2, 2), (2, 4, 4)),
                         halo=halo, test_shape=(16, 32, 32), volume_origin="a test cyst", spacing=(1.0, 0.5, 0.5),
                         figures=None)
    lines = text.split("\n")
    assert lines[:3] == ["# cartocell-bmz synthetic test net", "", default_description(run)]
    headings = [line for line in lines if line.startswith("## ") or line == "# Validation"]
    assert headings == [
        "## What it does", "## Input sizes and tiling", "## How to run it", "## Training data", "# Validation",
        "## Limitations", "## Citation",
    ]
    assert text.endswith("\n") and "\n\n\n" not in text
    assert "min (5, 10, 10) and step (1, 2, 2)" in text and "halo was set when packaging" in text
    assert "No test-set figures were given" in text
    assert "best epoch 2 of 3 (validation loss 0.5000)" in text and "Training had not finished" not in text
