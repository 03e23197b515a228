"""Tests of cartocell_bmz.networks: the registry and the six self-contained architectures."""

from __future__ import annotations

import ast
import importlib.util
import importlib
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cartocell_bmz.errors import ConfigError
from cartocell_bmz.networks import (
    ARCHITECTURES,
    KWARG_NAMES,
    PAPER_KWARGS,
    build_network,
    count_parameters,
    divisor,
    get_spec,
    network_class,
    preset_kwargs,
    resolve_kwargs,
    source_path,
)
from cartocell_bmz.networks import TINY_ASPP_RATES, TINY_SE_WINDOW

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "bmz-cartocell"
NAMES = sorted(ARCHITECTURES)
#: Small widths keep every forward pass in the milliseconds.
SMALL = [4, 8, 12]
#: Architectures with squeeze-and-excitation blocks (an ``se_window`` argument).
SE_NAMES = ["resunet_se", "resunetpp", "seunet"]
#: Modules an architecture file may import (it is carried alone by BMZ packages).
ALLOWED_IMPORTS = {"torch", "typing", "math", "__future__"}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _net(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"feature_maps": SMALL, "dropout": 0.1}
    kw.update(kwargs)
    return build_network(name, **kw).eval()


def _load_standalone(path: Path, module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_six_published_architectures():
    assert NAMES == ["attention_unet", "resunet", "resunet_se", "resunetpp", "seunet", "unet"]
    ids = {n: s.published_id for n, s in ARCHITECTURES.items()}
    assert ids == {
        "unet": "happy-honeybee",
        "attention_unet": "heroic-otter",
        "seunet": "idealistic-turtle",
        "resunetpp": "intelligent-lion",
        "resunet": "merry-water-buffalo",
        "resunet_se": "venomous-swan",
    }
    for name, spec in ARCHITECTURES.items():
        assert spec.name == name
        assert source_path(name).is_file()
        assert source_path(name).name == spec.source
        assert network_class(name).__name__ == spec.callable
        assert spec.citation["doi"].startswith("10.") and spec.citation["text"]
        assert spec.title
        with pytest.raises(Exception):  # frozen
            spec.name = "other"  # type: ignore[misc]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="published descriptions not available")
@pytest.mark.parametrize("name", NAMES)
def test_registry_matches_the_published_description(name):
    """Callable, source, architecture citation and kwargs agree with the published rdf.yaml."""
    import yaml

    spec = get_spec(name)
    rdf = yaml.safe_load((REFERENCE / f"{spec.published_id}.rdf.yaml").read_text())
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert arch["callable"] == spec.callable
    assert arch["source"] == spec.source
    cited = {c["text"]: c["doi"] for c in rdf["cite"]}
    assert cited["architecture"] == spec.citation["doi"]
    kw = arch["kwargs"]
    paper = preset_kwargs(name, "paper")
    assert paper["feature_maps"] == kw["feature_maps"]
    assert paper["dropout"] == kw["drop_values"]
    assert paper["z_down"] == kw["z_down"]
    assert paper["normalization"] == kw["normalization"]
    assert paper["k_size"] == kw["k_size"]
    assert paper["activation"] == kw["activation"]
    assert paper["upsample"] == kw["upsample_layer"]
    assert [paper["out_channels"]] == kw["output_channels"]
    assert paper["in_channels"] == kw["image_shape"][-1]


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ConfigError, match=r"unknown architecture 'vnet'.*attention_unet.*unet"):
        build_network("vnet")
    with pytest.raises(ConfigError, match="unknown architecture"):
        source_path("vnet")
    with pytest.raises(ConfigError, match="unknown preset size 'huge'"):
        preset_kwargs("unet", "huge")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": [4, 8]}, r"unknown argument\(s\) 'widths'.*feature_maps"),
        ({"feature_maps": []}, "feature_maps must be a non-empty list"),
        ({"feature_maps": [4, 0]}, "feature_maps must be an integer >= 1"),
        ({"feature_maps": [4, 8], "z_down": [1, 1]}, r"one z pooling factor per pooling level \(1 for 2"),
        ({"feature_maps": [4, 8], "z_down": [True]}, "z pooling factors, 1 .keep z. or 2"),
        ({"feature_maps": [4, 8], "z_down": [3]}, "z pooling factors"),
        ({"normalization": "gn"}, "normalization must be 'bn', 'in' or 'none'"),
        ({"dropout": 1.5}, r"dropout values must lie in \[0, 1\)"),
        ({"dropout": [0.1, 0.1]}, "one value per level"),
        ({"activation": "gelu"}, "activation must be 'elu' or 'relu'"),
        ({"k_size": 4}, "k_size must be odd"),
        ({"upsample": "nearest"}, "upsample must be 'convtranspose' or 'upsampling'"),
        ({"out_channels": 0}, "out_channels must be an integer >= 1"),
        ({"se_window": [3, 5, 5]}, r"unknown argument\(s\) 'se_window'"),  # resunet has no SE
    ],
)
def test_bad_kwargs_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_network("resunet", **kwargs)
    assert "'resunet'" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("seunet", {"se_window": [3, 4, 5]}, "se_window must be null .* three odd sizes"),
        ("resunet_se", {"se_window": [3, 5]}, "se_window must be null"),
        ("resunet_se", {"se_window": "global"}, "se_window must be null"),
        ("resunetpp", {"se_window": [0, 1, 1]}, "se_window must be null"),
        ("resunetpp", {"aspp_rates": []}, "aspp_rates must list one or more"),
        ("resunetpp", {"aspp_rates": [2, 0]}, "aspp_rates must list one or more"),
        ("seunet", {"aspp_rates": [1]}, r"unknown argument\(s\) 'aspp_rates'.*se_window"),
    ],
)
def test_bad_architecture_specific_kwargs(name, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_network(name, **kwargs)


def test_resolve_kwargs_completes_and_is_json():
    import json

    kw = resolve_kwargs("unet", {"feature_maps": [8, 16, 32, 64]})
    assert set(kw) == set(KWARG_NAMES)
    # a new depth keeps CartoCell's "no pooling in z" and its dropout
    assert kw["z_down"] == [1, 1, 1] and kw["dropout"] == [0.1] * 4
    assert json.loads(json.dumps(kw)) == kw
    assert resolve_kwargs("unet") == PAPER_KWARGS
    assert resolve_kwargs("unet", {"dropout": 0.2})["dropout"] == [0.2, 0.2, 0.2]
    # resolving resolved kwargs changes nothing, and the default kwargs are not mutated
    assert resolve_kwargs("unet", kw) == kw
    assert get_spec("unet").default_kwargs == PAPER_KWARGS


def test_divisor_is_two_to_the_pooling_levels():
    assert divisor("resunet") == (1, 4, 4)  # CartoCell: y, x multiples of 4, any z
    assert divisor("unet", {"feature_maps": [4, 8, 16, 32], "z_down": [2, 1, 2]}) == (4, 8, 8)
    assert divisor("seunet", {"feature_maps": [4]}) == (1, 1, 1)
    for name in NAMES:
        net = build_network(name, feature_maps=[4, 8, 16, 32], z_down=[2, 2, 1])
        assert tuple(net.divisor) == divisor(name, {"feature_maps": [4, 8, 16, 32], "z_down": [2, 2, 1]}) == (4, 8, 8)


def test_presets():
    for name in NAMES:
        tiny = build_network(name, **preset_kwargs(name, "tiny"))
        n = count_parameters(tiny)
        assert 10_000 < n < 250_000, (name, n)
        # the paper preset is the published configuration: global SE, ASPP rates 6, 12, 18
        assert preset_kwargs(name, "paper") == {**PAPER_KWARGS, **get_spec(name).extra_kwargs}
    for name in SE_NAMES:
        assert preset_kwargs(name, "paper")["se_window"] is None
        assert preset_kwargs(name, "tiny")["se_window"] == TINY_SE_WINDOW
    assert preset_kwargs("resunetpp", "paper")["aspp_rates"] == [6, 12, 18]
    assert preset_kwargs("resunetpp", "tiny")["aspp_rates"] == TINY_ASPP_RATES
    assert "se_window" not in preset_kwargs("unet", "tiny")


def test_cartocell_residual_unet_has_about_1_36_million_parameters():
    net = build_network("resunet", **preset_kwargs("resunet", "paper"))
    n = count_parameters(net)
    assert n == 1_360_187
    assert abs(n - 1.36e6) / 1.36e6 < 0.01
    # the class defaults are CartoCell's sizes as well
    assert count_parameters(network_class("resunet")()) == n


@pytest.mark.parametrize("name", NAMES)
def test_class_defaults_are_the_paper_sizes(name):
    a = count_parameters(network_class(name)())
    b = count_parameters(build_network(name))
    assert a == b > 1_000_000


# --------------------------------------------------------------------------- shapes


SIZE_CASES = [
    # (feature_maps, z_down, (Z, Y, X)); z not pooled: any z, even 1, 5 or 7
    (SMALL, [1, 1], (5, 16, 24)),
    (SMALL, [1, 1], (7, 12, 20)),
    (SMALL, [1, 1], (1, 8, 4)),
    (SMALL, [2, 1], (6, 8, 20)),
    (SMALL, [2, 2], (8, 16, 12)),
    ([4, 6, 8, 10], [2, 1, 1], (4, 16, 8)),
    ([4], [], (3, 5, 7)),  # one level: no pooling at all, any size
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("fm", "zd", "size"), SIZE_CASES)
def test_output_shape_and_finite_logits(name, fm, zd, size):
    net = _net(name, feature_maps=fm, z_down=zd)
    x = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 3, *size)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    # logits, not probabilities: no sigmoid at the end
    assert (y < 0).any() or (y > 1).any()


