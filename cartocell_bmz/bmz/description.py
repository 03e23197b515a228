"""The ``rdf.yaml`` of a package: a bioimageio.spec 0.5 model description of the files packaging wrote.

:func:`describe_model` builds it with bioimageio.spec's own classes, in named
steps: the input and output tensors (:func:`_input_tensor`, :func:`_output_tensor`),
the three weight formats (:func:`_weights`), the citations, the training data
(:func:`_training_data`) and the tool configuration (:func:`_config`).  Every
file's sha256 is computed here; the timestamp is the run's (:func:`run_timestamp`),
so that the same run gives the same description.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from cartocell_bmz import networks
from cartocell_bmz.bmz.contents import (
    BASE_TAGS,
    BIAPY_CITATION,
    CARTOCELL_CITATION,
    CHANNEL_NAMES,
    COVER_FILE,
    DOC_FILE,
    INPUT_ID,
    ONNX_FILE,
    OUTPUT_ID,
    TEST_INPUT_FILE,
    TEST_OUTPUT_FILE,
    TORCHSCRIPT_FILE,
    WEIGHTS_FILE,
)
from cartocell_bmz.bmz.docs import config_section, default_description, evaluation_record, training_data_text
from cartocell_bmz.bmz.portable import CONFIG_KEY, package_kwargs
from cartocell_bmz.io.hashing import sha256_file
from cartocell_bmz.layout import CHANNELS
from cartocell_bmz.train.run import STATUS_JSON

if TYPE_CHECKING:  # pragma: no cover
    from bioimageio.spec.model import v0_5

    from cartocell_bmz.bmz.export import PackageMetadata
    from cartocell_bmz.bmz.halo import AxisSizes, HaloChoice
    from cartocell_bmz.train.run import TrainingRun


def describe_model(
    run: TrainingRun,
    work: Path,
    metadata: PackageMetadata,
    *,
    name: str,
    sizes: AxisSizes,
    halo: HaloChoice,
    attachments: list[Path],
    arch_file: Path,
    figures: Mapping[str, Any] | None = None,
) -> "v0_5.ModelDescr":
    """The model description of the package files in ``work``.

    Call it inside a ``bioimageio.spec.ValidationContext`` whose root is ``work``.

    Parameters
    ----------
    run : TrainingRun
        The training run packaged.
    work : pathlib.Path
        Folder holding the package's files (names of :mod:`~cartocell_bmz.bmz.contents`).
    metadata : PackageMetadata
        Description, authors, licence and version (``name`` is given apart).
    name : str
        The package's name.
    sizes : AxisSizes
        Input sizes and output halo.
    halo : HaloChoice
        The halo and its measured difference (recorded in ``config.cartocell_bmz``).
    attachments : list of pathlib.Path
        Files in ``work`` attached for provenance.
    arch_file : pathlib.Path
        The architecture source file in ``work``.
    figures : mapping, optional
        ``evaluate``'s ``summary.json`` of the test set: its ranking columns go into
        ``config.cartocell_bmz.evaluation`` (:func:`~cartocell_bmz.bmz.docs.evaluation_record`).

    Returns
    -------
    bioimageio.spec.model.v0_5.ModelDescr
    """
    from bioimageio.spec.model import v0_5

    spec = networks.get_spec(run.arch)
    return v0_5.ModelDescr(
        name=name,
        description=metadata.description or default_description(run),
        covers=[_file(work / COVER_FILE)],
        documentation=_file(work / DOC_FILE),
        authors=[v0_5.Author(name=a) for a in metadata.authors],
        attachments=[_file(p) for p in attachments],
        cite=[_cite(CARTOCELL_CITATION), _cite(BIAPY_CITATION), _cite((spec.citation["text"], spec.citation["doi"]))],
        license=v0_5.LicenseId(metadata.license),
        tags=[*BASE_TAGS, run.arch],
        version=v0_5.Version(metadata.version),
        timestamp=v0_5.Datetime(run_timestamp(run)),
        inputs=[_input_tensor(work, sizes)],
        outputs=[_output_tensor(work, sizes)],
        weights=_weights(run, work, arch_file),
        training_data=_training_data(run, metadata),
        config=_config(run, spec, halo, evaluation_record(figures)),
    )


def run_timestamp(run: TrainingRun) -> _dt.datetime:
    """When the run last changed: ``status.json``'s ``finished_at``/``updated_at`` or its modification time (UTC).

    Pinning the description's timestamp to the run makes rebuilt ``rdf.yaml`` files identical.
    """
    for key in ("finished_at", "updated_at", "timestamp"):
        value = run.status.get(key)
        if isinstance(value, str):
            try:
                stamp = _dt.datetime.fromisoformat(value)
            except ValueError:
                continue
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.timezone.utc)
    mtime = int((run.path / STATUS_JSON).stat().st_mtime)
    return _dt.datetime.fromtimestamp(mtime, tz=_dt.timezone.utc)


# --------------------------------------------------------------------------- the steps


def _file(path: Path) -> "v0_5.FileDescr":
    from bioimageio.spec.model import v0_5

    return v0_5.FileDescr(source=path, sha256=sha256_file(path))


def _cite(entry: tuple[str, str]) -> "v0_5.CiteEntry":
    from bioimageio.spec.model import v0_5

    return v0_5.CiteEntry(text=entry[0], doi=v0_5.Doi(entry[1]))


def _input_tensor(work: Path, sizes: AxisSizes) -> "v0_5.InputTensorDescr":
    from bioimageio.spec.model import v0_5

    space = [
        v0_5.SpaceInputAxis(
            id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=sizes.minimum[i], step=sizes.step[i]),
            description=f"valid sizes {sizes.minimum[i]} + n * {sizes.step[i]} (n = 0, 1, 2, ...)",
        )
        for i, a in enumerate("zyx")
    ]
    return v0_5.InputTensorDescr(
        id=v0_5.TensorId(INPUT_ID),
        description="raw fluorescence stack of cell outlines (membrane signal), any intensity range",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("membrane")]), *space],
        test_tensor=_file(work / TEST_INPUT_FILE),
        data=v0_5.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
            v0_5.ZeroMeanUnitVarianceDescr(
                kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId(a) for a in ("channel", "z", "y", "x")])
            ),
        ],
    )


def _output_tensor(work: Path, sizes: AxisSizes) -> "v0_5.OutputTensorDescr":
    from bioimageio.spec.model import v0_5

    space = [
        v0_5.SpaceOutputAxisWithHalo(
            id=v0_5.AxisId(a), size=v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(a)),
            halo=sizes.halo[i],
        )
        for i, a in enumerate("zyx")
    ]
    return v0_5.OutputTensorDescr(
        id=v0_5.TensorId(OUTPUT_ID),
        description="probabilities of B (cell body), C (cell contours), M (cellular-region mask), in this order",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(n) for n in CHANNEL_NAMES]),
              *space],
        test_tensor=_file(work / TEST_OUTPUT_FILE),
        data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[
            v0_5.SigmoidDescr(),
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
        ],
    )


def _weights(run: TrainingRun, work: Path, arch_file: Path) -> "v0_5.WeightsDescr":
    """The state dict (with its architecture file), and the TorchScript and ONNX converted from it."""
    import torch
    from bioimageio.spec.model import v0_5

    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    return v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=work / WEIGHTS_FILE, sha256=sha256_file(work / WEIGHTS_FILE),
            architecture=v0_5.ArchitectureFromFileDescr(
                source=arch_file, sha256=sha256_file(arch_file), callable=v0_5.Identifier(run.callable),
                kwargs=package_kwargs(run.kwargs, arch_file),
            ),
            pytorch_version=torch_version,
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=work / TORCHSCRIPT_FILE, sha256=sha256_file(work / TORCHSCRIPT_FILE),
            parent="pytorch_state_dict", pytorch_version=torch_version,
        ),
        onnx=onnx_entry(work / ONNX_FILE) if (work / ONNX_FILE).is_file() else None,
    )


def onnx_entry(path: Path) -> "v0_5.OnnxWeightsDescr":
    """The ``weights.onnx`` entry of a package: converted from the state dict, its opset read from the file."""
    from bioimageio.spec.model import v0_5

    from cartocell_bmz.bmz.onnx import inspect_onnx

    return v0_5.OnnxWeightsDescr(source=path, sha256=sha256_file(path), parent="pytorch_state_dict",
                                 opset_version=inspect_onnx(path).opset)


def _training_data(run: TrainingRun, metadata: PackageMetadata) -> Any:
    """An inline dataset description of the synthetic cysts (no id: they are not published)."""
    from bioimageio.spec.dataset.v0_3 import DatasetDescr
    from bioimageio.spec.model import v0_5

    return DatasetDescr(
        name="cartocell-bmz synthetic cysts",
        description=training_data_text(run),
        authors=[v0_5.Author(name=a) for a in metadata.authors],
        cite=[_cite(CARTOCELL_CITATION)],
        license=v0_5.LicenseId(metadata.license),
        tags=["cyst", "3d", "fluorescence", "synthetic", "instance-segmentation"],
        format_version="0.3.0",
        type="dataset",
    )


def _config(run: TrainingRun, spec: Any, halo: HaloChoice, evaluation: dict[str, Any] | None) -> "v0_5.Config":
    """The ``bioimageio`` section (architecture, training details) and cartocell-bmz's own section."""
    from bioimageio.spec.model import v0_5

    train = config_section(run, "train")
    data = config_section(run, "data")
    training = v0_5.TrainingDetails(
        training_preprocessing="zero mean, unit variance over each whole image; "
        f"targets B, C, M from instance labels ({run.target_mode} definition)",
        training_epochs=_as_float(run.status.get("epoch")),
        training_batch_size=_as_float(train.get("batch_size")),
        initial_learning_rate=_as_float(train.get("lr")),
        learning_rate_schedule=str(train["schedule"]) if train.get("schedule") else None,
        loss_function="sum over channels of binary cross-entropy on logits",
        optimizer=str(train["optimizer"]) if train.get("optimizer") else None,
    )
    own = {
        "channels": dict(zip(CHANNELS, CHANNEL_NAMES)),
        "target_mode": run.target_mode,
        "divisor": list(run.divisor),
        "halo": list(halo.halo),
        "halo_max_difference": round(float(halo.max_difference), 4),
        "halo_tolerance": halo.tolerance,
        "architecture": run.arch,
        "published_counterpart": spec.published_id,
        "best_epoch": run.status.get("best_epoch"),
        "training_finished": bool(run.status.get("finished")),
        "training_patch_size": data.get("patch_size") or train.get("patch_size"),
    }
    if evaluation is not None:
        # not config.bioimageio.evaluations: its Evaluation needs a published dataset id and
        # an http source, which the synthetic test set has not
        own["evaluation"] = evaluation
    return v0_5.Config(
        bioimageio=v0_5.BioimageioConfig(
            architecture_type=spec.name,
            architecture_description=f"3D {spec.title} (cartocell-bmz source {run.source.name}), logits of B, C, M",
            modality="fluorescence microscopy",
            target_structure=["cell", "epithelial cyst"],
            task="instance segmentation (via B, C, M probabilities, watershed and Voronoi)",
            model_parameter_count=run.n_parameters or None,
            training=training,
        ),
        **{CONFIG_KEY: own},
    )


def _as_float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


__all__ = ["describe_model", "onnx_entry", "run_timestamp"]
