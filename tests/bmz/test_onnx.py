"""ONNX weights (cartocell_bmz.bmz.onnx, portable.add_onnx): one file, opset <= 18, dynamic z/y/x,
the state dict's probabilities within 1e-4, and every package in model_packages/ carries them."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from builders import SMALL_KWARGS
from cartocell_bmz import networks
from cartocell_bmz.bmz.onnx import (MAX_OPSET, ONNX_TOLERANCE, OnnxFacts, check_onnx, export_onnx, inspect_onnx,
                                    layout_problems, onnx_session)
from cartocell_bmz.bmz.portable import add_onnx
from cartocell_bmz.errors import InputError, ModelError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p for p in (ROOT / "model_packages").iterdir() if (p / "rdf.yaml").is_file())


def _net(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    net = networks.build_network("unet", **networks.resolve_kwargs("unet", SMALL_KWARGS)).eval()
    with torch.no_grad():  # batch-norm statistics that are not the identity, as after training
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def example():
    return np.random.default_rng(1).normal(100, 20, size=(1, 1, 8, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, example):
    net = _net()
    return net, export_onnx(net, tmp_path_factory.mktemp("onnx") / "weights.onnx", example)


def test_export_is_one_file_with_dynamic_axes_and_the_networks_outputs(exported, example):
    import torch

    net, path = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.onnx"]  # no .onnx.data, no temporary
    facts = inspect_onnx(path)
    assert facts.opset == 17 <= MAX_OPSET and (facts.n_inputs, facts.n_outputs) == (1, 1)
    assert not facts.external_data and facts.dynamic_spatial and facts.input_dims[1] == 1
    assert layout_problems(facts) == [] and facts.size_bytes == path.stat().st_size
    check = check_onnx(path, net, example)
    assert check.max_difference < ONNX_TOLERANCE and check.facts == facts
    # another size and batch than traced: the axes really are dynamic
    x = np.random.default_rng(2).normal(size=(2, 1, 6, 24, 40)).astype(np.float32)
    session = onnx_session(path, threads=1)
    got = session.run(None, {"raw": x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 3, 6, 24, 40) and np.abs(got - ref).max() < 1e-4 and np.abs(ref).max() > 0.01


def test_check_refuses_weights_that_are_not_the_state_dicts(exported, example):
    _net0, path = exported
    with pytest.raises(ModelError, match=r"weights.onnx: its probabilities differ from the state dict's by .* "
                                         r"on the test input \(more than 0.0001\)"):
        check_onnx(path, _net(seed=1), example)


def test_external_data_and_new_opsets_are_layout_problems(exported, tmp_path, example):
    import onnx

    net, path = exported
    model = onnx.load(str(path))
    onnx.save(model, str(tmp_path / "split.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="split.onnx.data", size_threshold=0)
    facts = inspect_onnx(tmp_path / "split.onnx")
    assert facts.external_data and facts.size_bytes < path.stat().st_size / 2
    with pytest.raises(ModelError, match="split.onnx: its weights are in an external data file, not in the one file"):
        check_onnx(tmp_path / "split.onnx", net, example)
    assert layout_problems(OnnxFacts(19, 1, 2, False, (1, 1, 8, 32, 32), 1)) == [
        "opset 19 is newer than 18, the newest deepImageJ runs", "has 1 inputs and 2 outputs, not one of each",
        "input dimensions [1, 1, 8, 32, 32] are not dynamic in z, y, x"]
    assert layout_problems(OnnxFacts(17, 1, 1, False, (1, 1, 8, 32, 32), 1), dynamic=False) == []


def test_bad_inputs_are_one_line_errors(tmp_path, example):
    net = _net()
    with pytest.raises(ModelError, match="ONNX opset 19: use 7 to 18"):
        export_onnx(net, tmp_path / "a.onnx", example, opset=19)
    with pytest.raises(ModelError, match=r"the example input has shape \(8, 32, 32\), not \(1, 1, z, y, x\)"):
        export_onnx(net, tmp_path / "a.onnx", example[0, 0])
    with pytest.raises(ModelError, match=r"a.onnx: ONNX export of U_Net failed \(.*must be a multiple of \[1, 2, 2\]"):
        export_onnx(net, tmp_path / "a.onnx", np.zeros((1, 1, 8, 31, 31), np.float32))
    assert not list(tmp_path.iterdir())  # nothing half-written
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.onnx: is not an ONNX model"):
        inspect_onnx(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="holds no rdf.yaml"):
        add_onnx(tmp_path)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_every_package_lists_one_onnx_file_converted_from_its_state_dict(package):
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    entry = rdf["weights"]["onnx"]
    assert list(rdf["weights"]) == ["onnx", "pytorch_state_dict", "torchscript"]
    assert entry["source"] == "weights.onnx" and entry["parent"] == "pytorch_state_dict"
    assert entry["sha256"] == hashlib.sha256((package / "weights.onnx").read_bytes()).hexdigest()
    facts = inspect_onnx(package / "weights.onnx")
    assert entry["opset_version"] == facts.opset <= MAX_OPSET
    assert layout_problems(facts) == [] and "external_data" not in entry
    assert not [p for p in package.iterdir() if p.name.endswith(".data")]


def test_add_onnx_reproduces_the_packaged_file_and_keeps_every_other_file(tmp_path):
    unet = ROOT / "model_packages" / "synthetic-unet"
    folder = tmp_path / "pkg"
    shutil.copytree(unet, folder)
    (folder / "weights.onnx").unlink()
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())
    del rdf["weights"]["onnx"]
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "rdf.yaml"}
    add_onnx(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in ("rdf.yaml", "weights.onnx")} == before
    assert (folder / "weights.onnx").read_bytes() == (unet / "weights.onnx").read_bytes()  # reproducible export
    assert yaml.safe_load((folder / "rdf.yaml").read_text()) == yaml.safe_load((unet / "rdf.yaml").read_text())
    add_onnx(folder)  # already there: left as it is
    assert (folder / "weights.onnx").read_bytes() == (unet / "weights.onnx").read_bytes()
