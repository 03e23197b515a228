"""Which BMZ consumers read a package, what they read, and why not: one verdict per consumer.

The rules are re-implemented from the consumers' source or documentation, so that
they can be checked here without installing them:

- **BiaPy 3.7.1** (``biapy.models.check_bmz_model_compatibility``, also the BMZ
  collection's BiaPy partner check), with the bioimageio.spec it pins (0.5.7.4):
  :func:`biapy_reading` gives the workflow and the channels BiaPy would read.
- **ilastik**: one input and one output tensor; ``pytorch_state_dict``, TorchScript or ONNX.
- **deepImageJ** (JDLL): one input and one output tensor; TorchScript, ONNX or
  TensorFlow weights, not ``pytorch_state_dict``; its PyTorch engines are far older
  than the torch the weights were saved with, so whether they load is not known here.
- **bioimageio.core**: its own test of each weight format
  (:func:`~cartocell_bmz.bmz.validate.validate_package`), run here.
- **ONNX file** (what deepImageJ and ilastik load): one file, no external data, opset
  <= 18, one input and one output, dynamic z, y, x (:func:`onnx_verdict`, the file itself
  read with :func:`~cartocell_bmz.bmz.onnx.inspect_onnx`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

#: BiaPy's names of a channel -> ours (F is BiaPy's foreground, our B cell body).
BIAPY_TO_OURS: dict[str, str] = {"F": "B", "C": "C", "M": "M"}

#: Tags that make BiaPy read F + C + M (with ``biapy``), as its own CartoCell packages carry.
BIAPY_CARTOCELL_TAGS: tuple[str, ...] = ("biapy", "cyst", "3d", "fluorescence")

#: Preprocessing ids BiaPy 3.7.1 maps onto its own normalisation (ensure_dtype to float is dropped).
BIAPY_PREPROCESSING: tuple[str, ...] = (
    "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_range", "scale_linear", "clip",
)

#: BiaPy's own architectures, for which it assumes one semantic class when the kwargs name none.
_BIAPY_ARCHITECTURES: tuple[str, ...] = (
    "unet", "resunet", "resunet++", "seunet", "attention_unet", "resunet_se", "unetr", "multiresunet",
    "unext_v1", "unext_v2", "hrnet",
)

#: Weight formats each tool runs.
ILASTIK_WEIGHTS: tuple[str, ...] = ("pytorch_state_dict", "torchscript", "onnx")
DEEPIMAGEJ_WEIGHTS: tuple[str, ...] = ("torchscript", "onnx", "tensorflow_saved_model_bundle")


@dataclass(frozen=True)
class Verdict:
    """What one consumer makes of a package.

    Attributes
    ----------
    consumer : str
        The tool (and weight format, for bioimageio.core).
    reads : bool
        Whether it accepts the description.
    runs : bool or None
        Whether it runs the weights: tested here (bioimageio.core) or ``None`` when not known here.
    detail : str
        What it reads (workflow, channels), or why not.
    """

    consumer: str
    reads: bool
    runs: bool | None
    detail: str

    def __str__(self) -> str:
        state = "reads" if self.reads else "does not read"
        if self.runs is not None:
            state += ", runs" if self.runs else ", does not run"
        return f"{self.consumer}: {state}: {self.detail}"


@dataclass(frozen=True)
class BiapyReading:
    """What BiaPy's compatibility check returns for a description.

    Attributes
    ----------
    error : bool
        ``True`` when BiaPy refuses the package.
    reason : str
        BiaPy's reason (empty when accepted).
    workflow : str or None
        ``INSTANCE_SEG``, ``SEMANTIC_SEG``, ...
    ndim : str or None
        ``"2D"`` or ``"3D"``.
    channels : tuple of str
        The instance channels it reads (``("F", "C", "M")``), empty for other workflows.
    patch_size : tuple of int or None
        ``DATA.PATCH_SIZE`` it sets (z, y, x, c).
    """

    error: bool
    reason: str
    workflow: str | None = None
    ndim: str | None = None
    channels: tuple[str, ...] = ()
    patch_size: tuple[int, ...] | None = None

    @property
    def our_channels(self) -> tuple[str, ...]:
        """The channels read, in our names (F -> B); a channel we do not have keeps its name."""
        return tuple(BIAPY_TO_OURS.get(c, c) for c in self.channels)


def biapy_reading(content: Mapping[str, Any], *, spec_check: bool = True) -> BiapyReading:
    """BiaPy 3.7.1's ``check_bmz_model_compatibility`` (all workflows), re-implemented on a raw description.

    Its assertion that a ``biapy``-tagged package lists ``out_channels`` becomes a refusal here.
    With ``spec_check``, so does what bioimageio.spec 0.5.7.4 (BiaPy's pin) cannot load when
    BiaPy then loads the package: ``covers`` or ``documentation`` written as ``{source, sha256}``
    objects (``check_bmz_model_compatibility`` itself reads the raw YAML and does not see it).

    Examples
    --------
    >>> rdf = {"tags": ["biapy", "cyst", "3d", "fluorescence", "instance-segmentation"],
    ...        "inputs": [{"axes": [{"type": "batch"}, {"type": "channel"},
    ...                             *({"type": "space", "id": a, "size": 16} for a in "zyx")]}],
    ...        "weights": {"pytorch_state_dict": {"architecture": {"kwargs": {"out_channels": [3]}}}}}
    >>> biapy_reading(rdf).channels
    ('F', 'C', 'M')
    """
    spec_error = _spec_0574_error(content) if spec_check else ""
    if spec_error:
        return BiapyReading(True, spec_error)
    weights = (content.get("weights") or {}).get("pytorch_state_dict")
    inputs = content.get("inputs") or []
    if not (isinstance(weights, Mapping) and weights):
        return BiapyReading(True, "pytorch_state_dict not found in model RDF")
    if not (isinstance(inputs, list) and len(inputs) == 1):
        return BiapyReading(True, "Model needs to have a single input.")
    kwargs = weights.get("kwargs")
    if kwargs is None and isinstance(weights.get("architecture"), Mapping):
        kwargs = weights["architecture"].get("kwargs")
    if kwargs is None:
        return BiapyReading(True, "Couldn't extract kwargs from model description.")
    tags = [str(t) for t in content.get("tags") or []]
    workflow, channels, reason = _biapy_workflow(content, tags, kwargs)
    if reason:
        return BiapyReading(True, reason, workflow)
    ndim, patch, reason = _biapy_axes(inputs[0], tags)
    if reason:
        return BiapyReading(True, reason, workflow, channels=channels)
    for step in inputs[0].get("preprocessing") or []:
        pid = step.get("id", step.get("name")) if isinstance(step, Mapping) else None
        if pid == "ensure_dtype" and "float" in str((step.get("kwargs") or {}).get("dtype", "")):
            continue
        if pid not in BIAPY_PREPROCESSING:
            return BiapyReading(True, f"Not recognized preprocessing found: {pid}", workflow, ndim, channels, patch)
    if kwargs.get("postprocessing") is not None:
        return BiapyReading(True, "Currently no postprocessing is supported.", workflow, ndim, channels, patch)
    if weights.get("dependencies") is not None:
        return BiapyReading(True, "its dependencies file is checked by loading the model from the BMZ "
                                  "collection (needs the network)", workflow, ndim, channels, patch)
    return BiapyReading(False, "", workflow, ndim, channels, patch)


def _spec_0574_error(content: Mapping[str, Any]) -> str:
    covers = content.get("covers") or []
    if any(isinstance(c, Mapping) for c in covers) or isinstance(content.get("documentation"), Mapping):
        return ("bioimageio.spec 0.5.7.4 (BiaPy's pin) rejects covers/documentation written as "
                "{source, sha256} objects (Input should be a valid string)")
    return ""


def _biapy_workflow(content: Mapping[str, Any], tags: list[str],
                    kwargs: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...], str]:
    """BiaPy's workflow from the tags, the instance channels it reads, and a refusal reason."""
    if "semantic-segmentation" in tags or ("segmentation" in tags and "instance-segmentation" not in tags):
        classes = next((kwargs[k] for k in ("n_classes", "out_channels", "output_channels", "classes")
                        if k in kwargs), -1)
        classes = classes[-1] if isinstance(classes, list) else classes
        if not isinstance(classes, int):
            return "SEMANTIC_SEG", (), f"'DATA.N_CLASSES' not extracted. Obtained {classes}."
        if classes == -1:
            arch = (content.get("weights") or {}).get("pytorch_state_dict", {}).get("architecture") or {}
            names = {str(arch.get(k, "")).lower().replace(".py", "") for k in ("callable", "source")}
            if not names & set(_BIAPY_ARCHITECTURES):
                return "SEMANTIC_SEG", (), "Couldn't find the classes this model is returning"
        return "SEMANTIC_SEG", (), ""
    if "instance-segmentation" in tags:
        channels = kwargs.get("out_channels", kwargs.get("output_channels", 2))
        code: tuple[str, ...] = ("F", "C")
        if "biapy" in tags:
            description = str(content.get("description") or "")
            if "representation:" in description:
                text = description.split("representation:")[1].split("\n")[0]
                code = tuple(x.strip() for x in text.strip().split("+"))
            if all(t in tags for t in BIAPY_CARTOCELL_TAGS):
                code = ("F", "C", "M")
            if not isinstance(channels, list):
                return "INSTANCE_SEG", code, (
                    f"BiaPy asserts that out_channels/output_channels of a package tagged 'biapy' is a list "
                    f"(got {channels!r}): its check fails with an AssertionError")
        else:
            n = channels[-1] if isinstance(channels, list) else channels
            code = {1: ("C",), 2: ("F", "C"), 8: ("A",)}.get(n, code)
        return "INSTANCE_SEG", code, ""
    for workflow, names in (("DETECTION", ("detection",)), ("DENOISING", ("denoising",)),
                            ("SUPER_RESOLUTION", ("super-resolution", "superresolution")),
                            ("SELF_SUPERVISED", ("self-supervision",)), ("CLASSIFICATION", ("classification",)),
                            ("IMAGE_TO_IMAGE", ("pix2pix", "image-reconstruction", "image-to-image",
                                                "image-restoration"))):
        if any(n in tags for n in names):
            return workflow, (), ""
    return None, (), f"no workflow tag recognized in {tags}."


def _biapy_axes(tensor: Mapping[str, Any], tags: list[str]) -> tuple[str | None, tuple[int, ...] | None, str]:
    """BiaPy's axis order, patch size and the 2D/3D rule (for all workflows)."""
    order, shape = "", []
    for axis in tensor.get("axes") or []:
        kind, aid = axis.get("type"), axis.get("id")
        if kind in ("batch", "channel") or (kind is None and aid == "channel"):
            order += "b" if kind == "batch" else "c"
            shape.append(1)
        elif aid is not None:
            size = axis.get("size")
            shape.append(size if isinstance(size, int) else (size or {}).get("min") if isinstance(size, Mapping)
                         else None)
            order += str(aid)
    if any(not isinstance(s, int) for s in shape):
        return None, None, f"couldn't extract input image shape from model RDF: {shape}"
    patch = tuple(shape[2:] + shape[1:2])
    if order not in ("bcyx", "bczyx"):
        return None, patch, f"Accepting models only with ['bcyx', 'bczyx'] axis order, found {order}"
    return ("2D" if order == "bcyx" else "3D"), patch, ""


def _weight_formats(content: Mapping[str, Any]) -> list[str]:
    return [k for k, v in (content.get("weights") or {}).items() if v]


def onnx_verdict(content: Mapping[str, Any], data: bytes | None = None) -> Verdict:
    """The ONNX weights' layout as deepImageJ and ilastik need it: one file, opset <= 18, one input and output.

    Parameters
    ----------
    content : mapping
        The raw description.
    data : bytes, optional
        The ONNX file's bytes: its own opset, inputs, outputs and external data are read
        (else only what the description says).
    """
    from cartocell_bmz.bmz.onnx import MAX_OPSET, OnnxFacts, inspect_onnx, layout_problems

    name = "ONNX file"
    entry = (content.get("weights") or {}).get("onnx")
    if not isinstance(entry, Mapping) or not entry:
        return Verdict(name, False, None, "the package has no onnx weights (deepImageJ's most widely run format)")
    declared = entry.get("opset_version")
    if data is None:
        external = entry.get("external_data") is not None
        problems = [f"opset {declared} is newer than {MAX_OPSET}, the newest deepImageJ runs"] \
            if isinstance(declared, int) and declared > MAX_OPSET else []
        problems += ["its weights are in an external data file, not in the one file"] if external else []
        detail = f"{entry.get('source')}: opset {declared}, {'external data' if external else 'one file'} " \
                 "(as described; the file was not read)"
        return Verdict(name, not problems, None, "; ".join(problems) or detail)
    try:
        facts: OnnxFacts = inspect_onnx(data)
    except Exception as exc:  # a ModelError naming the bytes
        return Verdict(name, False, None, f"{entry.get('source')}: {exc}")
    problems = layout_problems(facts)
    if entry.get("external_data") is not None and not facts.external_data:
        problems.append("the description lists an external data file that the model does not use")
    if declared != facts.opset:
        problems.append(f"the description says opset {declared}, the file has {facts.opset}")
    return Verdict(name, not problems, None, "; ".join(problems) or f"{entry.get('source')}: {facts}")


def tool_verdicts(content: Mapping[str, Any]) -> list[Verdict]:
    """BiaPy's, ilastik's and deepImageJ's verdicts on a raw description (nothing is run)."""
    from cartocell_bmz.bmz.onnx import MAX_OPSET

    biapy = biapy_reading(content)
    if biapy.error:
        verdicts = [Verdict("BiaPy 3.7.1", False, None, biapy.reason)]
    else:
        read = "+".join(biapy.channels)
        ours = ", ".join(f"{b}={o}" for b, o in zip(biapy.channels, biapy.our_channels))
        verdicts = [Verdict("BiaPy 3.7.1", True, None,
                            f"{biapy.workflow} {biapy.ndim}, channels {read} ({ours}), patch {biapy.patch_size}; "
                            "BiaPy loads packages by BMZ id from the online collection")]
    n_in, n_out = len(content.get("inputs") or []), len(content.get("outputs") or [])
    formats = _weight_formats(content)
    opset = ((content.get("weights") or {}).get("onnx") or {}).get("opset_version")
    for name, accepted, note in (
        ("ilastik", ILASTIK_WEIGHTS, ""),
        ("deepImageJ", DEEPIMAGEJ_WEIGHTS,
         "; its PyTorch engines are far older than torch {torch}: whether they load these weights is not known"),
    ):
        if name == "deepImageJ" and "onnx" in formats:
            note = (f"; onnx (opset {opset}) is within its ONNX engines' opsets (<= {MAX_OPSET}); its PyTorch engines are "
                    "far older than torch {torch}: whether they load the TorchScript is not known")
        usable = [f for f in formats if f in accepted]
        if (n_in, n_out) != (1, 1):
            verdicts.append(Verdict(name, False, None, f"needs one input and one output tensor, has {n_in} and {n_out}"))
        elif not usable:
            verdicts.append(Verdict(name, False, None, f"runs {', '.join(accepted)} weights; the package has "
                                                       f"{', '.join(formats) or 'none'}"))
        else:
            torch = _torch_version(content, usable)
            verdicts.append(Verdict(name, True, None, f"one input, one output, weights {', '.join(usable)}"
                                    + note.format(torch=torch)))
    return verdicts


def _torch_version(content: Mapping[str, Any], formats: Sequence[str]) -> str:
    for f in formats:
        version = ((content.get("weights") or {}).get(f) or {}).get("pytorch_version")
        if version:
            return str(version)
    return "?"


def consumer_verdicts(package: str | os.PathLike, *, devices: Sequence[str] | None = None,
                      run_core: bool = True) -> list[Verdict]:
    """One verdict per consumer of a local package: bioimageio.core per weight format, BiaPy, ilastik, deepImageJ,
    and the ONNX file's layout (:func:`onnx_verdict`).

    Parameters
    ----------
    package : path-like
        A package folder, ``.zip`` or ``rdf.yaml``.
    devices : sequence of str, optional
        Devices for bioimageio.core's test.
    run_core : bool
        Run bioimageio.core's test (seconds to minutes); ``False`` gives the rule-based verdicts only.

    Raises
    ------
    InputError
        When ``package`` is not a readable local package.
    """
    from cartocell_bmz.bmz.portable import read_raw_description
    from cartocell_bmz.bmz.validate import DESCRIPTION_ROW, validate_package

    content = read_raw_description(package)
    verdicts: list[Verdict] = []
    if run_core:
        import bioimageio.core

        name = f"bioimageio.core {bioimageio.core.__version__}"
        rows = validate_package(package, devices=devices)
        described = rows[0].passed
        if not described:
            verdicts.append(Verdict(name, False, None, rows[0].error or "description invalid"))
        for row in rows:
            if row.check != DESCRIPTION_ROW:
                verdicts.append(Verdict(f"{name} ({row.check})", described, row.passed,
                                        f"test passed ({row.n_tests} tests)" if row.passed else str(row.error)))
    onnx_bytes = _onnx_bytes(package, content)
    return verdicts + tool_verdicts(content) + [onnx_verdict(content, onnx_bytes)]


def _onnx_bytes(package: str | os.PathLike, content: Mapping[str, Any]) -> bytes | None:
    """The bytes of a local package's ONNX file, or ``None`` (no onnx weights, or not readable here)."""
    import zipfile
    from pathlib import Path

    source = ((content.get("weights") or {}).get("onnx") or {}).get("source")
    if not isinstance(source, str) or "://" in source or source.startswith("/") or ".." in Path(source).parts:
        return None
    path = Path(package)
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                return zf.read(source)
        return ((path if path.is_dir() else path.parent) / source).read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


__all__ = [
    "BIAPY_CARTOCELL_TAGS",
    "BIAPY_PREPROCESSING",
    "BIAPY_TO_OURS",
    "BiapyReading",
    "DEEPIMAGEJ_WEIGHTS",
    "ILASTIK_WEIGHTS",
    "Verdict",
    "biapy_reading",
    "consumer_verdicts",
    "onnx_verdict",
    "tool_verdicts",
]
