"""Safe unpacking, sha256 checks and the CartoCell shape of model descriptions."""

from __future__ import annotations

import copy
import stat
import zipfile
from pathlib import Path

import pytest
import yaml

from cartocell_bmz.errors import ModelError
from cartocell_bmz.bmz.safety import (
    check_cartocell_shape,
    declared_files,
    read_rdf,
    safe_extract,
    sha256_file,
    verify_files,
)
from lookalike import REFERENCE


def _zip(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_safe_extract_unpacks_a_normal_package(tmp_path):
    z = _zip(tmp_path / "ok.zip", {"rdf.yaml": b"type: model\n", "sub/w.pt": b"x" * 100})
    dest = safe_extract(z, tmp_path / "out")
    assert (dest / "rdf.yaml").read_bytes() == b"type: model\n"
    assert (dest / "sub" / "w.pt").stat().st_size == 100
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder left
    assert safe_extract(z, tmp_path / "out") == dest  # already unpacked: reused


@pytest.mark.parametrize(
    "member, words",
    [("../evil.py", "outside the package"), ("a/../../evil.py", "outside the package"),
     ("/etc/evil", "absolute path"), ("C:/evil", "absolute path"), ("..\\evil", "outside the package")],
)
def test_safe_extract_refuses_path_escapes(tmp_path, member, words):
    z = _zip(tmp_path / "bad.zip", {"rdf.yaml": b"type: model\n", member: b"boom"})
    with pytest.raises(ModelError, match=words) as err:
        safe_extract(z, tmp_path / "out")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.py").exists()


def test_safe_extract_refuses_links(tmp_path):
    z = _zip(tmp_path / "link.zip", {"rdf.yaml": b"type: model\n"}, symlink="weights.pt")
    with pytest.raises(ModelError, match="symbolic link"):
        safe_extract(z, tmp_path / "out")


def test_safe_extract_refuses_a_zip_bomb(tmp_path):
    z = _zip(tmp_path / "bomb.zip", {"rdf.yaml": b"type: model\n", "w.pt": bytes(64 * 1024**2)})
    assert z.stat().st_size < 1024**2  # 64 MiB of zeros in well under 1 MiB
    with pytest.raises(ModelError, match="zip bomb"):
        safe_extract(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_safe_extract_limits_size_and_file_count(tmp_path):
    z = _zip(tmp_path / "many.zip", {f"f{i}.txt": b"abc" for i in range(30)})
    with pytest.raises(ModelError, match="holds 30 files, more than the 20"):
        safe_extract(z, tmp_path / "out", max_files=20)
    with pytest.raises(ModelError, match="would unpack to"):
        safe_extract(z, tmp_path / "out", max_bytes=50)


def test_safe_extract_rejects_non_zip(tmp_path):
    p = tmp_path / "model.zip"
    p.write_text("not a zip")
    with pytest.raises(ModelError, match="not a readable zip file"):
        safe_extract(p, tmp_path / "out")


def _package(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "pkg"
    root.mkdir(parents=True)
    (root / "unet.py").write_text("import torch\n")
    (root / "w.pth").write_bytes(b"weights")
    (root / "doc.md").write_text("# doc\n")
    rdf = {
        "type": "model", "documentation": "doc.md",
        "weights": {"pytorch_state_dict": {
            "source": "w.pth", "sha256": sha256_file(root / "w.pth"),
            "architecture": {"source": "unet.py", "sha256": sha256_file(root / "unet.py"), "callable": "U_Net"},
        }},
    }
    return root, rdf


def test_declared_files_lists_weights_architecture_and_docs():
    rdf = read_rdf(REFERENCE / "happy-honeybee.rdf.yaml")
    files = {f.role: f for f in declared_files(rdf)}
    assert files["weights.pytorch_state_dict"].source == "checkpoint.pth"
    assert files["weights.pytorch_state_dict.architecture"].sha256.startswith("cd0e6f35")
    assert files["inputs[0].test_tensor"].source == "test-input.npy"
    assert files["documentation"].sha256 is None
    assert "covers" in files


def test_verify_files_accepts_matching_hashes_and_rejects_tampering(tmp_path):
    root, rdf = _package(tmp_path)
    assert verify_files(root, rdf) == []
    (root / "w.pth").write_bytes(b"weights, swapped")
    with pytest.raises(ModelError, match=r"w.pth \(weights.pytorch_state_dict\) does not match the sha256"):
        verify_files(root, rdf)


def test_verify_files_checks_the_architecture_before_use(tmp_path):
    root, rdf = _package(tmp_path)
    (root / "unet.py").write_text("import os; os.system('echo pwned')\n")
    with pytest.raises(ModelError, match="unet.py .*does not match"):
        verify_files(root, rdf)


def test_verify_files_missing_and_escaping_files(tmp_path):
    root, rdf = _package(tmp_path)
    (root / "w.pth").unlink()
    with pytest.raises(ModelError, match="'w.pth' listed as weights.pytorch_state_dict is missing"):
        verify_files(root, rdf)
    root, rdf = _package(tmp_path / "b")
    rdf["weights"]["pytorch_state_dict"]["source"] = "../../secret.pth"
    with pytest.raises(ModelError, match="points outside the package"):
        verify_files(root, rdf)
    rdf["weights"]["pytorch_state_dict"]["source"] = "/etc/passwd"
    with pytest.raises(ModelError, match="absolute path"):
        verify_files(root, rdf)


def test_verify_files_reports_unhashed_weights(tmp_path):
    root, rdf = _package(tmp_path)
    del rdf["weights"]["pytorch_state_dict"]["sha256"]
    unchecked = verify_files(root, rdf)
    assert [f.source for f in unchecked] == ["w.pth"]


def test_read_rdf_rejects_non_models(tmp_path):
    p = tmp_path / "rdf.yaml"
    p.write_text(yaml.safe_dump({"type": "dataset", "name": "x"}))
    with pytest.raises(ModelError, match="is a 'dataset' description, not a model"):
        read_rdf(p)
    p.write_text("just: [unclosed\n")
    with pytest.raises(ModelError, match="cannot be read as a YAML model description"):
        read_rdf(p)
    p.write_text("- a list\n")
    with pytest.raises(ModelError, match="not a model description"):
        read_rdf(p)


def _load(rdf: dict, tmp_path: Path):
    from bioimageio.spec import load_description

    p = tmp_path / "rdf.yaml"
    p.write_text(yaml.safe_dump(rdf))
    return load_description(p, perform_io_checks=False, format_version="latest")


def test_published_descriptions_are_cartocell_shaped(tmp_path):
    rdf = yaml.safe_load((REFERENCE / "heroic-otter.rdf.yaml").read_text())
    check_cartocell_shape(_load(rdf, tmp_path), "heroic-otter")


def test_two_output_channels_are_refused(tmp_path):
    rdf = yaml.safe_load((REFERENCE / "happy-honeybee.rdf.yaml").read_text())
    rdf["outputs"][0]["axes"][1]["channel_names"] = ["a", "b"]
    with pytest.raises(ModelError, match="output 'output0' has 2 channel\\(s\\); a CartoCell model needs 3"):
        check_cartocell_shape(_load(rdf, tmp_path), "m")


def test_2d_axes_are_refused(tmp_path):
    rdf = yaml.safe_load((REFERENCE / "happy-honeybee.rdf.yaml").read_text())
    for t in (rdf["inputs"][0], rdf["outputs"][0]):
        t["axes"] = [a for a in t["axes"] if a.get("id") != "z"]
    rdf["inputs"][0]["preprocessing"][1]["kwargs"]["axes"] = ["channel", "y", "x"]
    with pytest.raises(ModelError, match="input 'input0' has axes b,c,y,x; a CartoCell model needs b,c,z,y,x"):
        check_cartocell_shape(_load(rdf, tmp_path), "m")


def test_two_inputs_are_refused(tmp_path):
    rdf = yaml.safe_load((REFERENCE / "happy-honeybee.rdf.yaml").read_text())
    second = copy.deepcopy(rdf["inputs"][0])
    second["id"] = "input1"
    rdf["inputs"].append(second)
    with pytest.raises(ModelError, match="has 2 inputs"):
        check_cartocell_shape(_load(rdf, tmp_path), "m")
