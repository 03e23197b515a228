"""Training run -> BioImage Model Zoo package (a bioimageio.spec 0.5 model description).

:func:`build_package` turns a training run folder (``RUN/model.json``,
``RUN/checkpoints/best.pt``, ...) into a BMZ model package that bioimageio.core,
BiaPy, deepImageJ and cartocell-bmz can run:

- weights as a pytorch state dict (the architecture is the run's self-contained
  source file, which imports only torch, plus its keyword arguments) and as
  TorchScript (converted from the state dict);
- input ``raw`` with axes ``batch, channel, z, y, x``, spatial sizes
  parameterised as ``min + n * step`` (step = the network's divisibility) so
  that tools can tile; preprocessing ``zero_mean_unit_variance`` over the whole
  image (channel, z, y, x);
- output ``probabilities`` with the three CartoCell channels named
  :data:`CHANNEL_NAMES` (``B_cell_body``, ``C_contours``, ``M_mask``: the first
  letter of each name is its channel), sizes equal to the input's, a halo chosen
  by measuring the network (:func:`choose_halo`) so that bioimageio.core's
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
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np

from cartocell_bmz.core.normalize import zero_mean_unit_variance
from cartocell_bmz.errors import ConfigError, InputError, ModelError, OutputError
from cartocell_bmz.io.hashing import sha256_file as sha256_of
from cartocell_bmz.layout import CHANNEL_MEANING, CHANNELS
from cartocell_bmz.run.margins import HALO_TOLERANCE
from cartocell_bmz.train.run import TrainingRun, load_network, read_run, read_state_dict

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from bioimageio.spec.model.v0_5 import ModelDescr

# --------------------------------------------------------------------------- constants

_CHANNEL_SHORT: dict[str, str] = {"B": "cell_body", "C": "contours", "M": "mask"}
assert tuple(_CHANNEL_SHORT) == CHANNELS, "one short name per channel of layout.CHANNELS"

#: Output channel names written into packages, in channel order.  Each name
#: starts with its channel letter (B, C, M), which is how readers (the
#: cartocell-bmz runner) find the channel order of a package.
CHANNEL_NAMES: tuple[str, ...] = tuple(f"{c}_{_CHANNEL_SHORT[c]}" for c in CHANNELS)

#: Ids of the package's input and output tensors.
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"

#: Tags every package carries; other CartoCell tools recognise packages by them.
BASE_TAGS: tuple[str, ...] = (
    "instance-segmentation", "cyst", "3d", "fluorescence", "pytorch", "cartocell",
    "cartocell-bmz", "epithelium", "cell-segmentation", "synthetic-training-data",
)

#: The CartoCell paper and BiaPy, cited by every package (text, doi).
CARTOCELL_CITATION: tuple[str, str] = (
    "Andres-San Roman J.A., Gordillo-Vazquez C., Franco-Barranco D. et al. CartoCell, a "
    "high-content pipeline for 3D image analysis, unveils cell morphology patterns in "
    "epithelia. Cell Reports Methods 3(10), 100597 (2023).",
    "10.1016/j.crmeth.2023.100597",
)
BIAPY_CITATION: tuple[str, str] = (
    "Franco-Barranco D. et al. BiaPy: accessible deep learning on bioimages. "
    "Nature Methods (2025).",
    "10.1038/s41592-025-02699-y",
)

#: File names inside a package.
WEIGHTS_FILE = "weights_state_dict.pt"
TORCHSCRIPT_FILE = "weights_torchscript.pt"
TEST_INPUT_FILE = "test_input.npy"
TEST_OUTPUT_FILE = "test_output.npy"
COVER_FILE = "cover.png"
DOC_FILE = "documentation.md"

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
        Output halo ``(z, y, x)``; default: measured with :func:`choose_halo`.
    """

    name: str | None = None
    description: str | None = None
    authors: tuple[str, ...] = ("cartocell-bmz developers",)
    license: str = "CC-BY-4.0"
    version: str = "0.1.0"
    halo: tuple[int, int, int] | None = None


# --------------------------------------------------------------------------- halo


@dataclass(frozen=True)
class HaloChoice:
    """The output halo of a package and the measurements behind it.

    Attributes
    ----------
    halo : tuple of 3 int
        Halo ``(z, y, x)`` cropped from each side of every output block.
    max_difference : float
        Largest difference between blocked and whole-volume probabilities (all
        channels, all voxels) at ``halo``, in the final check over all axes.
    tolerance : float
        The bound ``max_difference`` had to meet.
    trials : tuple
        ``(axes, halo, max_difference)`` of every measurement, in order.
    """

    halo: tuple[int, int, int]
    max_difference: float
    tolerance: float
    trials: tuple[tuple[str, tuple[int, int, int], float], ...] = ()

    @property
    def met(self) -> bool:
        """Whether ``max_difference`` is within ``tolerance``."""
        return self.max_difference <= self.tolerance


