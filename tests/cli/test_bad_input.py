"""Bad input, as a user meets it: every command, one line on stderr, nothing half-written.

Each case of :data:`CASES` runs one command of the CLI (in-process, through
``typer.testing.CliRunner``) on one kind of bad input and checks what a user
would see and find afterwards:

- a non-zero exit code and exactly one line on stderr, ``error: ...``, naming
  the file, folder, package or value at fault, and no traceback;
- nothing written outside the output folder (the tree of the test is the same
  before and after, apart from the output folder and the cartocell-bmz cache);
- no half-written file: no ``*.part`` leftover anywhere, every TIFF in the
  output folder reads back whole.

A few cases run ``python -m cartocell_bmz`` in a real process, where anything
else a library prints (tifffile's log lines, warnings) would also reach stderr.
All-zero volumes are not an error: each command gives a clean, empty result
(see the ``test_all_zero_*`` tests); the choices are listed in README's table
"Bad input: what you see".
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from cartocell_bmz.layout import INSTANCES_DIR, PROBS_DIR, VORONOI_DIR
from cartocell_bmz.io.volumes import read_volume, write_volume
from lookalike import build_lookalike
from builders import ONE_LEVEL

REPO = Path(__file__).resolve().parents[2]
SPACING = (1.0, 0.5, 0.5)
#: The look-alike's id: not one of the six published ids (no "differs from the published" warning).
MODEL_ID = "cartocell-bmz-bad-input-test"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A tiny look-alike CartoCell package (32^3 tiles, one-level U-Net), every sha256 filled in."""
    pkg = build_lookalike(tmp_path_factory.mktemp("pkg") / "tiny-model", "happy-honeybee", size=32, kwargs=ONE_LEVEL)
    rdf = yaml.safe_load((pkg / "rdf.yaml").read_text())
    rdf["id"] = MODEL_ID
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return pkg


