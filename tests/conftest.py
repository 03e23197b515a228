"""Shared fixtures: small synthetic cysts and a tiny dataset on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach the network; bioimageio honours this for its downloads.
os.environ.setdefault("BIOIMAGEIO_OFFLINE", "1")
# Batch commands default to a local Dask cluster for several volumes; a cluster start costs
# seconds, so tests run in this process unless they ask for a scheduler (tests/engine/).
os.environ.setdefault("CARTOCELL_BMZ_SCHEDULER", "sync")



@pytest.fixture(scope="session")
def small_cyst():
    """One small synthetic cyst (16 x 48 x 48), shared by the session."""
    from cartocell_bmz.core.phantoms import make_cyst

    return make_cyst((16, 48, 48), (1.0, 0.5, 0.5), stage="day7", seed=7)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A tiny CartoCell-layout dataset (1-2 volumes of 16 x 48 x 48 per split)."""
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.io.phantom_sets import make_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    cfg = PhantomConfig(seed=3, shape=(16, 48, 48), counts={"train_M1": 2, "validation": 1, "train_M2": 2, "test": 2})
    make_dataset(root, cfg)
    return root


@pytest.fixture(scope="module")
def address():
    """A running Dask cluster's address, one per test module (2 worker threads of this process over
    tcp: starts in about a second) for the tests that run commands against a scheduler address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None,
                      silence_logs=40) as cluster:
        yield cluster.scheduler_address
