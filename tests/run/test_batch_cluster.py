"""predict and measure on the engine: a cluster address gives the bytes of a run in this process; resume; a killed worker."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from builders import ONE_LEVEL, write_cyst
from lookalike import build_lookalike
from cartocell_bmz.cli.app import app
from cartocell_bmz.io.outputs import PREDICT_SUMMARY_JSON
from cartocell_bmz.layout import VORONOI_DIR
from cartocell_bmz.run.batch import predict_folder

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return build_lookalike(tmp_path_factory.mktemp("pkg") / "happy-honeybee", "happy-honeybee", size=32,
                           kwargs=ONE_LEVEL)


def _cysts(folder: Path, n: int, shape=(16, 48, 48)) -> Path:
    for i in range(n):
        write_cyst(folder / f"cyst_{i:02d}.tif", shape=shape, seed=i)
    return folder


#: Files that name their own run: its timings, the measured files' paths and times.
OWN = {PREDICT_SUMMARY_JSON, "measure_params.json"}


def _digests(out: Path) -> dict[str, str]:
    """sha256 of every output file but those naming their own run."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in OWN and p.parent.name != "per_cyst"}


def test_predict_command_against_a_cluster_address_writes_the_sync_bytes(package, address, tmp_path):
    images = _cysts(tmp_path / "x", 3)
    predict_folder(package, images, tmp_path / "sync", scheduler="sync", trust=True, device="cpu")
    there = runner.invoke(app, ["predict", str(images), "--model", str(package), "--device", "cpu", "--trust",
                                "--out", str(tmp_path / "dask"), "--scheduler", address])
    assert there.exit_code == 0, there.output
    assert "3 image(s) (3 computed, 0 already done)" in there.output
    sync = _digests(tmp_path / "sync")
    assert len(sync) == 9 and _digests(tmp_path / "dask") == sync
    again = predict_folder(package, images, tmp_path / "dask", scheduler=address, trust=True, device="cpu")
    assert again.n_computed == 0 and _digests(tmp_path / "dask") == sync


def test_a_bad_volume_on_the_cluster_costs_only_itself(package, address, tmp_path):
    from cartocell_bmz.errors import InputError

    images = _cysts(tmp_path / "x", 2)
    (images / "broken.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="1 of 3 volume\\(s\\) could not be used and the others are done"):
        predict_folder(package, images, tmp_path / "out", scheduler=address, trust=True, device="cpu")
    assert sorted(p.name for p in (tmp_path / "out" / VORONOI_DIR).iterdir()) == ["cyst_00.tif", "cyst_01.tif"]


@pytest.mark.parametrize("args, words", [
    (["--scheduler", "dask"], "--scheduler must be 'local', 'sync' or a Dask scheduler address"),
    (["--scheduler", "tcp://127.0.0.1:8786", "--workers", "2"], "--workers applies to the local cluster only"),
])
def test_a_bad_scheduler_is_one_line_before_any_work(args, words, tmp_path):
    images = _cysts(tmp_path / "x", 2)
    result = runner.invoke(app, ["predict", str(images), "--model", "no-such-model", "--out", str(tmp_path / "o"),
                                 *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and words in lines[0], result.output


def test_measure_on_a_cluster_writes_the_sync_tables(address, tmp_path, small_cyst):
    from cartocell_bmz.core.phantoms import make_cyst
    from cartocell_bmz.io.volumes import write_volume
    from cartocell_bmz.measure.api import measure_files

    for i in range(3):
        cyst = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), seed=20 + i)
        write_volume(tmp_path / "labels" / f"c{i}.tif", cyst.labels, cyst.spacing)
    here = measure_files([tmp_path / "labels"], tmp_path / "sync", plots=False, scheduler="sync")
    there = measure_files([tmp_path / "labels"], tmp_path / "dask", plots=False, scheduler=address)
    assert len(here.cysts) == 3 and here.cells.equals(there.cells)
    for name in ("cells.csv", "neighbours.csv", "cysts.csv"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "sync" / name).read_bytes()


# --------------------------------------------------------------------------- worker processes (slow)


@pytest.mark.slow(reason="16 cysts with synthetic-unet, in this process and on 2 worker processes (86 s on 2 loaded cores)")
def test_sixteen_cysts_on_two_local_workers_give_the_sync_bytes(tmp_path):
    images = _cysts(tmp_path / "x", 16)
    model = REPO / "model_packages" / "synthetic-unet"
    sync = predict_folder(model, images, tmp_path / "sync", scheduler="sync", device="cpu")
    local = predict_folder(model, images, tmp_path / "local", scheduler="local", workers=2, device="cpu")
    assert sync.n_computed == local.n_computed == 16
    assert [(r.name, r.cells) for r in sync.images] == [(r.name, r.cells) for r in local.images]
    digests = _digests(tmp_path / "sync")
    assert len(digests) == 48 and _digests(tmp_path / "local") == digests


@pytest.mark.slow(reason="a cluster of 2 worker processes, one SIGKILLed in the middle of a run (85 s on 2 loaded cores)")
def test_a_killed_worker_loses_only_its_volume_and_a_rerun_completes(package, tmp_path):
    """SIGKILL of a worker that is predicting: finished volumes stay (same bytes), the rerun does only the rest."""
    import dask
    from distributed import Client, LocalCluster

    from cartocell_bmz.engine.cluster import WorkerLostError

    images = _cysts(tmp_path / "x", 8, shape=(24, 64, 64))
    predict_folder(package, images, tmp_path / "sync", scheduler="sync", trust=True, device="cpu")
    reference = _digests(tmp_path / "sync")
    out = tmp_path / "dask"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # a task on a dead worker fails at once
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
    with cluster, Client(cluster) as watcher:
        pids = watcher.run(os.getpid)
        killed = []

        def kill_a_busy_worker(done, total, message=""):
            if done == 2 and not killed:  # two volumes written: kill a worker in the middle of another
                busy = [w for w, keys in watcher.processing().items() if keys]
                killed.append(busy[0])
                os.kill(pids[busy[0]], signal.SIGKILL)

        with pytest.raises(WorkerLostError, match="died running cyst_"):
            predict_folder(package, images, out, scheduler=cluster.scheduler_address, trust=True, device="cpu",
                           progress=kill_a_busy_worker)
        assert killed
        first = _digests(out)
        finished = {k for k in first if k.startswith(VORONOI_DIR)}
        assert 2 <= len(finished) < 8
        assert all(reference[k] == v for k, v in first.items() if not Path(k).name.startswith("."))
        rerun = predict_folder(package, images, out, scheduler=cluster.scheduler_address, trust=True, device="cpu")
    skipped = {f"{VORONOI_DIR}/{r.name}" for r in rerun.images if r.status == "skipped"}
    assert finished <= skipped and rerun.n_computed == 8 - len(skipped)
    assert {k: v for k, v in _digests(out).items() if not Path(k).name.startswith(".")} == reference
