"""Benchmark tasks: one model on one image, its metrics file, reuse of finished tasks, errors."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bench_fakes import FAKE_TASK, fake_models, fake_predict

from cartocell_bmz.bench import benchmark as bm
from cartocell_bmz.bench import tasks as bt
from cartocell_bmz.errors import CartoCellError, InputError


def test_run_task_writes_its_metrics_file_and_reuses_it_only_when_valid(test_set, tmp_path):
    name = "cyst_000_day4.tif"
    image = bt.BenchImage(name, test_set / "x" / name, test_set / "y" / name, fingerprint="image-v1")
    task = bt.Task(model=fake_models("perfect")[0], image=image, out=tmp_path / "fake-perfect", thresholds=(0.5, 0.75))
    result = FAKE_TASK(task)
    assert result["reused"] is False and Path(result["metrics"]) == task.metrics_path
    doc = json.loads(task.metrics_path.read_text())
    assert doc["format"] == bt.METRICS_FORMAT and doc["image_fingerprint"] == "image-v1"
    assert [r["threshold"] for r in doc["rows"]] == [0.5, 0.75]
    assert all(r["f1"] == pytest.approx(1.0) for r in doc["rows"])
    assert bt.finished_result(task) == {**result, "reused": True, "seconds": 0.0}
    assert FAKE_TASK(task)["reused"] is True
    # a threshold it has no row for, or another image content: not reused
    assert bt.finished_result(replace(task, thresholds=(0.5, 0.75, 0.9))) is None
    assert bt.finished_result(replace(task, image=replace(image, fingerprint="image-v2"))) is None
    rows = bt.read_metrics(task.metrics_path)
    assert [(r["model"], r["image"], r["threshold"]) for r in rows] == [("fake-perfect", name, 0.5),
                                                                       ("fake-perfect", name, 0.75)]


def test_rerun_reuses_every_task_and_gives_identical_tables(test_set, tmp_path):
    out = tmp_path / "out"
    models = fake_models("perfect", "shift")
    bm.run_benchmark(models, test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    first = {n: (out / n).read_bytes() for n in ("ranking.csv", "per_image.csv", "ranking.json", "ranking.md")}
    stamp = (out / "fake-shift" / bt.METRICS_DIR / "cyst_000_day4.json").stat().st_mtime_ns
    res = bm.run_benchmark(models, test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    assert res.n_reused == res.n_tasks == 4
    assert (out / "fake-shift" / bt.METRICS_DIR / "cyst_000_day4.json").stat().st_mtime_ns == stamp
    assert {n: (out / n).read_bytes() for n in first} == first
    # --overwrite recomputes everything, with the same figures
    res = bm.run_benchmark(models, test_set, out, scheduler="sync", task_fn=FAKE_TASK, overwrite=True)
    assert res.n_reused == 0
    assert (out / "ranking.csv").read_bytes() == first["ranking.csv"]


def test_changed_package_or_image_is_recomputed(test_set, tmp_path):
    out = tmp_path / "out"
    bm.run_benchmark(fake_models("perfect"), test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    # the same name now points at another package content: its outputs are stale
    changed = [bt.BenchmarkModel("fake-perfect", "shift", "shift", fingerprint="v2")]
    res = bm.run_benchmark(changed, test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    assert res.n_reused == 0
    assert res.ranking[0].values["F1@0.75"] < 1.0
    # a test image whose content changed is recomputed, the other one reused
    data = tmp_path / "data"
    import shutil

    shutil.copytree(test_set, data)
    bm.run_benchmark(changed, data, out, scheduler="sync", task_fn=FAKE_TASK)
    gt = data / "y" / "cyst_001_day7.tif"
    from cartocell_bmz.io.volumes import read_volume, write_volume

    vol = read_volume(gt, "labels")
    write_volume(gt, np.flip(vol.data, axis=2).copy(), vol.spacing)
    res = bm.run_benchmark(changed, data, out, scheduler="sync", task_fn=FAKE_TASK)
    assert res.n_reused == 1
    # the changed image was predicted again: the same figures as a fresh run
    fresh = bm.run_benchmark(changed, data, tmp_path / "fresh", scheduler="sync", task_fn=FAKE_TASK)
    assert res.ranking[0].values == fresh.ranking[0].values


def test_interrupted_task_leaves_no_metrics_file(test_set, tmp_path):
    def broken_evaluate(pred, gt, probs, thresholds):
        raise KeyboardInterrupt

    task_fn = functools.partial(bt.run_task, predict=fake_predict, evaluate=broken_evaluate)
    with pytest.raises(KeyboardInterrupt):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", scheduler="sync", task_fn=task_fn)
    assert list((tmp_path / "o" / "fake-perfect" / bt.METRICS_DIR).glob("*")) == []


def test_task_error_in_a_worker_comes_back_as_one_line(test_set, tmp_path):
    def bad_predict(task):
        raise InputError(f"{task.image.raw}: broken on purpose.")

    task_fn = functools.partial(bt.run_task, predict=bad_predict)
    with pytest.raises(InputError, match="broken on purpose"):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", scheduler="sync", task_fn=task_fn)


def test_every_error_is_a_cartocell_error():
    assert issubclass(bt.BenchmarkError, CartoCellError)