@pytest.fixture(scope="module")
def cyst():
    from cartocell_bmz.core.phantoms import make_cyst

    return make_cyst((16, 48, 48), SPACING, stage="day7", seed=1)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Own caches, no model_packages/, bioimageio pointed at a dead address, and cwd inside the tree."""
    import torch
    from bioimageio.spec._internal._settings import settings

    torch.set_num_threads(1)
    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CARTOCELL_BMZ_MODEL_PACKAGES", str(tmp_path / "no_packages"))
    monkeypatch.setattr(settings, "cache_path", tmp_path / "cache" / "bioimageio")
    monkeypatch.setattr(settings, "collection_http_pattern", "http://127.0.0.1:9/{bioimageio_id}/files/rdf.yaml")
    monkeypatch.setattr(settings, "id_map", "http://127.0.0.1:9/id_map.json")
    monkeypatch.setattr(settings, "http_timeout", 2.0)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a command writing to a relative path would show up in the snapshot


# --------------------------------------------------------------------------- the world of one case


@dataclass
class World:
    """Files of one case: everything lives under ``root`` (the test's tmp_path)."""

    root: Path
    package: Path
    cyst: object

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def folder(self, name: str) -> Path:
        d = self.root / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def raw(self, folder: str = "in", name: str = "a.tif", data=None) -> Path:
        d = self.folder(folder)
        write_volume(d / name, self.cyst.raw.astype(np.float32) if data is None else data, SPACING)
        return d

    def labels(self, folder: str = "gt", name: str = "a.tif", data=None) -> Path:
        d = self.folder(folder)
        write_volume(d / name, self.cyst.labels.astype(np.uint16) if data is None else data, SPACING)
        return d

    def probs(self, folder: str = "probs", name: str = "a.tif", data=None) -> Path:
        from cartocell_bmz.core.targets import make_targets

        d = self.folder(folder)
        write_volume(d / name, make_targets(self.cyst.labels).astype(np.float32) if data is None else data, SPACING)
        return d

    def bad(self, kind: str, folder: str = "in", name: str = "b.tif") -> Path:
        """Write a bad volume of ``kind`` and return its path."""
        d = self.folder(folder)
        path = d / name
        raw = self.cyst.raw.astype(np.float32)
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "2d":
            tifffile.imwrite(path, raw[0])
        elif kind == "5d":
            tifffile.imwrite(path, np.stack([np.stack([raw[:4]] * 2)] * 2))  # (2, 2, 4, 48, 48)
        elif kind == "truncated":
            write_volume(path, raw, SPACING)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "not_tiff":
            path.write_text("z,y,x,value\n0,0,0,1\n")
        elif kind in ("nan", "inf"):
            raw[3, 10, 20] = np.nan if kind == "nan" else np.inf
            tifffile.imwrite(path, raw)
        elif kind == "float_labels":
            tifffile.imwrite(path, self.cyst.labels.astype(np.float32) + 0.5)
        else:
            raise ValueError(kind)
        return path

    def variant(self, name: str, edit: Callable[[dict, Path], None]) -> Path:
        """A copy of the package with ``edit(rdf, folder)`` applied."""
        dest = self.root / "packages" / name
        shutil.copytree(self.package, dest)
        rdf = yaml.safe_load((dest / "rdf.yaml").read_text())
        edit(rdf, dest)
        if rdf:  # an edit that empties it wrote its own file
            (dest / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
        return dest

    def zip(self, name: str, extra: dict[str, bytes] | None = None, compression=zipfile.ZIP_DEFLATED) -> Path:
        """The package zipped, with ``extra`` members added."""
        d = self.folder("zips")
        path = d / name
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for f in sorted(self.package.iterdir()):
                zf.write(f, f.name)
            for member, data in (extra or {}).items():
                zf.writestr(member, data)
        return path

    def training_run(self, name: str = "run", state: dict | None = None) -> Path:
        """A training run folder (model.json, checkpoints/best.pt) of the one-level U-Net of the package.

        Its weights are the look-alike's (random, batch norm calibrated on a cyst); ``state`` replaces them.
        """
        import json

        import torch

        from cartocell_bmz.networks import divisor
        from lookalike import calibrated_network

        d = self.folder(name)
        info = {"arch": "unet", "kwargs": ONE_LEVEL, "divisor": list(divisor("unet", ONE_LEVEL)),
                "channels": ["B", "C", "M"]}
        (d / "model.json").write_text(json.dumps(info))
        (d / "checkpoints").mkdir()
        torch.save(calibrated_network("unet", ONE_LEVEL).state_dict() if state is None else state,
                   d / "checkpoints" / "best.pt")
        return d

    def run_folder(self, name: str = "run") -> Path:
        """A folder that looks like a training run but is not one (no model.json)."""
        d = self.folder(name)
        (d / "config.json").write_text("{}")
        return d


class Case(NamedTuple):
    args: list
    culprit: str  # must appear in the error line
    words: str  # what the error says about it
    out: Path | None  # the output folder (may be written); None: nothing may be written anywhere


def _no_weights(rdf: dict, root: Path) -> None:
    (root / "checkpoint.pth").unlink()


def _wrong_sha(rdf: dict, root: Path) -> None:
    rdf["weights"]["pytorch_state_dict"]["sha256"] = "0" * 64


def _tampered_weights(rdf: dict, root: Path) -> None:
    with open(root / "checkpoint.pth", "ab") as f:
        f.write(b"\0")


def _not_a_model(rdf: dict, root: Path) -> None:
    rdf["type"] = "dataset"


def _two_channels(rdf: dict, root: Path) -> None:
    rdf["outputs"][0]["axes"][1]["channel_names"] = ["foreground", "contours"]


def _two_d(rdf: dict, root: Path) -> None:
    for tensor in (rdf["inputs"][0], rdf["outputs"][0]):
        tensor["axes"] = [a for a in tensor["axes"] if a.get("id") != "z"]
    for step in rdf["inputs"][0]["preprocessing"]:
        if step["id"] == "zero_mean_unit_variance":
            step["kwargs"]["axes"] = ["channel", "y", "x"]


def _broken_yaml(rdf: dict, root: Path) -> None:
    rdf.clear()
    (root / "rdf.yaml").write_text("type: model\ninputs: [unclosed\n")


def _enormous_zip(w: World) -> Path:
    """A zip whose central directory declares two members of 3 GiB (16 MiB compressed each)."""
    path = w.zip("enormous.zip", {"big1.bin": b"x" * 10, "big2.bin": b"y" * 10}, compression=zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    for name in (b"big1.bin", b"big2.bin"):
        at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))  # the member's central directory record
        struct.pack_into("<II", data, at + 20, 16 * 1024**2, 3 * 1024**3)  # compressed, uncompressed size
    path.write_bytes(bytes(data))
    return path


def _fake_zip(w: World) -> Path:
    path = w.folder("zips") / "fake.zip"
    path.write_text("an HTML error page saved as model.zip")
    return path


def _damaged_run(w: World) -> Path:
    run = w.training_run()
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    return run


def _run_without_divisor(w: World) -> Path:
    import json

    run = w.training_run()
    info = json.loads((run / "model.json").read_text())
    del info["divisor"]
    (run / "model.json").write_text(json.dumps(info))
    return run


def _predict(w: World, inputs, model=None, out=None, *extra) -> list:
    return ["predict", *([inputs] if not isinstance(inputs, list) else inputs), "--model", model or w.package,
            "--out", out or w.out, "--trust", "--device", "cpu", *extra]


def _crop(w: World, stack) -> list:
    return ["crop", stack, "--model", w.package, "--out", w.out, "--trust", "--device", "cpu"]


def _bench(w: World, test, models, *extra) -> list:
    return ["benchmark", "--test", test, "--models", models, "--out", w.out, "--trust", "--device", "cpu",
            "--scheduler", "sync", *extra]


def _test_set(w: World, gt_data=None) -> Path:
    w.raw("test/x")
    w.labels("test/y", data=gt_data)
    return w.root / "test"


def _train(w: World, train: Path, *extra, arch: str = "unet") -> list:
    w.raw("val/x")
    w.labels("val/y")
    return ["train", "--train", train, "--val", w.root / "val", "--arch", arch, "--out", w.out, "--preset", "tiny",
            "--epochs", "1", "--device", "cpu", *extra]


def _file_out(w: World) -> Path:
    target = w.root / "results.txt"
    target.write_text("keep me")
    return target


def _case_bad_image(kind: str, words: str):
    def make(w: World) -> Case:
        bad = w.bad(kind)
        return Case(_predict(w, bad), str(bad), words, w.out)
    return make


CASES: dict[str, Callable[[World], Case]] = {
    # ---- predict: raw volumes
    "predict-missing-file": lambda w: Case(_predict(w, w.root / "in" / "nope.tif"), "nope.tif",
                                           "no such file, folder or pattern", w.out),
    "predict-empty-file": _case_bad_image("empty", "the file is empty"),
    "predict-2d-image": _case_bad_image("2d", "2 dimension(s) (48, 48), but a 3D volume (Z, Y, X) is needed"),
    "predict-5d-image": _case_bad_image("5d", "5 dimension(s)"),
    "predict-truncated-tiff": _case_bad_image("truncated", "truncated or damaged"),
    "predict-not-a-tiff": _case_bad_image("not_tiff", "cannot be read as a TIFF volume"),
    "predict-nan": _case_bad_image("nan", "holds 1 NaN or infinite value(s)"),
    "predict-inf": _case_bad_image("inf", "holds 1 NaN or infinite value(s)"),
    "predict-empty-folder": lambda w: Case(_predict(w, w.folder("in")), str(w.root / "in"), "no TIFF volumes", w.out),
    "predict-out-is-a-file": lambda w: Case(_predict(w, w.raw(), out=_file_out(w)), "results.txt",
                                            "is a file, not a folder", None),
    "predict-out-under-a-file": lambda w: Case(_predict(w, w.raw(), out=_file_out(w) / "sub"), "results.txt/sub",
                                               "cannot create the output folder", None),
    # ---- predict: ground truth
    "predict-gt-folder-missing": lambda w: Case(_predict(w, w.raw(), None, None, "--gt", w.root / "nogt"), "nogt",
                                                "ground-truth folder not found", w.out),
    "predict-gt-other-shape": lambda w: Case(
        _predict(w, w.raw(), None, None, "--gt", w.labels(data=np.ones((8, 48, 48), np.uint16))),
        str(w.root / "gt" / "a.tif"), "ground-truth shape (8, 48, 48) differs from its image a.tif (16, 48, 48)",
        w.out),
    "predict-gt-float-labels": lambda w: Case(
        _predict(w, w.raw(), None, None, "--gt", w.bad("float_labels", "gt", "a.tif").parent),
        str(w.root / "gt" / "a.tif"), "fractional values", w.out),
    "predict-gt-file-missing": lambda w: Case(
        _predict(w, w.raw(), None, None, "--gt", w.labels(name="other.tif")), "a.tif",
        f"no ground truth of the same name in {w.root / 'gt'}", w.out),
    # ---- predict: models and packages
    "predict-unknown-model": lambda w: Case(_predict(w, w.raw(), "no-such-model"), "'no-such-model'",
                                            "cannot fetch model", w.out),
    "predict-model-path-missing": lambda w: Case(_predict(w, w.raw(), str(w.root / "models" / "m.zip")), "m.zip",
                                                 "no such model file or folder", w.out),
    "package-missing-weights": lambda w: Case(_predict(w, w.raw(), w.variant("nw", _no_weights)), "checkpoint.pth",
                                              "is missing from the package", w.out),
    "package-wrong-sha256": lambda w: Case(_predict(w, w.raw(), w.variant("sha", _wrong_sha)), "checkpoint.pth",
                                           "does not match the sha256 in its description", w.out),
    "package-tampered-weights": lambda w: Case(_predict(w, w.raw(), w.variant("tw", _tampered_weights)),
                                               "checkpoint.pth", "does not match the sha256", w.out),
    "package-not-a-model": lambda w: Case(_predict(w, w.raw(), w.variant("ds", _not_a_model)), "rdf.yaml",
                                          "is a 'dataset' description, not a model", w.out),
    "package-2-output-channels": lambda w: Case(_predict(w, w.raw(), w.variant("c2", _two_channels)), "c2",
                                                "has 2 channel(s); a CartoCell model needs 3 channels", w.out),
    "package-2d-axes": lambda w: Case(_predict(w, w.raw(), w.variant("yx", _two_d)), "yx",
                                      "has axes b,c,y,x; a CartoCell model needs b,c,z,y,x (3D)", w.out),
    "package-broken-rdf-yaml": lambda w: Case(_predict(w, w.raw(), w.variant("by", _broken_yaml)), "rdf.yaml",
                                              "cannot be read as a YAML model description", w.out),
    "zip-dotdot-member": lambda w: Case(_predict(w, w.raw(), w.zip("dotdot.zip", {"../evil.py": b"boom"})),
                                        "dotdot.zip", "member '../evil.py' points outside the package", w.out),
    "zip-absolute-member": lambda w: Case(
        _predict(w, w.raw(), w.zip("abs.zip", {str(w.root / "evil.py"): b"boom"})), "abs.zip",
        "has an absolute path", w.out),
    "zip-bomb": lambda w: Case(_predict(w, w.raw(), w.zip("bomb.zip", {"evil.bin": bytes(64 * 1024**2)})),
                               "bomb.zip", "member 'evil.bin' would expand", w.out),
    "zip-enormous-unpacked-size": lambda w: Case(_predict(w, w.raw(), _enormous_zip(w)), "enormous.zip",
                                                 "would unpack to 6.0 GiB, more than the 4.0 GiB", w.out),
    "zip-not-a-zip": lambda w: Case(_predict(w, w.raw(), _fake_zip(w)), "fake.zip", "not a readable zip file", w.out),
    # ---- postprocess
    "postprocess-2-channels": lambda w: Case(
        ["postprocess", "--probs", w.probs(data=np.zeros((2, 16, 48, 48), np.float32)), "--out", w.out],
        str(w.root / "probs" / "a.tif"), "has 2 channel(s)", w.out),
    "postprocess-3d-not-4d": lambda w: Case(["postprocess", "--probs", w.raw("probs"), "--out", w.out],
                                            str(w.root / "probs" / "a.tif"), "a CZYX probability volume is needed",
                                            w.out),
    "postprocess-nan": lambda w: Case(
        ["postprocess", "--probs", w.probs(data=np.full((3, 16, 48, 48), np.nan, np.float32)), "--out", w.out],
        str(w.root / "probs" / "a.tif"), "NaN or infinite", w.out),
    "postprocess-truncated": lambda w: Case(
        ["postprocess", "--probs", w.bad("truncated", "probs").parent, "--out", w.out], "b.tif",
        "truncated or damaged", w.out),
    "postprocess-empty-folder": lambda w: Case(["postprocess", "--probs", w.folder("probs"), "--out", w.out],
                                               str(w.root / "probs"), "no TIFF probability volumes", w.out),
    "postprocess-missing-folder": lambda w: Case(["postprocess", "--probs", w.root / "nothing", "--out", w.out],
                                                 "nothing", "folder not found", w.out),
    "postprocess-out-under-a-file": lambda w: Case(["postprocess", "--probs", w.probs(), "--out", _file_out(w) / "o"],
                                                   "results.txt/o", "cannot create the output folder", None),
    # ---- evaluate
    "evaluate-gt-float-labels": lambda w: Case(
        ["evaluate", "--pred", w.labels("pred"), "--gt", w.bad("float_labels", "gt", "a.tif").parent, "--out", w.out],
        str(w.root / "gt" / "a.tif"), "fractional values", w.out),
    "evaluate-pred-float-labels": lambda w: Case(
        ["evaluate", "--pred", w.bad("float_labels", "pred", "a.tif").parent, "--gt", w.labels(), "--out", w.out],
        str(w.root / "pred" / "a.tif"), "fractional values", w.out),
    "evaluate-gt-other-shape": lambda w: Case(
        ["evaluate", "--pred", w.labels("pred"), "--gt", w.labels(data=np.ones((16, 40, 48), np.uint16)),
         "--out", w.out], str(w.root / "gt" / "a.tif"), "differs from its image", w.out),
    "evaluate-gt-missing": lambda w: Case(
        ["evaluate", "--pred", w.labels("pred"), "--gt", w.labels(name="b.tif"), "--out", w.out],
        str(w.root / "pred" / "a.tif"), "no ground truth of the same name", w.out),
    "evaluate-truncated-gt": lambda w: Case(
        ["evaluate", "--pred", w.labels("pred"), "--gt", w.bad("truncated", "gt", "a.tif").parent, "--out", w.out],
        str(w.root / "gt" / "a.tif"), "truncated or damaged", w.out),
    "evaluate-probs-not-4d": lambda w: Case(
        ["evaluate", "--pred", w.labels("pred"), "--gt", w.labels(), "--probs", w.labels("probs"), "--out", w.out],
        str(w.root / "probs" / "a.tif"), "a CZYX probability volume is needed", w.out),
    "evaluate-empty-gt-folder": lambda w: Case(
        ["evaluate", "--pred", w.labels("pred"), "--gt", w.folder("gt"), "--out", w.out], str(w.root / "gt"),
        "no TIFF ground-truth label volumes", w.out),
    "evaluate-out-is-a-file": lambda w: Case(
        ["evaluate", "--pred", w.labels("pred"), "--gt", w.labels(), "--out", _file_out(w)], "results.txt",
        "is a file, not a folder", None),
    # ---- benchmark
    "benchmark-empty-test-folder": lambda w: Case(_bench(w, w.folder("test"), str(w.package)), str(w.root / "test"),
                                                  "has no x/ folder", w.out),
    "benchmark-unknown-model": lambda w: Case(_bench(w, _test_set(w), "no-such-model"), "'no-such-model'",
                                              "cannot fetch model", w.out),
    "benchmark-tampered-package": lambda w: Case(_bench(w, _test_set(w), str(w.variant("tw", _tampered_weights))),
                                                 "checkpoint.pth", "does not match the sha256", w.out),
    "benchmark-zip-dotdot": lambda w: Case(_bench(w, _test_set(w), str(w.zip("dotdot.zip", {"../evil.py": b"x"}))),
                                           "dotdot.zip", "points outside the package", w.out),
    "benchmark-gt-other-shape": lambda w: Case(_bench(w, _test_set(w, np.ones((16, 40, 48), np.uint16)),
                                                      str(w.package)), str(w.root / "test" / "y" / "a.tif"),
                                               "ground-truth shape (16, 40, 48) differs from its image a.tif "
                                               "(16, 48, 48)", w.out),
    # ---- crop
    "crop-missing-file": lambda w: Case(_crop(w, w.root / "in" / "nope.tif"), "nope.tif", "file not found", w.out),
    "crop-2d-image": lambda w: Case(_crop(w, w.bad("2d")), str(w.root / "in" / "b.tif"),
                                    "A 2D image holds no 3D cysts", w.out),
    "crop-no-voxel-size": lambda w: Case(_crop(w, w.bad("nan")), str(w.root / "in" / "b.tif"),
                                         "holds no voxel size; give it with --spacing", w.out),
    "crop-not-a-tiff": lambda w: Case(_crop(w, w.bad("not_tiff")), str(w.root / "in" / "b.tif"),
                                      "cannot be read as a TIFF stack", w.out),
    # ---- analyse (crop -> predict -> measure): the stack is checked by its first step
    "analyse-2d-image": lambda w: Case(["analyse", *_crop(w, w.bad("2d"))[1:]], str(w.root / "in" / "b.tif"),
                                       "A 2D image holds no 3D cysts", w.out),
    "analyse-missing-file": lambda w: Case(["analyse", *_crop(w, w.root / "in" / "nope.tif")[1:]], "nope.tif",
                                           "file not found", w.out),
    # ---- measure
    "measure-float-labels": lambda w: Case(["measure", w.bad("float_labels", "gt", "a.tif"), "--out", w.out],
                                           str(w.root / "gt" / "a.tif"), "fractional values", w.out),
    "measure-2d-labels": lambda w: Case(["measure", w.bad("2d", "gt", "a.tif"), "--out", w.out],
                                        str(w.root / "gt" / "a.tif"), "3D volume (Z, Y, X) is needed", w.out),
    "measure-missing-file": lambda w: Case(["measure", w.root / "gt" / "nope.tif", "--out", w.out], "nope.tif",
                                           "no such file, folder or pattern", w.out),
    # ---- train
    "train-missing-labels-folder": lambda w: Case(_train(w, w.raw("train/x").parent), str(w.root / "train"),
                                                  "y/ (label volumes) is missing", w.out),
    "train-float-labels": lambda w: Case(
        _train(w, (w.raw("train/x"), w.bad("float_labels", "train/y", "a.tif"))[0].parent),
        str(w.root / "train" / "y" / "a.tif"), "fractional values", w.out),
    "train-truncated-raw": lambda w: Case(
        _train(w, (w.bad("truncated", "train/x", "a.tif"), w.labels("train/y"))[1].parent),
        str(w.root / "train" / "x" / "a.tif"), "truncated or damaged", w.out),
    "train-unknown-architecture": lambda w: Case(_train(w, w.root / "val")[:6] + ["nonet", "--out", w.out],
                                                 "'nonet'", "arch must be one of", w.out),
    "train-arch-kwargs-not-json": lambda w: Case(_train(w, w.root / "val", "--arch-kwargs", "{se_window: 3}"),
                                                 "--arch-kwargs", "not valid JSON", w.out),
    "train-arch-kwargs-unknown": lambda w: Case(_train(w, w.root / "val", "--arch-kwargs", '{"se_window": [3, 5, 5]}'),
                                                "'se_window'", "unknown argument", w.out),
    "train-arch-kwargs-bad-window": lambda w: Case(
        _train(w, w.root / "val", "--arch-kwargs", '{"se_window": [3, 4, 5]}', arch="seunet"),
        "se_window", "three odd sizes", w.out),
    # ---- pseudo-label, pipeline, package, validate, phantoms
    "pseudo-label-missing-model": lambda w: Case(
        ["pseudo-label", "--model", w.root / "norun", "--input", w.raw(), "--out", w.out], "norun",
        "no such model file or folder", w.out),
    "pseudo-label-tampered-package": lambda w: Case(
        ["pseudo-label", "--model", w.variant("tw", _tampered_weights), "--input", w.raw(), "--out", w.out,
         "--device", "cpu"], "checkpoint.pth", "does not match the sha256", w.out),
    "pseudo-label-damaged-checkpoint": lambda w: Case(
        ["pseudo-label", "--model", _damaged_run(w), "--input", w.raw(), "--out", w.out, "--device", "cpu"],
        str(w.root / "run"), "cannot load the trained network (PytorchStreamReader failed", w.out),
    "pseudo-label-run-without-divisor": lambda w: Case(
        ["pseudo-label", "--model", _run_without_divisor(w), "--input", w.raw(), "--out", w.out, "--device", "cpu"],
        str(w.root / "run" / "model.json"), "has no 'divisor'", w.out),
    "pipeline-not-a-dataset": lambda w: Case(["pipeline", w.folder("data"), "--out", w.out],
                                             str(w.root / "data" / "train_M1" / "x"), "folder missing", w.out),
    "package-run-missing": lambda w: Case(["package", w.root / "norun", "--out", w.root / "o.zip"], "norun",
                                          "training run folder not found", w.root / "o.zip"),
    "package-not-a-run": lambda w: Case(["package", w.run_folder(), "--out", w.root / "o.zip"], "model.json",
                                        "is not a complete training run folder", w.root / "o.zip"),
    "validate-missing": lambda w: Case(["validate", w.root / "pkg.zip"], "pkg.zip", "no such package file", None),
    "validate-folder-without-rdf": lambda w: Case(["validate", w.folder("nopkg")], "nopkg", "holds no rdf.yaml",
                                                  None),
    "validate-zip-dotdot": lambda w: Case(["validate", w.zip("dotdot.zip", {"../evil.py": b"x"})], "dotdot.zip",
                                          "points outside the package", None),
    "validate-zip-bomb": lambda w: Case(["validate", w.zip("bomb.zip", {"evil.bin": bytes(64 * 1024**2)})],
                                        "bomb.zip", "(a zip bomb?)", None),
    "phantoms-out-under-a-file": lambda w: Case(["phantoms", _file_out(w) / "d", "--n-test", "1"],
                                                "results.txt/d", "cannot create the output folder", None),
}


# --------------------------------------------------------------------------- checks


def _snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple]:
    """Every file and folder under ``root`` (but ``skip``) with its size and modification time."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            p = here / name
            if p in skip:
                continue
            st = p.stat()
            found[str(p.relative_to(root))] = (p.is_dir(), st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return found


def assert_nothing_half_written(root: Path, out: Path | None) -> None:
    """No ``*.part`` anywhere; every TIFF under ``out`` reads back whole."""
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".part")]
    assert not leftovers, leftovers
    if out is not None and out.is_dir():
        for tif in out.rglob("*.tif"):
            kind = "probabilities" if tif.parent.name == PROBS_DIR else "labels"
            read_volume(tif, kind)  # raises on a cut file


def assert_one_line_error(result, culprit: str, words: str) -> str:
    """One ``error:`` line on stderr naming ``culprit`` and saying ``words``; a non-zero exit, no crash."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert culprit in line, (culprit, line)
    assert words in line, (words, line)
    return line


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_and_leaves_nothing_behind(case, tmp_path, package, cyst):
    w = World(tmp_path, package, cyst)
    c = CASES[case](w)
    skip = (w.cache, *((c.out,) if c.out is not None else ()))
    before = _snapshot(tmp_path, skip)
    result = CliRunner().invoke(app(), [str(a) for a in c.args])
    assert_one_line_error(result, c.culprit, c.words)
    assert _snapshot(tmp_path, skip) == before  # nothing written outside the output folder
    assert not list(tmp_path.rglob("evil*"))  # no zip member escaped, not even into the cache
    if case.startswith(("zip", "benchmark-zip", "validate-zip")):  # nothing of a refused zip was unpacked
        assert not (w.cache / "unzipped").exists() or not any((w.cache / "unzipped").iterdir())
    assert_nothing_half_written(tmp_path, c.out)


