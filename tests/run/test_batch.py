"""Folder prediction and post-processing, their output tree and resumption, the predict command, a BMZ id end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.layout import ASSOCIATIONS_DIR, INSTANCES_DIR, METRICS_CSV, PROBS_DIR, SUMMARY_JSON, VORONOI_DIR
from cartocell_bmz.io.outputs import PREDICT_SUMMARY_JSON
from cartocell_bmz.io.volumes import read_volume, write_volume
from cartocell_bmz.run.batch import collect_inputs, postprocess_folder, predict_folder
from lookalike import build_lookalike
from builders import serve
from builders import ONE_LEVEL

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(2)
    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CARTOCELL_BMZ_MODEL_PACKAGES", str(tmp_path / "no_packages"))


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return build_lookalike(tmp_path_factory.mktemp("pkg") / "happy-honeybee", "happy-honeybee", size=32,
                           kwargs=ONE_LEVEL)


@pytest.fixture
def images(tiny_dataset, tmp_path) -> Path:
    folder = tmp_path / "images"
    shutil.copytree(tiny_dataset / "test" / "x", folder)
    return folder


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.tif")}


def test_predict_folder_writes_the_biapy_tree(package, images, tiny_dataset, tmp_path):
    out = tmp_path / "out"
    summary = predict_folder(package, images, out, trust=True)
    names = sorted(p.name for p in images.iterdir())
    assert len(names) == 2 and [r.name for r in summary.images] == names
    assert all(r.status == "predicted" for r in summary.images) and summary.n_computed == 2
    for name in names:
        raw = read_volume(images / name)
        probs = read_volume(out / PROBS_DIR / name, "probabilities")
        inst = read_volume(out / INSTANCES_DIR / name, "labels")
        vor = read_volume(out / VORONOI_DIR / name, "labels")
        assert probs.data.shape == (3, *raw.data.shape) and inst.data.shape == vor.data.shape == raw.data.shape
        assert probs.spacing == pytest.approx(raw.spacing) and vor.spacing == pytest.approx(raw.spacing)
        assert 0 <= probs.data.min() and probs.data.max() <= 1
    assert summary.n_cells == sum(len(np.unique(read_volume(out / VORONOI_DIR / n, "labels").data)) - 1 for n in names)
    assert (out / PREDICT_SUMMARY_JSON).is_file()
    assert "2 image(s) (2 computed, 0 already done)" in str(summary)


def test_rerun_computes_only_what_is_missing(package, images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    predict_folder(package, images, out, trust=True)
    a, b = sorted(p.name for p in images.iterdir())
    before = _mtimes(out)
    (out / VORONOI_DIR / a).unlink()  # a: only the post-processing is missing
    (out / PROBS_DIR / b).unlink()  # b: the prediction is missing
    (out / VORONOI_DIR / b).unlink()
    summary = predict_folder(package, images, out, trust=True)
    status = {r.name: r.status for r in summary.images}
    assert status == {a: "postprocessed", b: "predicted"}
    after = _mtimes(out)
    assert after[f"{PROBS_DIR}/{a}"] == before[f"{PROBS_DIR}/{a}"]  # a's probabilities were reused
    # everything finished: nothing is loaded or computed
    import cartocell_bmz.run.predictor as runner

    monkeypatch.setattr(runner.Predictor, "predict", lambda *a, **k: pytest.fail("predicted again"))
    done = predict_folder(package, images, out, trust=True)
    assert [r.status for r in done.images] == ["skipped", "skipped"] and done.n_cells == summary.n_cells
    assert _mtimes(out) == after


def test_overwrite_float16_and_ground_truth(package, images, tiny_dataset, tmp_path):
    out = tmp_path / "out"
    predict_folder(package, images, out, trust=True)
    summary = predict_folder(package, images, out, trust=True, overwrite=True, float16=True,
                             gt=tiny_dataset / "test" / "y")
    assert all(r.status == "predicted" for r in summary.images)
    name = summary.images[0].name
    with tifffile.TiffFile(out / PROBS_DIR / name) as tif:
        assert tif.series[0].dtype == np.float16
    assert (out / METRICS_CSV).is_file() and (out / SUMMARY_JSON).is_file()
    assert len(list((out / ASSOCIATIONS_DIR).iterdir())) > 0
    assert summary.metrics["n_images"] == 2


def test_inputs_files_globs_and_clashes(images, tmp_path):
    files = collect_inputs([str(images / "*.tif"), str(sorted(images.iterdir())[0])])
    assert len(files) == 2
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sorted(images.iterdir())[0], other)
    with pytest.raises(InputError, match="same file name"):
        collect_inputs([images, other])
    with pytest.raises(InputError, match="no such file, folder or pattern"):
        collect_inputs([tmp_path / "nope"])


def _cli(args, env=None):
    from cartocell_bmz.cli.app import app

    return CliRunner().invoke(app, args, env=env)


def test_predict_command(package, images, tmp_path):
    out = tmp_path / "out"
    res = _cli(["predict", str(images), "--model", str(package), "--out", str(out), "--trust", "--spacing", "1", "0.5", "0.5"])
    assert res.exit_code == 0, res.output
    assert "2 image(s) (2 computed, 0 already done)" in res.output
    assert len(list((out / VORONOI_DIR).iterdir())) == 2


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "no-such-model"], "cannot fetch model 'no-such-model'"),
        (["--model", "missing/model.zip"], "no such model file or folder"),
        (["--model", "PKG", "--tile", "16", "32", "32"], "takes fixed tiles of 32 x 32 x 32"),
        (["--model", "PKG", "--weights", "keras_hdf5"], "--weights 'keras_hdf5'"),
        (["--model", "PKG", "--spacing", "1", "0", "1"], "spacing"),
    ],
)
def test_predict_command_errors_are_one_line(package, images, tmp_path, args, words, monkeypatch):
    from bioimageio.spec._internal._settings import settings

    monkeypatch.setattr(settings, "collection_http_pattern", "http://127.0.0.1:9/{bioimageio_id}/files/rdf.yaml")
    monkeypatch.setattr(settings, "id_map", "http://127.0.0.1:9/id_map.json")
    args = [str(package) if a == "PKG" else a for a in args]
    res = _cli(["predict", str(images), "--out", str(tmp_path / "out"), "--trust", *args])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and words in lines[0], res.output
    assert "Traceback" not in res.output


def _run_cli(args, env):
    return subprocess.run([sys.executable, "-m", "cartocell_bmz", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_predict_by_bmz_id_end_to_end(package, images, tmp_path):
    """`predict --model happy-honeybee` through bioimageio's id resolution, then offline, then neither."""
    site = tmp_path / "site"
    shutil.copytree(package, site / "happy-honeybee" / "files")
    env = {**os.environ, "BIOIMAGEIO_CACHE_PATH": str(tmp_path / "bioimageio_cache"),
           "CARTOCELL_BMZ_CACHE": str(tmp_path / "cartocell_cache"),
           "BIOIMAGEIO_ID_MAP": "http://127.0.0.1:9/id_map.json", "BIOIMAGEIO_HTTP_TIMEOUT": "3",
           "OMP_NUM_THREADS": "2"}
    one = [str(sorted(images.iterdir())[0])]
    with serve(site) as port:
        env["BIOIMAGEIO_COLLECTION_HTTP_PATTERN"] = f"http://127.0.0.1:{port}/{{bioimageio_id}}/files/rdf.yaml"
        online = _run_cli(["predict", *one, "--model", "happy-honeybee", "--out", str(tmp_path / "o1")], env)
    assert online.returncode == 0, online.stderr
    assert "notice:" in online.stderr and "unet.py" in online.stderr  # first use: what code runs
    assert (tmp_path / "cartocell_cache" / "models" / "happy-honeybee" / "checkpoint.pth").is_file()
    assert len(list((tmp_path / "o1" / VORONOI_DIR).iterdir())) == 1

    offline = _run_cli(["predict", *one, "--model", "happy-honeybee", "--out", str(tmp_path / "o2")], env)
    assert offline.returncode == 0, offline.stderr
    assert "notice:" not in offline.stderr
    a = read_volume(tmp_path / "o1" / PROBS_DIR / Path(one[0]).name, "probabilities").data
    b = read_volume(tmp_path / "o2" / PROBS_DIR / Path(one[0]).name, "probabilities").data
    assert np.array_equal(a, b)

    env["CARTOCELL_BMZ_CACHE"] = str(tmp_path / "empty_cache")
    neither = _run_cli(["predict", *one, "--model", "happy-honeybee", "--out", str(tmp_path / "o3")], env)
    assert neither.returncode != 0
    lines = neither.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot fetch model 'happy-honeybee'"), neither.stderr
    assert "--model path/to/model.zip" in lines[0]


