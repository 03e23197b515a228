"""Tests of ``cartocell-bmz postprocess``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from cartocell_bmz.cli.app import app
from cartocell_bmz.layout import INSTANCES_DIR, VORONOI_DIR
from cartocell_bmz.core.matching import match
from cartocell_bmz.core.postprocess import PostprocessConfig, postprocess
from cartocell_bmz.core.targets import make_targets
from cartocell_bmz.io.volumes import read_volume, write_volume

runner = CliRunner()


def probabilities(labels, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = make_targets(labels).astype(np.float32)
    p = np.stack([ndi.gaussian_filter(ch, (0.5, 1, 1)) + rng.normal(0, 0.05, ch.shape) for ch in t])
    return np.clip(p, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def cyst():
    """A small synthetic cyst with well-sampled cells (32 x 64 x 64, 25 cells)."""
    from cartocell_bmz.core.phantoms import make_cyst

    return make_cyst((32, 64, 64), (1.0, 0.5, 0.5), stage="day10", max_cells=25, seed=1)


@pytest.fixture()
def probs_dir(tmp_path, cyst):
    d = tmp_path / "probs"
    write_volume(d / "cyst_a.tif", probabilities(cyst.labels, 0), cyst.spacing)
    write_volume(d / "cyst_b.tif", probabilities(cyst.labels, 1), cyst.spacing)
    return d


def test_writes_instances_and_voronoi_with_names_and_spacing(tmp_path, probs_dir, cyst):
    out = tmp_path / "out"
    r = runner.invoke(app, ["postprocess", "--probs", str(probs_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "post-processed 2 volume(s), skipped 0" in r.output
    for name in ("cyst_a.tif", "cyst_b.tif"):
        inst = read_volume(out / INSTANCES_DIR / name, kind="labels")
        vor = read_volume(out / VORONOI_DIR / name, kind="labels")
        assert inst.spacing == pytest.approx(cyst.spacing) and inst.spacing_known
        assert vor.spacing == pytest.approx(cyst.spacing)
        # Same figures as the library call with the file's spacing.
        probs = read_volume(probs_dir / name, kind="probabilities")
        ref_inst, ref_vor = postprocess(probs.data, spacing=probs.spacing)
        assert np.array_equal(inst.data, ref_inst) and np.array_equal(vor.data, ref_vor)
        assert match(gt=cyst.labels, pred=vor.data, thresholds=(0.5,))[0].f1 >= 0.96
        assert f"{name}: {int(ref_inst.max())} cells after watershed" in r.output


def test_skips_finished_outputs_unless_overwrite(tmp_path, probs_dir):
    out = tmp_path / "out"
    assert runner.invoke(app, ["postprocess", "--probs", str(probs_dir), "--out", str(out)]).exit_code == 0
    marker = out / VORONOI_DIR / "cyst_a.tif"
    before = marker.stat().st_mtime_ns
    (out / INSTANCES_DIR / "cyst_b.tif").unlink()  # an interrupted image is redone
    r = runner.invoke(app, ["postprocess", "--probs", str(probs_dir), "--out", str(out)])
    assert r.exit_code == 0 and "post-processed 1 volume(s), skipped 1" in r.output
    assert marker.stat().st_mtime_ns == before
    r = runner.invoke(app, ["postprocess", "--probs", str(probs_dir), "--out", str(out), "--overwrite"])
    assert "post-processed 2 volume(s), skipped 0" in r.output


def test_options_reach_the_library(tmp_path, probs_dir):
    out = tmp_path / "out"
    args = ["postprocess", "--probs", str(probs_dir), "--out", str(out), "--spacing", "2", "0.25", "0.25",
            "--legacy", "--seed-c", "0.3", "--mask", "0.4", "--min-seed-size", "9", "--max-hole-size", "0",
            "--clear-border"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    vor = read_volume(out / VORONOI_DIR / "cyst_a.tif", kind="labels")
    assert vor.spacing == pytest.approx((2.0, 0.25, 0.25))
    probs = read_volume(probs_dir / "cyst_a.tif", kind="probabilities").data
    cfg = PostprocessConfig(0.2, 0.3, 0.25, min_seed_size=9, mask_threshold=0.4, max_hole_size=0, clear_border=True)
    _, ref = postprocess(probs, spacing=(2.0, 0.25, 0.25), config=cfg)
    assert np.array_equal(vor.data, ref)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seed-b", "high"], "--seed-b must be 'auto' or a number, got 'high'."),
        (["--mask", "nan"], "--mask must be a finite number"),
        (["--max-hole-size", "-2"], "--max-hole-size must be 'auto' or a volume >= 0"),
        (["--spacing", "1", "0", "1"], "--spacing needs three positive sizes"),
    ],
)
def test_bad_options_give_one_line(tmp_path, probs_dir, extra, message):
    r = runner.invoke(app, ["postprocess", "--probs", str(probs_dir), "--out", str(tmp_path / "o"), *extra])
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


def test_wrong_channel_count_gives_one_line(tmp_path, small_cyst):
    d = tmp_path / "probs"
    p = probabilities(small_cyst.labels)
    write_volume(d / "two.tif", p[:2], small_cyst.spacing)
    r = runner.invoke(app, ["postprocess", "--probs", str(d), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "two.tif: has 2 channel(s)" in r.output and "needs 3 channels B, C, M" in r.output
    assert "Traceback" not in r.output
    (d / "two.tif").unlink()
    write_volume(d / "last.tif", np.ascontiguousarray(np.moveaxis(p, 0, -1)), small_cyst.spacing)
    r = runner.invoke(app, ["postprocess", "--probs", str(d), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "Channels must come first" in r.output


def test_missing_or_empty_folder(tmp_path):
    r = runner.invoke(app, ["postprocess", "--probs", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "folder not found" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["postprocess", "--probs", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no TIFF probability volumes" in r.output
