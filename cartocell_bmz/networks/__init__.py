"""The six network architectures of the published CartoCell models, and their registry.

Each architecture lives in its own self-contained source file in this folder
(``unet.py``, ``attention_unet.py``, ``seunet.py``, ``resunetpp.py``,
``resunet.py``, ``resunet_se.py``) that imports only torch, so that a BioImage
Model Zoo package can carry the file and rebuild the network without
cartocell-bmz installed.  Every network is 3D and fully convolutional, maps
``(N, in_channels, Z, Y, X)`` to ``(N, out_channels, Z, Y, X)`` *logits* (no
sigmoid: the BMZ package adds it as postprocessing) in channel order B, C, M,
and scripts with :func:`torch.jit.script`.

All six classes take the same keyword arguments (named after the BiaPy kwargs
of the published descriptions):

``in_channels`` (1), ``out_channels`` (3), ``feature_maps`` (list of channel
widths, one per level; its length is the depth), ``z_down`` (list of z pooling
factors, one per pooling level, ``1`` keeps z as CartoCell does, ``2`` halves
it; y and x are always halved), ``normalization`` (``"bn"``, ``"in"`` or
``"none"``), ``dropout`` (float or one value per level), ``activation``
(``"elu"`` or ``"relu"``), ``k_size`` (odd kernel size, 3) and ``upsample``
(``"convtranspose"`` or ``"upsampling"``).

This module is the one place that knows the list of architectures, their
titles, citations, published BMZ ids and preset sizes.

Examples
--------
>>> sorted(ARCHITECTURES)
['attention_unet', 'resunet', 'resunet_se', 'resunetpp', 'seunet', 'unet']
>>> ARCHITECTURES["resunet"].callable, ARCHITECTURES["resunet"].published_id
('ResUNet', 'merry-water-buffalo')
>>> divisor("resunet", {"feature_maps": [8, 16, 32], "z_down": [1, 1]})
(1, 4, 4)
"""

from __future__ import annotations

import copy
import importlib
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from cartocell_bmz.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Folder holding the architecture source files.
NETWORKS_DIR: Path = Path(__file__).resolve().parent

#: Keyword arguments every architecture class accepts, in signature order.
KWARG_NAMES: tuple[str, ...] = (
    "in_channels",
    "out_channels",
    "feature_maps",
    "z_down",
    "normalization",
    "dropout",
    "activation",
    "k_size",
    "upsample",
)

#: Preset sizes understood by :func:`preset_kwargs`.
PRESET_SIZES: tuple[str, ...] = ("tiny", "paper")

#: The CartoCell configuration shared by the six published models (BiaPy kwargs
#: ``feature_maps``, ``drop_values``, ``z_down``, ``normalization``, ``k_size``,
#: ``activation``, ``upsample_layer``, ``output_channels`` of their rdf.yaml).
PAPER_KWARGS: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 3,
    "feature_maps": [52, 68, 84],
    "z_down": [1, 1],
    "normalization": "bn",
    "dropout": [0.1, 0.1, 0.1],
    "activation": "elu",
    "k_size": 3,
    "upsample": "convtranspose",
}

#: A network small enough to train in minutes on 2 CPU cores on 32 x 96 x 96 cysts.
TINY_KWARGS: dict[str, Any] = {**PAPER_KWARGS, "feature_maps": [8, 16, 24], "dropout": [0.0, 0.0, 0.0]}


@dataclass(frozen=True)
class ArchSpec:
    """What the project knows about one architecture.

    Attributes
    ----------
    name : str
        Registry key (``"resunet"``), used by ``--arch``.
    source : str
        File name of the self-contained source in this folder (``"resunet.py"``).
    callable : str
        Class name inside ``source`` (``"ResUNet"``), as in the published rdf.yaml.
    title : str
        Human-readable name (``"Residual U-Net"``).
    citation : dict
        ``{"text": ..., "doi": ...}`` of the architecture paper.
    published_id : str
        BioImage Model Zoo id of the published CartoCell model with this architecture.
    default_kwargs : dict
        Constructor arguments used when none are given (CartoCell's sizes).
    presets : dict
        Constructor arguments per preset size (``"tiny"``, ``"paper"``).
    extra_kwargs : dict
        Arguments only this architecture takes, with their defaults (those of
        the published model): ``se_window`` for the squeeze-and-excitation
        networks, ``aspp_rates`` for ResUNet++.
    """

    name: str
    source: str
    callable: str
    title: str
    citation: dict[str, str]
    published_id: str
    default_kwargs: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(PAPER_KWARGS))
    presets: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"tiny": copy.deepcopy(TINY_KWARGS), "paper": copy.deepcopy(PAPER_KWARGS)}
    )
    extra_kwargs: dict[str, Any] = field(default_factory=dict)


