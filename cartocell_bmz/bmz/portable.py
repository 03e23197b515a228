"""The ``rdf.yaml`` form every BMZ consumer reads, and rewriting a package's description in it.

bioimageio.spec builds and validates a package's description in its newest format
(0.5.12 here), which writes ``covers`` and ``documentation`` as ``{source, sha256}``
objects; bioimageio.spec 0.5.7.4, which BiaPy 3.7.1 pins, rejects those ("Input
should be a valid string").  :func:`portable_content` turns a dumped description
into format :data:`~cartocell_bmz.bmz.contents.FORMAT_VERSION` (plain file names
there), which 0.5.7.4 reads as it is and 0.5.12 and 0.5.14 update on loading.

:func:`package_kwargs` writes the architecture's ``out_channels`` in BiaPy's list
form (``[3]``, as BiaPy's own CartoCell packages write ``output_channels``): BiaPy
asserts a list for packages tagged ``biapy``; the networks accept both.

:func:`refresh_description` rewrites the description of an existing package folder
from its own files (no training run, no re-export: weights and test tensors are
kept byte for byte), :func:`add_onnx` adds ONNX weights to such a package (exported
from its own state dict and checked on its own test input, every other file kept),
and :func:`read_evaluation` reads a package's test-set figures.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Mapping

from cartocell_bmz.bmz.contents import BASE_TAGS, DOC_FILE, FORMAT_VERSION
from cartocell_bmz.bmz.formats import RDF_FILE, RDF_NAMES, WEIGHT_FORMATS
from cartocell_bmz.errors import ConfigError, InputError, ModelError, one_line
from cartocell_bmz.io.hashing import sha256_file

#: Key of cartocell-bmz's own section of ``config``.
CONFIG_KEY = "cartocell_bmz"

#: Marker of an architecture file that accepts ``out_channels`` as a list.
_LIST_FORM_MARKER = "def _out_channels("


def accepts_list_out_channels(arch_file: str | os.PathLike) -> bool:
    """Whether a cartocell-bmz architecture file accepts ``out_channels=[3]`` (files from before do not)."""
    try:
        return _LIST_FORM_MARKER in Path(arch_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def package_kwargs(kwargs: Mapping[str, Any], arch_file: str | os.PathLike) -> dict[str, Any]:
    """The architecture kwargs as a package writes them: ``out_channels`` as a one-element list.

    Examples
    --------
    >>> from cartocell_bmz.networks import source_path
    >>> package_kwargs({"in_channels": 1, "out_channels": 3}, source_path("unet"))
    {'in_channels': 1, 'out_channels': [3]}
    """
    out = dict(kwargs)
    if isinstance(out.get("out_channels"), int) and accepts_list_out_channels(arch_file):
        out["out_channels"] = [out["out_channels"]]
    return out


def portable_content(content: Mapping[str, Any]) -> dict[str, Any]:
    """A dumped model description in the form every consumer reads (format ``FORMAT_VERSION``).

    ``covers`` and ``documentation`` become plain file names (their sha256 is dropped:
    format 0.5.7 has no place for it); everything else is kept.

    Examples
    --------
    >>> portable_content({"format_version": "0.5.12", "covers": [{"source": "c.png", "sha256": "ab"}],
    ...                   "documentation": {"source": "d.md", "sha256": "cd"}})
    {'format_version': '0.5.7', 'covers': ['c.png'], 'documentation': 'd.md'}
    """
    out = copy.deepcopy(dict(content))
    out["format_version"] = FORMAT_VERSION
    if "covers" in out:
        out["covers"] = [_plain(c) for c in out["covers"] or []]
    if out.get("documentation") is not None:
        out["documentation"] = _plain(out["documentation"])
    return out


def _plain(entry: Any) -> str:
    return str(entry["source"]) if isinstance(entry, Mapping) else str(entry)


def write_portable(folder: str | os.PathLike) -> Path:
    """Rewrite the ``rdf.yaml`` of a package folder (as bioimageio.spec saved it) in the portable form."""
    from bioimageio.spec.utils import read_yaml

    rdf = Path(folder) / RDF_FILE
    return _write_yaml(portable_content(read_yaml(rdf)), rdf)


def zip_folder(folder: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Zip a package folder (``rdf.yaml`` first, then the other files by name)."""
    folder, out = Path(folder), Path(out)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    names.sort(key=lambda n: n != RDF_FILE)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            zf.write(folder / name, arcname=name)
    return out


