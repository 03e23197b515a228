"""Fixtures of the benchmark tests: a tiny test set and two tiny look-alike packages."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def test_set(tmp_path_factory) -> Path:
    """Two tiny test cysts in x/ and y/."""
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.io.phantom_sets import make_dataset

    root = tmp_path_factory.mktemp("bench_data")
    make_dataset(root, PhantomConfig(seed=5, shape=(16, 48, 48), counts={"test": 2}))
    return root / "test"


@pytest.fixture(scope="session")
def tiny_packages(tmp_path_factory) -> list[Path]:
    """Two tiny look-alike packages (different architectures, parameterised sizes)."""
    from lookalike import build_lookalike

    root = tmp_path_factory.mktemp("packages")
    return [build_lookalike(root / "tiny-unet", "happy-honeybee", sizes="parameterized", seed=1),
            build_lookalike(root / "tiny-resunet", "merry-water-buffalo", sizes="parameterized", seed=2)]


@pytest.fixture(scope="session")
def sync_benchmark(tiny_packages, test_set, tmp_path_factory):
    """One synchronous benchmark of the two tiny packages on the tiny test set: ``(result, out_dir)``.

    Shared by the tests that compare other ways of running (a cluster, predict then
    evaluate) with it; they only read its folder.
    """
    from bench_fakes import trusting_resolver

    from cartocell_bmz.bench import benchmark as bm

    out = tmp_path_factory.mktemp("sync_benchmark") / "bench"
    res = bm.run_benchmark([str(p) for p in tiny_packages], test_set, out, scheduler="sync",
                           resolver=trusting_resolver())
    return res, out