@pytest.mark.parametrize("name", NAMES)
def test_batch_and_channels(name):
    net = _net(name, in_channels=2, out_channels=5)
    with torch.no_grad():
        y = net(torch.randn(3, 2, 2, 8, 12))
    assert y.shape == (3, 5, 2, 8, 12)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_sizes_raise_a_clear_error(name):
    net = _net(name, z_down=[2, 1])  # divisor (2, 4, 4)
    scripted = torch.jit.script(net)
    cases = [
        ((1, 1, 6, 18, 24), r"input size \(Z, Y, X\) = \[6, 18, 24\] must be a multiple of \[2, 4, 4\]"),
        ((1, 1, 5, 16, 24), r"= \[5, 16, 24\] must be a multiple of \[2, 4, 4\]"),
        ((1, 2, 6, 16, 24), r"expects input \(N, 1, Z, Y, X\), got shape \[1, 2, 6, 16, 24\]"),
        ((1, 6, 16, 24), r"expects input \(N, 1, Z, Y, X\)"),
    ]
    for shape, message in cases:
        x = torch.zeros(shape)
        with pytest.raises(ValueError, match=message):
            net(x)
        with pytest.raises(torch.jit.Error, match=message):
            scripted(x)


# --------------------------------------------------------------------------- TorchScript, determinism


