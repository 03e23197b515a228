"""Resolving --model values: paths, zips, model_packages/, BMZ ids (through a loopback HTTP server), the cache."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from cartocell_bmz.errors import ModelError
from cartocell_bmz.bmz.known_models import KNOWN_MODELS
from cartocell_bmz.bmz.resolve import cached_packages, local_packages, resolve_model
from builders import SMALL_KWARGS, serve
from lookalike import build_lookalike, rdf_sha256

@pytest.fixture(scope="module")
def lookalike(tmp_path_factory) -> Path:
    """A small look-alike of happy-honeybee (32^3 tiles, a two-level U-Net)."""
    return build_lookalike(tmp_path_factory.mktemp("la") / "happy-honeybee", "happy-honeybee", size=32,
                           kwargs=SMALL_KWARGS)


@pytest.fixture
def package(lookalike, tmp_path) -> Path:
    dest = tmp_path / "pkg"
    shutil.copytree(lookalike, dest)
    return dest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Own cache, no model_packages/, and bioimageio pointed at a dead loopback address."""
    from bioimageio.spec._internal._settings import settings

    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CARTOCELL_BMZ_MODEL_PACKAGES", str(tmp_path / "no_packages"))
    monkeypatch.setattr(settings, "cache_path", tmp_path / "bioimageio_cache")
    monkeypatch.setattr(settings, "collection_http_pattern", "http://127.0.0.1:9/{bioimageio_id}/files/rdf.yaml")
    monkeypatch.setattr(settings, "id_map", "http://127.0.0.1:9/id_map.json")
    monkeypatch.setattr(settings, "http_timeout", 2.0)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_package_folder_rdf_and_zip(package, tmp_path):
    r = resolve_model(str(package), trust=True)
    assert r.origin == "path" and r.name == "pkg" and r.rdf_path == package / "rdf.yaml"
    assert r.weight_formats == ("pytorch_state_dict",)
    assert r.model_id == "happy-honeybee" and r.known is KNOWN_MODELS["happy-honeybee"]
    assert resolve_model(package / "rdf.yaml", trust=True).root == package

    z = tmp_path / "model.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in package.iterdir():
            zf.write(f, f.name)
    rz = resolve_model(str(z), trust=True)
    assert rz.origin == "zip" and rz.name == "model"
    assert rz.root.is_relative_to(tmp_path / "cache" / "unzipped")
    assert rz.rdf_sha256 == rdf_sha256(package)


def test_a_different_published_description_is_a_warning_with_both_hashes(package):
    messages = []
    r = resolve_model(str(package), trust=True, notify=messages.append)
    published = KNOWN_MODELS["happy-honeybee"].rdf_sha256
    assert len(r.warnings) == 1 and published in r.warnings[0] and r.rdf_sha256 in r.warnings[0]
    assert messages == [f"warning: {r.warnings[0]}"]
    # a description with another id is not compared
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    rdf["id"] = "my-own-model"
    (package / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    assert resolve_model(str(package), trust=True).warnings == ()


def test_first_use_notice_names_the_code_once(package):
    messages = []
    resolve_model(str(package), notify=messages.append)
    notices = [m for m in messages if m.startswith("notice:")]
    assert len(notices) == 1 and "unet.py" in notices[0] and "class U_Net" in notices[0] and "--trust" in notices[0]
    messages.clear()
    resolve_model(str(package), notify=messages.append)
    assert not [m for m in messages if m.startswith("notice:")]


def test_by_default_the_notice_and_warnings_are_cartocell_warnings(package):
    """The library never prints: without ``notify`` the messages are warnings (the CLI shows them on stderr)."""
    from cartocell_bmz.errors import CartoCellWarning

    with pytest.warns(CartoCellWarning) as record:
        r = resolve_model(str(package))
    messages = [str(w.message) for w in record if issubclass(w.category, CartoCellWarning)]
    assert messages == [f"warning: {r.warnings[0]}", f"notice: {r.notice}"]
    assert "unet.py" in r.notice and "--trust" in r.notice


def test_trust_silences_the_notice(package):
    r = resolve_model(str(package), trust=True, notify=lambda m: None)
    assert r.notice is None


def test_model_packages_by_name(package, tmp_path, monkeypatch):
    packages = tmp_path / "model_packages"
    packages.mkdir()
    shutil.copytree(package, packages / "cartocell-unet-synthetic")
    with zipfile.ZipFile(packages / "zipped-one.zip", "w") as zf:
        for f in package.iterdir():
            zf.write(f, f.name)
    monkeypatch.setenv("CARTOCELL_BMZ_MODEL_PACKAGES", str(packages))
    assert sorted(local_packages()) == ["cartocell-unet-synthetic", "zipped-one"]
    messages = []
    r = resolve_model("cartocell-unet-synthetic", notify=messages.append)
    assert r.origin == "model_packages" and r.notice is None
    assert not [m for m in messages if m.startswith("notice")]
    assert resolve_model("zipped-one", notify=messages.append).origin == "model_packages"


def test_missing_files_and_unknown_names_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="no such model file or folder") as e:
        resolve_model(str(tmp_path / "nothing.zip"))
    _one_line(e.value)
    with pytest.raises(ModelError, match="cannot fetch model 'no-such-model'.*--model path/to/model.zip") as e:
        resolve_model("no-such-model")
    _one_line(e.value)
    with pytest.raises(ModelError, match="not a package in"):
        resolve_model("what is this?!")


