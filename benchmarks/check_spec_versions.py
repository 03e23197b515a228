"""Load and validate every package under each bioimageio.spec the consumers use, and ask BiaPy what it reads.

    .venv/bin/python benchmarks/check_spec_versions.py [PACKAGE ...]
        [--venv NAME=PYTHON ...] [--biapy-python .biapy-venv/bin/python]

Each package (default: every folder of model_packages/) is loaded with
``bioimageio.spec.load_description(..., perform_io_checks=True)`` (every listed
file hashed) in each environment, one line per package per version:

* BiaPy 3.7.1's pin, bioimageio.spec 0.5.7.4 with pydantic < 2.14 (``.biapy-venv``);
* bioimageio.core 0.11's pin, bioimageio.spec 0.5.12.0 (the project's ``.venv``);
* the newest, bioimageio.spec 0.5.14.x with pydantic >= 2.14, from a venv made with
  ``python3 -m venv /tmp/spec-new-venv && /tmp/spec-new-venv/bin/pip install
  'bioimageio.spec>=0.5.14,<0.5.15' 'pydantic>=2.14'``.

Then, in the BiaPy venv, BiaPy's own ``biapy.models.check_bmz_model_compatibility``
on each raw description (what the BMZ collection's BiaPy check runs), printed beside
cartocell-bmz's re-implementation (:func:`cartocell_bmz.bmz.consumers.biapy_reading`).
Exit status 1 when any package fails to load or the two BiaPy readings differ.
An environment that is missing is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENVS = {
    "biapy-3.7.1": ROOT / ".biapy-venv" / "bin" / "python",
    "core-0.11": ROOT / ".venv" / "bin" / "python",
    "newest": Path("/tmp/spec-new-venv/bin/python"),
}

#: Runs inside each venv: one JSON line per package.
LOAD_WORKER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import bioimageio.spec as spec, pydantic
from bioimageio.spec import InvalidDescr, load_description
for rdf in sys.argv[1:]:
    try:
        d = load_description(rdf, perform_io_checks=True)
        if isinstance(d, InvalidDescr):
            errs = [e for det in d.validation_summary.details for e in det.errors]
            err = ".".join(map(str, errs[0].loc)) + ": " + errs[0].msg if errs else "invalid"
            out = {"ok": False, "status": d.validation_summary.status, "error": " ".join(err.split())[:200]}
        else:
            out = {"ok": True, "status": d.validation_summary.status, "format": str(d.format_version)}
    except Exception as exc:
        out = {"ok": False, "status": "exception", "error": f"{type(exc).__name__}: {exc}"[:200]}
    out.update(rdf=rdf, spec=spec.__version__, pydantic=pydantic.__version__)
    print(json.dumps(out))
"""

#: Runs in the BiaPy venv: BiaPy's own compatibility check on each raw description.
BIAPY_WORKER = r"""
import contextlib, io, json, sys, warnings
warnings.simplefilter("ignore")
import yaml
with contextlib.redirect_stdout(io.StringIO()):
    from biapy.models import check_bmz_model_compatibility
for rdf in sys.argv[1:]:
    content = yaml.safe_load(open(rdf))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            r = check_bmz_model_compatibility(content)
        out = {"error": r["error"], "reason": r["reason_message"].strip(), "workflow": r["workflow_info"],
               "channels": r["opts"].get("PROBLEM.INSTANCE_SEG.DATA_CHANNELS"),
               "patch_size": list(r["opts"].get("DATA.PATCH_SIZE") or [])}
    except AssertionError:
        out = {"error": True, "reason": "AssertionError", "workflow": {}, "channels": None, "patch_size": []}
    out["rdf"] = rdf
    print(json.dumps(out))
"""


def _run(python: Path, worker: str, rdfs: list[str]) -> list[dict]:
    proc = subprocess.run([str(python), "-c", worker, *rdfs], capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or len(lines) != len(rdfs):
        raise RuntimeError(f"{python} failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    return [json.loads(line) for line in lines]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("packages", nargs="*", type=Path)
    parser.add_argument("--venv", action="append", default=[], metavar="NAME=PYTHON")
    parser.add_argument("--biapy-python", type=Path, default=DEFAULT_VENVS["biapy-3.7.1"])
    args = parser.parse_args(argv)
    packages = args.packages or sorted(p for p in (ROOT / "model_packages").iterdir() if (p / "rdf.yaml").is_file())
    rdfs = [str((p / "rdf.yaml") if p.is_dir() else p) for p in packages]
    venvs = dict(DEFAULT_VENVS)
    venvs.update(dict(v.split("=", 1) for v in args.venv))
    failed = False
    for name, python in venvs.items():
        python = Path(python)
        if not python.is_file():
            print(f"[{name}] skipped: no {python}")
            continue
        try:
            results = _run(python, LOAD_WORKER, rdfs)
        except RuntimeError as exc:
            print(f"[{name}] skipped: {exc}")
            continue
        for pkg, r in zip(packages, results):
            where = f"spec {r['spec']} (pydantic {r['pydantic']})"
            if r["ok"]:
                print(f"{pkg.name:26s} {where:36s} loads: {r['status']}, format {r['format']}")
            else:
                failed = True
                print(f"{pkg.name:26s} {where:36s} FAILS: {r['status']}: {r.get('error')}")
    failed |= _compare_biapy(args.biapy_python, packages, rdfs)
    return 1 if failed else 0


def _compare_biapy(python: Path, packages: list[Path], rdfs: list[str]) -> bool:
    """Print BiaPy's own reading beside ours; whether any differs."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from cartocell_bmz.bmz.consumers import biapy_reading

    if not python.is_file():
        print(f"[BiaPy] skipped: no {python}")
        return False
    differs = False
    for pkg, theirs in zip(packages, _run(python, BIAPY_WORKER, rdfs)):
        ours = biapy_reading(yaml.safe_load(Path(theirs["rdf"]).read_text()), spec_check=False)
        channels = "+".join(theirs["channels"] or []) or "-"
        same = (theirs["error"] == ours.error and (theirs["channels"] or []) == list(ours.channels)
                and theirs["patch_size"] == list(ours.patch_size or []))
        differs |= not same
        state = "error: " + theirs["reason"] if theirs["error"] else (
            f"{theirs['workflow'].get('workflow_type')} {theirs['workflow'].get('ndim')}, channels {channels}, "
            f"patch {tuple(theirs['patch_size'])}")
        print(f"{pkg.name:26s} BiaPy 3.7.1 check_bmz_model_compatibility: {state}; "
              f"cartocell-bmz's re-implementation {'agrees' if same else 'DIFFERS: ' + repr(ours)}")
    return differs


if __name__ == "__main__":
    sys.exit(main())
