from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cartocell_bmz import __version__
from cartocell_bmz.cli.app import COMMANDS, app

runner = CliRunner()


def test_help_does_not_import_torch_or_bioimageio():
    code = (
        "import sys; from typer.testing import CliRunner; from cartocell_bmz.cli.app import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('torch', 'bioimageio.core', 'bioimageio.spec', 'dask', 'matplotlib') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_every_planned_command_is_registered():
    names = {c.name for c in app.registered_commands}
    assert names == set(COMMANDS)


def test_phantoms_command_writes_dataset(tmp_path):
    result = runner.invoke(app, ["phantoms", str(tmp_path / "d"), "--seed", "2", "--shape", "16", "48", "48",
                                 "--n-train-m1", "1", "--n-validation", "0", "--n-train-m2", "0", "--n-test", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 2 synthetic cysts" in result.output
    assert len(list((tmp_path / "d" / "test" / "y").glob("*.tif"))) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shape", "4", "48", "48"], "--shape needs three sizes"),
        (["--spacing", "1", "0", "0.5"], "--spacing needs three positive sizes"),
    ],
)
def test_phantoms_bad_options_give_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["phantoms", str(tmp_path / "d"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_output_that_is_a_file_gives_one_line_and_no_traceback(tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "cartocell_bmz", "phantoms", str(target)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "is a file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert target.read_text() == "keep me"
