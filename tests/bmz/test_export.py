"""Tests of cartocell_bmz.bmz.export and ``cartocell-bmz package``.

A tiny, freshly initialised (seeded) network stands in for a trained one: a
training run folder is written per the contract of docs/DEVELOPING.md and
packaged once per module, offline (any network attempt fails the test).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from builders import DEFAULT_RUN_PACKAGE, MODEL_PACKAGES, model_package_params, make_run, no_network, write_cyst
from cartocell_bmz.errors import ConfigError, InputError, ModelError, OutputError
from cartocell_bmz.layout import CHANNELS
from cartocell_bmz.bmz.contents import CHANNEL_NAMES, INPUT_ID, OUTPUT_ID
from cartocell_bmz.bmz.export import PackageMetadata, build_package
from cartocell_bmz.bmz.halo import AxisSizes, blocked_difference, halo_units
from cartocell_bmz.train.run import load_network, read_run

FIGURES = {"n_images": 4, "IoU_B": 0.81, "instances": {"F1@0.5": 0.92, "PQ@0.5": 0.78}}
METADATA = PackageMetadata(name="cartocell-bmz synthetic test net", authors=("A. Tester", "B. Tester"), version="0.2.0")


# --------------------------------------------------------------------------- helpers


def rdf_of(package: Path) -> dict:
    if package.is_dir():
        return yaml.safe_load((package / "rdf.yaml").read_text())
    with zipfile.ZipFile(package) as zf:
        return yaml.safe_load(zf.read("rdf.yaml"))


def member(package: Path, name: str) -> bytes:
    if package.is_dir():
        return (package / name).read_bytes()
    with zipfile.ZipFile(package) as zf:
        return zf.read(name)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny run, a test cyst, and the zip package built from them offline."""
    root = tmp_path_factory.mktemp("packaging")
    run = make_run(root / "run")
    volume = write_cyst(root / "cyst.tif")
    (root / "figures.json").write_text(json.dumps(FIGURES))
    with no_network() as attempts:
        package = build_package(run, root / "pkg.zip", metadata=METADATA, test_volume=volume,
                                validation_figures=FIGURES)
    assert attempts == []
    return {"root": root, "run": run, "volume": volume, "package": package}


# --------------------------------------------------------------------------- the package


def test_package_passes_bioimageio_core_test_offline(built):
    from bioimageio.core import test_model

    with no_network() as attempts:
        for wf in ("pytorch_state_dict", "torchscript", "onnx"):
            summary = test_model(built["package"], weight_format=wf, devices=["cpu"])
            failed = [(d.name, [e.msg[:200] for e in d.errors]) for d in summary.details if d.status != "passed"]
            assert summary.status == "passed", failed
            # reproduce test outputs + inference at sizes n = 0, 1, 2 with batch 1 and 2
            assert sum(1 for d in summary.details if tuple(d.loc[:2]) == ("weights", wf)) >= 4
    assert attempts == []