def halo_units(divisor: Sequence[int]) -> tuple[int, int, int]:
    """Smallest halo steps ``(z, y, x)`` keeping ``2 * halo`` a multiple of ``divisor``.

    Then a volume whose size is valid for the network stays valid once
    bioimageio.core pads the halo on both sides.

    Examples
    --------
    >>> halo_units((1, 4, 4))
    (1, 2, 2)
    """
    return tuple(max(1, int(d) // 2) for d in divisor)  # type: ignore[return-value]


@dataclass(frozen=True)
class WholePrediction:
    """Whole-volume probabilities of a normalised image padded symmetrically by ``pad``.

    Blocks cut from ``padded`` with a halo up to ``pad`` see exactly the input
    bioimageio.core would give them (symmetric padding by ``pad`` starts with
    symmetric padding by any smaller halo), so one whole-volume prediction
    serves every halo up to ``pad``.
    """

    pad: tuple[int, int, int]
    padded: np.ndarray
    probs: np.ndarray

    @classmethod
    def compute(cls, net: "torch.nn.Module", image: np.ndarray, pad: Sequence[int]) -> "WholePrediction":
        """Run ``net`` on ``image`` padded by ``pad`` and crop the padding."""
        p = tuple(int(v) for v in pad)
        padded = np.pad(image, [(v, v) for v in p], mode="symmetric").astype(np.float32)
        probs = _sigmoid_crop(net, padded[None], p)[0]
        return cls(pad=p, padded=padded, probs=probs)  # type: ignore[arg-type]


def _sigmoid_crop(net: "torch.nn.Module", blocks: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """``sigmoid(net(blocks))`` for ``(N, Z, Y, X)`` inputs, ``crop`` voxels removed from each side."""
    import torch

    c = [int(v) for v in crop]
    with torch.no_grad():
        out = torch.sigmoid(net(torch.from_numpy(np.ascontiguousarray(blocks))[:, None])).numpy()
    return out[:, :, c[0]: out.shape[2] - c[0], c[1]: out.shape[3] - c[1], c[2]: out.shape[4] - c[2]]


def blocked_difference(
    net: "torch.nn.Module",
    image: np.ndarray,
    halo: Sequence[int],
    inner: Sequence[int],
    *,
    whole: WholePrediction | None = None,
    align: Sequence[int] = (1, 1, 1),
    n_blocks: int = 32,
    seed: int = 0,
    batch: int = 2,
) -> float:
    """Largest difference between blocked and whole-volume probabilities.

    Emulates bioimageio.core 0.11's tiling: the (normalised) ``image`` is
    padded symmetrically by ``halo``; whole-volume prediction runs the network
    on the padded image and crops the halo; a block predicts ``inner`` voxels
    from an input of ``inner + 2 * halo`` voxels cut from the padded image and
    crops the halo.  ``n_blocks`` block positions are drawn at random (seeded;
    the first and last positions of every axis are always included), since a
    tile can start anywhere in a user's volume, on multiples of ``align`` (the
    network's divisor: core's tiles of a valid volume start there, and pooling
    windows only line up with the whole-volume ones there).

    Parameters
    ----------
    net : torch.nn.Module
        Network returning logits ``(N, C, Z, Y, X)``, in eval mode.
    image : numpy.ndarray
        Normalised ``(Z, Y, X)`` image.  ``inner + 2 * halo`` and the padded
        image size must suit the network's divisibility.
    halo, inner : sequence of 3 int
        Halo and inner block size ``(z, y, x)``; an ``inner`` at least the
        image size does not split that axis.
    whole : WholePrediction, optional
        Reference computed with a padding ``P >= halo`` with ``P - halo`` a
        multiple of the network's divisor (so that pooling windows line up),
        reused across halos; at the volume border its wider padding makes the
        measured difference an upper bound of core's.  Default: computed with
        ``halo``, exactly as core does.
    align : sequence of 3 int
        Block positions are multiples of these.
    n_blocks : int
        Number of block positions to compare.
    seed : int
        Seed of the positions.
    batch : int
        Blocks per forward pass.

    Returns
    -------
    float
        ``max |sigmoid(whole) - sigmoid(blocked)|`` over all channels and voxels compared.
    """
    h = [int(v) for v in halo]
    shape = image.shape
    inner = [min(int(n), s) for n, s in zip(inner, shape)]
    if whole is None:
        whole = WholePrediction.compute(net, image, h)
    if any(p < v or (p - v) % g for p, v, g in zip(whole.pad, h, [max(1, int(a)) for a in align])):
        raise ValueError(f"a reference padded by {whole.pad} does not line up with blocks of halo {tuple(h)}")
    shift = [p - v for p, v in zip(whole.pad, h)]
    rng = np.random.default_rng(seed)
    grid = [max(1, int(a)) for a in align]
    last = [(s - n) // g for s, n, g in zip(shape, inner, grid)]
    origins = {(0, 0, 0), tuple(m * g for m, g in zip(last, grid))}
    for _ in range(50 * n_blocks):
        if len(origins) >= n_blocks:
            break
        origins.add(tuple(int(rng.integers(0, m + 1)) * g for m, g in zip(last, grid)))
    origins_list = sorted(origins)
    worst = 0.0
    for i in range(0, len(origins_list), batch):
        chunk = origins_list[i: i + batch]
        blocks = np.stack([
            whole.padded[tuple(slice(o + d, o + d + n + 2 * v) for o, d, n, v in zip(org, shift, inner, h))]
            for org in chunk
        ])
        for org, out in zip(chunk, _sigmoid_crop(net, blocks, h)):
            ref = whole.probs[(slice(None),) + tuple(slice(o, o + n) for o, n in zip(org, inner))]
            worst = max(worst, float(np.abs(out - ref).max()))
    return worst


def choose_halo(
    net: "torch.nn.Module",
    image: np.ndarray,
    divisor: Sequence[int],
    *,
    tolerance: float = HALO_TOLERANCE,
    max_halo: Sequence[int] | None = None,
) -> HaloChoice:
    """Smallest halo for which blocked prediction matches whole-volume prediction.

    The receptive field of a U-Net is far larger than the distance over which
    its context actually matters, so the halo is measured rather than derived.
    The worst case is the smallest block a package allows (``n = 0``: an input
    of the minimum size, see :class:`AxisSizes`), whose voxels see little more
    than the halo as context on every side; :func:`blocked_difference` compares
    such blocks with the whole-volume prediction.  The z halo is searched with
    blocks cut along z only, the y/x halo with blocks cut along y and x only
    (doubling, then bisection, in steps of :func:`halo_units`; each to half the
    tolerance, as the two errors add up at block corners; one whole-volume
    reference per search, see :class:`WholePrediction`), then blocks cut along
    all axes are checked against core's exact reference and both halos grown a
    step at a time if needed.

    Parameters
    ----------
    net : torch.nn.Module
        The trained network (logits), in eval mode.
    image : numpy.ndarray
        A representative raw ``(Z, Y, X)`` volume (normalised here to zero mean
        and unit variance over the whole image); sizes multiples of ``divisor``.
    divisor : sequence of 3 int
        The network's divisibility ``(z, y, x)``.
    tolerance : float
        Largest accepted probability difference.
    max_halo : sequence of 3 int, optional
        Upper bound of the search; default the largest halo whose smallest
        block still fits in the image.

    Returns
    -------
    HaloChoice
        ``met`` is False when even ``max_halo`` does not reach ``tolerance``
        (for example with instance normalisation, whose statistics depend on the block).
    """
    img = zero_mean_unit_variance(image)
    units = halo_units(divisor)
    shape = img.shape
    if any(s % d for s, d in zip(shape, divisor)):
        raise ValueError(f"image shape {shape} is not a multiple of the divisor {tuple(divisor)}")
    # the smallest block (2 * halo + divisor) must fit in the image
    top = [int(v) for v in (max_halo if max_halo is not None else [(s - d) // 2 for s, d in zip(shape, divisor)])]
    top = [max(u, t - t % u) for t, u in zip(top, units)]
    trials: list[tuple[str, tuple[int, int, int], float]] = []

    def measure(axes: str, halo: tuple[int, int, int], tol: float, n_blocks: int,
                whole: WholePrediction | None = None) -> bool:
        minimum = AxisSizes.from_halo(divisor, halo).minimum
        inner = tuple(minimum[i] - 2 * halo[i] if "zyx"[i] in axes else shape[i] for i in range(3))
        err = blocked_difference(net, img, halo, inner, whole=whole, align=divisor, n_blocks=n_blocks)
        trials.append((axes, halo, err))
        return err <= tol

    def search(axes: str, n_blocks: int) -> int:
        idx = [i for i in range(3) if "zyx"[i] in axes]
        unit = max(units[i] for i in idx)
        k_max = max(1, min(top[i] for i in idx) // unit)
        # Whole-volume references shared by the halos tried along these axes.  Pooling
        # windows start where the padded input starts, so a reference padded by P only
        # lines up with blocks of halo h when P - h is a multiple of the divisor: one
        # reference per residue of h, padded by the largest such halo tried.
        step = max(int(divisor[i]) for i in idx)
        top_h = k_max * unit
        refs: dict[int, WholePrediction] = {}

        def reference(h: int) -> WholePrediction:
            residue = h % step
            if residue not in refs:
                pad = top_h if top_h % step == residue else top_h - unit
                refs[residue] = WholePrediction.compute(net, img, [pad if i in idx else 0 for i in range(3)])
            return refs[residue]

        def ok(k: int) -> bool:
            halo = tuple(k * unit if i in idx else 0 for i in range(3))
            return measure(axes, halo, tolerance / 2, n_blocks, reference(k * unit))  # type: ignore[arg-type]

        lo, k = 0, 1
        while not ok(k):  # doubling until a passing k
            lo = k
            if k >= k_max:
                return k_max * unit
            k = min(2 * k, k_max)
        hi = k
        while hi - lo > 1:  # bisection between a failing lo and a passing hi
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        return hi * unit

    hz = search("z", 4)
    hyx = search("yx", 8)
    halo = (hz, hyx, hyx)
    passed = measure("zyx", halo, tolerance, 16)
    while not passed:
        bigger = tuple(min(t, h + u) for t, h, u in zip(top, halo, units))
        if bigger == halo:
            break
        halo = bigger  # type: ignore[assignment]
        passed = measure("zyx", halo, tolerance, 16)
    return HaloChoice(halo=halo, max_difference=trials[-1][2], tolerance=tolerance, trials=tuple(trials))


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class AxisSizes:
    """Parameterised input sizes and output halo of a package, per axis ``(z, y, x)``.

    ``minimum[i] + n * step[i]`` (n = 0, 1, 2, ...) are the valid input sizes;
    ``minimum`` leaves at least one ``step`` of output once the halo is cropped.
    """

    minimum: tuple[int, int, int]
    step: tuple[int, int, int]
    halo: tuple[int, int, int]

    @classmethod
    def from_halo(cls, divisor: Sequence[int], halo: Sequence[int]) -> "AxisSizes":
        """Sizes for a network of divisibility ``divisor`` and an output ``halo``.

        Examples
        --------
        >>> AxisSizes.from_halo((1, 4, 4), (3, 10, 10))
        AxisSizes(minimum=(7, 24, 24), step=(1, 4, 4), halo=(3, 10, 10))
        """
        step = tuple(int(d) for d in divisor)
        minimum = tuple(int(math.ceil((2 * h + d) / d)) * d for h, d in zip(halo, step))
        return cls(minimum=minimum, step=step, halo=tuple(int(h) for h in halo))  # type: ignore[arg-type]

    def largest_valid(self, size: Sequence[int], cap: Sequence[int] | None = None) -> tuple[int, int, int]:
        """Largest valid input size not above ``size`` (nor ``cap``, unless the minimum is)."""
        out = []
        for i, s in enumerate(size):
            limit = min(int(s), int(cap[i])) if cap is not None else int(s)
            limit = max(limit, self.minimum[i]) if s >= self.minimum[i] else int(s)
            if limit < self.minimum[i]:
                raise InputError(
                    f"test volume is {tuple(size)} voxels, smaller than the package's minimum input "
                    f"{self.minimum} (z, y, x); give a larger --test-volume."
                )
            out.append(self.minimum[i] + (limit - self.minimum[i]) // self.step[i] * self.step[i])
        return tuple(out)  # type: ignore[return-value]


def _center_crop(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    lo = [(s - n) // 2 for s, n in zip(volume.shape, shape)]
    return volume[tuple(slice(a, a + n) for a, n in zip(lo, shape))]


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
    import torch
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5

    metadata = metadata or PackageMetadata()
    run = read_run(run_dir)
    work = Path(work_dir).absolute()  # bioimageio resolves relative sources against the context root
    work.mkdir(parents=True, exist_ok=True)
    net = load_network(run)
    volume, spacing, volume_origin = _test_volume(test_volume, run.divisor)

    if metadata.halo is not None:
        halo_values = tuple(int(h) for h in metadata.halo)
        units = halo_units(run.divisor)
        if len(halo_values) != 3 or any(h < 1 or h % u for h, u in zip(halo_values, units)):
            raise ConfigError(f"halo {list(metadata.halo)} must be 3 positive multiples of {list(units)} (z, y, x).")
        minimum = AxisSizes.from_halo(run.divisor, halo_values).minimum
        AxisSizes.from_halo(run.divisor, halo_values).largest_valid(volume.shape)  # the volume holds a block
        diff = blocked_difference(
            net, zero_mean_unit_variance(volume), halo_values, [m - 2 * h for m, h in zip(minimum, halo_values)], align=run.divisor
        )
        halo = HaloChoice(halo=halo_values, max_difference=diff, tolerance=HALO_TOLERANCE)  # type: ignore[arg-type]
    else:
        halo = choose_halo(net, volume, run.divisor)
        if not halo.met:
            raise ModelError(
                f"{run.path}: blocked and whole-volume predictions still differ by {halo.max_difference:.3f} "
                f"with halo {halo.halo}, the largest a {tuple(volume.shape)} test volume allows (the network's "
                "context reaches further, e.g. through dilated convolutions or global pooling); give a larger "
                "--test-volume, or an explicit --halo to package it with that difference documented."
            )
    with torch.no_grad():
        probs = torch.sigmoid(net(torch.from_numpy(zero_mean_unit_variance(volume))[None, None]))[0].numpy()
    sizes = AxisSizes.from_halo(run.divisor, halo.halo)

    # files
    arch_file = work / run.source.name
    shutil.copyfile(run.source, arch_file)
    weights = work / WEIGHTS_FILE
    torch.save(read_state_dict(run.weights), weights)
    torchscript = work / TORCHSCRIPT_FILE
    export_torchscript(arch_file, run.callable, run.kwargs, weights, torchscript)
    test_shape = sizes.largest_valid(volume.shape, TEST_TENSOR_CAP)
    test_input = _center_crop(volume, test_shape).astype(np.float32)[None, None]
    np.save(work / TEST_INPUT_FILE, test_input)
    # placeholder until bioimageio.core has computed the real test output
    np.save(work / TEST_OUTPUT_FILE, np.zeros((1, len(CHANNELS)) + test_shape, np.float32))
    cover_path = work / COVER_FILE
    save_cover(cover_path, volume, probs, spacing)
    attachments = _copy_attachments(run, work)

    spec = _arch_spec(run.arch)
    name = metadata.name or f"cartocell-bmz synthetic {spec.title}"
    doc_path = work / DOC_FILE
    doc_path.write_text(
        documentation(run, name=name, sizes=sizes, halo=halo, test_shape=test_shape,
                      volume_origin=volume_origin, spacing=spacing, figures=validation_figures),
        encoding="utf-8",
    )

    def describe() -> "v0_5.ModelDescr":
        return _model_descr(run, work, metadata, name=name, sizes=sizes, halo=halo,
                            attachments=attachments, arch_file=arch_file)

    context = ValidationContext(root=work, file_name="rdf.yaml", perform_io_checks=False, raise_errors=True)
    with context:
        draft = describe()
    output = _core_test_output(draft)
    np.save(work / TEST_OUTPUT_FILE, output)
    with context:
        return describe()


def _model_descr(run: TrainingRun, work: Path, metadata: PackageMetadata, *, name: str, sizes: AxisSizes,
                 halo: HaloChoice, attachments: list[Path], arch_file: Path) -> "ModelDescr":
    import torch
    from bioimageio.spec.dataset.v0_3 import DatasetDescr
    from bioimageio.spec.model import v0_5

    spec = _arch_spec(run.arch)

    def file(path: Path) -> v0_5.FileDescr:
        return v0_5.FileDescr(source=path, sha256=sha256_of(path))

    space_in = [
        v0_5.SpaceInputAxis(
            id=v0_5.AxisId(a), size=v0_5.ParameterizedSize(min=sizes.minimum[i], step=sizes.step[i]),
            description=f"valid sizes {sizes.minimum[i]} + n * {sizes.step[i]} (n = 0, 1, 2, ...)",
        )
        for i, a in enumerate("zyx")
    ]
    space_out = [
        v0_5.SpaceOutputAxisWithHalo(
            id=v0_5.AxisId(a), size=v0_5.SizeReference(tensor_id=v0_5.TensorId(INPUT_ID), axis_id=v0_5.AxisId(a)),
            halo=sizes.halo[i],
        )
        for i, a in enumerate("zyx")
    ]
    inputs = [
        v0_5.InputTensorDescr(
            id=v0_5.TensorId(INPUT_ID),
            description="raw fluorescence stack of cell outlines (membrane signal), any intensity range",
            axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier("membrane")]), *space_in],
            test_tensor=file(work / TEST_INPUT_FILE),
            data=v0_5.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
                v0_5.ZeroMeanUnitVarianceDescr(
                    kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId(a) for a in ("channel", "z", "y", "x")])
                ),
            ],
        )
    ]
    outputs = [
        v0_5.OutputTensorDescr(
            id=v0_5.TensorId(OUTPUT_ID),
            description="probabilities of B (cell body), C (cell contours), M (cellular-region mask), in this order",
            axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[v0_5.Identifier(n) for n in CHANNEL_NAMES]),
                  *space_out],
            test_tensor=file(work / TEST_OUTPUT_FILE),
            data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            postprocessing=[
                v0_5.SigmoidDescr(),
                v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
            ],
        )
    ]
    torch_version = v0_5.Version(torch.__version__.split("+")[0])
    weights = v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=work / WEIGHTS_FILE, sha256=sha256_of(work / WEIGHTS_FILE),
            architecture=v0_5.ArchitectureFromFileDescr(
                source=arch_file, sha256=sha256_of(arch_file), callable=v0_5.Identifier(run.callable),
                kwargs=run.kwargs,
            ),
            pytorch_version=torch_version,
        ),
        torchscript=v0_5.TorchscriptWeightsDescr(
            source=work / TORCHSCRIPT_FILE, sha256=sha256_of(work / TORCHSCRIPT_FILE),
            parent="pytorch_state_dict", pytorch_version=torch_version,
        ),
    )
    cite = [
        v0_5.CiteEntry(text=CARTOCELL_CITATION[0], doi=v0_5.Doi(CARTOCELL_CITATION[1])),
        v0_5.CiteEntry(text=BIAPY_CITATION[0], doi=v0_5.Doi(BIAPY_CITATION[1])),
        v0_5.CiteEntry(text=spec.citation["text"], doi=v0_5.Doi(spec.citation["doi"])),
    ]
    train = run.config.get("train", {}) if isinstance(run.config.get("train"), dict) else {}
    data = run.config.get("data", {}) if isinstance(run.config.get("data"), dict) else {}
    training_data = DatasetDescr(
        name="cartocell-bmz synthetic cysts",
        description=_training_data_text(run),
        authors=[v0_5.Author(name=a) for a in metadata.authors],
        cite=[v0_5.CiteEntry(text=CARTOCELL_CITATION[0], doi=v0_5.Doi(CARTOCELL_CITATION[1]))],
        license=v0_5.LicenseId(metadata.license),
        tags=["cyst", "3d", "fluorescence", "synthetic", "instance-segmentation"],
        format_version="0.3.0",
        type="dataset",
    )
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
    config = v0_5.Config(
        bioimageio=v0_5.BioimageioConfig(
            architecture_type=spec.name,
            architecture_description=f"3D {spec.title} (cartocell-bmz source {run.source.name}), logits of B, C, M",
            modality="fluorescence microscopy",
            target_structure=["cell", "epithelial cyst"],
            task="instance segmentation (via B, C, M probabilities, watershed and Voronoi)",
            model_parameter_count=run.n_parameters or None,
            training=training,
        ),
        cartocell_bmz={
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
        },
    )
    return v0_5.ModelDescr(
        name=name,
        description=metadata.description or _default_description(run),
        covers=[file(work / COVER_FILE)],
        documentation=file(work / DOC_FILE),
        authors=[v0_5.Author(name=a) for a in metadata.authors],
        attachments=[file(p) for p in attachments],
        cite=cite,
        license=v0_5.LicenseId(metadata.license),
        tags=[*BASE_TAGS, run.arch],
        version=v0_5.Version(metadata.version),
        timestamp=v0_5.Datetime(run_timestamp(run)),
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        training_data=training_data,
        config=config,
    )


def _arch_spec(arch: str):
    from cartocell_bmz import networks

    return networks.get_spec(arch)


def _as_float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _default_description(run: TrainingRun) -> str:
    spec = _arch_spec(run.arch)
    return (
        f"3D {spec.title} that predicts CartoCell's three channels (B cell body, C cell contours, "
        "M whole cellular-region mask) in fluorescence stacks of epithelial cysts; a marker-controlled "
        "watershed and a mask-bounded 3D Voronoi turn them into touching cells. Trained by cartocell-bmz "
        f"on synthetic cysts: this is not the published CartoCell model {spec.published_id}."
    )


def _training_data_text(run: TrainingRun) -> str:
    data = run.config.get("data", {}) if isinstance(run.config.get("data"), dict) else {}
    n_train = len(data.get("train_volumes") or [])
    n_val = len(data.get("val_volumes") or [])
    text = (
        "Synthetic 3D epithelial cysts written by `cartocell-bmz phantoms` (cartocell_bmz.core.phantoms): "
        "hollow monolayers of cells around a lumen, membrane signal with uneven brightness, anisotropic "
        "blur, Poisson and Gaussian noise, with exact instance labels; CartoCell folder layout "
        "(train_M1, validation, train_M2, test) mimicking the CartoCell dataset (BMZ divine-melon)."
    )
    if n_train or n_val:
        text += f" This network saw {n_train} training and {n_val} validation volumes."
    gen = _dataset_json(run)
    if gen:
        text += (
            f" Generator settings: seed {gen.get('seed')}, volume {gen.get('shape')} voxels (z, y, x), "
            f"voxel size {gen.get('spacing')} um."
        )
    return text


def _dataset_json(run: TrainingRun) -> dict[str, Any]:
    """``dataset.json`` of the phantom dataset the run was trained on, when it can be found."""
    data = run.config.get("data", {}) if isinstance(run.config.get("data"), dict) else {}
    train_dir = data.get("train_dir")
    if not train_dir:
        return {}
    for parent in list(Path(train_dir).parents)[:3]:
        path = parent / "dataset.json"
        if path.is_file():
            try:
                found = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return {}
            return found if isinstance(found, dict) else {}
    return {}


def _copy_attachments(run: TrainingRun, work: Path) -> list[Path]:
    """The run's configuration and training log, for provenance."""
    out = []
    for src, name in ((run.path / "config.json", "training_config.json"), (run.path / "train_log.csv", "train_log.csv")):
        if src.is_file():
            shutil.copyfile(src, work / name)
            out.append(work / name)
    return out


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
    mtime = int((run.path / "status.json").stat().st_mtime)
    return _dt.datetime.fromtimestamp(mtime, tz=_dt.timezone.utc)


# --------------------------------------------------------------------------- files


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


def save_cover(path: Path, raw: np.ndarray, probs: np.ndarray, spacing: Sequence[float]) -> Path:
    """Cover image (2:1 PNG): raw slices, the B, C, M probabilities, watershed cells and Voronoi cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from cartocell_bmz.core.postprocess import PostprocessConfig, postprocess

    instances, voronoi = postprocess(probs, tuple(spacing), PostprocessConfig())
    z, y = raw.shape[0] // 2, raw.shape[1] // 2
    aspect = float(spacing[0]) / float(spacing[2])
    n = int(max(instances.max(), voronoi.max()))
    colours = np.random.default_rng(12345).uniform(0.25, 1.0, size=(n + 1, 3))
    colours[0] = 0
    cmap = ListedColormap(colours)
    panels = [
        (raw[z], "gray", "raw (z mid-slice)", 1.0, "antialiased"),
        (probs[0, z], "magma", f"{CHANNEL_NAMES[0]}", 1.0, "antialiased"),
        (probs[1, z], "magma", f"{CHANNEL_NAMES[1]}", 1.0, "antialiased"),
        (probs[2, z], "magma", f"{CHANNEL_NAMES[2]}", 1.0, "antialiased"),
        (raw[:, y], "gray", "raw (y mid-slice)", aspect, "antialiased"),
        (instances[z], cmap, f"watershed ({int(np.unique(instances).size - 1)} cells in 3D)", 1.0, "nearest"),
        (voronoi[z], cmap, "Voronoi cells (z)", 1.0, "nearest"),
        (voronoi[:, y], cmap, "Voronoi cells (y)", aspect, "nearest"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(10, 5))
    for ax, (img, cm, title, asp, interp) in zip(axes.flat, panels):
        if cm is cmap:
            ax.imshow(img, cmap=cm, vmin=0, vmax=n, aspect=asp, interpolation=interp)
        elif cm == "magma":
            ax.imshow(img, cmap=cm, vmin=0, vmax=1, aspect=asp, interpolation=interp)
        else:
            ax.imshow(img, cmap=cm, aspect=asp, interpolation=interp)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- documentation


def documentation(
    run: TrainingRun,
    *,
    name: str,
    sizes: AxisSizes,
    halo: HaloChoice,
    test_shape: Sequence[int],
    volume_origin: str,
    spacing: Sequence[float],
    figures: Mapping[str, Any] | None,
) -> str:
    """The package's ``documentation.md``."""
    spec = _arch_spec(run.arch)
    train = run.config.get("train", {}) if isinstance(run.config.get("train"), dict) else {}
    rows = "\n".join(
        f"| {i} | `{n}` | {c} | {CHANNEL_MEANING[c]} |" for i, (n, c) in enumerate(zip(CHANNEL_NAMES, CHANNELS))
    )
    lines = [
        f"# {name}",
        "",
        _default_description(run),
        "",
        "## What it does",
        "",
        f"A 3D {spec.title} ({run.n_parameters:,} parameters, class `{run.callable}` in `{run.source.name}`, "
        "which imports only torch) maps a single-channel fluorescence stack of cell outlines to the "
        "probabilities of three channels, in this order:",
        "",
        "| index | channel name | channel | meaning |",
        "|---|---|---|---|",
        rows,
        "",
        "Each channel name starts with its CartoCell letter (B, C, M); tools find the channel order "
        "from that letter. The network returns logits; the package's postprocessing applies the sigmoid. "
        "Its preprocessing normalises each whole image to zero mean and unit variance.",
        "",
        "Cells come from the probabilities in two steps (cartocell-bmz `postprocess`, after BiaPy and "
        "CartoCell): a marker-controlled watershed (seeds where B is high and C low, flooding -B inside "
        "B > threshold) and a 3D Voronoi expansion bounded by the M mask, so that neighbouring cells touch "
        "and the lumen stays empty.",
        "",
        "## Input sizes and tiling",
        "",
        f"Input axes `batch, channel, z, y, x`; spatial sizes `min + n * step` with min {sizes.minimum} "
        f"and step {sizes.step} (z, y, x). Outputs have the input's size and a halo of {sizes.halo} "
        "voxels to crop from each side of every block when tiling. " + _halo_text(halo, volume_origin),
        "",
        "Note for bioimageio.core 0.11: its whole-volume `predict` (no `blocksize_parameter`) pads the "
        "halo before computing the normalisation statistics, which changes them; use blocked prediction "
        "(`blocksize_parameter`) or cartocell-bmz, which normalise with the statistics of the image itself.",
        "",
        "## How to run it",
        "",
        "With cartocell-bmz (probabilities, watershed cells and Voronoi cells, voxel size kept):",
        "",
        "```bash",
        "cartocell-bmz predict --model PATH_TO_THIS_PACKAGE cysts/ --out results/",
        "cartocell-bmz validate PATH_TO_THIS_PACKAGE   # bioimageio.core's test of both weight formats",
        "```",
        "",
        "With bioimageio.core alone (probabilities only):",
        "",
        "```python",
        "import numpy as np, tifffile",
        "from bioimageio.core import load_description, predict",
        "",
        "model = load_description('PATH_TO_THIS_PACKAGE')",
        "raw = tifffile.imread('cyst.tif').astype('float32')[None, None]  # b, c, z, y, x",
        "sample = predict(model=model, inputs={'raw': raw}, blocksize_parameter=4)",
        "probs = sample.members['probabilities'].data.to_numpy()[0]  # (3, z, y, x): B, C, M",
        "```",
        "",
        f"A block is `min + n * step` voxels per axis for `blocksize_parameter` n and must fit in the volume: "
        "lower n for small volumes.",
        "",
        "## Training data",
        "",
        _training_data_text(run),
        "",
        f"Targets: {run.target_mode} definition of B, C and M from the instance labels. "
        + (
            f"Training: {train.get('optimizer', '?')} optimiser, learning rate {train.get('lr', '?')}, "
            f"{train.get('schedule', '?')} schedule, batch {train.get('batch_size', '?')}, "
            f"patches {train.get('patch_size', '?')}; best epoch {run.status.get('best_epoch', '?')} of "
            f"{run.status.get('epoch', '?')} (validation loss {_fmt(run.status.get('best_val_loss'))})."
            if train else ""
        )
        + ("" if run.status.get("finished") else " Training had not finished when this package was built."),
        "",
        f"Test tensors: a {tuple(test_shape)} crop of {volume_origin}; the cover shows that volume.",
        "",
        "# Validation",
        "",
    ]
    lines += figures_markdown(figures)
    lines += [
        "",
        "## Limitations",
        "",
        "Trained on synthetic cysts only: check it (and fine-tune it) before trusting it on real confocal "
        f"stacks. Voxel size matters: {_voxel_text(run, spacing)}; rescale very different data first.",
        "",
        "## Citation",
        "",
        f"- {CARTOCELL_CITATION[0]} doi:{CARTOCELL_CITATION[1]}",
        f"- {BIAPY_CITATION[0]} doi:{BIAPY_CITATION[1]}",
        f"- {spec.citation['text']} doi:{spec.citation['doi']}",
        "",
    ]
    return "\n".join(lines)


def _halo_text(halo: HaloChoice, volume_origin: str) -> str:
    if halo.trials:
        return (
            "The halo was measured on the trained network as the smallest with which even the smallest "
            f"blocks agree with whole-volume prediction to {halo.tolerance}: they differed by at most "
            f"{halo.max_difference:.2g} on {volume_origin}."
        )
    text = (
        f"The halo was set when packaging; with it, the smallest blocks differed from whole-volume "
        f"prediction by at most {halo.max_difference:.2g} on {volume_origin}"
    )
    if halo.max_difference > halo.tolerance:
        return text + f", more than {halo.tolerance}: tile with large blocks or predict whole volumes."
    return text + "."


def _voxel_text(run: TrainingRun, spacing: Sequence[float]) -> str:
    trained = _dataset_json(run).get("spacing")
    if isinstance(trained, (list, tuple)) and len(trained) == 3:
        return f"the training cysts had {tuple(float(v) for v in trained)} um voxels (z, y, x)"
    return f"the test volume has {tuple(round(float(v), 4) for v in spacing)} um voxels (z, y, x)"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def figures_markdown(figures: Mapping[str, Any] | None) -> list[str]:
    """Test-set figures as markdown lines for a ``# Validation`` section.

    ``cartocell-bmz evaluate``'s ``summary.json`` becomes the eight columns of the
    published CartoCell ranking and a per-threshold table; any other mapping a
    table of its numbers (nested keys joined with ``/``) after its texts.
    """
    if not figures:
        return [
            "No test-set figures were given when this package was built. Measure them with "
            "`cartocell-bmz predict` and `cartocell-bmz evaluate` on held-out cysts "
            "(channel IoU, F1, PQ and mean true score at IoU 0.5 and 0.75), and `cartocell-bmz validate` "
            "checks that the package reproduces its test output."
        ]
    if isinstance(figures.get("dataset"), Mapping) and isinstance(figures.get("channel_iou"), Mapping):
        return _summary_markdown(figures)
    flat = _flatten(figures)
    numbers = [(k, v) for k, v in flat if isinstance(v, (int, float)) and not isinstance(v, bool)]
    texts = [(k, v) for k, v in flat if isinstance(v, str)]
    lines = []
    for k, v in texts:
        lines.append(f"- {k}: {v}")
    if texts:
        lines.append("")
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in numbers]
    return lines


