"""Tests of ``cartocell-bmz phantoms --optics``: the two-acquisition sets from the command line."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cartocell_bmz.cli.app import app

runner = CliRunner()


def test_optics_cartocell_writes_both_acquisitions_and_their_preview(tmp_path):
    out = tmp_path / "d"
    result = runner.invoke(app, ["phantoms", str(out), "--optics", "cartocell", "--shape", "12", "32", "32",
                                 "--n-train-m1", "1", "--n-validation", "0", "--n-train-m2", "1", "--n-test", "1",
                                 "--preview"])
    assert result.exit_code == 0, result.output
    assert "wrote 3 synthetic cysts" in result.output
    saved = json.loads((out / "dataset.json").read_text())
    assert saved["optics"] == "cartocell" and saved["counts"]["validation"] == 0
    assert saved["acquisitions"]["test"] == "low_resolution"
    assert (out / "previews" / "acquisitions.png").is_file()


def test_unknown_optics_gives_one_line_and_help_names_the_defaults(tmp_path):
    result = runner.invoke(app, ["phantoms", str(tmp_path / "d"), "--optics", "fancy"])
    assert result.exit_code == 2 and "--optics 'fancy' is not known" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "d").exists()
    text = runner.invoke(app, ["phantoms", "--help"]).output
    assert "--optics" in text and "cartocell" in text
