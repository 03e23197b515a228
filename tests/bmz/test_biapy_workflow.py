"""BiaPy 3.7.1 runs our packages, and cartocell-bmz runs BiaPy's exports (slow; needs BiaPy's venv).

Both run the benchmark scripts, which exit 1 when the figures miss the acceptance limits:
``benchmarks/biapy_runs_package.py`` (BiaPy's bmz test workflow on synthetic-unet, >= 99 %
agreement at 0.5 with one patch) and ``benchmarks/biapy_export_runs.py`` (a BiaPy export
through ``predict`` with the ``[biapy]`` extra, mean |diff| <= 0.01).  BiaPy's environment is
``.biapy-venv`` (README); the extra's venv is named by ``CARTOCELL_BIAPY_EXTRA_VENV``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIAPY = ROOT / ".biapy-venv" / "bin" / "python"
EXTRA = os.environ.get("CARTOCELL_BIAPY_EXTRA_VENV", "")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BIAPY.exists(), reason="BiaPy's venv .biapy-venv is not built (README)")]


def _script(name: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args, "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=3600)


def test_biapy_test_workflow_runs_our_package_and_agrees(tmp_path):
    proc = _script("biapy_runs_package.py", str(ROOT / "model_packages" / "synthetic-unet"), "--n-test", "1",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "single patch: every channel agrees on >= 99%" in proc.stdout


@pytest.mark.skipif(not (Path(EXTRA) / "bin" / "cartocell-bmz").exists(),
                    reason="set CARTOCELL_BIAPY_EXTRA_VENV to a venv made with the [biapy] extra")
def test_biapy_export_runs_through_predict_with_the_extra(tmp_path):
    proc = _script("biapy_export_runs.py", "--predict-venv", EXTRA, "--epochs", "2", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "README install" in proc.stdout and "fails as it should" in proc.stdout
