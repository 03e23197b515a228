"""cartocell-bmz phantoms --stack: synthetic acquisitions with their truth table; a bad --mix is one line."""

from __future__ import annotations

import csv

from typer.testing import CliRunner

from cartocell_bmz.cli.app import app

runner = CliRunner()


def test_phantoms_stack_writes_stacks_and_truth(tmp_path):
    out = tmp_path / "s"
    result = runner.invoke(app, ["phantoms", str(out), "--stack", "--n-stacks", "2", "--shape", "24", "96", "112",
                                 "--cyst-shape", "18", "40", "40", "--mix", "single=2,cut=1,two-lumens=0,touching=0,"
                                 "two_layers=0,debris=1"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 stacks" in result.output
    assert sorted(p.name for p in (out / "x").iterdir()) == ["stack_000.tif", "stack_001.tif"]
    assert (out / "y" / "stack_001.tif").is_file()
    with open(out / "cysts.csv", newline="") as fh:
        kinds = {r["kind"] for r in csv.DictReader(fh)}
    assert kinds <= {"single", "cut", "debris"} and "single" in kinds


def test_bad_mix_is_one_line(tmp_path):
    result = runner.invoke(app, ["phantoms", str(tmp_path / "s"), "--stack", "--mix", "single=two"])
    assert result.exit_code != 0 and "--mix" in result.output and len(result.output.strip().splitlines()) == 1
