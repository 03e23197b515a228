"""The progress protocol, the CLI's one rich adapter, and a library that prints nothing."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cartocell_bmz.cli.progress import RichProgress
from cartocell_bmz.io.progress import nested, report, steps
from builders import ONE_LEVEL
from lookalike import build_lookalike


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, width=60, force_terminal=terminal, color_system=None), screen


@pytest.mark.parametrize("terminal", [False, True])
def test_adapter_draws_and_ends_one_bar_per_run(terminal):
    console, screen = _console(terminal)
    with RichProgress(console=console) as progress:
        for i, name in steps(["a.tif", "b.tif"], progress, finished="images"):
            nested(progress, i, 2, name)(3, 8, "tiles")  # a sub-step keeps the outer counter
            assert progress._bar is not None
        assert progress._bar is None  # done == total ended the bar
        progress(0, 3, "evaluating a.tif")  # the next run, a new bar
        progress(1, 3, "evaluating b.tif")
    assert progress._bar is None  # the block's end ended the unfinished one
    text = screen.getvalue()
    assert "images" in text and "2/2" in text and "evaluating b.tif" in text and "1/3" in text


def test_adapter_starts_a_new_bar_when_a_run_restarts_and_ignores_empty_runs():
    console, screen = _console(False)
    with RichProgress(console=console) as progress:
        progress(0, 0, "nothing")  # nothing to count: no bar
        assert progress._bar is None
        progress(2, 5, "first")
        first = progress._bar
        progress(1, 5, "second")  # done went back: another run
        assert progress._bar is not first
    assert "nothing" not in screen.getvalue() and "second" in screen.getvalue()


def test_transient_adapter_leaves_no_bar_and_no_progress_reaches_a_file():
    console, screen = _console(False)
    with RichProgress(transient=True, console=console) as progress:
        for done in range(4):
            progress(done, 3, "task")
    assert screen.getvalue().strip() == ""


def test_protocol_helpers_accept_two_argument_calls():
    events = []
    inner = nested(lambda *e: events.append(e), 1, 4, "a.tif")
    inner(2, 9)  # the Predictor's tile reports have no message
    report(lambda *e: events.append(e), 4, 4)
    assert events == [(1, 4, "a.tif: 2/9"), (4, 4, "")]


# --------------------------------------------------------------------------- the library prints nothing


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return build_lookalike(tmp_path_factory.mktemp("pkg") / "happy-honeybee", "happy-honeybee", size=32,
                           kwargs=ONE_LEVEL)


def test_batch_functions_print_nothing(package, tiny_dataset, tmp_path, monkeypatch, capfd):
    import torch

    from cartocell_bmz.io.volumes import read_volume
    from cartocell_bmz.layout import PROBS_DIR, VORONOI_DIR
    from cartocell_bmz.run.batch import postprocess_folder, predict_folder

    torch.set_num_threads(1)
    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CARTOCELL_BMZ_MODEL_PACKAGES", str(tmp_path / "no_packages"))
    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "test" / "x", images)
    capfd.readouterr()
    summary = predict_folder(package, images, tmp_path / "out", gt=tiny_dataset / "test" / "y", trust=True,
                             progress=None)
    again = postprocess_folder(tmp_path / "out" / PROBS_DIR, tmp_path / "post", progress=None)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert summary.n_computed == 2 and summary.metrics["n_images"] == 2 and len(again.images) == 2
    for r in again.images:  # the same cells either way
        a, b = (read_volume(d / VORONOI_DIR / r.name, "labels").data for d in (tmp_path / "out", tmp_path / "post"))
        assert np.array_equal(a, b)