def app():
    from cartocell_bmz.cli.app import app as the_app

    return the_app


def test_the_suite_covers_every_command(tmp_path, package, cyst):
    from cartocell_bmz.cli.app import COMMANDS

    commands = set()
    for name, make in CASES.items():
        (tmp_path / name).mkdir()
        commands.add(make(World(tmp_path / name, package, cyst)).args[0])
    assert set(COMMANDS) - commands == {"models"}  # `models` reads no file given by the user
    assert len(CASES) >= 25


# --------------------------------------------------------------------------- outputs that cannot be written


def _disk_full(monkeypatch) -> None:
    """Every TIFF write starts, leaves some bytes, then fails as on a full disk."""
    import errno

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"II*\0 a first strip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", full)


@pytest.mark.parametrize("command", ["predict", "postprocess"])
def test_disk_full_is_one_line_and_leaves_no_partial_file(command, tmp_path, package, cyst, monkeypatch):
    w = World(tmp_path, package, cyst)
    args = _predict(w, w.raw()) if command == "predict" else ["postprocess", "--probs", w.probs(), "--out", w.out]
    _disk_full(monkeypatch)
    result = CliRunner().invoke(app(), [str(a) for a in args])
    first = PROBS_DIR if command == "predict" else INSTANCES_DIR
    assert_one_line_error(result, str(w.out / first / "a.tif"), "cannot be written (No space left on device)")
    assert not list(w.out.rglob("*.tif"))
    assert_nothing_half_written(tmp_path, w.out)


