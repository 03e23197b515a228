"""Benchmark orchestration: tasks, reuse, schedulers (sync, LocalCluster), errors, CLI.

Most tests use fake "models" injected through the predict seam of
:func:`cartocell_bmz.bench.benchmark.run_task`: each writes probabilities and cells derived from
the ground truth with a known defect, so the ranking is known in advance.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cartocell_bmz.bench import benchmark as bm
from cartocell_bmz.errors import CartoCellError, ConfigError, InputError, OutputError
from cartocell_bmz.layout import PROBS_DIR, VORONOI_DIR


# --------------------------------------------------------------------------- fake models


def _targets(labels: np.ndarray) -> np.ndarray:
    from cartocell_bmz.core.targets import make_targets

    return make_targets(labels).astype(np.float32)


def fake_predict(task: bm.Task) -> None:
    """A fake model: ``perfect`` returns the truth; ``merge`` fuses cell pairs; ``shift`` moves cells."""
    from cartocell_bmz.io.volumes import read_volume, write_volume

    if not task.overwrite and (task.out / VORONOI_DIR / task.image.name).is_file():
        return  # finished before, as predict_one skips finished outputs
    gt = read_volume(task.image.gt, "labels")
    labels = gt.data.astype(np.uint16)
    probs = _targets(labels)
    kind = task.model.ref
    if kind == "merge":  # every pair of consecutive ids fused: about half the cells lost
        labels = ((labels.astype(np.int64) + 1) // 2).astype(np.uint16)
        probs[1] *= 0.4  # contours missed
    elif kind == "shift":
        labels = np.roll(labels, 1, axis=2)
        probs = np.roll(probs, 1, axis=3)
    elif kind != "perfect":
        raise ValueError(kind)
    write_volume(task.out / PROBS_DIR / task.image.name, probs.astype(np.float32), gt.spacing)
    write_volume(task.out / VORONOI_DIR / task.image.name, labels, gt.spacing)


def matching_evaluate(pred, gt, probs, thresholds):
    """An evaluate step built on :mod:`cartocell_bmz.core.matching` (stand-in for evaluate_volume)."""
    from cartocell_bmz.core.matching import match

    target = _targets(gt) > 0.5
    ious = {}
    for i, ch in enumerate("BCM"):
        p = probs[i] > 0.5
        union = np.logical_or(p, target[i]).sum()
        ious[f"iou_{ch}"] = float(np.logical_and(p, target[i]).sum() / union) if union else 1.0
    rows = []
    for r in match(gt=gt, pred=pred, thresholds=thresholds):
        rows.append({k: getattr(r, k) for k in ("threshold", "tp", "fp", "fn", "n_true", "n_pred", "precision",
                                                "recall", "accuracy", "f1", "mean_matched_score", "mean_true_score",
                                                "panoptic_quality")} | ious)
    return rows


def _evaluate_step():
    try:
        from cartocell_bmz.run.evaluate import evaluate_volume  # noqa: F401
    except ImportError:
        return matching_evaluate
    return None  # the real one


FAKE_TASK = functools.partial(bm.run_task, predict=fake_predict, evaluate=_evaluate_step())


def fake_models(*kinds: str) -> list[bm.BenchmarkModel]:
    return [bm.BenchmarkModel(name=f"fake-{k}", source=k, ref=k, fingerprint=f"v1-{k}") for k in kinds]


@pytest.fixture(scope="module")
def test_set(tmp_path_factory) -> Path:
    """Two tiny test cysts in x/ and y/."""
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.io.phantom_sets import make_dataset

    root = tmp_path_factory.mktemp("bench_data")
    make_dataset(root, PhantomConfig(seed=5, shape=(16, 48, 48), counts={"test": 2}))
    return root / "test"


# --------------------------------------------------------------------------- sync runs


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
    assert sorted(p.name for p in (out / "fake-merge" / bm.METRICS_DIR).glob("*.json")) == \
        sorted(Path(p).stem + ".json" for p in (test_set / "x").iterdir())
    per_image = (out / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 3 * 2 * 3  # header + models x images x thresholds
    assert per_image[0].startswith("model,image,threshold,tp,fp,fn,n_true,n_pred,precision")
    csv = (out / "ranking.csv").read_text().splitlines()
    assert csv[1].startswith("1,fake-perfect,1.0000,1.0000,")
    assert res.n_tasks == 6 and res.n_reused == 0


def test_rerun_reuses_every_task_and_gives_identical_tables(test_set, tmp_path):
    out = tmp_path / "out"
    models = fake_models("perfect", "shift")
    bm.run_benchmark(models, test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    first = {n: (out / n).read_bytes() for n in ("ranking.csv", "per_image.csv", "ranking.json", "ranking.md")}
    stamp = (out / "fake-shift" / bm.METRICS_DIR / "cyst_000_day4.json").stat().st_mtime_ns
    res = bm.run_benchmark(models, test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    assert res.n_reused == res.n_tasks == 4
    assert (out / "fake-shift" / bm.METRICS_DIR / "cyst_000_day4.json").stat().st_mtime_ns == stamp
    assert {n: (out / n).read_bytes() for n in first} == first
    # --overwrite recomputes everything, with the same figures
    res = bm.run_benchmark(models, test_set, out, scheduler="sync", task_fn=FAKE_TASK, overwrite=True)
    assert res.n_reused == 0
    assert (out / "ranking.csv").read_bytes() == first["ranking.csv"]


def test_changed_package_or_image_is_recomputed(test_set, tmp_path):
    out = tmp_path / "out"
    bm.run_benchmark(fake_models("perfect"), test_set, out, scheduler="sync", task_fn=FAKE_TASK)
    # the same name now points at another package content: its outputs are stale
    changed = [bm.BenchmarkModel("fake-perfect", "shift", "shift", fingerprint="v2")]
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

    task_fn = functools.partial(bm.run_task, predict=fake_predict, evaluate=broken_evaluate)
    with pytest.raises(KeyboardInterrupt):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", scheduler="sync", task_fn=task_fn)
    assert list((tmp_path / "o" / "fake-perfect" / bm.METRICS_DIR).glob("*")) == []


# --------------------------------------------------------------------------- Dask


def test_default_local_cluster_runs_and_reports_workers(test_set, tmp_path):
    res = bm.run_benchmark(fake_models("shift"), test_set, tmp_path / "o", scheduler="local", workers=2,
                           task_fn=FAKE_TASK)
    assert res.scheduler == "local" and res.workers == 2
    assert res.ranking[0].rank == 1 and (tmp_path / "o" / "report.html").stat().st_size > 0


def test_task_error_in_a_worker_comes_back_as_one_line(test_set, tmp_path):
    def bad_predict(task):
        raise InputError(f"{task.image.raw}: broken on purpose.")

    task_fn = functools.partial(bm.run_task, predict=bad_predict)
    with pytest.raises(InputError, match="broken on purpose"):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", scheduler="sync", task_fn=task_fn)


def test_plan_keeps_torch_threads_times_workers_within_cores():
    for cores in (1, 2, 3, 8, 16):
        for tasks in (1, 2, 5, 50):
            plan = bm.plan_workers("local", tasks, cores=cores, memory_gb=64)
            assert 1 <= plan.workers <= min(cores, tasks)
            assert plan.workers * plan.torch_threads <= cores
    assert bm.plan_workers("local", 10, cores=8, device="cuda").workers == 1
    assert bm.plan_workers("local", 10, cores=8, workers=3).torch_threads == 2


# --------------------------------------------------------------------------- inputs and errors


def test_default_test_set_is_the_seed_0_test_split_and_reused(tmp_path):
    from cartocell_bmz.core.phantoms import DEFAULT_COUNTS

    test_dir = bm.default_test_set(tmp_path)
    names = sorted(p.name for p in (test_dir / "x").iterdir())
    assert len(names) == DEFAULT_COUNTS["test"] and names[0] == "cyst_000_day4.tif"
    stamp = (test_dir / "x" / names[0]).stat().st_mtime_ns
    assert bm.default_test_set(tmp_path) == test_dir
    assert (test_dir / "x" / names[0]).stat().st_mtime_ns == stamp  # reused, not rewritten
    from cartocell_bmz.core.phantoms import make_cyst
    from cartocell_bmz.io.volumes import read_volume

    # volume i of the test split depends only on (seed, split, i): the cysts of the full seed-0 dataset
    cyst = make_cyst(stage="day4", seed=np.random.SeedSequence([0, 3, 0]))
    assert np.array_equal(read_volume(test_dir / "y" / names[0], "labels").data, cyst.labels)


@pytest.mark.parametrize("case, error, message", [
    ("missing", InputError, "test folder not found"),
    ("empty", InputError, "has no x/ folder"),
    ("no_y", InputError, "has no y/ folder"),
    ("empty_x", InputError, "no TIFF test images"),
    ("unpaired", InputError, "no ground truth for b.tif"),
])
def test_bad_test_folder_is_one_clear_error(tmp_path, case, error, message):
    d = tmp_path / "t"
    if case != "missing":
        d.mkdir()
    if case in ("no_y", "empty_x", "unpaired"):
        (d / "x").mkdir()
    if case in ("empty_x", "unpaired"):
        (d / "y").mkdir()
    if case == "unpaired":
        for name in ("a.tif", "b.tif"):
            (d / "x" / name).write_bytes(b"II*\0")
        (d / "y" / "a.tif").write_bytes(b"II*\0")
    with pytest.raises(error, match=message):
        bm.run_benchmark(fake_models("perfect"), d, tmp_path / "o", scheduler="sync", task_fn=FAKE_TASK)


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
        bm.resolve_models(["a/pkg", "b/pkg"], resolver=lambda v: v)


def test_unreachable_scheduler_is_one_line(test_set, tmp_path, monkeypatch):
    monkeypatch.setattr(bm, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", scheduler="tcp://127.0.0.1:9",
                         task_fn=FAKE_TASK)


def test_models_values_expand_published_and_split_commas():
    from cartocell_bmz.bmz.known_models import KNOWN_MODELS

    assert bm.expand_model_values(["a,b", "a", "published"]) == ["a", "b", *KNOWN_MODELS]


def test_no_local_packages_and_no_models_is_one_line(tmp_path, monkeypatch):
    from cartocell_bmz.bmz.resolve import MODEL_PACKAGES_ENV

    monkeypatch.setenv(MODEL_PACKAGES_ENV, str(tmp_path / "model_packages"))
    (tmp_path / "model_packages").mkdir()
    with pytest.raises(ConfigError, match="no model packages found"):
        bm.expand_model_values(None)
    pkg = tmp_path / "model_packages" / "tiny"
    pkg.mkdir()
    (pkg / "rdf.yaml").write_text("x: 1\n")
    (tmp_path / "model_packages" / "other.zip").write_bytes(b"PK")
    assert bm.expand_model_values(None) == ["other", "tiny"]


def test_fingerprint_follows_content(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "rdf.yaml").write_text("a")
    first = bm.file_fingerprint(tmp_path / "p")
    assert bm.file_fingerprint(tmp_path / "p") == first
    (tmp_path / "p" / "rdf.yaml").write_text("b")
    assert bm.file_fingerprint(tmp_path / "p") != first


def test_every_error_is_a_cartocell_error():
    assert issubclass(bm.BenchmarkError, CartoCellError)


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


# --------------------------------------------------------------------------- real packages


@pytest.fixture(scope="module")
def tiny_packages(tmp_path_factory) -> list[Path]:
    """Two tiny look-alike packages (different architectures, parameterised sizes)."""
    from lookalike import build_lookalike

    root = tmp_path_factory.mktemp("packages")
    return [build_lookalike(root / "tiny-unet", "happy-honeybee", sizes="parameterized", seed=1),
            build_lookalike(root / "tiny-resunet", "merry-water-buffalo", sizes="parameterized", seed=2)]


def _trusting_resolver():
    from cartocell_bmz.bmz.resolve import resolve_model

    return functools.partial(resolve_model, trust=True, notify=lambda _msg: None)


def test_ranking_equals_predict_then_evaluate_one_model_at_a_time(tiny_packages, test_set, tmp_path):
    from cartocell_bmz.run.evaluate import evaluate_folder
    from cartocell_bmz.run.batch import predict_folder

    res = bm.run_benchmark([str(p) for p in tiny_packages], test_set, tmp_path / "bench", scheduler="sync",
                           resolver=_trusting_resolver())
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

            a = read_volume(tmp_path / "bench" / pkg.name / VORONOI_DIR / name, "labels").data
            b = read_volume(one / VORONOI_DIR / name, "labels").data
            assert np.array_equal(a, b)
    assert res.n_tasks == 4 and res.n_reused == 0
    assert (tmp_path / "bench" / "plots" / "montage_tiny-unet.png").stat().st_size > 0


def test_real_packages_on_a_local_cluster_give_the_sync_ranking(tiny_packages, test_set, tmp_path):
    """2 tiny models x 2 tiny images on LocalCluster(2 workers, 1 thread, processes) == synchronous mode."""
    from distributed import LocalCluster

    values = [str(p) for p in tiny_packages]
    sync = bm.run_benchmark(values, test_set, tmp_path / "sync", scheduler="sync", resolver=_trusting_resolver())
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster:
        dist = bm.run_benchmark(values, test_set, tmp_path / "dist", scheduler=cluster.scheduler_address,
                                resolver=_trusting_resolver())
    assert dist.scheduler.startswith("tcp://") and dist.n_tasks == 4 and dist.n_reused == 0
    for name in ("ranking.csv", "per_image.csv"):
        assert (tmp_path / "dist" / name).read_bytes() == (tmp_path / "sync" / name).read_bytes()
    assert len({r.score for r in sync.ranking}) == 2  # two different models, not a trivial tie