def test_description_round_trips_with_every_field(built):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    with no_network():
        descr = load_description(built["package"], perform_io_checks=True)
    assert isinstance(descr, ModelDescr), descr.validation_summary.format()
    assert descr.validation_summary.status == "valid-format"
    assert not [e for d in descr.validation_summary.details for e in d.errors]

    assert descr.name == METADATA.name and [a.name for a in descr.authors] == list(METADATA.authors)
    assert str(descr.version) == "0.2.0" and str(descr.license) == "CC-BY-4.0"
    assert {"instance-segmentation", "cyst", "3d", "fluorescence", "pytorch", "cartocell", "resunet"} <= set(descr.tags)
    dois = {str(c.doi) for c in descr.cite}
    assert {"10.1016/j.crmeth.2023.100597", "10.1038/s41592-025-02699-y", "10.1109/LGRS.2018.2802944"} <= dois
    assert descr.training_data is not None and "synthetic" in descr.training_data.description.lower()
    assert descr.timestamp.root.isoformat().startswith("2024-05-01T12:00:00")  # pinned to status.json

    (inp,), (out,) = descr.inputs, descr.outputs
    assert (str(inp.id), str(out.id)) == (INPUT_ID, OUTPUT_ID)
    assert [str(a.id) for a in inp.axes] == ["batch", "channel", "z", "y", "x"]
    assert [p.id for p in inp.preprocessing][-2:] == ["zero_mean_unit_variance", "ensure_dtype"]
    zmuv = [p for p in inp.preprocessing if p.id == "zero_mean_unit_variance"][0]
    assert [str(a) for a in zmuv.kwargs.axes] == ["channel", "z", "y", "x"]  # the whole image
    assert [p.id for p in out.postprocessing][0] == "sigmoid"
    assert list(out.axes[1].channel_names) == list(CHANNEL_NAMES) == ["B_cell_body", "C_contours", "M_mask"]
    assert [n[0] for n in CHANNEL_NAMES] == list(CHANNELS)

    # parameterised sizes from the divisor (1, 2, 2) and the halo; the output references the input
    div = (1, 2, 2)
    halo = tuple(a.halo for a in out.axes[2:])
    sizes = AxisSizes.from_halo(div, halo)
    assert tuple(a.size.min for a in inp.axes[2:]) == sizes.minimum
    assert tuple(a.size.step for a in inp.axes[2:]) == div
    assert all(m - 2 * h >= d for m, h, d in zip(sizes.minimum, halo, div))
    assert all(str(a.size.tensor_id) == INPUT_ID for a in out.axes[2:])

    # three weight formats, the architecture file travels with its sha256, kwargs are the run's
    sd = descr.weights.pytorch_state_dict
    assert sd.architecture.callable == "ResUNet" and sd.architecture.kwargs["feature_maps"] == [4, 8]
    assert descr.weights.torchscript.parent == "pytorch_state_dict"
    assert descr.weights.onnx.parent == "pytorch_state_dict" and descr.weights.onnx.opset_version == 17
    assert descr.weights.onnx.external_data is None

    # every file of the rdf carries a sha256 that matches its bytes
    rdf = rdf_of(built["package"])
    files = []

    def collect(node):
        if isinstance(node, dict):
            if "source" in node and isinstance(node["source"], str):
                files.append(node)
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(rdf)
    names = {f["source"] for f in files}
    assert {"weights_state_dict.pt", "weights_torchscript.pt", "weights.onnx", "resunet.py", "test_input.npy",
            "test_output.npy"} <= names
    import hashlib

    for f in files:
        assert f.get("sha256") == hashlib.sha256(member(built["package"], f["source"])).hexdigest(), f["source"]
    # format 0.5.7, the form bioimageio.spec 0.5.7.4 (BiaPy's pin) reads: covers and documentation are
    # plain file names (no sha256 there), present in the package
    assert rdf["format_version"] == "0.5.7"
    assert rdf["covers"] == ["cover.png"] and rdf["documentation"] == "documentation.md"
    assert member(built["package"], "cover.png") and member(built["package"], "documentation.md")
    # what BiaPy needs to read F + C + M: its tags and out_channels as a list
    assert {"biapy", "cyst", "3d", "fluorescence", "instance-segmentation"} <= set(rdf["tags"])
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["out_channels"] == [3]


def test_test_tensors_are_a_raw_crop_and_core_probabilities(built):
    import tifffile

    test_in = np.load(io.BytesIO(member(built["package"], "test_input.npy")))
    test_out = np.load(io.BytesIO(member(built["package"], "test_output.npy")))
    raw = tifffile.imread(built["volume"]).astype(np.float32)
    z, y, x = test_in.shape[2:]
    assert test_in.shape[:2] == (1, 1) and test_out.shape == (1, 3, z, y, x)
    # an unnormalised centre crop of the cyst (raw camera values)
    lo = [(s - n) // 2 for s, n in zip(raw.shape, (z, y, x))]
    np.testing.assert_array_equal(test_in[0, 0], raw[lo[0]:lo[0] + z, lo[1]:lo[1] + y, lo[2]:lo[2] + x])
    assert test_in.max() > 100
    # the probabilities of the network (sigmoid of logits on the normalised crop)
    import torch

    net = load_network(read_run(built["run"]))
    norm = (test_in - test_in.mean()) / (test_in.std() + 1e-6)
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(norm.astype(np.float32)))).numpy()
    assert np.abs(expected - test_out).max() < 1e-4
    assert 0 <= test_out.min() and test_out.max() <= 1


def test_documentation_and_cover(built):
    doc = member(built["package"], "documentation.md").decode()
    assert "# Validation" in doc and "| instances/F1@0.5 | 0.9200 |" in doc and "| n_images | 4 |" in doc
    for text in ("cartocell-bmz predict", "bioimageio.core", "B_cell_body", "C_contours", "M_mask", "synthetic"):
        assert text in doc
    cover = member(built["package"], "cover.png")
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(cover))
    assert abs(img.shape[1] / img.shape[0] - 2.0) < 0.05  # the 2:1 aspect the BMZ recommends