def test_output_folder_that_is_not_writable(tmp_path, package, cyst, monkeypatch):
    """Tests run as root, for whom permissions do not bite: the check is made to see a read-only folder."""
    w = World(tmp_path, package, cyst)
    w.out.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if Path(p) == w.out and mode & os.W_OK
                        else real(p, mode, *a, **k))
    result = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.raw())])
    assert_one_line_error(result, str(w.out), "the output folder is not writable; choose another --out")
    assert not any(w.out.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; covered by the two tests above")
def test_output_folder_without_write_permission(tmp_path, package, cyst):
    w = World(tmp_path, package, cyst)
    w.out.mkdir()
    w.out.chmod(0o500)
    try:
        result = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.raw())])
        assert_one_line_error(result, str(w.out), "not writable")
    finally:
        w.out.chmod(0o700)


# --------------------------------------------------------------------------- one bad volume among good ones


def test_a_bad_volume_does_not_stop_the_others(tmp_path, package, cyst):
    """An unattended run over a folder finishes every good volume, then names the bad one."""
    import json

    w = World(tmp_path, package, cyst)
    w.raw(name="a.tif")
    w.bad("truncated", name="b.tif")
    w.raw(name="c.tif", data=cyst.raw[:, ::-1].astype(np.float32))
    result = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.root / "in")])
    line = assert_one_line_error(result, str(w.root / "in" / "b.tif"), "truncated or damaged")
    assert line.startswith("error: 1 of 3 volume(s) could not be used and the others are done")
    for folder in (PROBS_DIR, INSTANCES_DIR, VORONOI_DIR):
        assert sorted(p.name for p in (w.out / folder).iterdir()) == ["a.tif", "c.tif"]
    summary = json.loads((w.out / "predict_summary.json").read_text())
    assert summary["n_images"] == 2 and len(summary["failed"]) == 1 and "b.tif" in summary["failed"][0]
    assert_nothing_half_written(tmp_path, w.out)
    # fixed and rerun: only b.tif is computed
    w.raw(name="b.tif")
    again = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.root / "in")])
    assert again.exit_code == 0, again.output
    assert "3 image(s) (1 computed, 2 already done)" in again.stdout


