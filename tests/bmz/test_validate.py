"""Tests of cartocell_bmz.bmz.validate and ``cartocell-bmz validate``, offline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cartocell_bmz.cli.app import app
from cartocell_bmz.errors import ConfigError, InputError, ModelError
from cartocell_bmz.bmz.export import build_package
from cartocell_bmz.bmz.validate import DESCRIPTION_ROW, ValidationRow, all_passed, resolve_source, validate_package
from builders import MODEL_PACKAGES, model_package_params, make_run, no_network, write_cyst


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A package folder built from a tiny run."""
    root = tmp_path_factory.mktemp("validation")
    run = make_run(root / "run", seed=1)
    volume = write_cyst(root / "cyst.tif", seed=4)
    with no_network():
        return build_package(run, root / "pkg", format="folder", test_volume=volume)


@pytest.fixture(scope="module")
def wrong_output(package, tmp_path_factory) -> Path:
    """The same package whose test output is off by 0.1 (hash updated, so the description stays valid)."""
    bad = tmp_path_factory.mktemp("wrong") / "pkg"
    shutil.copytree(package, bad)
    out = np.load(bad / "test_output.npy")
    np.save(bad / "test_output.npy", (out + 0.1).astype(np.float32))
    rdf = yaml.safe_load((bad / "rdf.yaml").read_text())
    rdf["outputs"][0]["test_tensor"]["sha256"] = hashlib.sha256((bad / "test_output.npy").read_bytes()).hexdigest()
    (bad / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return bad


@pytest.mark.parametrize("package_dir", model_package_params())
def test_every_model_package_passes_all_three_weight_formats_offline(package_dir):
    """Issues 6, 15: `validate` passes for every package in model_packages/, all three formats, with no network."""
    assert len(MODEL_PACKAGES) == 6
    with no_network() as attempts:
        rows = validate_package(package_dir, devices=["cpu"])
    assert attempts == []
    assert [r.check for r in rows] == [DESCRIPTION_ROW, "onnx", "pytorch_state_dict", "torchscript"]
    assert all_passed(rows), [str(r) for r in rows]
    assert all(r.error is None for r in rows)
    # reproduce-test-output + parameterised inference (n = 0, 1, 2 x batch 1, 2)
    assert all(r.n_tests >= 4 for r in rows[1:])


def test_a_wrong_test_output_fails_every_format_with_its_first_error(wrong_output):
    with no_network():
        rows = validate_package(wrong_output, devices=["cpu"])
    assert rows[0].passed  # the description itself is valid
    assert [r.check for r in rows[1:]] == ["onnx", "pytorch_state_dict", "torchscript"]
    for row in rows[1:]:
        assert not row.passed
        assert "disagree with expected values" in row.error and "\n" not in row.error
    assert not all_passed(rows)


def test_only_the_asked_weight_format(package):
    with no_network():
        rows = validate_package(package / "rdf.yaml", weights="torchscript", devices=["cpu"])
    assert [r.check for r in rows] == [DESCRIPTION_ROW, "torchscript"] and all_passed(rows)
    with pytest.raises(ModelError, match="has no keras_hdf5 weights; it has onnx, pytorch_state_dict, torchscript"):
        validate_package(package, weights="keras_hdf5")
    with pytest.raises(ConfigError, match="--weights 'pickle'"):
        validate_package(package, weights="pickle")


def test_a_broken_description_is_one_failed_row(package, tmp_path):
    bad = tmp_path / "pkg"
    shutil.copytree(package, bad)
    (bad / "weights_torchscript.pt").write_bytes(b"not the weights")  # sha256 no longer matches
    rows = validate_package(bad)
    assert len(rows) == 1 and rows[0].check == DESCRIPTION_ROW and not rows[0].passed
    assert "sha256" in rows[0].error.lower() or "hash" in rows[0].error.lower()


def test_unresolvable_sources(tmp_path):
    with pytest.raises(InputError, match="no such package"):
        resolve_source(tmp_path / "missing.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no rdf.yaml"):
        resolve_source(tmp_path / "empty")
    assert resolve_source("happy-honeybee") == "happy-honeybee"
    with no_network(), pytest.raises(ModelError, match="happy-honeybee: cannot be loaded"):
        validate_package("happy-honeybee")


def test_validate_command_prints_a_table_and_sets_the_exit_code(package, wrong_output):
    runner = CliRunner()
    with no_network():
        ok = runner.invoke(app, ["validate", str(package), "--weights", "pytorch_state_dict", "--device", "cpu"])
        bad = runner.invoke(app, ["validate", str(wrong_output), "--weights", "torchscript", "--device", "cpu"])
        missing = runner.invoke(app, ["validate", str(package.parent / "nothing.zip")])
    assert ok.exit_code == 0, ok.output
    assert "pytorch_state_dict" in ok.output and "passed" in ok.output and "FAILED" not in ok.output
    assert bad.exit_code == 1 and "FAILED" in bad.output and "disagree" in bad.output
    assert missing.exit_code == 2
    assert missing.output.strip().startswith("error:") and len(missing.output.strip().splitlines()) == 1


def test_row_text():
    assert str(ValidationRow("torchscript", True, None, 5, 1.25)) == "torchscript: passed (5 tests, 1.2 s)"
    assert "FAILED: boom" in str(ValidationRow("onnx", False, "boom"))
    assert not all_passed([])
