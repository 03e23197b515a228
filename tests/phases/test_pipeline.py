"""Tests of the CartoCell pipeline M1 -> pseudo-labels -> M2 -> test (cartocell_bmz.phases.pipeline)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cartocell_bmz.errors import InputError
from cartocell_bmz.phases.pipeline import COMPARISON_COLUMNS, check_layout, run_pipeline

pytest.importorskip("torch")

#: Two-epoch trainings of a very small network: the whole pipeline in seconds.
QUICK = {
    "arch_kwargs": {"feature_maps": [4, 8]},
    "patch_size": (16, 32, 32),
    "patches_per_epoch": 2,
    "epochs": 2,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread (the 2 test cores are shared; results do not depend on it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("pipe") / "out"
    events: list[tuple[int, int, str]] = []
    result = run_pipeline(tiny_dataset, out, preset="tiny", seed=1, device="cpu", overrides=QUICK,
                          progress=lambda done, total, message="": events.append((done, total, message)))
    result.events = events
    return out, result


def test_pipeline_reports_its_steps_and_prints_nothing(finished, capfd, tiny_dataset):
    _out, result = finished
    first = {}  # the first message of each step: the step's own announcement
    for done, _total, message in result.events:
        first.setdefault(done, message)
    assert list(first) == [0, 1, 2, 3, 4, 5]  # M1, pseudo-labels, M2, evaluation of M1 and of M2, end
    assert [first[i][:9] for i in range(5)] == ["phase 2/5", "phase 3/5", "phase 4/5", "phase 5/5", "phase 5/5"]
    assert {t for _d, t, _m in result.events} == {5}
    assert result.events[-1] == (5, 5, "finished")
    assert any("phase 2/5" in m and "epoch" in m for _d, _t, m in result.events)  # the training's own progress
    again = run_pipeline(tiny_dataset, _out, preset="tiny", seed=1, device="cpu", overrides=QUICK)
    assert again.runs["M1"].finished
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_layout_is_checked(tmp_path, tiny_dataset):
    assert check_layout(tiny_dataset) == tiny_dataset
    (tmp_path / "train_M1" / "x").mkdir(parents=True)
    with pytest.raises(InputError, match=r"train_M1/y"):
        check_layout(tmp_path)


def test_pipeline_writes_every_phase_and_the_comparison(finished, tiny_dataset):
    out, result = finished
    for name in ("M1", "M2"):
        status = json.loads((out / name / "status.json").read_text())
        assert status["finished"] is True and status["epoch"] == 2
        assert (out / name / "checkpoints" / "best.pt").is_file()
        summary = json.loads((out / f"eval_{name}" / "summary.json").read_text())
        assert summary["n_images"] == 2
        for sub in ("per_image", "per_image_instances", "per_image_post_processing"):
            assert sorted(p.name for p in (out / f"eval_{name}" / sub).iterdir()) == sorted(
                p.name for p in (tiny_dataset / "test" / "x").iterdir())
    # M2 learnt from the pseudo-labels, never from train_M2/y
    config = json.loads((out / "M2" / "config.json").read_text())
    assert config["data"]["train_dir"] == str((out / "pseudo_labels").resolve())
    assert sorted(p.name for p in (out / "pseudo_labels" / "y").iterdir()) == sorted(
        p.name for p in (tiny_dataset / "train_M2" / "x").iterdir())
    comparison = json.loads((out / "comparison.json").read_text())
    assert list(comparison) == ["M1", "M2"] and comparison == result.comparison
    for name, row in comparison.items():
        summary = json.loads((out / f"eval_{name}" / "summary.json").read_text())
        assert row["f1@0.5"] == summary["dataset"]["0.5"]["f1"]
        assert row["pq@0.75"] == summary["dataset"]["0.75"]["panoptic_quality"]
        assert row["iou_C"] == summary["channel_iou"]["C"]
        assert all(0.0 <= row[key] <= 1.0 for key, _ in COMPARISON_COLUMNS)
    table = (out / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| model | arch | F1@0.5 | PQ@0.5 | MTS@0.5 | F1@0.75")
    assert table[2].startswith("| M1 | resunet | ") and table[3].startswith("| M2 | resunet | ")
    assert json.loads((out / "pipeline.json").read_text())["finished"] is True


def test_finished_pipeline_is_skipped_and_stale_pseudo_labels_are_redone(finished, tiny_dataset):
    out, first = finished
    stamp = (out / "M2" / "checkpoints" / "best.pt").stat().st_mtime_ns
    again = run_pipeline(tiny_dataset, out, preset="tiny", seed=1, device="cpu", overrides=QUICK)
    assert again.pseudo_labels.n_new == 0 and again.comparison == first.comparison
    assert (out / "M2" / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp
    # pseudo-labels that claim another M1 are made again (from the same M1: same M2)
    status = json.loads((out / "pseudo_labels" / "status.json").read_text())
    status["model_sha256"] = "f" * 64
    (out / "pseudo_labels" / "status.json").write_text(json.dumps(status))
    redone = run_pipeline(tiny_dataset, out, preset="tiny", seed=1, device="cpu", overrides=QUICK)
    assert redone.pseudo_labels.n_new == 2 and redone.comparison == first.comparison


def test_evaluation_follows_the_test_set(tmp_path, finished, tiny_dataset):
    import shutil

    from cartocell_bmz.phases.pipeline import evaluate_run

    out, _ = finished
    test = tmp_path / "test"
    shutil.copytree(tiny_dataset / "test", test)
    assert evaluate_run(out / "M1", test, tmp_path / "eval", device="cpu")["n_images"] == 2
    gone = sorted((test / "x").iterdir())[0].name
    for sub in ("x", "y"):
        (test / sub / gone).unlink()
    summary = evaluate_run(out / "M1", test, tmp_path / "eval", device="cpu")
    assert summary["images"] == [p.name for p in (test / "x").iterdir()]
    assert not (tmp_path / "eval" / "per_image_post_processing" / gone).exists()


def test_killed_pipeline_continues_where_it_stopped(tmp_path, tiny_dataset):
    """SIGKILL the pipeline during M2's training, rerun it: it ends as an uninterrupted one."""
    out = tmp_path / "out"
    overrides = {**QUICK, "epochs": 5}
    code = (
        "from cartocell_bmz.phases.pipeline import run_pipeline; "
        f"run_pipeline({str(tiny_dataset)!r}, {str(out)!r}, preset='tiny', seed=1, device='cpu', "
        f"overrides={overrides!r})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=Path(__file__).parents[2],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "M2" / "train_log.csv"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if log.is_file() and len(log.read_text().splitlines()) >= 2:  # M2 finished an epoch
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert json.loads((out / "M2" / "status.json").read_text())["finished"] is False
    m1_stamp = (out / "M1" / "checkpoints" / "best.pt").stat().st_mtime_ns

    result = run_pipeline(tiny_dataset, out, preset="tiny", seed=1, device="cpu", overrides=overrides)
    assert result.runs["M2"].finished and result.runs["M2"].resumed_from >= 1
    assert result.runs["M2"].epochs == 5 and result.pseudo_labels.n_new == 0
    assert (out / "M1" / "checkpoints" / "best.pt").stat().st_mtime_ns == m1_stamp
    assert set(result.comparison) == {"M1", "M2"} and (out / "comparison.md").is_file()


def test_pipeline_command_trains_several_m2(tmp_path, tiny_dataset):
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "pipeline", str(tiny_dataset), "--out", str(out), "--preset", "tiny", "--epochs", "1",
        "--arch-m1", "unet", "--arch-m2", "unet", "--arch-m2", "seunet", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    for name in ("M1", "M2_unet", "M2_seunet"):
        assert json.loads((out / name / "status.json").read_text())["finished"] is True
        assert (out / f"eval_{name}" / "summary.json").is_file()
    assert json.loads((out / "M2_seunet" / "model.json").read_text())["arch"] == "seunet"
    assert "| M2_seunet | seunet |" in result.output
    assert list(json.loads((out / "comparison.json").read_text())) == ["M1", "M2_unet", "M2_seunet"]
    missing = CliRunner().invoke(app, ["pipeline", str(tmp_path / "nowhere"), "--out", str(out)])
    assert missing.exit_code == 2 and "dataset folder not found" in missing.output


# --------------------------------------------------------------------------- acceptance

#: The documented demo (README): data and command.
DEMO_PHANTOMS = ["phantoms", "{data}", "--shape", "40", "96", "96", "--n-test", "12"]
DEMO_PIPELINE = ["pipeline", "{data}", "--out", "{out}", "--preset", "tiny"]


@pytest.mark.slow
def test_documented_pipeline_reaches_f1_090(tmp_path):
    """The README's demo: M2 F1@0.5 >= 0.90 on the synthetic test set (time printed, not asserted)."""
    exe = Path(sys.executable).parent / "cartocell-bmz"
    data, out = tmp_path / "data", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    fill = lambda args: [a.format(data=data, out=out) for a in args]  # noqa: E731
    subprocess.run([str(exe), *fill(DEMO_PHANTOMS)], check=True, env=env, stdout=subprocess.DEVNULL)
    t0 = time.monotonic()
    subprocess.run([str(exe), *fill(DEMO_PIPELINE)], check=True, env=env, stdout=subprocess.DEVNULL)
    minutes = (time.monotonic() - t0) / 60
    comparison = json.loads((out / "comparison.json").read_text())
    print(f"pipeline took {minutes:.1f} min")
    assert comparison["M2"]["f1@0.5"] >= 0.90, comparison


#: The README's M1-against-M2 run on the paper's two acquisitions, seed 0, and its figures.
CC_PHANTOMS = ["phantoms", "{data}", "--seed", "0", "--optics", "cartocell"]
CC_PIPELINE = ["pipeline", "{data}", "--out", "{out}", "--preset", "tiny", "--seed", "0"]
CC_README_F1 = {"M1": 0.849, "M2": 0.823}


@pytest.mark.slow
def test_documented_two_acquisition_comparison_reproduces(tmp_path):
    """The README's seed-0 figures (OMP_NUM_THREADS=1) to the third decimal (about 13 min on one thread)."""
    exe = Path(sys.executable).parent / "cartocell-bmz"
    data, out = tmp_path / "data", tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fill = lambda args: [a.format(data=data, out=out) for a in args]  # noqa: E731
    subprocess.run([str(exe), *fill(CC_PHANTOMS)], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run([str(exe), *fill(CC_PIPELINE)], check=True, env=env, stdout=subprocess.DEVNULL)
    comparison = json.loads((out / "comparison.json").read_text())
    got = {name: round(comparison[name]["f1@0.5"], 3) for name in CC_README_F1}
    assert got == CC_README_F1, comparison
    assert "difference" in (out / "comparison.md").read_text()
