"""The output halo of a package: measured on the trained network, and the input sizes it implies.

bioimageio.core tiles a volume into blocks of ``minimum + n * step`` voxels per
axis and crops the output halo from every side of each block.  The halo is
measured rather than derived from the receptive field: :func:`choose_halo`
finds the smallest one with which the smallest blocks a package allows agree
with whole-volume prediction (:func:`blocked_difference`, emulating
bioimageio.core 0.11's tiling) to :data:`~cartocell_bmz.run.margins.HALO_TOLERANCE`;
:func:`measure_halo` measures a halo given by the user.  :class:`AxisSizes`
turns a halo and the network's divisibility into the parameterised sizes of
the package's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cartocell_bmz.core.normalize import zero_mean_unit_variance
from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.run.margins import HALO_TOLERANCE

if TYPE_CHECKING:  # pragma: no cover
    import torch


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


# --------------------------------------------------------------------------- a halo given by the user


def measure_halo(net: "torch.nn.Module", image: np.ndarray, divisor: Sequence[int],
                 halo: Sequence[int]) -> HaloChoice:
    """How far blocked prediction with a given ``halo`` is from whole-volume prediction (no search).

    Parameters
    ----------
    net : torch.nn.Module
        The trained network (logits), in eval mode.
    image : numpy.ndarray
        A representative raw ``(Z, Y, X)`` volume, sizes multiples of ``divisor``.
    divisor : sequence of 3 int
        The network's divisibility ``(z, y, x)``.
    halo : sequence of 3 int
        The halo ``(z, y, x)``, positive multiples of :func:`halo_units`.

    Returns
    -------
    HaloChoice
        Without trials; ``met`` says whether the difference is within
        :data:`~cartocell_bmz.run.margins.HALO_TOLERANCE`.

    Raises
    ------
    ConfigError
        When ``halo`` is not 3 positive multiples of the halo units.
    InputError
        When ``image`` is smaller than the smallest block of that halo.
    """
    values = tuple(int(h) for h in halo)
    units = halo_units(divisor)
    if len(values) != 3 or any(h < 1 or h % u for h, u in zip(values, units)):
        raise ConfigError(f"halo {list(halo)} must be 3 positive multiples of {list(units)} (z, y, x).")
    sizes = AxisSizes.from_halo(divisor, values)
    sizes.largest_valid(image.shape)  # the volume holds a block
    diff = blocked_difference(
        net, zero_mean_unit_variance(image), values, [m - 2 * h for m, h in zip(sizes.minimum, values)], align=divisor
    )
    return HaloChoice(halo=values, max_difference=diff, tolerance=HALO_TOLERANCE)  # type: ignore[arg-type]


__all__ = [
    "AxisSizes",
    "HaloChoice",
    "WholePrediction",
    "blocked_difference",
    "choose_halo",
    "halo_units",
    "measure_halo",
]