# --------------------------------------------------------------------------- all-zero volumes: clean, empty results


@pytest.mark.parametrize("value", [0.0, 7.0])
def test_all_zero_raw_volume_predicts_no_cells(tmp_path, package, cyst, value):
    """A volume without contrast gives zero probabilities and 0 cells, not a crash or a volume-filling cell."""
    w = World(tmp_path, package, cyst)
    w.raw(data=np.full((16, 48, 48), value, np.float32))
    result = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.root / "in")])
    assert result.exit_code == 0, result.output
    assert "0 cells found" in result.stdout
    probs = read_volume(w.out / PROBS_DIR / "a.tif", "probabilities").data
    assert probs.shape == (3, 16, 48, 48) and not probs.any()
    for folder in (INSTANCES_DIR, VORONOI_DIR):
        assert not read_volume(w.out / folder / "a.tif", "labels").data.any()


def test_all_zero_raw_volume_pseudo_labels_to_no_cells(tmp_path, package, cyst):
    """The same rule for this project's training runs: a blank volume becomes an empty label volume.

    (This network, run on the zeros a blank volume normalises to, makes 2 cells of its padding.)
    """
    w = World(tmp_path, package, cyst)
    w.raw(data=np.zeros((16, 48, 48), np.float32))
    result = CliRunner().invoke(app(), ["pseudo-label", "--model", str(w.training_run()), "--input",
                                        str(w.root / "in"), "--out", str(w.out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    labels = read_volume(w.out / "y" / "a.tif", "labels").data
    assert labels.shape == (16, 48, 48) and not labels.any()


def test_all_zero_probabilities_postprocess_to_no_cells(tmp_path, package, cyst):
    w = World(tmp_path, package, cyst)
    probs = w.probs(data=np.zeros((3, 16, 48, 48), np.float32))
    result = CliRunner().invoke(app(), ["postprocess", "--probs", str(probs), "--out", str(w.out)])
    assert result.exit_code == 0, result.output
    assert "0 cells after watershed, 0 after Voronoi" in result.stdout
    assert not read_volume(w.out / VORONOI_DIR / "a.tif", "labels").data.any()


def test_all_zero_labels_evaluate_to_counts_without_a_crash(tmp_path, package, cyst):
    """Empty ground truth: every predicted cell is a false positive; both empty: all counts 0 (StarDist's rule)."""
    import json

    w = World(tmp_path, package, cyst)
    blank = np.zeros((16, 48, 48), np.uint16)
    w.labels("gt", data=blank)
    w.labels("pred", data=blank)
    w.labels("pred2", data=cyst.labels.astype(np.uint16))
    n_cells = len(np.unique(cyst.labels)) - 1
    for pred, fp in (("pred", 0), ("pred2", n_cells)):
        out = w.root / f"out_{pred}"
        result = CliRunner().invoke(app(), ["evaluate", "--pred", str(w.root / pred), "--gt", str(w.root / "gt"),
                                            "--out", str(out)])
        assert result.exit_code == 0, result.output
        figures = json.loads((out / "summary.json").read_text())["dataset"]["0.5"]
        assert (figures["tp"], figures["fp"], figures["fn"]) == (0, fp, 0)
        assert figures["f1"] == 0.0


# --------------------------------------------------------------------------- what runs, and what never runs


def _marker_code(marker: Path) -> str:
    return f"\nopen({str(marker)!r}, 'w').write('imported')\n"


def test_tampered_architecture_is_never_imported(tmp_path, package, cyst):
    w = World(tmp_path, package, cyst)
    marker = tmp_path / "imported.txt"
    pkg = w.variant("ta", lambda rdf, root: (root / "unet.py").write_text((root / "unet.py").read_text()
                                                                            + _marker_code(marker)))
    result = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.raw(), pkg)])
    assert_one_line_error(result, "unet.py (weights.pytorch_state_dict.architecture)", "does not match the sha256")
    assert not marker.exists()


