"""The public API of ``cartocell_bmz/__init__.py``: every name resolves, and importing stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cartocell_bmz


@pytest.mark.parametrize("name", [n for n in cartocell_bmz.__all__ if n != "__version__"])
def test_every_public_name_resolves_from_its_home(name):
    value = getattr(cartocell_bmz, name)
    home = cartocell_bmz._EXPORTS[name].partition(":")[0]
    assert getattr(value, "__module__", home).startswith("cartocell_bmz"), (name, value)


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cartocell_bmz.nope  # noqa: B018


def test_import_loads_no_heavy_dependency():
    code = ("import sys, cartocell_bmz; heavy = [m for m in ('torch', 'bioimageio.core', 'dask', 'matplotlib') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
