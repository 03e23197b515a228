"""The ``biapy`` extra, its constraints file and the install advice agree (one pair of pins)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from cartocell_bmz.run.backends import missing_module_message

ROOT = Path(__file__).resolve().parents[1]


def _pins(path: Path) -> dict[str, str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return dict(line.split("==") for line in lines if line)


def test_biapy_extra_pins_the_pair_its_constraints_file_pins():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    extra = dict(req.split("==") for req in extras["biapy"])
    assert set(extra) == {"torch", "torchvision"}
    pins = _pins(ROOT / "constraints-biapy.txt")
    assert {name: pins[name] for name in extra} == extra
    base = _pins(ROOT / "constraints.txt")
    # every other pin is the README install's: only the torch pair differs
    assert {k: v for k, v in pins.items() if k not in extra} == {k: v for k, v in base.items() if k != "torch"}
    assert base["torch"] != extra["torch"]


def test_missing_torchvision_names_the_extra_and_its_pins():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    extra = dict(req.split("==") for req in extras["biapy"])
    for exc in (ModuleNotFoundError("No module named 'torchvision.ops'", name="torchvision.ops"),
                RuntimeError("operator torchvision::nms does not exist")):
        message = missing_module_message(exc)
        assert "pip install -c constraints-biapy.txt -e '.[biapy]'" in message
        assert f"torch {extra['torch']}" in message and f"torchvision {extra['torchvision']}" in message
    assert re.search(r"built for another torch \(operator torchvision::nms", missing_module_message(
        RuntimeError("operator torchvision::nms does not exist")))
