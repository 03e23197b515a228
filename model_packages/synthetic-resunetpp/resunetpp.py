"""3D ResUNet++, self-contained: imports only torch.

Jha et al., "ResUNet++: An advanced architecture for medical image
segmentation", IEEE ISM 2019 (doi:10.1109/ISM46123.2019.00049), in 3D as in
the published CartoCell model intelligent-lion, following the authors'
reference implementation:

- stem: ``conv, norm, act, conv`` + a 1x1x1 convolution and norm on the
  shortcut, then squeeze-and-excitation (SE);
- encoder: full pre-activation residual blocks whose first convolution (and
  shortcut) has stride ``(z_down, 2, 2)``, each followed by SE;
- bridge: atrous spatial pyramid pooling (ASPP: 3x3x3 convolutions with
  dilation ``aspp_rates`` (6, 12, 18) and 1, each normalised, summed, 1x1x1
  convolution);
- decoder: an attention block (the skip features, normalised, activated,
  convolved and max-pooled to the coarse grid, are added to the decoder
  features, normalised, activated and convolved; a last ``norm, act, conv``
  gives weights that multiply the decoder features), upsampling by
  ``(z_down, 2, 2)``, the skip connection concatenated, a residual block and SE;
- output: ASPP, then a 1x1x1 head.

SE averages over the whole input by default, as the published model does;
``se_window`` makes it a local average (see ``_SqueezeExcitation``), so that
the network can be tiled exactly.

The network returns logits ``(N, out_channels, Z, Y, X)`` (B, C, M for
CartoCell); apply a sigmoid to get probabilities.  Y and X must be multiples
of ``2 ** (len(feature_maps) - 1)``, Z of the product of ``z_down``.

This file is carried as-is by BioImage Model Zoo packages: keep it free of
imports other than torch, typing and math.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = ["ResUNetPlusPlus"]

#: Default dilation rates of the ASPP branches (Jha et al.); an undilated branch is always added.
ASPP_RATES: Tuple[int, int, int] = (6, 12, 18)


def _levels(
    feature_maps: Sequence[int], z_down: Sequence[int], dropout: Union[float, Sequence[float]]
) -> Tuple[List[int], List[int], List[float]]:
    fm = [int(f) for f in feature_maps]
    if len(fm) < 1 or min(fm) < 1:
        raise ValueError(f"feature_maps must be a non-empty list of positive widths, got {list(feature_maps)}")
    zd = [int(z) for z in z_down]
    if len(zd) != len(fm) - 1 or any(z not in (1, 2) for z in zd):
        raise ValueError(
            f"z_down must give one z pooling factor (1 or 2) per pooling level ({len(fm) - 1}), got {list(z_down)}"
        )
    if isinstance(dropout, (int, float)):
        dr = [float(dropout)] * len(fm)
    else:
        dr = [float(d) for d in dropout]
    if len(dr) != len(fm) or any(not 0.0 <= d < 1.0 for d in dr):
        raise ValueError(f"dropout must be a float in [0, 1) or one such value per level ({len(fm)}), got {dropout}")
    return fm, zd, dr


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm3d(channels)
    if kind == "in":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"normalization must be 'bn', 'in' or 'none', got {kind!r}")


def _out_channels(value: Union[int, Sequence[int]]) -> int:
    """Output channels from an int or BiaPy's one-element list form (``output_channels: [3]``)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"out_channels as a list must hold one channel count, got {list(value)!r}")
        value = value[0]
    return int(value)


def _act(kind: str) -> nn.Module:
    if kind == "elu":
        return nn.ELU()
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be 'elu' or 'relu', got {kind!r}")