def test_architecture_without_sha256_is_not_imported(tmp_path, package, cyst):
    """Code whose hash the description does not declare cannot be checked, so it is not run."""
    w = World(tmp_path, package, cyst)
    marker = tmp_path / "imported.txt"

    def unhashed(rdf, root):
        (root / "unet.py").write_text((root / "unet.py").read_text() + _marker_code(marker))
        del rdf["weights"]["pytorch_state_dict"]["architecture"]["sha256"]

    pkg = w.variant("nohash", unhashed)
    result = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.raw(), pkg)])
    assert_one_line_error(result, "unet.py", "has no sha256 in the description, so it cannot be checked")
    assert not marker.exists()


def test_pickled_code_in_weights_never_runs(tmp_path, package, cyst):
    """State dicts are loaded with weights_only=True: a pickle that would run code is refused, even with a valid sha256."""
    import torch

    from cartocell_bmz.bmz.safety import sha256_file

    w = World(tmp_path, package, cyst)
    marker = tmp_path / "unpickled.txt"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    def evil_weights(rdf, root):
        state = torch.load(root / "checkpoint.pth", weights_only=True)
        state["evil"] = Evil()
        torch.save(state, root / "checkpoint.pth")
        rdf["weights"]["pytorch_state_dict"]["sha256"] = sha256_file(root / "checkpoint.pth")

    pkg = w.variant("pickle", evil_weights)
    assert not marker.exists()
    result = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.raw(), pkg)])
    assert_one_line_error(result, "model pickle", "cannot load its pytorch_state_dict weights")
    assert not marker.exists()
    # the same file loaded without weights_only runs the code: the check above can fail
    torch.load(pkg / "checkpoint.pth", weights_only=False)
    assert marker.exists()


