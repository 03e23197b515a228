"""Run BiaPy 3.7.1's own test workflow on a BMZ package (``MODEL.SOURCE: bmz``); print JSON.

Run by ``biapy_runs_package.py`` with the Python of BiaPy's own virtual environment::

    .biapy-venv/bin/python benchmarks/biapy_bmz_test_driver.py PACKAGE IMAGES_DIR RESULT_DIR MODE

BiaPy is imported whole, as its users run it (``biapy.BiaPy(config).run_job()``), with
``MODEL.SOURCE: bmz`` and ``MODEL.BMZ.SOURCE_MODEL_ID`` set to the package folder.  Its
workflow then does what it does for any BMZ model: ``check_bmz_args`` reads the
description (workflow, channels F+C+M, patch size, normalisation), rewrites the
configuration to it, ``load_description`` loads the package, ``build_bmz_model`` builds the
network from its architecture file and state dict, and the test loop normalises each
image, tiles it, predicts, applies its activations and saves the probabilities to
``RESULT_DIR/<job>/results/<job>_1/per_image/`` (before its post-processing).

One thing is replaced: ``biapy.models.find_bmz_models``, BiaPy's only network call, which
asks the online collection which entry matches the id.  Here it answers from the local
package, in the shape the collection gives (``raw.manifest`` is the description), and
finds nothing for any other id.

MODE ``tiled`` leaves BiaPy's tiling as it sets it for this package: its patch is the
description's smallest valid input, with ``DATA.TEST.PADDING`` as given by ``--padding``
(default 0, BiaPy's default).  MODE ``single`` predicts each volume as one patch as large
as the volume: ``check_bmz_args``'s patch size is replaced by the volume's shape (it must
be a valid input size of the package).

Printed JSON (also written to ``RESULT_DIR/bmz_<MODE>.json``, since BiaPy prefixes what
it prints with a time stamp): ``seconds`` (the whole ``run_job``), ``patch``, ``padding``, ``channels``
(BiaPy's channel names), ``per_image`` (the folder of saved probabilities).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _fake_find_bmz_models(package: Path):
    """BiaPy's lookup in the online collection, answered from one local package."""
    import yaml

    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    entry = {
        "artifact_path": f"bioimage-io/{package.name}",
        "id": f"bioimage-io/{package.name}",
        "alias": package.name,
        "nickname": package.name,
        "rdf_source": str(package / "rdf.yaml"),
        "version": rdf.get("version"),
        "format_version": rdf.get("format_version"),
        "urls": {"covers": {}, "documentation": rdf.get("documentation")},
        "raw": {"id": f"bioimage-io/{package.name}", "type": "model", "manifest": rdf},
    }

    def find_bmz_models(model_ID=None, url=None, timeout=30):  # noqa: N803 - BiaPy's signature
        if model_ID is None or str(model_ID).lower() in {str(package).lower(), package.name.lower()}:
            return [entry]
        return []

    return find_bmz_models


def _config(package: Path, images: Path, padding: tuple[int, int, int]) -> dict:
    return {
        "SYSTEM": {"NUM_CPUS": 2, "NUM_WORKERS": 0, "SEED": 0},
        "PROBLEM": {"TYPE": "INSTANCE_SEG", "NDIM": "3D",
                    "INSTANCE_SEG": {"DATA_CHANNELS": ["F", "C", "M"]}},
        "DATA": {
            "PATCH_SIZE": (80, 80, 80, 1),  # replaced by check_bmz_args with the package's
            "TEST": {"PATH": str(images), "IN_MEMORY": True, "LOAD_GT": False,
                     "PADDING": padding, "OVERLAP": (0, 0, 0)},
        },
        "MODEL": {"SOURCE": "bmz", "BMZ": {"SOURCE_MODEL_ID": str(package)}},
        "TRAIN": {"ENABLE": False},
        "TEST": {"ENABLE": True, "AUGMENTATION": False, "FULL_IMG": False, "SAVE_MODEL_RAW_OUTPUT": True,
                 "VERBOSE": False},
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("package", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("result_dir", type=Path)
    parser.add_argument("mode", choices=["tiled", "single"])
    parser.add_argument("--padding", type=int, nargs=3, default=(0, 0, 0))
    args = parser.parse_args(argv)
    package = args.package.resolve()

    import numpy as np
    import tifffile

    import biapy
    import biapy.engine.base_workflow as base_workflow
    import biapy.models as models

    models.find_bmz_models = _fake_find_bmz_models(package)
    seen: dict = {}
    original_check = base_workflow.check_bmz_args

    def check_bmz_args(model_id, cfg=None):
        preproc, opts, info = original_check(model_id, cfg)
        if args.mode == "single":
            shapes = {tifffile.imread(p).shape for p in sorted(args.images.glob("*.tif"))}
            if len(shapes) != 1:
                raise SystemExit(f"single mode needs volumes of one shape, found {sorted(shapes)}")
            opts["DATA.PATCH_SIZE"] = (*shapes.pop(), 1)
        seen.update(patch=list(opts["DATA.PATCH_SIZE"]), channels=list(opts["PROBLEM.INSTANCE_SEG.DATA_CHANNELS"]),
                    normalization=opts.get("DATA.NORMALIZATION.TYPE"))
        return preproc, opts, info

    base_workflow.check_bmz_args = check_bmz_args
    name = f"bmz_{args.mode}"
    job = biapy.BiaPy(_config(package, args.images.resolve(), tuple(args.padding)),
                      result_dir=str(args.result_dir.resolve()), name=name, run_id=1, gpu="")
    t0 = time.perf_counter()
    job.run_job()
    seconds = time.perf_counter() - t0
    per_image = args.result_dir.resolve() / name / "results" / f"{name}_1" / "per_image"
    files = sorted(per_image.glob("*.tif"))
    if not files:
        raise SystemExit(f"BiaPy wrote no probabilities under {per_image}")
    shape = list(np.asarray(tifffile.imread(files[0])).shape)
    report = json.dumps({"seconds": seconds, "padding": list(args.padding), "per_image": str(per_image),
                         "files": [f.name for f in files], "shape": shape, **seen})
    (args.result_dir / f"{name}.json").write_text(report)
    print(report)


if __name__ == "__main__":
    main(sys.argv[1:])
