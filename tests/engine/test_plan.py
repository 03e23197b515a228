"""engine/plan: the --scheduler value, the auto default and its environment variable, sizing the workers."""

from __future__ import annotations

import pytest

from cartocell_bmz.engine import plan as ep
from cartocell_bmz.errors import ConfigError


@pytest.mark.parametrize("value, workers, expected", [
    ("local", None, "local"), ("SYNC", None, "sync"), ("synchronous", 2, "sync"), ("auto", None, "auto"),
    (None, None, "local"), ("tcp://10.0.0.5:8786", None, "tcp://10.0.0.5:8786"), ("host:8786", None, "host:8786"),
])
def test_check_scheduler_reads_every_form(value, workers, expected):
    assert ep.check_scheduler(value, workers) == expected


@pytest.mark.parametrize("value, workers, words", [
    ("dask", None, "--scheduler must be"), ("local", 0, "--workers must be at least 1"),
    ("tcp://host:8786", 2, "--workers applies to the local cluster only"),
])
def test_check_scheduler_rejects_bad_values_in_one_line(value, workers, words):
    with pytest.raises(ConfigError, match=words) as err:
        ep.check_scheduler(value, workers)
    assert "\n" not in str(err.value)


def test_auto_is_a_cluster_for_several_volumes_and_the_environment_replaces_it(monkeypatch):
    monkeypatch.delenv(ep.SCHEDULER_ENV, raising=False)
    assert [ep.choose_scheduler(None, None, n) for n in (0, 1, 2, 16)] == ["sync", "sync", "local", "local"]
    assert ep.choose_scheduler(None, 2, 1) == "local"  # asking for workers asks for the cluster
    assert ep.choose_scheduler("sync", None, 16) == "sync" and ep.choose_scheduler("local", None, 1) == "local"
    monkeypatch.setenv(ep.SCHEDULER_ENV, "tcp://lab-cluster:8786")
    assert ep.choose_scheduler(None, None, 1) == "tcp://lab-cluster:8786"
    assert ep.choose_scheduler("sync", None, 5) == "sync"  # an explicit value wins
    monkeypatch.setenv(ep.SCHEDULER_ENV, "nonsense")
    with pytest.raises(ConfigError, match="--scheduler must be"):
        ep.choose_scheduler(None, None, 3)


def test_plan_keeps_workers_times_threads_within_the_cores():
    for cores in (1, 2, 3, 8, 16):
        for tasks in (1, 2, 5, 50):
            plan = ep.plan_workers("local", tasks, cores=cores, memory_gb=64)
            assert 1 <= plan.workers <= min(cores, tasks) and plan.workers * plan.torch_threads <= cores
            assert plan.gpus == 0
    assert ep.plan_workers("local", 24, cores=16, memory_gb=5, gb_per_worker=2.0).workers == 2
    assert ep.plan_workers("auto", 1, cores=4) == ep.Plan("sync", 1, 4)
    assert ep.plan_workers("auto", 3, cores=4).scheduler == "local"
    assert ep.plan_workers("tcp://h:1", 9, cores=4) == ep.Plan("tcp://h:1", 0, None)


def test_plan_on_cuda_gives_one_worker_per_gpu_pinned_in_turn():
    four = ep.plan_workers("local", 24, cores=16, device="cuda", gpus=4)
    assert (four.workers, four.torch_threads, four.gpus) == (4, 4, 4)
    assert ep.plan_workers("local", 3, cores=16, device="cuda", gpus=4).workers == 3  # no idle GPU worker
    one = ep.plan_workers("local", 24, cores=16, device="cuda", gpus=1)
    assert (one.workers, one.gpus) == (1, 0)  # one GPU: nothing to pin
    named = ep.plan_workers("local", 24, cores=16, device="cuda:1", gpus=4)
    assert (named.workers, named.gpus) == (1, 0)  # a named device: one worker on it
    assert ep.plan_workers("local", 24, cores=16, device="cuda", gpus=2, workers=4).gpus == 2  # 2 per GPU, in turn
