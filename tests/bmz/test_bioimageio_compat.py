"""Guards the bioimageio.spec / pydantic pairing.

bioimageio.spec 0.5.12 with pydantic >= 2.14 turns every model description
invalid; these tests fail loudly if the environment ever pairs them again.
"""

from __future__ import annotations

import pytest

from lookalike import REFERENCE

PUBLISHED = ["happy-honeybee", "heroic-otter", "idealistic-turtle", "intelligent-lion",
             "merry-water-buffalo", "venomous-swan"]


@pytest.mark.parametrize("model_id", PUBLISHED)
def test_published_cartocell_descriptions_load(model_id):
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    descr = load_description(REFERENCE / f"{model_id}.rdf.yaml", perform_io_checks=False)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.display() or "invalid"
    assert isinstance(descr, ModelDescr)
    assert str(descr.id) == model_id
    (inp,), (out,) = descr.inputs, descr.outputs
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "z", "y", "x"]
    assert out.axes[1].size == 3


def test_model_description_can_be_built():
    """Building a description from spec classes works (it fails with the broken pydantic)."""
    from bioimageio.spec.model.v0_5 import Author, CiteEntry

    author = Author(name="Test Author")
    cite = CiteEntry(text="CartoCell", doi="10.1016/j.crmeth.2023.100597")
    assert author.name == "Test Author" and str(cite.doi) == "10.1016/j.crmeth.2023.100597"


def test_pydantic_is_below_the_breaking_release():
    from importlib.metadata import version

    from packaging.version import Version

    assert Version(version("pydantic")) < Version("2.14"), "bioimageio.spec 0.5.12 breaks with pydantic >= 2.14"
