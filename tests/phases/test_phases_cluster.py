"""pseudo-label and the pipeline's evaluation on a cluster address: the files of a run in this process."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest

from builders import ONE_LEVEL, make_run
from cartocell_bmz.layout import INSTANCES_DIR, LABEL_DIR, PROBS_DIR, RAW_DIR, VORONOI_DIR


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("phases_cluster") / "run", "unet", {**ONE_LEVEL})


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_pseudo_labels_on_a_cluster_are_the_sync_bytes_and_resume(run, address, tiny_dataset, tmp_path):
    from cartocell_bmz.phases.pseudo_label import TABLE_CSV, pseudo_label

    raws = tiny_dataset / "train_M2" / RAW_DIR
    here = pseudo_label(run, raws, tmp_path / "sync", device="cpu", scheduler="sync")
    there = pseudo_label(run, raws, tmp_path / "dask", device="cpu", scheduler=address)
    assert there.n_new == here.n_new == 2 and there.cells == here.cells
    assert _digest(tmp_path / "dask" / LABEL_DIR) == _digest(tmp_path / "sync" / LABEL_DIR)
    with open(tmp_path / "dask" / TABLE_CSV, newline="") as fh:
        assert [r["volume"] for r in csv.DictReader(fh)] == sorted(here.cells)  # a row per written volume
    again = pseudo_label(run, raws, tmp_path / "dask", device="cpu", scheduler=address)
    assert again.n_new == 0


def test_evaluation_of_a_run_on_a_cluster_writes_the_sync_volumes(run, address, tiny_dataset, tmp_path):
    from cartocell_bmz.phases.pipeline import evaluate_run

    test = tiny_dataset / "test"
    here = evaluate_run(run, test, tmp_path / "sync", device="cpu", scheduler="sync")
    there = evaluate_run(run, test, tmp_path / "dask", device="cpu", scheduler=address)
    for sub in (PROBS_DIR, INSTANCES_DIR, VORONOI_DIR):
        assert len(_digest(tmp_path / "sync" / sub)) == 2
        assert _digest(tmp_path / "dask" / sub) == _digest(tmp_path / "sync" / sub)
    assert there["dataset"] == here["dataset"]