def _conv(cin: int, cout: int, k: int, stride: Tuple[int, int, int] = (1, 1, 1), dilation: int = 1) -> nn.Conv3d:
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k_size must be a positive odd integer, got {k}")
    return nn.Conv3d(cin, cout, kernel_size=k, stride=stride, padding=dilation * (k // 2), dilation=dilation)


def _se_window(se_window: Optional[Sequence[int]]) -> List[int]:
    if se_window is None:
        return []
    w = [int(v) for v in se_window]
    if len(w) != 3 or any(v < 1 or v % 2 == 0 for v in w):
        raise ValueError(
            "se_window must be None (global average) or three odd positive sizes (z, y, x), got {}".format(se_window)
        )
    return w


def _aspp_rates(rates: Sequence[int]) -> List[int]:
    r = [int(v) for v in rates]
    if len(r) < 1 or any(v < 1 for v in r):
        raise ValueError("aspp_rates must list one or more positive dilation rates, got {}".format(list(rates)))
    return r


class _SqueezeExcitation(nn.Module):
    """3D squeeze-and-excitation (Hu et al. 2018): average pool, bottleneck of two
    1x1x1 convolutions (ReLU, sigmoid), channels rescaled by the result.

    The bottleneck has ``channels // 16`` units (Hu et al.'s ratio), at least 4
    (or ``channels`` when fewer), so that narrow layers keep a useful gate.

    With an empty ``window`` the average is global (Hu et al.; the published
    CartoCell models): every voxel's gate depends on the whole input, so a tiled
    prediction differs from a whole-volume one however much the tiles overlap.
    With ``window = [wz, wy, wx]`` (odd sizes, in voxels of this layer's grid) it
    is a centred moving average (voxels beyond the input not counted): a gate
    depends on a neighbourhood only, and tiles whose halo covers it compute what
    the whole volume computes.
    """

    def __init__(self, channels: int, ratio: int = 16, window: Optional[List[int]] = None) -> None:
        super().__init__()
        hidden = max(min(4, channels), channels // ratio)
        self.fc1 = nn.Conv3d(channels, hidden, kernel_size=1)
        self.fc2 = nn.Conv3d(hidden, channels, kernel_size=1)
        self.global_average = window is None or len(window) == 0
        self.window: List[int] = [1, 1, 1] if self.global_average else [int(w) for w in window]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_average:
            s = x.mean(dim=(2, 3, 4), keepdim=True)
        else:
            s = x
            for axis in range(3):
                w = self.window[axis]
                if w > 1:
                    # moving sum over zero padding (any input size), divided by the voxels inside
                    r = w // 2
                    n = s.shape[2 + axis]
                    k = [1, 1, 1]
                    k[axis] = w
                    pad = [0, 0, 0, 0, 0, 0]
                    pad[4 - 2 * axis] = r
                    pad[5 - 2 * axis] = r
                    total = nn.functional.avg_pool3d(nn.functional.pad(s, pad), kernel_size=k, stride=1) * w
                    i = torch.arange(n, device=x.device)
                    count = torch.clamp(i + r, max=n - 1) - torch.clamp(i - r, min=0) + 1
                    shape = [1, 1, 1, 1, 1]
                    shape[2 + axis] = n
                    s = total / count.to(s.dtype).view(shape)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s


class _ResBlock(nn.Module):
    """Residual unit followed by SE.

    The stem (``first=True``) is ``conv, norm, act, [dropout,] conv``; other units
    use full pre-activation ``norm, act, conv(stride), norm, act, [dropout,] conv``.
    The shortcut is a 1x1x1 convolution with the same stride, and a norm.
    """

    def __init__(self, cin: int, cout: int, k: int, norm: str, act: str, dropout: float, first: bool,
                 stride: Tuple[int, int, int] = (1, 1, 1), se_window: Optional[List[int]] = None) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        if not first:
            layers += [_norm(norm, cin), _act(act)]
        layers += [_conv(cin, cout, k, stride), _norm(norm, cout), _act(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(_conv(cout, cout, k))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, kernel_size=1, stride=stride), _norm(norm, cout))
        self.se = _SqueezeExcitation(cout, window=se_window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.body(x) + self.shortcut(x))


class _ASPP(nn.Module):
    """Atrous spatial pyramid pooling: dilated 3x3x3 branches, each normalised, summed, 1x1x1 conv."""

    def __init__(self, cin: int, cout: int, k: int, norm: str, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Sequential(_conv(cin, cout, k, dilation=r), _norm(norm, cout)) for r in list(rates) + [1]]
        )
        self.project = nn.Conv3d(cout, cout, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.zeros(1, dtype=x.dtype, device=x.device)
        for branch in self.branches:
            y = y + branch(x)
        return self.project(y)


class _AttentionBlock(nn.Module):
    """Jha et al.'s attention: weights from the skip features ``s`` (pooled to the coarse
    grid) and the decoder features ``g``, multiplying ``g``."""

    def __init__(self, cskip: int, cg: int, z: int, k: int, norm: str, act: str) -> None:
        super().__init__()
        self.from_skip = nn.Sequential(
            _norm(norm, cskip), _act(act), _conv(cskip, cg, k), nn.MaxPool3d(kernel_size=(z, 2, 2))
        )
        self.from_g = nn.Sequential(_norm(norm, cg), _act(act), _conv(cg, cg, k))
        self.weights = nn.Sequential(_norm(norm, cg), _act(act), _conv(cg, cg, k))

    def forward(self, skip: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.weights(self.from_skip(skip) + self.from_g(g)) * g


class _Up(nn.Module):
    """Attention, upsample by ``(z, 2, 2)``, concatenate the skip connection, residual block + SE."""

    def __init__(self, cin: int, cskip: int, cout: int, z: int, k: int, norm: str, act: str, dropout: float,
                 upsample: str, se_window: List[int]) -> None:
        super().__init__()
        self.attention = _AttentionBlock(cskip, cin, z, k, norm, act)
        factor = (z, 2, 2)
        if upsample == "convtranspose":
            self.up: nn.Module = nn.ConvTranspose3d(cin, cin, kernel_size=factor, stride=factor)
        elif upsample == "upsampling":
            self.up = nn.Upsample(scale_factor=(float(z), 2.0, 2.0), mode="trilinear", align_corners=False)
        else:
            raise ValueError(f"upsample must be 'convtranspose' or 'upsampling', got {upsample!r}")
        self.block = _ResBlock(cin + cskip, cout, k, norm, act, dropout, first=False, se_window=se_window)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(self.attention(skip, x))
        return self.block(torch.cat([x, skip], dim=1))


class ResUNetPlusPlus(nn.Module):
    """3D ResUNet++ returning logits.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for CartoCell's membrane images).
    out_channels : int or sequence of one int
        Output channels (3: B, C, M); ``[3]`` is BiaPy's form of the same (what BiaPy reads).
    feature_maps : sequence of int
        Channel width of each level, top to bottom; its length is the depth.  The
        ASPP bridge keeps the width of the last level.
    z_down : sequence of int
        z stride of each downsampling level (``len(feature_maps) - 1`` values):
        1 keeps z (CartoCell, anisotropic stacks), 2 halves it.  y and x are always halved.
    normalization : {"bn", "in", "none"}
        Batch norm, instance norm (affine) or none.
    dropout : float or sequence of float
        Dropout rate, one for all levels or one per level.
    activation : {"elu", "relu"}
        Activation function (the squeeze-and-excitation bottleneck always uses ReLU).
    k_size : int
        Odd convolution kernel size.
    upsample : {"convtranspose", "upsampling"}
        Transposed convolution or trilinear upsampling in the decoder.
    se_window : sequence of 3 odd int, optional
        Averaging window ``(z, y, x)`` of every squeeze-and-excitation block, in
        voxels of the block's own grid.  ``None`` (the published model) averages
        over the whole input; a window bounds the network's reach, so that tiled
        prediction with a large enough halo equals whole-volume prediction.
    aspp_rates : sequence of int
        Dilation rates of the ASPP branches besides the undilated one (Jha et al.:
        6, 12, 18).  A branch reaches ``rate`` voxels of its grid (``rate`` times
        the pooling factor at the bridge), so small volumes and tiles want small rates.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: Union[int, Sequence[int]] = 3,
        feature_maps: Sequence[int] = (52, 68, 84),
        z_down: Sequence[int] = (1, 1),
        normalization: str = "bn",
        dropout: Union[float, Sequence[float]] = 0.1,
        activation: str = "elu",
        k_size: int = 3,
        upsample: str = "convtranspose",
        se_window: Optional[Sequence[int]] = None,
        aspp_rates: Sequence[int] = (6, 12, 18),
    ) -> None:
        super().__init__()
        fm, zd, dr = _levels(feature_maps, z_down, dropout)
        sw = _se_window(se_window)
        zprod = 1
        for z in zd:
            zprod *= z
        self.divisor: Tuple[int, int, int] = (zprod, 2 ** len(zd), 2 ** len(zd))
        self.in_channels = int(in_channels)

        self.stem = _ResBlock(int(in_channels), fm[0], k_size, normalization, activation, dr[0], first=True,
                              se_window=sw)
        self.down = nn.ModuleList()
        for i in range(1, len(fm)):
            self.down.append(
                _ResBlock(fm[i - 1], fm[i], k_size, normalization, activation, dr[i], first=False,
                          stride=(zd[i - 1], 2, 2), se_window=sw)
            )
        rates = _aspp_rates(aspp_rates)
        self.bridge = _ASPP(fm[-1], fm[-1], k_size, normalization, rates)
        self.up = nn.ModuleList()
        cin = fm[-1]
        for i in range(len(fm) - 2, -1, -1):
            self.up.append(_Up(cin, fm[i], fm[i], zd[i], k_size, normalization, activation, dr[i], upsample, sw))
            cin = fm[i]
        self.aspp_out = _ASPP(fm[0], fm[0], k_size, normalization, rates)
        self.head = nn.Conv3d(fm[0], _out_channels(out_channels), kernel_size=1)

        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                "ResUNetPlusPlus expects input (N, {}, Z, Y, X), got shape {}".format(
                    self.in_channels, list(x.shape)
                )
            )
        dz, dy, dx = self.divisor
        if x.shape[2] % dz != 0 or x.shape[3] % dy != 0 or x.shape[4] % dx != 0:
            raise ValueError(
                "ResUNetPlusPlus input size (Z, Y, X) = {} must be a multiple of {}; pad or crop it".format(
                    list(x.shape[2:]), [dz, dy, dx]
                )
            )
        x = self.stem(x)
        skips: List[torch.Tensor] = [x]
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.bridge(x)
        for i, up in enumerate(self.up):
            x = up(x, skips[len(skips) - 2 - i])
        return self.head(self.aspp_out(x))
