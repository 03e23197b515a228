"""Training run -> BioImage Model Zoo package (a bioimageio.spec 0.5 model description).

:func:`build_package` turns a training run folder (``RUN/model.json``,
``RUN/checkpoints/best.pt``, ...) into a BMZ model package that bioimageio.core,
BiaPy, deepImageJ and cartocell-bmz can run:

- weights as a pytorch state dict (the architecture is the run's self-contained
  source file, which imports only torch, plus its keyword arguments), as
  TorchScript and as ONNX (both converted from the state dict; the ONNX file is
  one file, opset <= 18, dynamic z, y, x, and must give the state dict's
  probabilities on the test input within 1e-4: :mod:`~cartocell_bmz.bmz.onnx`);
- input ``raw`` with axes ``batch, channel, z, y, x``, spatial sizes
  parameterised as ``min + n * step`` (step = the network's divisibility) so
  that tools can tile; preprocessing ``zero_mean_unit_variance`` over the whole
  image (channel, z, y, x);
- output ``probabilities`` with the three CartoCell channels named
  :data:`~cartocell_bmz.bmz.contents.CHANNEL_NAMES` (``B_cell_body``, ``C_contours``,
  ``M_mask``: the first letter of each name is its channel), sizes equal to the
  input's, a halo chosen by measuring the network
  (:func:`~cartocell_bmz.bmz.halo.choose_halo`) so that bioimageio.core's
  blocked prediction equals whole-volume prediction, and a sigmoid as
  postprocessing (the networks return logits);
- test input/output tensors (a raw synthetic cyst crop and the probabilities
  bioimageio.core itself computes for it), a cover image, ``documentation.md``
  (how to run it, the channels, the training data, a ``# Validation`` section),
  citations, tags and an inline description of the training data.

Everything is built with bioimageio.spec's own classes; nothing touches the
network while building (no author ``github_user``, no URLs, every file's sha256
computed here).  Rebuilding from the same run gives byte-identical weights and
an identical ``rdf.yaml``: the state dict is re-saved under a fixed name, the
TorchScript export runs in a subprocess with a fixed ``PYTHONHASHSEED`` and the
architecture file under a relative name (TorchScript archives otherwise embed
set-ordered attributes and source paths), the test output is computed on one
thread, and the description's timestamp is pinned to the run (``status.json``).
TorchScript's debug information also names torch's own source files, so its
bytes are identical for the same torch version installed at the same path.

bioimageio.core 0.11 caveat: its un-blocked ``predict`` pads the halo *before*
computing the normalisation statistics, so for a small volume it normalises
with statistics that include the mirrored padding and differs from blocked
prediction (which uses the image's own statistics, as training did).

This module is the orchestration: :func:`build_description` reads the run,
measures the halo (:mod:`~cartocell_bmz.bmz.halo`), writes the files
(:mod:`~cartocell_bmz.bmz.torchscript` for TorchScript, :mod:`~cartocell_bmz.bmz.onnx` for
ONNX, :mod:`~cartocell_bmz.bmz.docs`
for the documentation and the cover) and describes them
(:mod:`~cartocell_bmz.bmz.description`); :func:`build_package` saves the
package atomically.  The names of a package's files and tensors are in
:mod:`~cartocell_bmz.bmz.contents`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np

from cartocell_bmz import networks
from cartocell_bmz.bmz.contents import (COVER_FILE, DOC_FILE, ONNX_FILE, OUTPUT_ID, TEST_INPUT_FILE,
                                        TEST_OUTPUT_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE)
from cartocell_bmz.bmz.description import describe_model
from cartocell_bmz.bmz.docs import documentation, read_figures, save_cover
from cartocell_bmz.bmz.formats import RDF_FILE
from cartocell_bmz.bmz.halo import AxisSizes, HaloChoice, choose_halo, measure_halo
from cartocell_bmz.bmz.onnx import check_onnx, export_onnx
from cartocell_bmz.bmz.portable import write_portable, zip_folder
from cartocell_bmz.bmz.torchscript import export_torchscript
from cartocell_bmz.core.normalize import zero_mean_unit_variance
from cartocell_bmz.errors import ConfigError, InputError, ModelError, OutputError, one_line
from cartocell_bmz.io.hashing import sha256_file as sha256_of  # noqa: F401  (re-exported: packages hash with it)
from cartocell_bmz.layout import CHANNELS
from cartocell_bmz.train.run import CONFIG_JSON, TRAIN_LOG_CSV, TrainingRun, load_network, read_run, read_state_dict

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from bioimageio.spec.model.v0_5 import ModelDescr

# --------------------------------------------------------------------------- constants

#: Largest test tensor (z, y, x) written into a package (keeps packages small).
TEST_TENSOR_CAP: tuple[int, int, int] = (32, 64, 64)

Format = Literal["zip", "folder"]


# --------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class PackageMetadata:
    """Human-facing fields of a package.  ``None`` means "derive from the run".

    Attributes
    ----------
    name : str, optional
        Package name; default ``"cartocell-bmz synthetic <architecture title>"``,
        so that nobody mistakes it for a published CartoCell model.
    description : str, optional
        One-paragraph description; default states the architecture, the channels
        and the synthetic training data.
    authors : tuple of str
        Author names (no GitHub user names: checking those needs the network).
    license : str
        SPDX licence id of the package (weights and files).
    version : str
        Package version.
    halo : tuple of 3 int, optional
        Output halo ``(z, y, x)``; default: measured with
        :func:`~cartocell_bmz.bmz.halo.choose_halo`.
    """

    name: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ("cartocell-bmz developers",)
    license: str = "CC-BY-4.0"
    version: str = "0.1.0"
    halo: tuple[int, int, int] | None = None


# --------------------------------------------------------------------------- description


def build_description(
    run_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    metadata: PackageMetadata | None = None,
    *,
    test_volume: str | os.PathLike | None = None,
    validation_figures: Mapping[str, Any] | None = None,
) -> "ModelDescr":
    """Write a package's files into ``work_dir`` and describe them.

    Parameters
    ----------
    run_dir : path-like
        Training run folder (``model.json``, ``config.json``, ``status.json``,
        ``checkpoints/best.pt``).
    work_dir : path-like
        Empty folder that receives the weights, the architecture file, the test
        tensors, the cover and the documentation.  The returned description
        refers to these files, so keep the folder until the package is saved.
    metadata : PackageMetadata, optional
        Name, description, authors, licence, version, halo.
    test_volume : path-like, optional
        Raw TIFF volume of a cyst the network has not been trained on: the halo
        is measured on it, its centre crop becomes the test input and its
        segmentation the cover.  Default: a synthetic cyst (``make_cyst``,
        seed 20230597) of the phantoms' default size and voxel size.
    validation_figures : mapping, optional
        Test-set figures (e.g. ``evaluate``'s ``summary.json``) for the
        documentation's ``# Validation`` section.

    Returns
    -------
    bioimageio.spec.model.v0_5.ModelDescr
        The description (validated without any network access).

    Raises
    ------
    ModelError, InputError, ConfigError
        For a bad run folder, test volume or metadata.
    """
    from bioimageio.spec import ValidationContext

    metadata = metadata or PackageMetadata()
    run = read_run(run_dir)
    work = Path(work_dir).absolute()  # bioimageio resolves relative sources against the context root
    work.mkdir(parents=True, exist_ok=True)
    net = load_network(run)
    volume, spacing, volume_origin = _test_volume(test_volume, run.divisor)
    halo = _package_halo(run, net, volume, metadata.halo)
    sizes = AxisSizes.from_halo(run.divisor, halo.halo)

    arch_file = _write_weights(run, work)
    test_shape = _write_test_tensors(work, volume, sizes)
    _write_onnx(net, work)
    save_cover(work / COVER_FILE, volume, _probabilities(net, volume), spacing)
    attachments = _copy_attachments(run, work)
    name = metadata.name or f"cartocell-bmz synthetic {networks.get_spec(run.arch).title}"
    (work / DOC_FILE).write_text(
        documentation(run, name=name, sizes=sizes, halo=halo, test_shape=test_shape,
                      volume_origin=volume_origin, spacing=spacing, figures=validation_figures),
        encoding="utf-8",
    )

    def describe() -> "ModelDescr":
        return describe_model(run, work, metadata, name=name, sizes=sizes, halo=halo,
                              attachments=attachments, arch_file=arch_file, figures=validation_figures)

    context = ValidationContext(root=work, file_name=RDF_FILE, perform_io_checks=False, raise_errors=True)
    with context:
        draft = describe()
    np.save(work / TEST_OUTPUT_FILE, _core_test_output(draft))
    with context:
        return describe()


def _package_halo(run: TrainingRun, net: "torch.nn.Module", volume: np.ndarray,
                  given: Sequence[int] | None) -> HaloChoice:
    """The halo given (measured as it is) or the smallest that meets the tolerance (else an error)."""
    if given is not None:
        return measure_halo(net, volume, run.divisor, given)
    halo = choose_halo(net, volume, run.divisor)
    if not halo.met:
        raise ModelError(
            f"{run.path}: blocked and whole-volume predictions still differ by {halo.max_difference:.3f} "
            f"with halo {halo.halo}, the largest a {tuple(volume.shape)} test volume allows (the network's "
            "context reaches further, e.g. through dilated convolutions or global pooling); give a larger "
            "--test-volume, or an explicit --halo to package it with that difference documented."
        )
    return halo


def _write_weights(run: TrainingRun, work: Path) -> Path:
    """The architecture file, the state dict re-saved under a fixed name, and TorchScript; the architecture file."""
    import torch

    arch_file = work / run.source.name
    shutil.copyfile(run.source, arch_file)
    weights = work / WEIGHTS_FILE
    torch.save(read_state_dict(run.weights), weights)
    export_torchscript(arch_file, run.callable, run.kwargs, weights, work / TORCHSCRIPT_FILE)
    return arch_file


def _write_onnx(net: "torch.nn.Module", work: Path) -> Path:
    """``weights.onnx``, exported from the network and checked on the test input (else a ModelError)."""
    test_input = np.load(work / TEST_INPUT_FILE)
    out = export_onnx(net, work / ONNX_FILE, test_input)
    check_onnx(out, net, test_input)
    return out


def _write_test_tensors(work: Path, volume: np.ndarray, sizes: AxisSizes) -> tuple[int, int, int]:
    """The test input (a centre crop of the raw volume) and a placeholder test output; their size."""
    test_shape = sizes.largest_valid(volume.shape, TEST_TENSOR_CAP)
    np.save(work / TEST_INPUT_FILE, _center_crop(volume, test_shape).astype(np.float32)[None, None])
    # placeholder until bioimageio.core has computed the real test output
    np.save(work / TEST_OUTPUT_FILE, np.zeros((1, len(CHANNELS)) + test_shape, np.float32))
    return test_shape


def _probabilities(net: "torch.nn.Module", volume: np.ndarray) -> np.ndarray:
    """Whole-volume B, C, M probabilities of a raw volume (for the cover)."""
    import torch

    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(zero_mean_unit_variance(volume))[None, None]))[0].numpy()


def _center_crop(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    lo = [(s - n) // 2 for s, n in zip(volume.shape, shape)]
    return volume[tuple(slice(a, a + n) for a, n in zip(lo, shape))]


def _copy_attachments(run: TrainingRun, work: Path) -> list[Path]:
    """The run's configuration and training log, for provenance."""
    out = []
    for src, name in ((run.path / CONFIG_JSON, "training_config.json"), (run.path / TRAIN_LOG_CSV, "train_log.csv")):
        if src.is_file():
            shutil.copyfile(src, work / name)
            out.append(work / name)
    return out


# --------------------------------------------------------------------------- files


def _core_test_output(descr: "ModelDescr") -> np.ndarray:
    """The test output exactly as bioimageio.core's ``test_model`` recomputes it."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import get_test_input_sample

    sample = get_test_input_sample(descr)
    with _torch_threads(1), create_prediction_pipeline(
        bioimageio_model=descr, devices=["cpu"], weight_format="pytorch_state_dict"
    ) as pipeline:
        pipeline.apply_preprocessing(sample)
        raw = pipeline.predict_sample_without_blocking(
            sample, skip_preprocessing=True, skip_postprocessing=True,
            skip_input_padding=True, skip_output_cropping=True,
        )
        pipeline.apply_postprocessing(raw)
    tensor = raw.members[OUTPUT_ID]
    return np.ascontiguousarray(
        tensor.transpose([a for a in ("batch", "channel", "z", "y", "x")]).data.to_numpy().astype(np.float32)
    )


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run torch on ``n`` threads (bit-reproducible results), then restore the setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: Seed of the default test cyst (not a seed used for training sets).
TEST_CYST_SEED = 20230597


def _test_volume(
    source: str | os.PathLike | None, divisor: Sequence[int]
) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """The raw test volume cropped to multiples of ``divisor``, its spacing and where it came from."""
    if source is None:
        from cartocell_bmz.core.phantoms import DEFAULT_SHAPE, DEFAULT_SPACING, make_cyst

        cyst = make_cyst(DEFAULT_SHAPE, DEFAULT_SPACING, stage="day7", seed=TEST_CYST_SEED)
        volume, spacing = cyst.raw.astype(np.float32), tuple(cyst.spacing)
        origin = (
            f"a synthetic day-7 cyst (cartocell_bmz.core.phantoms.make_cyst, seed {TEST_CYST_SEED}, "
            f"{DEFAULT_SHAPE} voxels of {DEFAULT_SPACING} um)"
        )
    else:
        from cartocell_bmz.io.volumes import read_volume

        vol = read_volume(source, "image")
        volume, spacing = vol.data, tuple(vol.spacing)
        origin = f"{Path(source).name} ({tuple(volume.shape)} voxels of {tuple(round(s, 4) for s in spacing)} um)"
    shape = tuple(s - s % d for s, d in zip(volume.shape, divisor))
    if min(shape) < 1:
        raise InputError(f"{source}: volume {volume.shape} is smaller than the network's divisor {tuple(divisor)}.")
    return _center_crop(volume, shape).astype(np.float32), spacing, origin  # type: ignore[return-value]


# --------------------------------------------------------------------------- package


def build_package(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: Format = "zip",
    metadata: PackageMetadata | None = None,
    test_volume: str | os.PathLike | None = None,
    validation_figures: Mapping[str, Any] | None = None,
) -> Path:
    """Build a BMZ model package from a training run.

    Parameters
    ----------
    run_dir : path-like
        Training run folder.
    out : path-like
        Package to write: a ``.zip`` file (``format="zip"``) or a folder
        (``format="folder"``).  An existing package there is replaced; the new
        one appears only once complete.
    format : {"zip", "folder"}
        Zip archive (what the BioImage Model Zoo accepts) or plain folder.
    metadata : PackageMetadata, optional
        Name, description, authors, licence, version, halo.
    test_volume : path-like, optional
        Raw TIFF for the test tensors, the halo measurement and the cover.
    validation_figures : mapping, optional
        Test-set figures for the documentation's ``# Validation`` section.

    Returns
    -------
    pathlib.Path
        The written package.

    Examples
    --------
    ``build_package("runs/resunet", "model_packages/resunet.zip")`` then
    ``bioimageio.core.test_model("model_packages/resunet.zip")``.
    """
    from bioimageio.spec import ValidationContext, save_bioimageio_package_as_folder

    if format not in ("zip", "folder"):
        raise ConfigError(f"--format {format!r} is not one of zip, folder.")
    out = Path(out).absolute()
    _check_out(out, format)
    check_metadata(metadata or PackageMetadata())
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cartocell-package-", dir=out.parent) as tmp:
        work = Path(tmp) / "files"
        descr = build_description(run_dir, work, metadata, test_volume=test_volume,
                                  validation_figures=validation_figures)
        folder = Path(tmp) / "package"
        with ValidationContext(root=work, file_name=RDF_FILE, perform_io_checks=True), warnings.catch_warnings():
            # spec 0.5.12 warns about every relative file while re-reading the saved package
            warnings.filterwarnings("ignore", message="Found mapping with 'source'")
            try:
                save_bioimageio_package_as_folder(descr, output_path=folder)
            except ValueError as exc:
                raise ModelError(f"{out}: the package did not validate ({one_line(exc)}).") from None
        write_portable(folder)  # the form bioimageio.spec 0.5.7.4 (BiaPy) to 0.5.14 read
        staged = zip_folder(folder, Path(tmp) / "package.zip") if format == "zip" else folder
        _replace(staged, out)
    return out


def check_metadata(metadata: PackageMetadata) -> None:
    """Check the user-given fields with bioimageio.spec's own rules, before any work.

    Raises
    ------
    ConfigError
        Naming the option (``--name``, ``--license``, ...) and what is wrong with it.
    """
    import pydantic
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5

    def fails(check, value) -> bool:
        try:
            check(value)
        except (pydantic.ValidationError, ValueError):
            return True
        return False

    with ValidationContext(perform_io_checks=False, raise_errors=True):
        if fails(v0_5.LicenseId, metadata.license):
            raise ConfigError(
                f"--license {metadata.license!r} is not an SPDX licence id known to bioimageio.spec "
                "(e.g. CC-BY-4.0, CC0-1.0, MIT)."
            )
        if fails(v0_5.Version, metadata.version):
            raise ConfigError(f"--version {metadata.version!r} is not a version number such as 0.1.0.")
        if not metadata.authors:
            raise ConfigError("--author: a package needs at least one author.")
        for author in metadata.authors:
            if not str(author).strip() or fails(lambda v: v0_5.Author(name=v), author):
                raise ConfigError(f"--author {author!r} is not a valid author name (non-empty, no '/').")
    if metadata.name is not None:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
        if not 5 <= len(metadata.name) <= 128 or set(metadata.name) - allowed:
            raise ConfigError(
                f"--name {metadata.name!r} must have 5-128 characters among letters, digits, spaces and _+-()."
            )
    if metadata.description is not None and not metadata.description.strip():
        raise ConfigError("--description must not be empty.")


def _check_out(out: Path, format: str) -> None:
    if format == "zip":
        if out.is_dir():
            raise OutputError(f"{out}: is a folder; give a .zip file name or use --format folder.")
        if out.suffix.lower() != ".zip":
            raise OutputError(f"{out}: a zip package needs a name ending in .zip.")
    else:
        if out.exists() and not out.is_dir():
            raise OutputError(f"{out}: is a file; give a folder name for --format folder.")
        if out.is_dir() and any(out.iterdir()) and not (out / RDF_FILE).is_file():
            raise OutputError(f"{out}: folder is not empty and holds no package; choose another --out.")


def _replace(staged: Path, out: Path) -> None:
    """Move the finished package into place, replacing an older one."""
    try:
        if staged.is_dir():
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(out, old)
            os.replace(staged, out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staged, out)
    except OSError as exc:
        raise OutputError(f"{out}: cannot be written ({exc.strerror or exc}).") from None


__all__ = [
    "PackageMetadata",
    "TEST_CYST_SEED",
    "TEST_TENSOR_CAP",
    "build_description",
    "build_package",
    "check_metadata",
    # re-exported for the CLI and older imports; their homes are docs, train.run and io.hashing
    "read_figures",
    "read_run",
    "load_network",
    "TrainingRun",
    "sha256_of",
]
