"""Tests of the pipeline's further rounds and of its M1-vs-M2 bootstrap (cartocell_bmz.phases.pipeline)."""

from __future__ import annotations

import json

import pytest

from cartocell_bmz.errors import ConfigError
from cartocell_bmz.phases.pipeline import VERSUS_M1, add_bootstrap, comparison_markdown, per_image_f1, run_pipeline

pytest.importorskip("torch")

#: The quick settings of tests/phases/test_pipeline.py: two epochs of a very small network.
QUICK = {"arch_kwargs": {"feature_maps": [4, 8]}, "patch_size": (16, 32, 32), "patches_per_epoch": 2, "epochs": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("rounds") / "out"
    events: list[tuple[int, int, str]] = []
    result = run_pipeline(tiny_dataset, out, preset="tiny", seed=1, device="cpu", overrides=QUICK, rounds=2,
                          progress=lambda done, total, message="": events.append((done, total, message)))
    return out, result, events


def test_second_round_pseudo_labels_with_m2_and_is_evaluated(two_rounds, tiny_dataset):
    out, result, events = two_rounds
    first = {}
    for done, total, message in events:
        first.setdefault(done, message)
        assert total == 8  # M1, pseudo-labels, M2, round 2 (pseudo-labels, M2_round2), 3 evaluations
    assert [first[i][:11] for i in (3, 4)] == ["round 2/2: ", "round 2/2: "]
    assert "with M2 " in first[3] and "M2_round2" in first[4]
    assert list(result.comparison) == ["M1", "M2", "M2_round2"]
    assert [row["round"] for row in result.comparison.values()] == [0, 1, 2]
    status = json.loads((out / "pseudo_labels_round2" / "status.json").read_text())
    from cartocell_bmz.phases.pseudo_label import model_fingerprint

    assert status["model_sha256"] == model_fingerprint(out / "M2")  # made by M2, not M1
    config = json.loads((out / "M2_round2" / "config.json").read_text())
    assert config["data"]["train_dir"] == str((out / "pseudo_labels_round2").resolve())
    assert sorted(p.name for p in (out / "pseudo_labels_round2" / "y").iterdir()) == sorted(
        p.name for p in (tiny_dataset / "train_M2" / "x").iterdir())
    assert json.loads((out / "eval_M2_round2" / "summary.json").read_text())["n_images"] == 2
    md = (out / "comparison.md").read_text()
    assert "| M2_round2 | resunet |" in md and "| M2_round2 | 2 |" in md


def test_every_m2_carries_its_bootstrap_against_m1(two_rounds):
    out, result, _ = two_rounds
    saved = json.loads((out / "comparison.json").read_text())
    assert saved == result.comparison and VERSUS_M1 not in saved["M1"]
    for name in ("M2", "M2_round2"):
        b = saved[name][VERSUS_M1]
        # per-cyst F1 averaged over the cysts is the dataset F1 (BiaPy's average over images)
        assert b["f1"] == pytest.approx(saved[name]["f1@0.5"]) and b["reference_f1"] == pytest.approx(saved["M1"]["f1@0.5"])
        assert b["difference"] == pytest.approx(saved[name]["f1@0.5"] - saved["M1"]["f1@0.5"])
        assert b["low"] <= b["difference"] <= b["high"] and b["n"] == 2 and b["n_resamples"] == 10_000
    assert "paired bootstrap 95% percentile interval" in (out / "comparison.md").read_text()


def test_finished_rounds_are_kept_and_bad_rounds_refused(two_rounds, tiny_dataset):
    out, first, _ = two_rounds
    stamp = (out / "M2_round2" / "checkpoints" / "best.pt").stat().st_mtime_ns
    again = run_pipeline(tiny_dataset, out, preset="tiny", seed=1, device="cpu", overrides=QUICK, rounds=2)
    assert again.comparison == first.comparison
    assert (out / "M2_round2" / "checkpoints" / "best.pt").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="rounds must be at least 1"):
        run_pipeline(tiny_dataset, out, rounds=0)
    with pytest.raises(ConfigError, match="one M2 architecture"):
        run_pipeline(tiny_dataset, out, arch_m2=["unet", "resunet"], rounds=2)


def test_bootstrap_rows_from_metric_files(tmp_path):
    """Two evaluations whose per-cyst F1 differ by a known amount: the interval holds it."""
    header = "image,threshold,f1\n"
    m1 = {"a.tif": 0.5, "b.tif": 0.6, "c.tif": 0.7, "d.tif": 0.9}
    for name, shift in (("eval_M1", 0.0), ("eval_M2", 0.1)):
        (tmp_path / name).mkdir()
        rows = "".join(f"{k},0.5,{v + shift}\n{k},0.75,0.0\n" for k, v in m1.items())
        (tmp_path / name / "metrics_per_image.csv").write_text(header + rows)
    assert per_image_f1(tmp_path / "eval_M1") == m1
    comparison = add_bootstrap({"M1": {}, "M2": {"round": 1}},
                               {"M1": tmp_path / "eval_M1", "M2": tmp_path / "eval_M2"}, n_resamples=500)
    b = comparison["M2"][VERSUS_M1]
    assert b["difference"] == pytest.approx(0.1) and b["low"] == pytest.approx(0.1) and b["high"] == pytest.approx(0.1)
    assert b["n"] == 4 and VERSUS_M1 not in comparison["M1"]
    assert "| M2 | 1 | 0.775 | 0.675 | +0.100 | [+0.100, +0.100] |" in comparison_markdown(comparison)


def test_pipeline_command_refuses_rounds_with_several_m2(tmp_path, tiny_dataset):
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    result = CliRunner().invoke(app, ["pipeline", str(tiny_dataset), "--out", str(tmp_path / "o"), "--rounds", "2",
                                      "--arch-m2", "unet", "--arch-m2", "resunet"])
    assert result.exit_code != 0 and "one M2 architecture" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