def _summary_markdown(summary: Mapping[str, Any]) -> list[str]:
    """``cartocell-bmz evaluate``'s ``summary.json`` as the published columns and a per-threshold table."""
    from cartocell_bmz.bench.ranking import RANKING_COLUMNS

    per_threshold = summary["dataset"]

    def at(threshold: float) -> Mapping[str, Any]:
        for key, value in per_threshold.items():
            try:
                if abs(float(key) - threshold) < 1e-9:
                    return value
            except ValueError:
                continue
        return {}

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"

    values = []
    for _, key, threshold in RANKING_COLUMNS:
        if threshold is None:
            values.append(summary["channel_iou"].get(key.split("_")[-1]))
        else:
            values.append(at(threshold).get(key))
    n = summary.get("n_images", "?")
    lines = [
        f"Test set: {n} held-out cysts; figures averaged over images "
        f"(`cartocell-bmz evaluate`, {summary.get('target_mode', '?')} targets), in the columns of the "
        "published CartoCell ranking.",
        "",
        "| " + " | ".join(c[0] for c in RANKING_COLUMNS) + " |",
        "|" + "---|" * len(RANKING_COLUMNS),
        "| " + " | ".join(cell(v) for v in values) + " |",
        "",
        "| IoU threshold | precision | recall | F1 | PQ | MTS | TP | FP | FN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in per_threshold.items():
        if isinstance(row, Mapping):
            lines.append(
                f"| {key} | " + " | ".join(cell(row.get(k)) for k in (
                    "precision", "recall", "f1", "panoptic_quality", "mean_true_score"))
                + " | " + " | ".join(str(row.get(k, "n/a")) for k in ("tp", "fp", "fn")) + " |"
            )
    return lines


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out += _flatten(value, name)
        elif not isinstance(value, (list, tuple)):
            out.append((name, value))
    return out


def read_figures(value: str | os.PathLike) -> dict[str, Any]:
    """Test-set figures from a JSON file or an inline JSON object.

    Raises
    ------
    InputError
        When ``value`` is neither a readable JSON file nor a JSON object.
    """
    text = str(value)
    path = Path(text)
    try:
        is_file = path.is_file()
    except OSError:
        is_file = False
    if is_file:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot be read as JSON ({type(exc).__name__}).") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise InputError(f"{text}: neither a JSON file nor a JSON object of test-set figures.") from None
    if not isinstance(data, dict):
        raise InputError(f"{text}: test-set figures must be a JSON object (name -> value).")
    return data


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
    from bioimageio.spec import ValidationContext, save_bioimageio_package, save_bioimageio_package_as_folder

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
        staged = Path(tmp) / ("package.zip" if format == "zip" else "package")
        with ValidationContext(root=work, file_name="rdf.yaml", perform_io_checks=True), warnings.catch_warnings():
            # spec 0.5.12 warns about every relative file while re-reading the saved package
            warnings.filterwarnings("ignore", message="Found mapping with 'source'")
            try:
                if format == "zip":
                    save_bioimageio_package(descr, output_path=staged)
                else:
                    save_bioimageio_package_as_folder(descr, output_path=staged)
            except ValueError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid description"
                raise ModelError(f"{out}: the package did not validate ({first}).") from None
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
        if out.is_dir() and any(out.iterdir()) and not (out / "rdf.yaml").is_file():
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
    "AxisSizes",
    "BASE_TAGS",
    "CHANNEL_NAMES",
    "HaloChoice",
    "INPUT_ID",
    "OUTPUT_ID",
    "PackageMetadata",
    "TrainingRun",
    "WholePrediction",
    "blocked_difference",
    "build_description",
    "build_package",
    "check_metadata",
    "choose_halo",
    "export_torchscript",
    "figures_markdown",
    "halo_units",
    "load_network",
    "read_figures",
    "read_run",
    "run_timestamp",
    "sha256_of",
]