# --------------------------------------------------------------------------- postprocess_folder


@pytest.fixture
def probs_dir(tmp_path, small_cyst) -> Path:
    """Probabilities of two volumes: the targets of a small cyst, one blurred."""
    from scipy import ndimage as ndi

    from cartocell_bmz.core.targets import make_targets

    t = make_targets(small_cyst.labels).astype(np.float32)
    folder = tmp_path / "probs"
    write_volume(folder / "a.tif", t, small_cyst.spacing)
    write_volume(folder / "b.tif", np.stack([ndi.gaussian_filter(c, 0.5) for c in t]), small_cyst.spacing)
    return folder


def test_postprocess_folder_writes_cells_and_resumes(probs_dir, small_cyst, tmp_path):
    from cartocell_bmz.core.postprocess import postprocess

    out = tmp_path / "out"
    events = []
    summary = postprocess_folder(probs_dir, out, progress=lambda *e: events.append(e))
    assert [r.name for r in summary.images] == ["a.tif", "b.tif"] and summary.skipped == []
    assert events[0] == (0, 2, "a.tif") and events[-1][:2] == (2, 2)
    for r in summary.images:
        probs = read_volume(probs_dir / r.name, "probabilities")
        ref_inst, ref_vor = postprocess(probs.data, spacing=probs.spacing)
        vor = read_volume(out / VORONOI_DIR / r.name, "labels")
        assert np.array_equal(read_volume(out / INSTANCES_DIR / r.name, "labels").data, ref_inst)
        assert np.array_equal(vor.data, ref_vor) and vor.spacing == pytest.approx(small_cyst.spacing)
        assert r.cells == len(np.unique(ref_vor)) - 1 and r.watershed_cells == len(np.unique(ref_inst)) - 1
        assert r.spacing_known and f"{r.name}: {r.watershed_cells} cells after watershed, {r.cells} after" in str(r)
    assert summary.n_cells > 0 and not (out / PROBS_DIR).exists()
    assert str(summary).startswith(f"post-processed 2 volume(s), skipped 0 already done, {summary.n_cells} cells")

    before = _mtimes(out)
    (out / INSTANCES_DIR / "b.tif").unlink()  # an interrupted volume is redone, a finished one kept
    again = postprocess_folder(probs_dir, out)
    assert [r.name for r in again.images] == ["b.tif"] and again.skipped == ["a.tif"]
    assert _mtimes(out)[f"{VORONOI_DIR}/a.tif"] == before[f"{VORONOI_DIR}/a.tif"]
    redo = postprocess_folder(probs_dir, out, resume=False, spacing=(2, 0.25, 0.25))
    assert len(redo.images) == 2 and redo.images[0].spacing == (2.0, 0.25, 0.25)
    assert read_volume(out / VORONOI_DIR / "a.tif", "labels").spacing == pytest.approx((2.0, 0.25, 0.25))


def test_postprocess_folder_stops_at_a_bad_volume(probs_dir, tmp_path):
    write_volume(probs_dir / "c.tif", read_volume(probs_dir / "a.tif", "probabilities").data[:2])
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"c\.tif: has 2 channel\(s\).*needs 3 channels B, C, M"):
        postprocess_folder(probs_dir, out)
    assert sorted(p.name for p in (out / VORONOI_DIR).iterdir()) == ["a.tif", "b.tif"]  # kept for a rerun
    with pytest.raises(ConfigError, match="spacing needs three positive sizes"):
        postprocess_folder(probs_dir, out, spacing=(1, 0, 1))
    with pytest.raises(InputError, match="no TIFF probability volumes"):
        postprocess_folder(tmp_path / "out", out)