def _write_yaml(content: Mapping[str, Any], path: Path) -> Path:
    from bioimageio.spec.utils import write_yaml

    from cartocell_bmz.io.volumes import atomic_path

    buffer = io.StringIO()
    write_yaml(dict(content), buffer)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- existing packages


def refresh_description(folder: str | os.PathLike, *, refresh_architecture: bool = True) -> Path:
    """Rewrite the description of a package cartocell-bmz built, from the package's own files.

    The rules of today's packages, applied without the training run: the tags
    (:data:`~cartocell_bmz.bmz.contents.BASE_TAGS` first, the others kept), the
    kwargs in BiaPy's list form, the test-set figures of ``documentation.md``'s
    ``# Validation`` table in ``config.cartocell_bmz.evaluation``, the portable form.
    Weights, test tensors, cover and documentation are not touched.

    Parameters
    ----------
    folder : path-like
        A package folder whose ``config.cartocell_bmz.architecture`` names a
        cartocell-bmz architecture.
    refresh_architecture : bool
        Copy today's architecture source from :mod:`cartocell_bmz.networks` over
        the package's (same classes, same state-dict keys; it also accepts the list
        form) and record its sha256.

    Returns
    -------
    pathlib.Path
        The rewritten ``rdf.yaml``, validated by the installed bioimageio.spec.

    Raises
    ------
    InputError
        When ``folder`` holds no description cartocell-bmz wrote.
    ModelError
        When the rewritten description does not validate.
    """
    from bioimageio.spec.utils import read_yaml

    from cartocell_bmz import networks
    from cartocell_bmz.bmz.docs import evaluation_from_documentation

    folder = Path(folder)
    rdf = folder / RDF_FILE
    if not rdf.is_file():
        raise InputError(f"{folder}: holds no {RDF_FILE}; give a package folder.")
    content = dict(read_yaml(rdf))
    own = (content.get("config") or {}).get(CONFIG_KEY) or {}
    arch = own.get("architecture")
    try:
        weights = content["weights"]["pytorch_state_dict"]["architecture"]
        spec = networks.get_spec(str(arch))
    except (KeyError, TypeError, ConfigError):
        raise InputError(f"{rdf}: not a package cartocell-bmz built (no config.{CONFIG_KEY}.architecture "
                         "or no pytorch_state_dict architecture).") from None
    arch_file = folder / str(weights["source"])
    if refresh_architecture:
        shutil.copyfile(networks.source_path(spec.name), arch_file)
    weights["sha256"] = sha256_file(arch_file)
    weights["kwargs"] = package_kwargs(weights.get("kwargs") or {}, arch_file)
    old_tags = [str(t) for t in content.get("tags") or []]
    content["tags"] = [*BASE_TAGS, *(t for t in old_tags if t not in BASE_TAGS)]
    evaluation = evaluation_from_documentation((folder / DOC_FILE).read_text(encoding="utf-8")) \
        if (folder / DOC_FILE).is_file() else None
    if evaluation is not None:
        own = {**own, "evaluation": evaluation}
        content["config"] = {**content["config"], CONFIG_KEY: own}
    _write_yaml(portable_content(content), rdf)
    _check_valid(rdf)
    return rdf