def test_halo_is_the_measured_reach_of_the_network(built):
    """The chosen halo makes min-size blocks agree with whole-volume prediction; one step less does not."""
    import tifffile

    rdf = rdf_of(built["package"])
    halo = tuple(rdf["config"]["cartocell_bmz"]["halo"])
    assert rdf["config"]["cartocell_bmz"]["halo_max_difference"] <= 0.005
    net = load_network(read_run(built["run"]))
    raw = tifffile.imread(built["volume"]).astype(np.float32)
    img = (raw - raw.mean()) / (raw.std() + 1e-6)
    div = (1, 2, 2)
    units = halo_units(div)

    def worst(h):
        minimum = AxisSizes.from_halo(div, h).minimum
        return blocked_difference(net, img, h, [m - 2 * v for m, v in zip(minimum, h)], align=div, n_blocks=16)

    at_halo = worst(halo)
    less_z = worst((halo[0] - units[0], halo[1], halo[2]))
    less_yx = worst((halo[0], halo[1] - units[1], halo[2] - units[2]))
    print(f"halo {halo}: blocked vs whole {at_halo:.2e}; z-1: {less_z:.3f}; yx-1: {less_yx:.3f}")
    assert at_halo <= 0.005
    assert less_z > 0.005 and less_yx > 0.005


# the check below runs plain bioimageio.core in a fresh interpreter, without cartocell_bmz
_BLOCKED_VS_WHOLE = r"""
import json, socket, sys
import numpy as np, tifffile

def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.getaddrinfo = refuse

from bioimageio.spec import load_description
from bioimageio.core import create_prediction_pipeline, predict
from bioimageio.core.digest_spec import create_sample_for_model

package, volume = sys.argv[1], sys.argv[2]
model = load_description(package)
inp, out = model.inputs[0], model.outputs[0]
raw = tifffile.imread(volume).astype("float32")[None, None]
halo = {a.id: a.halo for a in out.axes if hasattr(a, "halo")}
sizes = {a.id: a.size for a in inp.axes if hasattr(a.size, "step")}
# blocks of about half the volume (plus halo): several blocks along every axis
ns = {(inp.id, a): max(0, -(-(raw.shape[2 + i] // 2 + 2 * halo[a] - s.min) // s.step))
      for i, (a, s) in enumerate(sizes.items())}
blocked = predict(model=model, inputs={inp.id: raw}, blocksize_parameter=ns).members[out.id].data.to_numpy()
block = {a: s.min + ns[(inp.id, a)] * s.step for a, s in sizes.items()}
n_blocks = int(np.prod([-(-raw.shape[2 + i] // (block[a] - 2 * halo[a])) for i, a in enumerate(sizes)]))

# the whole volume at once: normalised with the image's own statistics (the declared
# preprocessing), halo padded symmetrically as core does, one forward pass
pipeline = create_prediction_pipeline(model, devices=["cpu"])
sample = create_sample_for_model(model, inputs={inp.id: raw}, sample_id="cyst")
pipeline.apply_preprocessing(sample)
padded = sample.pad({inp.id: dict(halo)}, "symmetric")
whole = pipeline.predict_sample_without_blocking(padded, skip_preprocessing=True, skip_input_padding=True)
whole = whole.members[out.id].data.to_numpy()
# core 0.11's own un-blocked predict() computes the statistics after padding the halo
default_whole = predict(model=model, inputs={inp.id: raw}).members[out.id].data.to_numpy()
print(json.dumps({
    "shape": list(blocked.shape), "block": {str(k): v for k, v in block.items()}, "n_blocks": n_blocks,
    "max_diff": float(np.abs(blocked - whole).max()),
    "max_diff_core_default_whole": float(np.abs(blocked - default_whole).max()),
    "cartocell_imported": any(m.startswith("cartocell_bmz") for m in sys.modules),
}))
"""


def test_blocked_prediction_equals_whole_volume_in_plain_bioimageio_core(built):
    volume = write_cyst(built["root"] / "bigger.tif", shape=(24, 64, 64), seed=11)
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_VS_WHOLE, str(built["package"]), str(volume)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["cartocell_imported"] is False
    assert result["shape"] == [1, 3, 24, 64, 64]
    assert result["n_blocks"] >= 8  # larger than one block along every axis
    assert result["max_diff"] <= 0.01


#: The project's packages in model_packages/ (issue 6: each one passes the check below).