def test_pickled_code_in_a_training_run_never_runs(tmp_path, package, cyst):
    """The same for this project's own training runs (pseudo-label, package): weights_only=True."""
    import torch

    from cartocell_bmz.networks import build_network

    w = World(tmp_path, package, cyst)
    marker = tmp_path / "unpickled.txt"

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    state = build_network("unet", **ONE_LEVEL).state_dict()
    state["evil"] = Evil()
    run = w.training_run(state=state)
    result = CliRunner().invoke(app(), ["pseudo-label", "--model", str(run), "--input", str(w.raw()),
                                        "--out", str(w.out), "--device", "cpu"])
    assert_one_line_error(result, str(run / "checkpoints" / "best.pt"), "it would run code when loaded")
    assert not marker.exists()


def test_code_notice_on_first_use_and_trust_silences_it(tmp_path, package, cyst, monkeypatch):
    w = World(tmp_path, package, cyst)
    args = _predict(w, w.raw())
    args.remove("--trust")
    first = CliRunner().invoke(app(), [str(a) for a in args])
    assert first.exit_code == 0, first.output
    notices = [line for line in first.stderr.splitlines() if line.startswith("notice:")]
    assert len(notices) == 1 and str(package / "unet.py") in notices[0] and "--trust" in notices[0], first.stderr
    second = CliRunner().invoke(app(), [str(a) for a in args + ["--overwrite"]])
    assert second.exit_code == 0 and "notice:" not in second.stderr  # shown once per package
    monkeypatch.setenv("CARTOCELL_BMZ_CACHE", str(tmp_path / "fresh_cache"))
    trusted = CliRunner().invoke(app(), [str(a) for a in _predict(w, w.root / "in", out=w.root / "o2")])
    assert trusted.exit_code == 0 and "notice:" not in trusted.stderr