def add_onnx(folder: str | os.PathLike, *, replace: bool = False) -> Path:
    """Add ``weights.onnx`` to a package folder cartocell-bmz built, from its own state dict.

    The network is built from the package's architecture file, kwargs and state dict,
    exported (:func:`~cartocell_bmz.bmz.onnx.export_onnx`: one file, dynamic z, y, x)
    and checked on the package's test input (:func:`~cartocell_bmz.bmz.onnx.check_onnx`:
    within 1e-4 of the state dict's probabilities, else nothing is changed); then
    the description gains the ``onnx`` entry (``parent: pytorch_state_dict``) and is
    rewritten in the portable form.  Weights, test tensors, cover and documentation
    are kept byte for byte.

    Parameters
    ----------
    folder : path-like
        A package folder with ``pytorch_state_dict`` weights and an architecture file.
    replace : bool
        Export again when the package already has ONNX weights (default: leave them).

    Returns
    -------
    pathlib.Path
        The rewritten ``rdf.yaml`` (validated by the installed bioimageio.spec).

    Raises
    ------
    InputError
        When ``folder`` holds no description with state-dict weights and an architecture file.
    ModelError
        When the export or its check fails (the package is left as it was).
    """
    import numpy as np
    from bioimageio.spec.utils import read_yaml

    from cartocell_bmz.bmz.contents import ONNX_FILE
    from cartocell_bmz.bmz.onnx import check_onnx, export_onnx, network_from_file

    folder = Path(folder)
    rdf = folder / RDF_FILE
    if not rdf.is_file():
        raise InputError(f"{folder}: holds no {RDF_FILE}; give a package folder.")
    content = dict(read_yaml(rdf))
    weights = dict(content.get("weights") or {})
    if weights.get("onnx") and not replace:
        return rdf
    try:
        state = weights["pytorch_state_dict"]
        arch = state["architecture"]
        arch_file, callable_name = folder / str(arch["source"]), str(arch["callable"])
        test_input = folder / str(content["inputs"][0]["test_tensor"]["source"])
    except (KeyError, TypeError, IndexError):
        raise InputError(f"{rdf}: has no pytorch_state_dict weights with an architecture file and a test "
                         "input to export ONNX weights from.") from None
    net = network_from_file(arch_file, callable_name, arch.get("kwargs") or {}, folder / str(state["source"]))
    example = np.load(test_input)
    staged = folder / f".{ONNX_FILE}.new"
    try:
        export_onnx(net, staged, example)
        check = check_onnx(staged, net, example)
        os.replace(staged, folder / ONNX_FILE)
    finally:
        staged.unlink(missing_ok=True)
    weights["onnx"] = {"source": ONNX_FILE, "sha256": sha256_file(folder / ONNX_FILE),
                       "parent": "pytorch_state_dict", "opset_version": check.facts.opset}
    order = {name: i for i, name in enumerate(WEIGHT_FORMATS)}  # bioimageio.spec's order, as a fresh package
    content["weights"] = {k: weights[k] for k in sorted(weights, key=lambda k: order.get(k, len(order)))}
    _write_yaml(portable_content(content), rdf)
    _check_valid(rdf)
    return rdf


def _check_valid(rdf: Path) -> None:
    from bioimageio.spec import InvalidDescr, ValidationContext, load_description

    with ValidationContext(root=rdf.parent, file_name=rdf.name, perform_io_checks=True):
        descr = load_description(rdf, perform_io_checks=True)
    if isinstance(descr, InvalidDescr):
        errors = [e for d in descr.validation_summary.details for e in d.errors]
        first = f"{'.'.join(map(str, errors[0].loc))}: {errors[0].msg}" if errors else "invalid"
        raise ModelError(f"{rdf}: the rewritten description does not validate ({one_line(first)}).")


def read_evaluation(package: str | os.PathLike) -> dict[str, Any] | None:
    """The test-set figures a package records (``config.cartocell_bmz.evaluation``), or ``None``.

    Parameters
    ----------
    package : path-like
        A package folder, ``.zip`` or description file.
    """
    content = read_raw_description(package)
    own = (content.get("config") or {}).get(CONFIG_KEY) or {}
    evaluation = own.get("evaluation")
    return dict(evaluation) if isinstance(evaluation, Mapping) else None


def read_raw_description(package: str | os.PathLike) -> dict[str, Any]:
    """A package's description as plain YAML content (no validation, no file checks).

    Raises
    ------
    InputError
        When no description can be read from ``package``.
    """
    from bioimageio.spec.utils import read_yaml

    path = Path(package)
    try:
        if path.is_dir():
            found = next((path / n for n in RDF_NAMES if (path / n).is_file()), None)
            if found is None:
                raise InputError(f"{path}: folder holds no {RDF_FILE}; is it a model package?")
            data = read_yaml(found)
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in RDF_NAMES if n in zf.namelist()), None)
                if name is None:
                    raise InputError(f"{path}: the zip holds no {RDF_FILE}; is it a model package?")
                data = read_yaml(io.StringIO(zf.read(name).decode("utf-8")))
        else:
            data = read_yaml(path)
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: its description cannot be read ({one_line(exc)}).") from None
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: its description is not a YAML mapping.")
    return dict(data)


__all__ = [
    "CONFIG_KEY",
    "accepts_list_out_channels",
    "add_onnx",
    "package_kwargs",
    "portable_content",
    "read_evaluation",
    "read_raw_description",
    "refresh_description",
    "write_portable",
    "zip_folder",
]
