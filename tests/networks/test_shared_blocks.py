"""The architecture files are self-contained (each is copied into its BMZ package and must import
only torch), so the blocks they share are written out in each file.  These tests keep the copies
identical: a fix to one copy must be made to all of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

NETWORKS = Path(__file__).resolve().parents[2] / "cartocell_bmz" / "networks"
ALL = ("attention_unet", "resunet", "resunet_se", "resunetpp", "seunet", "unet")

#: Block name -> the architecture files holding the same copy of it.
SHARED = {
    "_levels": ALL,
    "_norm": ALL,
    "_act": ALL,
    "_out_channels": ALL,
    "_conv": ("attention_unet", "resunet", "resunet_se", "seunet", "unet"),  # resunetpp's adds dilation
    "_double_conv": ("attention_unet", "unet"),
    "_upsampler": ("attention_unet", "seunet", "unet"),
    "_se_window": ("resunet_se", "resunetpp", "seunet"),
    "_SqueezeExcitation": ("resunet_se", "resunetpp", "seunet"),
}


def _blocks(arch: str) -> dict[str, str]:
    source = (NETWORKS / f"{arch}.py").read_text()
    tree = ast.parse(source)
    return {node.name: ast.get_source_segment(source, node) for node in tree.body
            if isinstance(node, (ast.ClassDef, ast.FunctionDef))}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_block_is_identical_in_every_file(name):
    copies = {arch: _blocks(arch).get(name) for arch in SHARED[name]}
    missing = [arch for arch, code in copies.items() if code is None]
    assert not missing, f"{name} is missing from {missing}"
    first = SHARED[name][0]
    differ = [arch for arch, code in copies.items() if code != copies[first]]
    assert not differ, f"{name} differs from {first}.py in {differ}: change every copy together"


def test_architecture_files_import_only_torch():
    for arch in ALL:
        tree = ast.parse((NETWORKS / f"{arch}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= {"torch", "__future__", "math", "typing"}, f"{arch}.py imports {roots}"


def test_the_list_of_shared_blocks_is_complete():
    """A block defined under one name in several files is either listed in SHARED or differs on purpose."""
    names: dict[str, list[str]] = {}
    for arch in ALL:
        for name in _blocks(arch):
            names.setdefault(name, []).append(arch)
    expected_to_differ = {"_Up", "_ResBlock", "_conv", "_double_conv"}
    for name, archs in names.items():
        if len(archs) > 1 and name not in expected_to_differ:
            assert name in SHARED and set(SHARED[name]) == set(archs), (name, archs)
