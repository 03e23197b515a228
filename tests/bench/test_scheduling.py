"""Benchmark scheduling: worker plans, a LocalCluster of processes, an existing cluster, a bad address."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_fakes import FAKE_TASK, fake_models, trusting_resolver

from cartocell_bmz.bench import benchmark as bm
from cartocell_bmz.bench import scheduling as bs
from cartocell_bmz.bench import tasks as bt
from cartocell_bmz.engine import cluster as engine_cluster
from cartocell_bmz.errors import ConfigError


def test_sync_execute_runs_the_tasks_in_order_and_reports_each():
    tasks = [bt.Task(model=m, image=bt.BenchImage(n, Path(n), Path(n)), out=Path("o"))
             for m in fake_models("a", "b") for n in ("x.tif", "y.tif")]
    events = []
    results = bs.execute(tasks, bs.Plan("sync", 1, 1), lambda t: {"model": t.model.name, "image": t.image.name},
                         progress=lambda *e: events.append(e))
    assert [(r["model"], r["image"]) for r in results] == [(t.model.name, t.image.name) for t in tasks]
    assert events == [(0, 4, "benchmark"), (1, 4, "fake-a / x.tif"), (2, 4, "fake-a / y.tif"),
                      (3, 4, "fake-b / x.tif"), (4, 4, "fake-b / y.tif")]


def test_plan_keeps_torch_threads_times_workers_within_cores():
    for cores in (1, 2, 3, 8, 16):
        for tasks in (1, 2, 5, 50):
            plan = bs.plan_workers("local", tasks, cores=cores, memory_gb=64)
            assert 1 <= plan.workers <= min(cores, tasks)
            assert plan.workers * plan.torch_threads <= cores
    assert bs.plan_workers("local", 10, cores=8, device="cuda").workers == 1
    assert bs.plan_workers("local", 10, cores=8, workers=3).torch_threads == 2


def test_default_local_cluster_runs_and_reports_workers(test_set, tmp_path):
    res = bm.run_benchmark(fake_models("shift"), test_set, tmp_path / "o", scheduler="local", workers=2,
                           task_fn=FAKE_TASK)
    assert res.scheduler == "local" and res.workers == 2
    assert res.ranking[0].rank == 1 and (tmp_path / "o" / "report.html").stat().st_size > 0


def test_unreachable_scheduler_is_one_line(test_set, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_cluster, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
        bm.run_benchmark(fake_models("perfect"), test_set, tmp_path / "o", scheduler="tcp://127.0.0.1:9",
                         task_fn=FAKE_TASK)


def test_real_packages_on_a_local_cluster_give_the_sync_ranking(tiny_packages, test_set, sync_benchmark, tmp_path):
    """2 tiny models x 2 tiny images on LocalCluster(2 workers, 1 thread, processes) == synchronous mode."""
    from distributed import LocalCluster

    values = [str(p) for p in tiny_packages]
    sync, sync_out = sync_benchmark
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster:
        dist = bm.run_benchmark(values, test_set, tmp_path / "dist", scheduler=cluster.scheduler_address,
                                resolver=trusting_resolver())
    assert dist.scheduler.startswith("tcp://") and dist.n_tasks == 4 and dist.n_reused == 0
    for name in ("ranking.csv", "per_image.csv"):
        assert (tmp_path / "dist" / name).read_bytes() == (sync_out / name).read_bytes()
    assert len({r.score for r in sync.ranking}) == 2  # two different models, not a trivial tie
