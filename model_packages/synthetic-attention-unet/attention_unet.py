"""3D Attention U-Net, self-contained: imports only torch.

Oktay et al., "Attention U-Net: Learning where to look for the pancreas",
arXiv:1804.03999, 2018 (doi:10.48550/arXiv.1804.03999), as in the published
CartoCell model heroic-otter: the 3D U-Net of ``unet.py`` (two ``conv, norm,
activation`` layers per level, max pooling ``(z_down, 2, 2)``, transposed
convolution up, 1x1x1 head) whose skip connections pass through additive
attention gates.  A gate takes the skip features ``x`` and the coarser decoder
features ``g`` (the gating signal): ``q = relu(W_x x + W_g g)`` with ``W_x`` a
strided ``(z_down, 2, 2)`` convolution bringing ``x`` to the grid of ``g``,
``alpha = sigmoid(psi q)`` resampled trilinearly to the grid of ``x``, and the
gate returns ``W (alpha * x)`` (1x1x1 convolution + norm), as in the authors'
grid-attention implementation.

The network returns logits ``(N, out_channels, Z, Y, X)`` (B, C, M for
CartoCell); apply a sigmoid to get probabilities.  Y and X must be multiples
of ``2 ** (len(feature_maps) - 1)``, Z of the product of ``z_down``.

This file is carried as-is by BioImage Model Zoo packages: keep it free of
imports other than torch, typing and math.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Attention_U_Net"]


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


def _conv(cin: int, cout: int, k: int) -> nn.Conv3d:
    if k < 1 or k % 2 == 0:
        raise ValueError(f"k_size must be a positive odd integer, got {k}")
    return nn.Conv3d(cin, cout, kernel_size=k, padding=k // 2)


def _double_conv(cin: int, cout: int, k: int, norm: str, act: str, dropout: float) -> nn.Sequential:
    layers: List[nn.Module] = [_conv(cin, cout, k), _norm(norm, cout), _act(act)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [_conv(cout, cout, k), _norm(norm, cout), _act(act)]
    return nn.Sequential(*layers)


def _upsampler(cin: int, cout: int, z: int, norm: str, act: str, upsample: str) -> nn.Sequential:
    factor = (z, 2, 2)
    if upsample == "convtranspose":
        layers: List[nn.Module] = [nn.ConvTranspose3d(cin, cout, kernel_size=factor, stride=factor)]
    elif upsample == "upsampling":
        layers = [
            nn.Upsample(scale_factor=(float(z), 2.0, 2.0), mode="trilinear", align_corners=False),
            nn.Conv3d(cin, cout, kernel_size=1),
        ]
    else:
        raise ValueError(f"upsample must be 'convtranspose' or 'upsampling', got {upsample!r}")
    return nn.Sequential(*(layers + [_norm(norm, cout), _act(act)]))


class _AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018) on skip features ``x`` gated by coarser ``g``."""

    def __init__(self, cx: int, cg: int, z: int, norm: str) -> None:
        super().__init__()
        cint = max(1, cx // 2)
        self.theta_x = nn.Conv3d(cx, cint, kernel_size=(z, 2, 2), stride=(z, 2, 2), bias=False)
        self.phi_g = nn.Conv3d(cg, cint, kernel_size=1)
        self.psi = nn.Conv3d(cint, 1, kernel_size=1)
        self.out = nn.Sequential(nn.Conv3d(cx, cx, kernel_size=1), _norm(norm, cx))

    @torch.jit.export
    def attention(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Attention coefficients ``alpha`` in [0, 1], shape ``(N, 1, *x.shape[2:])``."""
        q = F.relu(self.theta_x(x) + self.phi_g(g))
        alpha = torch.sigmoid(self.psi(q))
        return F.interpolate(alpha, size=x.shape[2:], mode="trilinear", align_corners=False)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.out(self.attention(x, g) * x)


class _Up(nn.Module):
    """Gate the skip connection with ``x``, upsample ``x`` to ``cout`` channels, concatenate, two convolutions."""

    def __init__(self, cin: int, cout: int, z: int, k: int, norm: str, act: str, dropout: float,
                 upsample: str) -> None:
        super().__init__()
        self.gate = _AttentionGate(cout, cin, z, norm)
        self.up = _upsampler(cin, cout, z, norm, act, upsample)
        self.block = _double_conv(2 * cout, cout, k, norm, act, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), self.gate(skip, x)], dim=1))


class Attention_U_Net(nn.Module):
    """3D Attention U-Net returning logits.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for CartoCell's membrane images).
    out_channels : int or sequence of one int
        Output channels (3: B, C, M); ``[3]`` is BiaPy's form of the same (what BiaPy reads).
    feature_maps : sequence of int
        Channel width of each level, top to bottom; its length is the depth.
    z_down : sequence of int
        z pooling factor of each pooling level (``len(feature_maps) - 1`` values):
        1 keeps z (CartoCell, anisotropic stacks), 2 halves it.  y and x are always halved.
    normalization : {"bn", "in", "none"}
        Batch norm, instance norm (affine) or none.
    dropout : float or sequence of float
        Dropout rate, one for all levels or one per level.
    activation : {"elu", "relu"}
        Activation function.
    k_size : int
        Odd convolution kernel size.
    upsample : {"convtranspose", "upsampling"}
        Transposed convolution or trilinear upsampling in the decoder.
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
    ) -> None:
        super().__init__()
        fm, zd, dr = _levels(feature_maps, z_down, dropout)
        zprod = 1
        for z in zd:
            zprod *= z
        self.divisor: Tuple[int, int, int] = (zprod, 2 ** len(zd), 2 ** len(zd))
        self.in_channels = int(in_channels)

        self.down = nn.ModuleList()
        self.pools = nn.ModuleList()
        cin = int(in_channels)
        for i in range(len(fm) - 1):
            self.down.append(_double_conv(cin, fm[i], k_size, normalization, activation, dr[i]))
            self.pools.append(nn.MaxPool3d(kernel_size=(zd[i], 2, 2)))
            cin = fm[i]
        self.bottom = _double_conv(cin, fm[-1], k_size, normalization, activation, dr[-1])
        self.up = nn.ModuleList()
        cin = fm[-1]
        for i in range(len(fm) - 2, -1, -1):
            self.up.append(_Up(cin, fm[i], zd[i], k_size, normalization, activation, dr[i], upsample))
            cin = fm[i]
        self.head = nn.Conv3d(fm[0], _out_channels(out_channels), kernel_size=1)

        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                "Attention_U_Net expects input (N, {}, Z, Y, X), got shape {}".format(self.in_channels, list(x.shape))
            )
        dz, dy, dx = self.divisor
        if x.shape[2] % dz != 0 or x.shape[3] % dy != 0 or x.shape[4] % dx != 0:
            raise ValueError(
                "Attention_U_Net input size (Z, Y, X) = {} must be a multiple of {}; pad or crop it".format(
                    list(x.shape[2:]), [dz, dy, dx]
                )
            )
        skips: List[torch.Tensor] = []
        for block, pool in zip(self.down, self.pools):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for i, up in enumerate(self.up):
            x = up(x, skips[len(skips) - 1 - i])
        return self.head(x)
