"""The whole benchmark: the known ranking of fake models, bad options, the CLI, real packages.

Most tests use the fake models of ``bench_fakes`` (known defects, so a known ranking).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import FAKE_TASK, fake_models, trusting_resolver

from cartocell_bmz.bench import benchmark as bm
from cartocell_bmz.bench import inputs as bi
from cartocell_bmz.bench import tasks as bt
from cartocell_bmz.errors import ConfigError, OutputError
from cartocell_bmz.layout import PROBS_DIR, VORONOI_DIR


def test_sync_ranking_is_the_known_order_and_figures(test_set, tmp_path):
    res = bm.run_benchmark(fake_models("merge", "perfect", "shift"), test_set, tmp_path / "out",
                           scheduler="sync", task_fn=FAKE_TASK)
    assert [r.model for r in res.ranking] == ["fake-perfect", "fake-shift", "fake-merge"]
    assert [r.rank for r in res.ranking] == [1, 2, 3]
    perfect = res.ranking[0]
    assert perfect.n_images == 2
    assert all(v == pytest.approx(1.0) for v in perfect.values.values())
    merge = res.ranking[2].values
    assert merge["IoU B"] == pytest.approx(1.0) and merge["IoU C"] < 1.0  # contours below 0.5 lost
    # merging pairs of cells: about half the true cells can be matched at 0.5
    assert 0.05 < merge["F1@0.5"] < 0.8
    # one per-image metrics file per model and image, read back into per_image.csv
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "fake-merge" / bt.METRICS_DIR).glob("*.json")) == \
        sorted(Path(p).stem + ".json" for p in (test_set / "x").iterdir())
    per_image = (out / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 3 * 2 * 3  # header + models x images x thresholds
    assert per_image[0].startswith("model,image,threshold,tp,fp,fn,n_true,n_pred,precision")
    csv = (out / "ranking.csv").read_text().splitlines()
    assert csv[1].startswith("1,fake-perfect,1.0000,1.0000,")
    assert res.n_tasks == 6 and res.n_reused == 0


def test_out_that_is_a_file_and_bad_options(test_set, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep")
    with pytest.raises(OutputError, match="is a file"):
        bm.run_benchmark(fake_models("perfect"), test_set, target, scheduler="sync", task_fn=FAKE_TASK)
    assert target.read_text() == "keep"
    with pytest.raises(ConfigError, match="--scheduler must be"):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", scheduler="fast", task_fn=FAKE_TASK)
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", workers=0, task_fn=FAKE_TASK)
    with pytest.raises(ConfigError, match="both named"):
        bi.resolve_models(["a/pkg", "b/pkg"], resolver=lambda v: v)


def test_cli_bad_inputs_give_one_line(tmp_path, test_set):
    target = tmp_path / "file"
    target.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--test", str(empty), "--models", "a"], "has no x/ folder"),
        (["--out", str(target), "--models", "a"], "is a file"),
        (["--scheduler", "nope", "--models", "a"], "--scheduler must be"),
        (["--test", str(test_set), "--models", "./missing/package"], "no such model file or folder"),
        (["--test", str(test_set), "--models", "a", "--workers", "0"], "--workers must be at least 1"),
    ]
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "cartocell_bmz", "benchmark", *args], capture_output=True,
                              text=True, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert "Traceback" not in proc.stderr


def test_ranking_equals_predict_then_evaluate_one_model_at_a_time(tiny_packages, test_set, sync_benchmark, tmp_path):
    from cartocell_bmz.run.evaluate import evaluate_folder
    from cartocell_bmz.run.batch import predict_folder

    res, bench = sync_benchmark
    assert sorted(r.model for r in res.ranking) == ["tiny-resunet", "tiny-unet"]
    for pkg in tiny_packages:
        one = tmp_path / "one" / pkg.name
        predict_folder(str(pkg), test_set / "x", one, device="cpu", trust=True)
        summary = evaluate_folder(gt_dir=test_set / "y", pred_dir=one / VORONOI_DIR, out_dir=tmp_path / "eval" / pkg.name,
                                  probs_dir=one / PROBS_DIR, colour_maps=False)
        row = next(r for r in res.ranking if r.model == pkg.name)
        by_image = summary["by_image"]
        expected = {
            "IoU B": summary["channel_iou"]["B"], "IoU C": summary["channel_iou"]["C"],
            "IoU M": summary["channel_iou"]["M"],
            "F1@0.5": by_image["0.5"]["f1"], "PQ@0.5": by_image["0.5"]["panoptic_quality"],
            "MTS@0.5": by_image["0.5"]["mean_true_score"],
            "F1@0.75": by_image["0.75"]["f1"], "PQ@0.75": by_image["0.75"]["panoptic_quality"],
        }
        assert row.values == pytest.approx(expected, abs=1e-12, rel=0)
        # and the benchmark's predictions are those of predict, file for file
        for name in ("cyst_000_day4.tif", "cyst_001_day7.tif"):
            from cartocell_bmz.io.volumes import read_volume

            a = read_volume(bench / pkg.name / VORONOI_DIR / name, "labels").data
            b = read_volume(one / VORONOI_DIR / name, "labels").data
            assert np.array_equal(a, b)
    assert res.n_tasks == 4 and res.n_reused == 0
    assert (bench / "plots" / "montage_tiny-unet.png").stat().st_size > 0