#: Squeeze-and-excitation window of the tiny preset, in voxels of each block's grid:
#: about 3 x 2.5 x 2.5 um at full resolution on CartoCell's 1 x 0.5 x 0.5 um voxels.
#: A local window keeps the reach of the network bounded, so that tiled prediction
#: equals whole-volume prediction (the published models average globally).
TINY_SE_WINDOW: list[int] = [3, 5, 5]

#: ASPP dilation rates of the tiny ResUNet++: the published 6, 12, 18 reach 72 voxels
#: in y and x at the bridge, wider than a whole small cyst.  A trade-off: on the synthetic
#: validation cysts rates 2, 4, 6 segment better (instance F1@0.5 0.925 against 0.827), but
#: need a halo of 15 x 38 x 38, too wide for the published 80^3 tiles (a fixed-tile package
#: of that network differs from whole-volume prediction by 0.04); rates 1, 2, 3 need
#: 11 x 28 x 28 and tile within 0.001.  Use ``--arch-kwargs`` for the other choice.
TINY_ASPP_RATES: list[int] = [1, 2, 3]


def _spec(name: str, source: str, callable_: str, title: str, text: str, doi: str, published_id: str,
          extra: Mapping[str, Any] | None = None, tiny_extra: Mapping[str, Any] | None = None) -> ArchSpec:
    extra = dict(extra or {})
    return ArchSpec(
        name=name,
        source=source,
        callable=callable_,
        title=title,
        citation={"text": text, "doi": doi},
        published_id=published_id,
        default_kwargs={**copy.deepcopy(PAPER_KWARGS), **copy.deepcopy(extra)},
        presets={
            "tiny": {**copy.deepcopy(TINY_KWARGS), **copy.deepcopy(extra), **copy.deepcopy(dict(tiny_extra or {}))},
            "paper": {**copy.deepcopy(PAPER_KWARGS), **copy.deepcopy(extra)},
        },
        extra_kwargs=copy.deepcopy(extra),
    )


#: The six architectures of the published CartoCell models, by registry name.
#: Citations are the architecture papers the published descriptions cite.
ARCHITECTURES: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        _spec(
            "unet", "unet.py", "U_Net", "U-Net",
            "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional networks for biomedical "
            "image segmentation. MICCAI 2015.",
            "10.1007/978-3-319-24574-4_28", "happy-honeybee",
        ),
        _spec(
            "attention_unet", "attention_unet.py", "Attention_U_Net", "Attention U-Net",
            "Oktay O. et al. Attention U-Net: Learning where to look for the pancreas. "
            "arXiv:1804.03999, 2018.",
            "10.48550/arXiv.1804.03999", "heroic-otter",
        ),
        _spec(
            "seunet", "seunet.py", "SE_U_Net", "Squeeze-and-Excitation U-Net",
            "Hu J., Shen L., Sun G. Squeeze-and-excitation networks. CVPR 2018.",
            "10.1109/CVPR.2018.00745", "idealistic-turtle",
            extra={"se_window": None}, tiny_extra={"se_window": TINY_SE_WINDOW},
        ),
        _spec(
            "resunetpp", "resunetpp.py", "ResUNetPlusPlus", "ResUNet++",
            "Jha D. et al. ResUNet++: An advanced architecture for medical image segmentation. "
            "IEEE ISM 2019.",
            "10.1109/ISM46123.2019.00049", "intelligent-lion",
            extra={"se_window": None, "aspp_rates": [6, 12, 18]},
            tiny_extra={"se_window": TINY_SE_WINDOW, "aspp_rates": TINY_ASPP_RATES},
        ),
        _spec(
            "resunet", "resunet.py", "ResUNet", "Residual U-Net",
            "Zhang Z., Liu Q., Wang Y. Road extraction by deep residual U-Net. "
            "IEEE Geoscience and Remote Sensing Letters 15(5), 2018.",
            "10.1109/LGRS.2018.2802944", "merry-water-buffalo",
        ),
        _spec(
            "resunet_se", "resunet_se.py", "ResUNet_SE", "Residual Squeeze-and-Excitation U-Net",
            "Hu J., Shen L., Sun G. Squeeze-and-excitation networks. CVPR 2018.",
            "10.1109/CVPR.2018.00745", "venomous-swan",
            extra={"se_window": None}, tiny_extra={"se_window": TINY_SE_WINDOW},
        ),
    )
}


# --------------------------------------------------------------------------- lookup


