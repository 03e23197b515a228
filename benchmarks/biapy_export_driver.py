"""Train BiaPy 3.7.1's CartoCell configuration briefly and export it as a BMZ package; print JSON.

Run by ``biapy_export_runs.py`` with the Python of BiaPy's own virtual environment::

    .biapy-venv/bin/python benchmarks/biapy_export_driver.py DATA RESULT_DIR [--template YAML] [--epochs N]

DATA is a ``cartocell-bmz phantoms`` folder: ``train_M1/{x,y}``, ``validation/{x,y}``,
``test/x``: raw images and instance labels, the layout BiaPy reads (it makes its own
F, C, M targets from the labels).  The configuration is BiaPy's CartoCell training
template (``templates/instance_segmentation/CartoCell_paper/cartocell_training_latest.yaml``
in BiaPy's repository; pass it with ``--template``, BiaPy translates its older keys), or,
without ``--template``, the same settings restated below (:data:`CARTOCELL`).  Only what
makes it a CPU run of minutes changes (:func:`small_run`): a few epochs, small patches and
feature maps, batch norm as CartoCell's network (BiaPy 3.7 would default to instance norm),
no worker processes, the data paths, the test on ``test/x`` and
``MODEL.BMZ.EXPORT`` (name, description, authors, licence, tags, dataset).

BiaPy then trains, tests (its ``per_image`` probabilities of ``test/x``, before its
post-processing, under ``RESULT_DIR/<job>/results/<job>_1/per_image/``) and exports the
package (``.../BMZ_files/``).  Printed JSON: ``seconds`` (``run_job``), ``per_image``,
``bmz_files`` (the folder BiaPy exported to), ``patch``, ``padding``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

#: BiaPy's CartoCell training template (3.5.6 keys), its settings restated.
CARTOCELL = {
    "PROBLEM": {"TYPE": "INSTANCE_SEG", "NDIM": "3D",
                "INSTANCE_SEG": {"DATA_CHANNELS": "BCM", "DATA_MW_TH_TYPE": "manual",
                                 "DATA_MW_TH_BINARY_MASK": 0.2, "DATA_MW_TH_CONTOUR": 0.2,
                                 "DATA_MW_TH_FOREGROUND": 0.25, "DATA_REMOVE_BEFORE_MW": True,
                                 "DATA_REMOVE_SMALL_OBJ_BEFORE": 5}},
    "DATA": {"PATCH_SIZE": "(80, 80, 80, 1)",
             "TRAIN": {"IN_MEMORY": True}, "VAL": {"FROM_TRAIN": False},
             "TEST": {"IN_MEMORY": True, "LOAD_GT": True, "PADDING": "(16,16,16)"}},
    "AUGMENTOR": {"ENABLE": True, "RANDOM_ROT": True, "VFLIP": True, "HFLIP": True, "ZFLIP": True,
                  "ELASTIC": True, "BRIGHTNESS": True, "BRIGHTNESS_FACTOR": "(0.1, 0.15)"},
    "MODEL": {"ARCHITECTURE": "resunet", "FEATURE_MAPS": [52, 68, 84], "Z_DOWN": [1, 1],
              "DROPOUT_VALUES": [0.1, 0.1, 0.1], "LOAD_CHECKPOINT": False},
    "TRAIN": {"ENABLE": True, "OPTIMIZER": "ADAMW", "LR": 1.0e-4, "BATCH_SIZE": 2, "EPOCHS": 1300, "PATIENCE": 100},
    "LOSS": {"CLASS_REBALANCE": False},
    "TEST": {"ENABLE": False, "AUGMENTATION": False, "FULL_IMG": False, "POST_PROCESSING": {"VORONOI_ON_MASK": True}},
}


#: The package's author; BiaPy requires a GitHub user name.
AUTHOR = {"name": "cartocell-bmz developers", "github_user": "cartocell-bmz"}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def small_run(template: dict, data: Path, epochs: int, patch: tuple[int, int, int],
              padding: tuple[int, int, int], feature_maps: list[int]) -> dict:
    """The template with what makes it a few CPU minutes, the data paths and the export fields."""
    return _merge(template, {
        "SYSTEM": {"NUM_CPUS": 2, "NUM_WORKERS": 0, "SEED": 0},
        "DATA": {"PATCH_SIZE": str((*patch, 1)),
                 "TRAIN": {"PATH": str(data / "train_M1" / "x"), "GT_PATH": str(data / "train_M1" / "y")},
                 "VAL": {"PATH": str(data / "validation" / "x"), "GT_PATH": str(data / "validation" / "y")},
                 "TEST": {"PATH": str(data / "test" / "x"), "LOAD_GT": False, "PADDING": str(padding)}},
        # CartoCell's network uses batch norm; BiaPy 3.7 defaults to instance norm ("in"), which
        # the 3.5.6 template does not set.  Instance norm makes every tile's output depend on
        # the tile's own statistics, so no two tilings agree.
        "MODEL": {"FEATURE_MAPS": feature_maps, "NORMALIZATION": "bn",
                  "BMZ": {"EXPORT": {
                      "ENABLE": True, "MODEL_NAME": "cartocell-bmz-biapy-export-check",
                      "DESCRIPTION": "BiaPy 3.7.1 CartoCell template trained a few epochs on synthetic cysts "
                                     "(cartocell-bmz phantoms), to check that BiaPy exports run in cartocell-bmz.",
                      "AUTHORS": [AUTHOR],
                      "LICENSE": "CC-BY-4.0",
                      "TAGS": ["cyst", "fluorescence", "instance-segmentation", "3d"],
                      "DATASET_INFO": [{"name": "cartocell-bmz synthetic cysts", "doi": "none (made locally)",
                                        "image_modality": "fluorescence microscopy"}]}}},
        "TRAIN": {"EPOCHS": epochs, "PATIENCE": epochs},
        "TEST": {"ENABLE": True, "VERBOSE": False, "SAVE_MODEL_RAW_OUTPUT": True},
    })


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("result_dir", type=Path)
    parser.add_argument("--template", type=Path, help="BiaPy's cartocell_training_latest.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patch", type=int, nargs=3, default=(24, 64, 64))
    parser.add_argument("--padding", type=int, nargs=3, default=(4, 16, 16))
    parser.add_argument("--feature-maps", type=int, nargs="+", default=[16, 24, 32])
    parser.add_argument("--checkpoint", type=Path,
                        help="a checkpoint of an earlier run of this driver: no training, test and export only")
    args = parser.parse_args(argv)

    import yaml

    import biapy
    from bioimageio.spec._internal import constants

    # Building the description checks each author's GitHub user name online (api.github.com),
    # which this offline machine cannot reach: the name is declared known instead.
    constants.KNOWN_GITHUB_USERS.add(AUTHOR["github_user"])
    template = yaml.safe_load(args.template.read_text()) if args.template else CARTOCELL
    config = small_run(template, args.data.resolve(), args.epochs, tuple(args.patch), tuple(args.padding),
                       args.feature_maps)
    if args.checkpoint is not None:
        config = _merge(config, {"TRAIN": {"ENABLE": False}, "MODEL": {"LOAD_CHECKPOINT": True},
                                 "PATHS": {"CHECKPOINT_FILE": str(args.checkpoint.resolve())}})
    name = "cartocell_export"
    result_dir = args.result_dir.resolve()
    result_dir.mkdir(parents=True, exist_ok=True)
    (result_dir / f"{name}_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    job = biapy.BiaPy(config, result_dir=str(result_dir), name=name, run_id=1, gpu="")
    t0 = time.perf_counter()
    job.run_job()
    seconds = time.perf_counter() - t0
    run = result_dir / name / "results" / f"{name}_1"
    report = json.dumps({"seconds": seconds, "per_image": str(run / "per_image"),
                         "bmz_files": str(job.cfg.PATHS.BMZ_EXPORT_PATH), "patch": list(args.patch),
                         "padding": list(args.padding), "epochs": args.epochs,
                         "template": str(args.template) if args.template else "restated",
                         "checkpoint": str(args.checkpoint) if args.checkpoint else None})
    (result_dir / f"{name}.json").write_text(report)
    print(report)


if __name__ == "__main__":
    main(sys.argv[1:])
