"""engine/cluster: tasks in order with progress on every scheduler, the first error, a dead worker, GPU pinning."""

from __future__ import annotations

import os

import pytest

from cartocell_bmz.engine import cluster as ec
from cartocell_bmz.engine.plan import Plan
from cartocell_bmz.errors import ConfigError, InputError


def _slow_square(x: int) -> int:
    import time

    time.sleep(0.05 * (5 - x))  # the first tasks finish last
    return x * x


def _visible_gpus() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")  # read in the worker (a bound os.environ.get would be the client's)


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise InputError(f"volume {x} is unreadable")
    return x


@pytest.mark.parametrize("where", ["sync", "address"])
def test_results_come_in_task_order_and_each_is_heard_once(where, address):
    plan = Plan("sync", 1, 1) if where == "sync" else Plan(address, 0, None)
    events, seen = [], []
    results = ec.map_tasks(_slow_square, [1, 2, 3, 4], plan, title="squares", describe=lambda x: f"n{x}",
                           progress=lambda *e: events.append(e), on_result=lambda t, r: seen.append((t, r)))
    assert results == [1, 4, 9, 16]
    assert events[0] == (0, 4, "squares") and [e[0] for e in events] == [0, 1, 2, 3, 4]
    assert sorted(e[2] for e in events[1:]) == ["n1", "n2", "n3", "n4"]
    assert sorted(seen) == [(1, 1), (2, 4), (3, 9), (4, 16)]
    if where == "sync":
        assert [e[2] for e in events[1:]] == ["n1", "n2", "n3", "n4"]
    else:  # finished in their own order, not the tasks'
        assert [e[2] for e in events[1:]] != ["n1", "n2", "n3", "n4"]


def test_the_first_expected_error_is_raised_as_it_is(address):
    with pytest.raises(InputError, match="volume 3 is unreadable"):
        ec.map_tasks(_fail_on_three, [1, 2, 3, 4], Plan(address, 0, None))
    with pytest.raises(InputError, match="volume 3 is unreadable"):
        ec.map_tasks(_fail_on_three, [1, 2, 3, 4], Plan("sync", 1, 1))
    assert ec.map_tasks(_fail_on_three, [], Plan(address, 0, None)) == []


def test_unreachable_address_is_one_line(monkeypatch):
    monkeypatch.setattr(ec, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at 'tcp://127.0.0.1:9'"):
        ec.map_tasks(_slow_square, [1], Plan("tcp://127.0.0.1:9", 0, None))


def test_gpu_workers_are_pinned_in_turn_and_a_dead_worker_is_named():
    """Two worker processes planned on 2 GPUs see one device each; a worker that dies is WorkerLostError."""
    import dask
    from distributed import Client

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = ec.local_cluster(Plan("local", 2, 1, gpus=2))
    with cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        seen = client.run(_visible_gpus)
        assert sorted(seen.values()) == ["0", "1"]
        with pytest.raises(ec.WorkerLostError, match="died running volume-7.*finished results are kept") as err:
            ec.map_tasks(os._exit, [7], Plan(cluster.scheduler_address, 0, None), describe=lambda x: f"volume-{x}")
        assert err.value.task == 7
