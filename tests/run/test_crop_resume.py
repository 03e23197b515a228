"""crop resumes: a rerun skips the stacks whose record and crops are complete, redoes the others, same bytes.

The cyst finder is replaced by fixed candidates (a prediction is tested in tests/run/test_crop.py), so what
is checked here is the record of each stack, what counts as finished, and the bytes of a rerun.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from builders import ONE_LEVEL, make_run
from cartocell_bmz.core.cysts import KEPT, Candidate
from cartocell_bmz.io.volumes import read_volume, write_volume
from cartocell_bmz.run import crop as rc


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """Two small stacks, a training run as the model, and a finder that answers per stack and records its calls."""
    stacks = []
    rng = np.random.default_rng(0)
    for name in ("a.tif", "b.tif"):
        stacks.append(write_volume(tmp_path / "s" / name, rng.random((12, 40, 40)).astype(np.float32), (1.0, 0.5, 0.5)))
    run = make_run(tmp_path / "run", "unet", {**ONE_LEVEL})
    calls: list[str] = []

    def finder(predictor, stack, scratch_dir, settings, progress=None):
        calls.append(stack.path.name)
        shift = 0 if stack.path.name == "a.tif" else 4
        return [Candidate((2, 4 + shift, 4, 10, 20 + shift, 20), 120.5, 1, 0.9, KEPT),
                Candidate((0, 0, 30, 6, 8, 40), np.float64(33.25), 0, float("nan"), "cut by the stack border"),
                Candidate((3, 24, 22, 9, 36, 36), 80.0, 2, np.float64(0.8125), "several lumens")]

    monkeypatch.setattr(rc, "stack_candidates", finder)
    return stacks, run, calls, tmp_path / "out"


def _outputs(out: Path, records: bool = True) -> dict[str, bytes]:
    """Every file's bytes (without the stack records, which name the stack's modification time)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and (records or p.parent.name != rc.STACKS_DIR)}


def test_each_stack_is_recorded_after_its_crops_and_a_rerun_skips_it(setup):
    stacks, run, calls, out = setup
    rows = rc.crop_stacks(run, stacks, out, device="cpu", scheduler="sync")
    assert calls == ["a.tif", "b.tif"] and [r["kept"] for r in rows] == [True, False, False] * 2
    crop = read_volume(out / rows[0]["crop"])
    assert crop.data.shape == (12, 26, 26) and crop.spacing == (1.0, 0.5, 0.5)  # the box, 3 µm more, within the stack
    for stack in stacks:
        record = json.loads(rc.stack_record_path(out, stack).read_text())
        assert record["rows"] == [r for r in rows if r["stack"] == stack.name]
        model_id = record["key"]["model"]
        assert rc.finished_stack(out, stack, rc.CropSettings(), model_id=model_id) == record["rows"]
        assert rc.finished_stack(out, stack, rc.CropSettings(margin_um=5.0), model_id=model_id) is None  # settings
        assert rc.finished_stack(out, stack, rc.CropSettings(), model_id="another model") is None
    before = _outputs(out)
    assert rc.crop_stacks(run, stacks, out, device="cpu", scheduler="sync") == rows
    assert calls == ["a.tif", "b.tif"] and _outputs(out) == before  # nothing redone, the same bytes


def test_a_lost_crop_or_a_changed_stack_is_redone_with_the_same_bytes(setup):
    stacks, run, calls, out = setup
    rows = rc.crop_stacks(run, stacks, out, device="cpu", scheduler="sync")
    before = _outputs(out)
    (out / rows[3]["crop"]).unlink()  # b's crop lost: b is not finished
    rc.crop_stacks(run, stacks, out, device="cpu", scheduler="sync")
    assert calls[2:] == ["b.tif"] and _outputs(out) == before
    shutil.copyfile(stacks[0], stacks[0].with_suffix(".bak"))
    shutil.move(stacks[0].with_suffix(".bak"), stacks[0])  # a rewritten: another modification time
    rc.crop_stacks(run, stacks, out, device="cpu", scheduler="sync")
    assert calls[3:] == ["a.tif"] and _outputs(out, records=False) == {
        k: v for k, v in before.items() if not k.startswith(rc.STACKS_DIR)}
    again = _outputs(out)
    rc.crop_stacks(run, stacks, out, device="cpu", scheduler="sync", overwrite=True)
    assert calls[4:] == ["a.tif", "b.tif"] and _outputs(out) == again
    other = make_run(out.parent / "other_run", "unet", {**ONE_LEVEL}, seed=1)  # other weights: both redone
    rc.crop_stacks(other, stacks, out, device="cpu", scheduler="sync")
    assert calls[6:] == ["a.tif", "b.tif"]


def test_stacks_on_a_cluster_address_are_cropped_to_the_same_bytes(setup, tmp_path):
    """One stack per task on a running cluster (worker threads of this process): the files of a run here."""
    from distributed import LocalCluster

    stacks, run, calls, out = setup
    rows = rc.crop_stacks(run, stacks, out, device="cpu", scheduler="sync")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None,
                      silence_logs=40) as cluster:
        there = rc.crop_stacks(run, stacks, tmp_path / "dask", device="cpu", scheduler=cluster.scheduler_address)
    assert there == rows and sorted(calls) == ["a.tif", "a.tif", "b.tif", "b.tif"]
    assert _outputs(tmp_path / "dask") == _outputs(out)
