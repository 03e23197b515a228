"""TorchScript weights for a package, converted from the state dict, byte for byte reproducibly.

The conversion runs in a fresh Python subprocess (:data:`_TORCHSCRIPT_WORKER`) so
that nothing of the calling process (its hash seed, its thread count, its
imported modules) reaches the archive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from cartocell_bmz.errors import ModelError

#: The worker: builds the network from the architecture file in its working folder,
#: loads the state dict and saves ``torch.jit.script`` of it.
_TORCHSCRIPT_WORKER = r"""
import json, sys, types
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(1)
# compile the architecture under its bare file name (the cwd holds it): importlib
# would record the absolute path, which TorchScript copies into its debug info
module = types.ModuleType("cartocell_architecture")
module.__file__ = args["arch"]
sys.modules[module.__name__] = module
with open(args["arch"], encoding="utf-8") as fh:
    exec(compile(fh.read(), args["arch"], "exec"), module.__dict__)
net = getattr(module, args["callable"])(**args["kwargs"])
net.load_state_dict(torch.load(args["weights"], map_location="cpu", weights_only=True), strict=True)
net.eval()
torch.jit.script(net).save(args["out"])
"""


def export_torchscript(
    arch_file: Path, callable_name: str, kwargs: Mapping[str, Any], weights: Path, out: Path
) -> Path:
    """Script the network with ``torch.jit.script`` and save it, reproducibly.

    TorchScript archives embed class attributes in Python's set order (which
    depends on ``PYTHONHASHSEED``) and the source file names of the scripted
    code, so the export runs in a subprocess with ``PYTHONHASHSEED=0``, one
    thread, and the architecture file compiled under its bare name from its own
    folder.  The same weights then give byte-identical files with the same torch
    installation (the debug information names torch's own source files).

    Parameters
    ----------
    arch_file : pathlib.Path
        The self-contained architecture source file (imports only torch).
    callable_name : str
        Class name of the network in ``arch_file``.
    kwargs : mapping
        Constructor arguments of the network.
    weights : pathlib.Path
        State dict of the network.
    out : pathlib.Path
        TorchScript archive to write.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    ModelError
        When scripting fails (the last line of the worker's error).
    """
    args = {
        "arch": arch_file.name, "callable": callable_name, "kwargs": dict(kwargs),
        "weights": str(Path(weights).resolve()), "out": out.name,
    }
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", _TORCHSCRIPT_WORKER, json.dumps(args)],
        cwd=arch_file.parent, env=env, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ModelError(f"{arch_file.name}: TorchScript export of {callable_name} failed ({last}).")
    produced = arch_file.parent / out.name
    if produced != out:
        shutil.move(produced, out)
    return out


__all__ = ["export_torchscript"]
