"""Tests of pseudo-labelling (cartocell_bmz.phases.pseudo_label) and its command."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from cartocell_bmz.errors import ConfigError, InputError, ModelError
from cartocell_bmz.phases.pseudo_label import model_fingerprint, pseudo_label
from cartocell_bmz.io.volumes import list_volumes, read_volume

pytest.importorskip("torch")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread (the 2 test cores are shared; results do not depend on it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_dataset):
    from cartocell_bmz.train.config import TrainConfig
    from cartocell_bmz.train.loop import train

    cfg = TrainConfig.from_preset(
        "tiny", arch="unet", arch_kwargs={"feature_maps": [4, 8]}, patch_size=(16, 32, 32),
        patches_per_epoch=2, epochs=2, device="cpu",
    )
    run = tmp_path_factory.mktemp("pl") / "run"
    train(cfg, tiny_dataset / "train_M1", tiny_dataset / "validation", run)
    return run


def ideal_predictor(folder):
    """A predictor that returns the target channels of the true labels of each raw volume."""
    from cartocell_bmz.core.targets import make_targets

    table = {}
    for raw in list_volumes(folder / "x"):
        key = hashlib.sha256(read_volume(raw).data.tobytes()).hexdigest()
        table[key] = make_targets(read_volume(folder / "y" / raw.name, "labels").data).astype(np.float32)
    return lambda volume: table[hashlib.sha256(np.asarray(volume, np.float32).tobytes()).hexdigest()]


def test_pseudo_labels_from_ideal_probabilities_recover_the_cells(tmp_path):
    """Ideal probabilities (the true targets) give back the true cells (F1@0.5 measured 0.99-1.0).

    The cysts are 32 x 64 x 64: on 16 x 48 x 48 cysts the shell is so thin in z
    that the cell bodies break up even in the ideal targets.
    """
    from cartocell_bmz.run.evaluate import evaluate_volume
    from cartocell_bmz.core.phantoms import make_cyst
    from cartocell_bmz.io.volumes import write_volume

    split = tmp_path / "split"
    for i, stage in enumerate(("day4", "day10")):
        cyst = make_cyst((32, 64, 64), (1.0, 0.5, 0.5), stage=stage, seed=11)
        write_volume(split / "x" / f"c{i}.tif", cyst.raw, cyst.spacing)
        write_volume(split / "y" / f"c{i}.tif", cyst.labels, cyst.spacing)
    events = []
    summary = pseudo_label("ideal", split / "x", tmp_path / "out", predictor=ideal_predictor(split),
                           progress=lambda *event: events.append(event))
    assert summary.n_volumes == summary.n_new == 2
    assert events == [(0, 2, "c0.tif"), (1, 2, "c1.tif"), (2, 2, "pseudo-labels written")]
    for raw in list_volumes(split / "x"):
        got = read_volume(tmp_path / "out" / "y" / raw.name, "labels")
        truth = read_volume(split / "y" / raw.name, "labels")
        assert got.data.dtype == np.uint16 and got.spacing == pytest.approx(truth.spacing)
        assert summary.cells[raw.name] == len(np.unique(got.data)) - 1
        f1 = evaluate_volume(gt=truth.data, pred=got.data, thresholds=[0.5]).matches[0].f1
        assert f1 >= 0.95, (raw.name, f1)


def test_pseudo_label_writes_a_training_set_and_resumes(tmp_path, tiny_dataset, tiny_run):
    from cartocell_bmz.train.data import training_pairs

    src = tiny_dataset / "train_M2" / "x"
    out = tmp_path / "pl"
    summary = pseudo_label(tiny_run, src, out, device="cpu")
    assert summary.n_new == 2 and len(training_pairs(out)) == 2
    for raw in list_volumes(src):
        assert (out / "x" / raw.name).read_bytes() == raw.read_bytes()
        labels = read_volume(out / "y" / raw.name, "labels").data
        assert labels.shape == read_volume(raw).data.shape
    status = json.loads((out / "status.json").read_text())
    assert status["finished"] is True and status["n_done"] == 2 and len(status["model_sha256"]) == 64
    lines = (out / "pseudo_labels.csv").read_text().splitlines()
    assert lines[0] == "volume,cells,seconds" and len(lines) == 3

    # a second call keeps finished volumes; a missing label is redone
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "y").iterdir()}
    assert pseudo_label(tiny_run, src, out, device="cpu").n_new == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "y").iterdir()} == stamps
    victim = sorted((out / "y").iterdir())[0]
    victim.unlink()
    again = pseudo_label(tiny_run, src, out, device="cpu")
    assert again.n_new == 1 and victim.is_file()


def test_labels_of_another_model_are_not_mixed(tmp_path, tiny_dataset, tiny_run):
    src = tiny_dataset / "train_M2"  # a split folder works as well as its x/
    out = tmp_path / "pl"
    pseudo_label(tiny_run, src, out, device="cpu")
    status = json.loads((out / "status.json").read_text())
    status["model_sha256"] = "0" * 64
    (out / "status.json").write_text(json.dumps(status))
    with pytest.raises(ConfigError, match="another model"):
        pseudo_label(tiny_run, src, out, device="cpu")
    assert pseudo_label(tiny_run, src, out, device="cpu", fresh=True).n_new == 2


def test_bad_models_and_inputs(tmp_path, tiny_dataset, tiny_run):
    from cartocell_bmz.run.predictor import Predictor

    with pytest.raises(ModelError):
        Predictor(tmp_path)  # an empty folder: neither a training run nor a package
    with pytest.raises(InputError, match="not found"):
        pseudo_label(tiny_run, tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ConfigError, match="spacing"):
        pseudo_label(tiny_run, tiny_dataset / "train_M2", tmp_path / "out", spacing=(1, 0, 1))


def test_model_fingerprint_names_the_weights(tmp_path, tiny_run):
    best = tiny_run / "checkpoints" / "best.pt"
    assert model_fingerprint(tiny_run) == hashlib.sha256(best.read_bytes()).hexdigest()
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "rdf.yaml").write_text("type: model\n")
    assert model_fingerprint(package) == hashlib.sha256(b"type: model\n").hexdigest()
    assert model_fingerprint("happy-honeybee") == hashlib.sha256(b"happy-honeybee").hexdigest()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "model.json").write_text("{}")
    with pytest.raises(ModelError, match="best.pt: not found"):
        model_fingerprint(unfinished)


def test_pseudo_label_command(tmp_path, tiny_dataset, tiny_run):
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(app, ["pseudo-label", "--model", str(tiny_run), "--input",
                                 str(tiny_dataset / "train_M2" / "x"), "--out", str(out), "--spacing", "2", "0.5", "0.5",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "pseudo-labels for 2 volumes (2 new" in result.output
    first = sorted((out / "y").iterdir())[0]
    assert read_volume(first, "labels").spacing == pytest.approx((2.0, 0.5, 0.5))
    bad = runner.invoke(app, ["pseudo-label", "--model", str(tmp_path / "nope"), "--input",
                              str(tiny_dataset / "train_M2" / "x"), "--out", str(out)])
    assert bad.exit_code == 2 and bad.output.startswith("error:") and "Traceback" not in bad.output