def get_spec(name: str) -> ArchSpec:
    """Return the :class:`ArchSpec` of architecture ``name``.

    Raises
    ------
    ConfigError
        If ``name`` is not a known architecture.
    """
    spec = ARCHITECTURES.get(str(name))
    if spec is None:
        raise ConfigError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    return spec


def source_path(name: str) -> Path:
    """Path of the self-contained source file of architecture ``name``.

    Examples
    --------
    >>> source_path("unet").name
    'unet.py'
    """
    return NETWORKS_DIR / get_spec(name).source


def network_class(name: str) -> type:
    """The ``torch.nn.Module`` subclass of architecture ``name`` (imports torch)."""
    spec = get_spec(name)
    module = importlib.import_module(f"{__name__}.{Path(spec.source).stem}")
    return getattr(module, spec.callable)


# --------------------------------------------------------------------------- kwargs


def resolve_kwargs(name: str, kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Complete and check the constructor arguments of architecture ``name``.

    Missing arguments take the architecture's ``default_kwargs``; ``dropout``
    given as one float is expanded to one value per level.  The result is plain
    JSON (lists, ints, floats, strings): store it as the ``kwargs`` of a run or
    a package and rebuild the same network with :func:`build_network`.

    Raises
    ------
    ConfigError
        For an unknown architecture, an unknown argument or a bad value.

    Examples
    --------
    >>> kw = resolve_kwargs("unet", {"feature_maps": [8, 16], "z_down": [2], "dropout": 0.2})
    >>> kw["feature_maps"], kw["z_down"], kw["dropout"], kw["normalization"]
    ([8, 16], [2], [0.2, 0.2], 'bn')
    """
    spec = get_spec(name)
    given = dict(kwargs or {})
    valid = (*KWARG_NAMES, *spec.extra_kwargs)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {', '.join(map(repr, unknown))} for architecture {name!r}; "
            f"valid arguments are {', '.join(valid)}"
        )
    kw = copy.deepcopy(spec.default_kwargs)
    kw.update(copy.deepcopy(given))
    if "feature_maps" in given and "z_down" not in given:
        # a different depth than the defaults: keep CartoCell's "no pooling in z"
        try:
            kw["z_down"] = [1] * (len(kw["feature_maps"]) - 1)
        except TypeError:
            pass
    if "feature_maps" in given and "dropout" not in given:
        d = spec.default_kwargs.get("dropout", 0.0)
        d0 = float(d[0]) if isinstance(d, (list, tuple)) and d else float(d or 0.0)
        try:
            kw["dropout"] = [d0] * len(kw["feature_maps"])
        except TypeError:
            pass
    try:
        kw = {**_check_kwargs(kw), **_check_extra_kwargs({k: kw[k] for k in spec.extra_kwargs})}
    except ValueError as err:
        raise ConfigError(f"architecture {name!r}: {err}") from None
    return kw


def _check_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise the shared constructor arguments (raises ValueError)."""

    def _int(key: str, value: Any, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value or value < minimum:
            raise ValueError(f"{key} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    out: dict[str, Any] = {}
    out["in_channels"] = _int("in_channels", kw["in_channels"], 1)
    oc = kw["out_channels"]
    if isinstance(oc, (list, tuple)) and len(oc) == 1:
        oc = oc[0]  # BiaPy's list form, as packages write it (out_channels: [3])
    out["out_channels"] = _int("out_channels", oc, 1)
    fm = kw["feature_maps"]
    if isinstance(fm, (str, bytes)) or not hasattr(fm, "__len__") or len(fm) < 1:
        raise ValueError(f"feature_maps must be a non-empty list of channel widths, got {fm!r}")
    out["feature_maps"] = [_int("feature_maps", f, 1) for f in fm]
    depth = len(out["feature_maps"])
    zd = kw["z_down"]
    if isinstance(zd, (str, bytes)) or not hasattr(zd, "__len__") or len(zd) != depth - 1:
        raise ValueError(
            f"z_down must list one z pooling factor per pooling level ({depth - 1} for "
            f"{depth} feature_maps), got {zd!r}"
        )
    for z in zd:
        if isinstance(z, bool) or z not in (1, 2):
            raise ValueError(f"z_down values are z pooling factors, 1 (keep z) or 2 (halve z), got {z!r}")
    out["z_down"] = [int(z) for z in zd]
    if kw["normalization"] not in ("bn", "in", "none"):
        raise ValueError(f"normalization must be 'bn', 'in' or 'none', got {kw['normalization']!r}")
    out["normalization"] = str(kw["normalization"])
    dr = kw["dropout"]
    if isinstance(dr, numbers.Real) and not isinstance(dr, bool):
        dr = [float(dr)] * depth
    if isinstance(dr, (str, bytes)) or not hasattr(dr, "__len__") or len(dr) != depth:
        raise ValueError(f"dropout must be a float or one value per level ({depth}), got {dr!r}")
    for d in dr:
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0.0 <= d < 1.0 or math.isnan(d):
            raise ValueError(f"dropout values must lie in [0, 1), got {d!r}")
    out["dropout"] = [float(d) for d in dr]
    if kw["activation"] not in ("elu", "relu"):
        raise ValueError(f"activation must be 'elu' or 'relu', got {kw['activation']!r}")
    out["activation"] = str(kw["activation"])
    k = _int("k_size", kw["k_size"], 1)
    if k % 2 == 0:
        raise ValueError(f"k_size must be odd so that outputs keep the input size, got {k}")
    out["k_size"] = k
    if kw["upsample"] not in ("convtranspose", "upsampling"):
        raise ValueError(f"upsample must be 'convtranspose' or 'upsampling', got {kw['upsample']!r}")
    out["upsample"] = str(kw["upsample"])
    return out


def _check_extra_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Check the architecture-specific arguments ``se_window`` and ``aspp_rates`` (raises ValueError)."""
    out: dict[str, Any] = {}
    if "se_window" in kw:
        w = kw["se_window"]
        if w is not None:
            if isinstance(w, (str, bytes)) or not hasattr(w, "__len__") or len(w) != 3 or any(
                isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 or v % 2 == 0 for v in w
            ):
                raise ValueError(
                    f"se_window must be null (global average, as published) or three odd sizes (z, y, x) >= 1, got {w!r}"
                )
            w = [int(v) for v in w]
        out["se_window"] = w
    if "aspp_rates" in kw:
        r = kw["aspp_rates"]
        if isinstance(r, (str, bytes)) or not hasattr(r, "__len__") or len(r) < 1 or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in r
        ):
            raise ValueError(f"aspp_rates must list one or more dilation rates >= 1, got {r!r}")
        out["aspp_rates"] = [int(v) for v in r]
    return out


def preset_kwargs(name: str, size: str = "tiny") -> dict[str, Any]:
    """Constructor arguments of architecture ``name`` at a preset size.

    Parameters
    ----------
    name : str
        Architecture name (a key of :data:`ARCHITECTURES`).
    size : {"tiny", "paper"}
        ``"tiny"``: tens of thousands of parameters, trains in minutes on 2 CPU
        cores; ``"paper"``: the published CartoCell sizes (feature maps 52, 68, 84).

    Examples
    --------
    >>> preset_kwargs("resunet", "paper")["feature_maps"]
    [52, 68, 84]
    """
    spec = get_spec(name)
    if size not in spec.presets:
        raise ConfigError(f"unknown preset size {size!r}; choose one of {', '.join(spec.presets)}")
    return resolve_kwargs(name, spec.presets[size])


def divisor(name: str, kwargs: Mapping[str, Any] | None = None) -> tuple[int, int, int]:
    """The multiple ``(z, y, x)`` that input sizes must be of.

    Each pooling level halves y and x and divides z by its ``z_down`` factor,
    so the divisor is ``(prod(z_down), 2**n_pool, 2**n_pool)``.

    Examples
    --------
    >>> divisor("unet", {"feature_maps": [8, 16, 32, 64], "z_down": [1, 2, 2]})
    (4, 8, 8)
    """
    kw = resolve_kwargs(name, kwargs)
    n_pool = len(kw["z_down"])
    return (int(math.prod(kw["z_down"])), 2**n_pool, 2**n_pool)


# --------------------------------------------------------------------------- build


def build_network(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build architecture ``name`` with constructor arguments ``kwargs``.

    Missing arguments take the architecture's defaults (see :func:`resolve_kwargs`).

    Raises
    ------
    ConfigError
        For an unknown architecture, an unknown argument or a bad value.

    Examples
    --------
    >>> net = build_network("resunet", feature_maps=[4, 8], z_down=[1])
    >>> type(net).__name__, count_parameters(net) > 0
    ('ResUNet', True)
    """
    kw = resolve_kwargs(name, kwargs)
    cls = network_class(name)
    try:
        return cls(**kw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"architecture {name!r}: {err}") from None


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only))


__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "KWARG_NAMES",
    "PAPER_KWARGS",
    "PRESET_SIZES",
    "TINY_ASPP_RATES",
    "TINY_KWARGS",
    "TINY_SE_WINDOW",
    "build_network",
    "count_parameters",
    "divisor",
    "get_spec",
    "network_class",
    "preset_kwargs",
    "resolve_kwargs",
    "source_path",
]
