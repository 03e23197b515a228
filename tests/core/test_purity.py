"""core/ is pure: importing any of its modules loads no deep-learning, model-zoo, plotting or file-format stack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cartocell_bmz

CORE = Path(cartocell_bmz.__file__).parent / "core"
MODULES = sorted(f"cartocell_bmz.core.{p.stem}" for p in CORE.glob("*.py") if p.stem != "__init__")
#: Top-level packages that core must never import (directly or through another module).
FORBIDDEN = ("torch", "bioimageio", "matplotlib", "dask", "tifffile")


def test_core_modules_are_found():
    assert {"cartocell_bmz.core.postprocess", "cartocell_bmz.core.watershed", "cartocell_bmz.core.voronoi",
            "cartocell_bmz.core.matching", "cartocell_bmz.core.phantoms"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_importing_a_core_module_loads_no_heavy_stack(module):
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & set(FORBIDDEN), f"{module} imports {sorted(loaded & set(FORBIDDEN))}"