def test_tampered_weights_are_refused(package):
    with open(package / "checkpoint.pth", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="checkpoint.pth .*does not match the sha256") as e:
        resolve_model(str(package), trust=True)
    _one_line(e.value)


def test_not_a_model_and_invalid_descriptions(package):
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    (package / "rdf.yaml").write_text(yaml.safe_dump({**rdf, "type": "dataset"}))
    with pytest.raises(ModelError, match="is a 'dataset' description, not a model"):
        resolve_model(str(package), trust=True)
    broken = dict(rdf)
    broken["outputs"][0]["axes"][1]["channel_names"] = ["a", "b"]
    (package / "rdf.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ModelError, match="has 2 channel\\(s\\); a CartoCell model needs 3") as e:
        resolve_model(str(package), trust=True)
    _one_line(e.value)
    del broken["inputs"]
    (package / "rdf.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ModelError, match="invalid model description, field inputs") as e:
        resolve_model(str(package), trust=True)
    _one_line(e.value)


def test_bmz_id_downloads_once_then_runs_offline(lookalike, tmp_path, monkeypatch):
    from bioimageio.spec._internal._settings import settings

    site = tmp_path / "site"
    shutil.copytree(lookalike, site / "happy-honeybee" / "files")
    messages = []
    with serve(site) as port:
        monkeypatch.setattr(settings, "collection_http_pattern", f"http://127.0.0.1:{port}/{{bioimageio_id}}/files/rdf.yaml")
        r = resolve_model("happy-honeybee", notify=messages.append)
    assert r.origin == "bmz" and r.model_id == "happy-honeybee"
    copy = tmp_path / "cache" / "models" / "happy-honeybee"
    assert r.root == copy and (copy / "checkpoint.pth").is_file() and (copy / "unet.py").is_file()
    assert (copy / "rdf.yaml").read_bytes() == (lookalike / "rdf.yaml").read_bytes()  # the original description
    assert any(KNOWN_MODELS["happy-honeybee"].rdf_sha256 in m for m in messages)  # not the published one
    assert any(m.startswith("notice:") for m in messages)
    assert list(cached_packages()) == ["happy-honeybee"]
    # server gone: the local copy is used, by id or emoji
    again = resolve_model("happy-honeybee", trust=True)
    assert again.origin == "cache" and again.rdf_sha256 == r.rdf_sha256
    assert resolve_model("\U0001F41D", trust=True).root == copy
    # neither server nor copy
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(ModelError, match="cannot fetch model 'happy-honeybee'.*no local copy") as e:
        resolve_model("happy-honeybee")
    _one_line(e.value)


def test_bmz_download_checks_file_hashes(lookalike, tmp_path, monkeypatch):
    from bioimageio.spec._internal._settings import settings

    site = tmp_path / "site"
    shutil.copytree(lookalike, site / "happy-honeybee" / "files")
    (site / "happy-honeybee" / "files" / "unet.py").write_text("print('swapped')\n")
    with serve(site) as port:
        monkeypatch.setattr(settings, "collection_http_pattern", f"http://127.0.0.1:{port}/{{bioimageio_id}}/files/rdf.yaml")
        with pytest.raises(ModelError, match="unet.py .*does not match the sha256"):
            resolve_model("happy-honeybee", trust=True)
    assert cached_packages() == {}  # nothing damaged was kept