@pytest.mark.parametrize("package", model_package_params())
def test_model_packages_blocked_equal_whole_volume_in_plain_bioimageio_core(package, tmp_path):
    """Each package of model_packages/, loaded by plain bioimageio.core offline: blocked == whole within 0.01."""
    assert len(MODEL_PACKAGES) == 6
    # blocks are half the volume plus the halo: 32 x 96 x 96 holds 2 x 2 x 2 of them for the default
    # package (halo 7, 16, 16); the wider halos of the others need 48 x 128 x 128
    shape = (32, 96, 96) if package.name == DEFAULT_RUN_PACKAGE else (48, 128, 128)
    volume = write_cyst(tmp_path / "cyst.tif", shape=shape, seed=12)
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_VS_WHOLE, str(package), str(volume)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(package.name, result)
    assert result["cartocell_imported"] is False
    assert result["shape"] == [1, 3, *shape]
    assert result["n_blocks"] >= 8
    assert result["max_diff"] <= 0.01


def test_rebuild_with_the_cli_gives_identical_weights_and_rdf(built, monkeypatch):
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    monkeypatch.chdir(built["root"])
    out = built["root"] / "again"
    args = ["package", str(built["run"]), "--out", "again", "--format", "folder",  # a relative --out
            "--name", METADATA.name, "--author", "A. Tester", "--author", "B. Tester", "--version", "0.2.0",
            "--test-volume", str(built["volume"]), "--test-figures", str(built["root"] / "figures.json")]
    with no_network() as attempts:
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert attempts == []
    for name in ("weights_state_dict.pt", "weights_torchscript.pt", "weights.onnx", "rdf.yaml", "test_output.npy",
                 "resunet.py"):
        assert member(out, name) == member(built["package"], name), name
    # the state dict is the run's best checkpoint, value for value
    import torch

    saved = torch.load(io.BytesIO(member(out, "weights_state_dict.pt")), weights_only=True)
    best = torch.load(built["run"] / "checkpoints" / "best.pt", weights_only=True)
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in best)


# --------------------------------------------------------------------------- bad input


def test_bad_run_folders_give_one_line_errors(tmp_path, built):
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    with pytest.raises(ModelError, match="not found"):
        read_run(tmp_path / "nowhere")
    for missing in ("model.json", "config.json", "status.json", "checkpoints/best.pt"):
        run = make_run(tmp_path / missing.replace("/", "_"))
        (run / missing).unlink()
        with pytest.raises(ModelError, match=missing + ": missing"):
            read_run(run)
        result = CliRunner().invoke(app, ["package", str(run), "--out", str(tmp_path / "x.zip")])
        assert result.exit_code == 2
        lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and missing in lines[0] and "Traceback" not in result.output

    run = make_run(tmp_path / "broken_json")
    (run / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="model.json: cannot be read as JSON"):
        read_run(run)

    run = make_run(tmp_path / "other_weights")
    bigger = make_run(tmp_path / "bigger", kwargs={"feature_maps": [6, 8], "z_down": [1], "dropout": 0.0})
    (run / "checkpoints" / "best.pt").write_bytes((bigger / "checkpoints" / "best.pt").read_bytes())
    with pytest.raises(ModelError, match="does not fit the network"):
        load_network(read_run(run))

    run = make_run(tmp_path / "bad_arch")
    model = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**model, "arch": "vnet"}))
    with pytest.raises(ModelError, match="unknown architecture 'vnet'"):
        read_run(run)


def test_bad_options_give_one_line_errors(tmp_path, built):
    run = built["run"]
    with pytest.raises(ConfigError, match="--format 'tar'"):
        build_package(run, tmp_path / "p.zip", format="tar")
    with pytest.raises(OutputError, match="ending in .zip"):
        build_package(run, tmp_path / "p.tar")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        build_package(run, tmp_path / "full", format="folder")
    with pytest.raises(ConfigError, match="--license 'NOPE'"):
        build_package(run, tmp_path / "p.zip", metadata=PackageMetadata(license="NOPE"))
    with pytest.raises(ConfigError, match="--name"):
        build_package(run, tmp_path / "p.zip", metadata=PackageMetadata(name="a/b"))
    with pytest.raises(ConfigError, match="--version"):
        build_package(run, tmp_path / "p.zip", metadata=PackageMetadata(version="one"))
    with pytest.raises(ConfigError, match="halo"):
        build_package(run, tmp_path / "p.zip", metadata=PackageMetadata(halo=(0, 4, 4)), test_volume=built["volume"])
    tiny = write_cyst(tmp_path / "tiny.tif", shape=(8, 16, 16))
    with pytest.raises(ModelError, match="give a larger --test-volume"):
        build_package(run, tmp_path / "p.zip", test_volume=tiny)
    with pytest.raises(InputError, match="smaller than the package's minimum"):
        build_package(run, tmp_path / "p.zip", test_volume=tiny, metadata=PackageMetadata(halo=(6, 8, 8)))
    assert not (tmp_path / "p.zip").exists()