@pytest.mark.parametrize("name", NAMES + [f"{n}+window" for n in SE_NAMES])
def test_torchscript_output_identical_to_eager(name):
    name, _, window = name.partition("+")
    net = _net(name, z_down=[2, 1], **({"se_window": [3, 3, 5]} if window else {}))
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    reloaded = torch.jit.load(buffer)
    x = torch.randn(2, 1, 4, 16, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        eager = net(x)
        again = net(x)
        script_out = scripted(x)
        reloaded_out = reloaded(x)
    assert torch.equal(eager, again)  # deterministic on CPU
    assert torch.equal(eager, script_out)
    assert torch.equal(eager, reloaded_out)


@pytest.mark.parametrize("name", NAMES)
def test_upsampling_instance_norm_and_relu_variant_scripts(name):
    net = _net(name, normalization="in", activation="relu", dropout=[0.0, 0.1, 0.2], upsample="upsampling")
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(net(x), scripted(x))
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    net = _net(name, normalization="none")
    assert not any(isinstance(m, (torch.nn.BatchNorm3d, torch.nn.InstanceNorm3d)) for m in net.modules())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    a = _net(name)
    torch.manual_seed(123)
    b = build_network(name, feature_maps=SMALL, dropout=0.1).eval()
    x = torch.randn(1, 1, 3, 8, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))  # different seeds, different weights
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    b.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # the same seed builds the same network
    c = _net(name)
    assert all(torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


# --------------------------------------------------------------------------- self-contained files


@pytest.mark.parametrize("name", NAMES)
def test_source_file_imports_only_torch(name):
    tree = ast.parse(source_path(name).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add(node.module.split(".")[0])
    assert imported <= ALLOWED_IMPORTS, imported - ALLOWED_IMPORTS
    assert "torch" in imported
    # the callable is a top-level class of the file
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert get_spec(name).callable in classes


@pytest.mark.parametrize("name", NAMES)
def test_standalone_load_matches_the_package_class(name):
    """A BMZ consumer imports the file by path; its state_dict keys and outputs match."""
    module = _load_standalone(source_path(name), f"_standalone_{name}")
    cls = getattr(module, get_spec(name).callable)
    kwargs = resolve_kwargs(name, {"feature_maps": SMALL})
    standalone = cls(**kwargs).eval()
    packaged = _net(name, dropout=kwargs["dropout"])
    assert list(standalone.state_dict()) == list(packaged.state_dict())
    standalone.load_state_dict(packaged.state_dict())
    x = torch.randn(1, 1, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(standalone(x), packaged(x))


def test_files_run_without_cartocell_bmz(tmp_path):
    """Copied alone to a folder, each file builds, runs and scripts with cartocell_bmz unimportable."""
    for name in NAMES:
        (tmp_path / get_spec(name).source).write_text(source_path(name).read_text())
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.modules["cartocell_bmz"] = None  # any import of it now fails
        import torch
        torch.set_num_threads(1)
        for source, callable_ in {[(get_spec(n).source, get_spec(n).callable) for n in NAMES]!r}:
            spec = importlib.util.spec_from_file_location(source[:-3], {str(tmp_path)!r} + "/" + source)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            net = getattr(module, callable_)(feature_maps=[4, 8], z_down=[1]).eval()
            x = torch.randn(1, 1, 3, 8, 8)
            with torch.no_grad():
                assert net(x).shape == (1, 3, 3, 8, 8)
                assert torch.equal(net(x), torch.jit.script(net)(x))
            print(callable_, "ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [w for n in NAMES for w in (get_spec(n).callable, "ok")]


# --------------------------------------------------------------------------- learning


def _bcm_targets(labels: np.ndarray) -> np.ndarray:
    """B, C, M targets: the project's ``make_targets`` when present, else the CartoCell definition."""
    try:
        from cartocell_bmz.core.targets import make_targets
    except ImportError:
        from skimage.segmentation import find_boundaries

        contours = find_boundaries(labels, connectivity=1, mode="thick")
        return np.stack([(labels > 0) & ~contours, contours, labels > 0]).astype(np.float32)
    return np.asarray(make_targets(labels), dtype=np.float32)


def _overfit(name: str, steps: int, feature_maps=(4, 8, 16)):
    from cartocell_bmz.core.phantoms import make_cyst

    cyst = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), stage="day10", seed=1)
    target = _bcm_targets(cyst.labels)
    assert target.shape == (3, 16, 48, 48)
    raw = cyst.raw.astype(np.float32)
    x = torch.from_numpy((raw - raw.mean()) / raw.std())[None, None]
    y = torch.from_numpy(target)[None]
    torch.manual_seed(0)
    torch.set_num_threads(1)  # the machine is shared: one thread is the fastest here
    net = build_network(name, feature_maps=list(feature_maps), dropout=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        out = net(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out, y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        pred = net(x)[0] > 0  # train-mode batch statistics: the patch it was fitted on
    truth = y[0] > 0.5
    iou = [float((pred[c] & truth[c]).sum() / (pred[c] | truth[c]).sum()) for c in range(3)]
    return losses, iou


@pytest.mark.slow(reason="17 s; the default run keeps tests/train/test_loop.py::test_tiny_model_overfits_one_cyst, "
                         "the same tiny ResUNet fitted through the training loop")
def test_tiny_residual_unet_overfits_one_synthetic_cyst():
    """40 Adam steps on one 16 x 48 x 48 cyst: mean BCE from ~0.9 to below 0.1 (about 15 s)."""
    losses, iou = _overfit("resunet", steps=40)
    assert losses[0] > 0.5
    assert losses[-1] < 0.1, losses[::5]
    assert iou[1] > 0.85 and iou[2] > 0.85, iou  # contours C and mask M


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_tiny_architecture_overfits_one_synthetic_cyst(name):
    """150 Adam steps of each architecture: mean BCE below 0.1."""
    losses, iou = _overfit(name, steps=150)
    assert losses[-1] < 0.1, (name, losses[::10])
    assert iou[1] > 0.85 and iou[2] > 0.85, (name, iou)


# --------------------------------------------------------------------------- reach


@pytest.mark.parametrize("name", SE_NAMES)
def test_se_window_bounds_the_reach_of_the_network(name):
    """With a window, voxels far away cannot change an output; with the global average they do.

    This is what lets a tiled prediction with a halo equal a whole-volume one.
    """
    extra = {"aspp_rates": [1, 2]} if name == "resunetpp" else {}
    x = torch.randn(1, 1, 4, 8, 256, generator=torch.Generator().manual_seed(3))
    far = x.clone()
    far[..., :16] += 3.0  # change the first 16 voxels along x
    for window, changes in ((None, True), ([3, 3, 3], False)):
        net = _net(name, se_window=window, **extra)
        with torch.no_grad():
            a, b = net(x), net(far)
        # the last 64 voxels lie 176 voxels away: beyond the windowed network's receptive field
        diff = (a - b)[..., -64:].abs().max().item()
        if changes:
            assert diff > 1e-4, (name, window, diff)
        else:
            assert diff < 1e-6, (name, window, diff)
        assert (a - b)[..., :16].abs().max().item() > 1e-3  # near the change, it matters either way


@pytest.mark.parametrize("name", SE_NAMES)
def test_se_window_is_the_mean_over_the_neighbourhood_inside_the_input(name):
    """The local squeeze is a centred mean over the voxels inside the input, for any input size."""
    module = importlib.import_module(f"cartocell_bmz.networks.{name}")
    se = module._SqueezeExcitation(4, window=[3, 5, 1])
    x = torch.randn(2, 4, 3, 2, 7, generator=torch.Generator().manual_seed(1))  # y smaller than its window
    ref = torch.empty_like(x)
    for z in range(3):
        for y in range(2):
            ref[:, :, z, y] = x[:, :, max(0, z - 1):z + 2, max(0, y - 2):y + 3].mean(dim=(2, 3))
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(ref))))
    with torch.no_grad():
        assert (se(x) - x * gate).abs().max().item() < 1e-6
        assert torch.equal(torch.jit.script(se)(x), se(x))
    glob = module._SqueezeExcitation(4)
    gate = torch.sigmoid(glob.fc2(torch.relu(glob.fc1(x.mean(dim=(2, 3, 4), keepdim=True)))))
    with torch.no_grad():
        assert (glob(x) - x * gate).abs().max().item() < 1e-6


@pytest.mark.parametrize("arch", ["attention_unet", "resunet", "resunet_se", "resunetpp", "seunet", "unet"])
def test_out_channels_in_biapys_list_form_builds_the_same_network(arch):
    """Packages write out_channels: [3] (what BiaPy asserts); the classes and resolve_kwargs take it as 3."""
    import torch

    from cartocell_bmz.networks import build_network, preset_kwargs, resolve_kwargs

    kw = preset_kwargs(arch, "tiny")
    torch.manual_seed(0)
    as_int = build_network(arch, **{**kw, "out_channels": 3})
    torch.manual_seed(0)
    as_list = build_network(arch, **{**kw, "out_channels": [3]})
    a, b = as_int.state_dict(), as_list.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    cls = type(as_int)
    assert cls(**{**resolve_kwargs(arch, kw), "out_channels": [3]}).head.out_channels == 3
    with pytest.raises(ValueError, match="one channel count"):
        cls(**{**resolve_kwargs(arch, kw), "out_channels": [3, 2]})
