"""The portable rdf.yaml form (cartocell_bmz.bmz.portable): the embedded packages are in it,
refresh_description rewrites an older package into exactly today's description, and a
package whose architecture file imports a missing module fails in one line naming it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from cartocell_bmz.bmz.contents import FORMAT_VERSION
from cartocell_bmz.bmz.portable import portable_content, read_evaluation, refresh_description

ROOT = Path(__file__).resolve().parents[2]
UNET = ROOT / "model_packages" / "synthetic-unet"
PACKAGES = sorted(p for p in (ROOT / "model_packages").iterdir() if (p / "rdf.yaml").is_file())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_embedded_packages_are_in_the_portable_form(package):
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    assert rdf["format_version"] == FORMAT_VERSION == "0.5.7"
    assert rdf["covers"] == ["cover.png"] and rdf["documentation"] == "documentation.md"
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["out_channels"] == [3]
    figures = read_evaluation(package)["figures"]
    assert set(figures) == {"IoU B", "IoU C", "IoU M", "F1@0.5", "PQ@0.5", "MTS@0.5", "F1@0.75", "PQ@0.75"}
    assert all(0.0 <= v <= 1.0 for v in figures.values())


def test_unet_evaluation_is_its_documentation_table():
    ev = read_evaluation(UNET)
    assert ev["sample_count"] == 4 and ev["dataset_role"] == "test"
    assert ev["figures"]["F1@0.5"] == 0.945 and ev["figures"]["PQ@0.75"] == 0.541
    assert "| 0.797 | 0.921 | 0.931 | 0.945 | 0.734 | 0.719 | 0.663 | 0.541 |" in (UNET / "documentation.md").read_text()


def _older_form(folder: Path) -> None:
    """The description as packages were written before: format 0.5.12, objects, int out_channels."""
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    rdf["format_version"] = "0.5.12"
    rdf["covers"] = [{"source": "cover.png", "sha256": _sha(folder / "cover.png")}]
    rdf["documentation"] = {"source": "documentation.md", "sha256": _sha(folder / "documentation.md")}
    rdf["tags"] = [t for t in rdf["tags"] if t != "biapy"]
    rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["out_channels"] = 3
    del rdf["config"]["cartocell_bmz"]["evaluation"]
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))


def test_refresh_rewrites_an_older_package_into_todays_description(tmp_path):
    folder = tmp_path / "pkg"
    shutil.copytree(UNET, folder)
    _older_form(folder)
    kept = {p.name: _sha(p) for p in folder.iterdir() if p.name != "rdf.yaml"}
    refresh_description(folder)
    assert (folder / "rdf.yaml").read_text() == (UNET / "rdf.yaml").read_text()  # the committed one, byte for byte
    assert {p.name: _sha(p) for p in folder.iterdir() if p.name != "rdf.yaml"} == kept


def test_portable_content_keeps_everything_else():
    content = {"format_version": "0.5.12", "covers": [{"source": "a.png", "sha256": "1"}, "b.png"],
               "documentation": {"source": "d.md"}, "tags": ["x"], "config": {"k": {"covers": 1}}}
    out = portable_content(content)
    assert out == {"format_version": "0.5.7", "covers": ["a.png", "b.png"], "documentation": "d.md",
                   "tags": ["x"], "config": {"k": {"covers": 1}}}
    assert content["covers"][0] == {"source": "a.png", "sha256": "1"}  # the input is not changed


def test_refresh_refuses_a_folder_without_our_description(tmp_path):
    from cartocell_bmz.errors import InputError

    with pytest.raises(InputError, match="holds no rdf.yaml"):
        refresh_description(tmp_path)
    (tmp_path / "rdf.yaml").write_text("type: model\nname: other\n")
    with pytest.raises(InputError, match="not a package cartocell-bmz built"):
        refresh_description(tmp_path)


def test_missing_module_of_an_architecture_file_is_named_with_its_install_command(tmp_path):
    from cartocell_bmz.errors import ModelError
    from cartocell_bmz.run.backends import open_backend

    folder = tmp_path / "needs-dep"
    shutil.copytree(UNET, folder)
    arch = folder / "unet.py"
    source = arch.read_text()
    future = "from __future__ import annotations\n"
    assert future in source
    arch.write_text(source.replace(future, future + "import cartocell_missing_dep_for_test  # noqa: F401\n", 1))
    refresh_description(folder, refresh_architecture=False)  # records the edited file's sha256
    backend = open_backend(folder, weights="pytorch_state_dict", device="cpu", trust=True)
    with pytest.raises(ModelError) as err:
        backend.load()
    message = str(err.value)
    assert "\n" not in message
    assert "imports cartocell_missing_dep_for_test, which is not installed" in message
    assert "pip install 'cartocell_missing_dep_for_test'" in message


def test_models_command_shows_each_local_packages_test_set_figures():
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    result = CliRunner().invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "synthetic-unet" in line and "0.945" in line]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("│ ").split("│")]
    assert cells == ["synthetic-unet", "4", "0.797", "0.921", "0.931", "0.945", "0.734", "0.719", "0.663", "0.541"]
