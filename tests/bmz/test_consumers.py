"""The consumers' rules (cartocell_bmz.bmz.consumers) on the embedded packages, on BiaPy's own
published CartoCell descriptions and on variants whose answer is known from BiaPy's source."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cartocell_bmz.bmz.consumers import biapy_reading, consumer_verdicts, onnx_verdict, tool_verdicts

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p for p in (ROOT / "model_packages").iterdir() if (p / "rdf.yaml").is_file())
REFERENCE = ROOT.parent / "shared" / "reference" / "bmz-cartocell"


def _rdf(folder: Path) -> dict:
    return yaml.safe_load((folder / "rdf.yaml").read_text())


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_biapy_reads_every_embedded_package_as_f_c_m(package):
    reading = biapy_reading(_rdf(package))
    assert not reading.error, reading.reason
    assert (reading.workflow, reading.ndim, reading.channels) == ("INSTANCE_SEG", "3D", ("F", "C", "M"))
    assert reading.our_channels == ("B", "C", "M")


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared/reference/bmz-cartocell is not beside the checkout")
@pytest.mark.parametrize("model_id", ["happy-honeybee", "heroic-otter", "idealistic-turtle", "intelligent-lion",
                                      "merry-water-buffalo", "venomous-swan"])
def test_biapy_reads_its_own_published_cartocell_packages_as_f_c_m(model_id):
    reading = biapy_reading(yaml.safe_load((REFERENCE / f"{model_id}.rdf.yaml").read_text()))
    assert not reading.error and reading.channels == ("F", "C", "M") and reading.patch_size == (80, 80, 80, 1)


def test_biapy_rule_variants_known_from_its_source():
    rdf = _rdf(PACKAGES[0])
    # an int out_channels with the biapy tag: BiaPy's assert fails
    bad = copy.deepcopy(rdf)
    bad["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]["out_channels"] = 3
    assert biapy_reading(bad).error and "AssertionError" in biapy_reading(bad).reason
    # without the biapy tag it falls back to F + C for three channels
    untagged = copy.deepcopy(bad)
    untagged["tags"] = [t for t in rdf["tags"] if t != "biapy"]
    assert biapy_reading(untagged).channels == ("F", "C") and not biapy_reading(untagged).error
    # the description's representation line counts with the biapy tag, but the CartoCell tags win
    described = copy.deepcopy(rdf)
    described["tags"] = ["biapy", "instance-segmentation"]
    described["description"] = "a model\nrepresentation: F+C"
    assert biapy_reading(described).channels == ("F", "C")
    # what bioimageio.spec 0.5.7.4 cannot load
    objects = copy.deepcopy(rdf)
    objects["covers"] = [{"source": "cover.png", "sha256": "0" * 64}]
    assert "0.5.7.4" in biapy_reading(objects).reason
    # an unknown preprocessing and a missing state dict
    pre = copy.deepcopy(rdf)
    pre["inputs"][0]["preprocessing"].append({"id": "binarize", "kwargs": {"threshold": 0.5}})
    assert "binarize" in biapy_reading(pre).reason
    nosd = copy.deepcopy(rdf)
    del nosd["weights"]["pytorch_state_dict"]
    assert "pytorch_state_dict" in biapy_reading(nosd).reason


def test_ilastik_and_deepimagej_rules():
    rdf = _rdf(PACKAGES[0])
    by_name = {v.consumer: v for v in tool_verdicts(rdf)}
    assert by_name["ilastik"].reads and "pytorch_state_dict, torchscript" in by_name["ilastik"].detail
    assert by_name["deepImageJ"].reads and by_name["deepImageJ"].runs is None
    assert "weights onnx, torchscript; onnx (opset 17) is within its ONNX engines' opsets (<= 18)" \
        in by_name["deepImageJ"].detail
    assert "weights onnx, pytorch_state_dict, torchscript" in by_name["ilastik"].detail
    only_sd = copy.deepcopy(rdf)
    del only_sd["weights"]["torchscript"], only_sd["weights"]["onnx"]
    dij = {v.consumer: v for v in tool_verdicts(only_sd)}["deepImageJ"]
    assert not dij.reads and "pytorch_state_dict" in dij.detail
    two_out = copy.deepcopy(rdf)
    two_out["outputs"].append(copy.deepcopy(rdf["outputs"][0]))
    assert not {v.consumer: v for v in tool_verdicts(two_out)}["ilastik"].reads


def test_onnx_file_verdict_reads_the_file_and_names_what_a_consumer_refuses():
    rdf = _rdf(PACKAGES[0])
    data = (PACKAGES[0] / "weights.onnx").read_bytes()
    ok = onnx_verdict(rdf, data)
    assert ok.reads and ok.runs is None
    assert ok.detail.startswith("weights.onnx: opset 17, one file (") and "1 input, 1 output, dynamic z, y, x" in ok.detail
    assert onnx_verdict(rdf).reads and "(as described; the file was not read)" in onnx_verdict(rdf).detail
    newer = copy.deepcopy(rdf)
    newer["weights"]["onnx"]["opset_version"] = 19
    assert onnx_verdict(newer, data).detail == "the description says opset 19, the file has 17"
    assert not onnx_verdict(newer).reads and "opset 19 is newer than 18" in onnx_verdict(newer).detail
    split = copy.deepcopy(rdf)
    split["weights"]["onnx"]["external_data"] = {"source": "weights.onnx.data"}
    assert "external data file" in onnx_verdict(split).detail and not onnx_verdict(split, data).reads
    del split["weights"]["onnx"]
    assert not onnx_verdict(split).reads and "has no onnx weights" in onnx_verdict(split).detail
    assert not onnx_verdict(rdf, b"junk").reads and "is not an ONNX model" in onnx_verdict(rdf, b"junk").detail


def test_consumer_verdicts_one_line_per_consumer_without_core():
    lines = [str(v) for v in consumer_verdicts(PACKAGES[0], run_core=False)]
    assert [line.split(":")[0] for line in lines] == ["BiaPy 3.7.1", "ilastik", "deepImageJ", "ONNX file"]
    assert lines[3].startswith("ONNX file: reads: weights.onnx: opset 17, one file")
    assert "F+C+M (F=B, C=C, M=M)" in lines[0]


def test_validate_consumers_command(tmp_path):
    from typer.testing import CliRunner

    from cartocell_bmz.cli.app import app

    package = ROOT / "model_packages" / "synthetic-unet"
    result = CliRunner().invoke(app, ["validate", str(package), "--consumers", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("bioimageio.core") and "(onnx): reads, runs" in lines[0]
    assert "(pytorch_state_dict): reads, runs" in lines[1] and "(torchscript): reads, runs" in lines[2]
    assert lines[3].startswith("BiaPy 3.7.1: reads: INSTANCE_SEG 3D, channels F+C+M")
    assert lines[4].startswith("ilastik: reads") and "weights onnx, pytorch_state_dict, torchscript" in lines[4]
    assert lines[5].startswith("deepImageJ: reads") and "weights onnx, torchscript" in lines[5]
    assert lines[6].startswith("ONNX file: reads: weights.onnx: opset 17, one file")