def test_a_failed_download_leaves_bioimageio_logging_as_it_was(tmp_path, package, cyst):
    """After a BMZ id is looked up, bioimageio.core's DEBUG lines stay off (they would flood stderr per tile)."""
    import bioimageio.core  # noqa: F401  (imported first, as in a notebook)
    from loguru import logger

    from cartocell_bmz.errors import ModelError
    from cartocell_bmz.bmz.resolve import resolve_model
    from cartocell_bmz.run.predictor import Predictor

    seen: list[str] = []
    sink = logger.add(lambda message: seen.append(message.record["name"]), level="DEBUG")
    try:
        with Predictor(package, trust=True, device="cpu") as p:
            p.predict(cyst.raw[:, :32, :32])
        assert not seen  # bioimageio's defaults: its logs are off
        with pytest.raises(ModelError, match="cannot fetch model"):
            resolve_model("no-such-model", notify=lambda message: None)
        with Predictor(package, trust=True, device="cpu") as p:
            p.predict(cyst.raw[:, :32, :32])
    finally:
        logger.remove(sink)
    assert not [name for name in seen if name.startswith("bioimageio")], seen[:3]


# --------------------------------------------------------------------------- real processes


def _run(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BIOIMAGEIO_ID_MAP": "http://127.0.0.1:9/id_map.json",
           "BIOIMAGEIO_COLLECTION_HTTP_PATTERN": "http://127.0.0.1:9/{bioimageio_id}/files/rdf.yaml"}
    return subprocess.run([sys.executable, "-m", "cartocell_bmz", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["predict-truncated-tiff", "zip-dotdot-member", "evaluate-gt-float-labels",
                                  "package-tampered-weights"])
def test_real_process_prints_exactly_one_line(case, tmp_path, package, cyst):
    """In a real process nothing else reaches stderr (tifffile's log lines, warnings, tracebacks)."""
    w = World(tmp_path, package, cyst)
    c = CASES[case](w)
    skip = (w.cache, *((c.out,) if c.out is not None else ()))
    before = _snapshot(tmp_path, skip)
    proc = _run(c.args, tmp_path / "cwd")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert c.culprit in proc.stderr and c.words in proc.stderr
    assert _snapshot(tmp_path, skip) == before
    assert_nothing_half_written(tmp_path, c.out)
