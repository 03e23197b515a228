"""The layout's rules, checked on the code itself (see docs/DEVELOPING.md, "Rooms and arrows").

* no module imports another module's underscore-private name;
* nothing outside ``cartocell_bmz/cli/`` prints, writes to stdout/stderr or draws progress bars
  (the library reports through ``warnings`` and ``progress=`` callbacks);
* modules stay small enough to read (about 600 lines) and functions about 120 lines;
* imports between rooms follow the allowed arrows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cartocell_bmz"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
#: The architecture files are copied verbatim into BMZ packages: self-contained by design.
NETWORK_FILES = {p for p in (PACKAGE / "networks").glob("*.py") if p.name != "__init__.py"}

MAX_MODULE_LINES = 650
MAX_FUNCTION_LINES = 130

#: room -> rooms it may import from (besides itself and the shared names in errors.py / layout.py).
ARROWS: dict[str, set[str]] = {
    "core": set(),
    "io": {"core"},
    "engine": {"core", "io"},
    "networks": set(),
    "train": {"core", "io", "networks", "run"},
    "bmz": {"core", "io", "networks", "train", "run"},
    "run": {"core", "io", "engine", "networks", "train", "bmz"},
    "measure": {"core", "io", "engine"},
    "phases": {"core", "io", "engine", "networks", "train", "bmz", "run", "measure"},
    "bench": {"core", "io", "engine", "bmz", "run", "measure"},
    "cli": {"core", "io", "engine", "networks", "train", "bmz", "run", "measure", "phases", "bench"},
}
BASE = {"errors", "layout", "__init__", "__main__"}


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imports(tree: ast.Module):
    """(module imported from, names) for every cartocell_bmz import, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cartocell_bmz"):
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cartocell_bmz"):
                    yield alias.name, [], node.lineno


def test_no_module_imports_a_private_name_of_another():
    offences = []
    for path in MODULES:
        for module, names, line in _imports(_tree(path)):
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    offences.append(f"{_rel(path)}:{line} imports {module}.{name}")
    assert not offences, "\n".join(offences)


def _printing(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in {"print", "breakpoint"}:
            yield node.lineno, node.id  # a call, or an alias such as ``say = print``
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr in {"write", "flush"} and isinstance(f.value, ast.Attribute) \
                    and f.value.attr in {"stdout", "stderr"}:
                yield node.lineno, f"sys.{f.value.attr}.{f.attr}"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for name in names:
                if name.split(".")[0] in {"rich", "tqdm"}:
                    yield node.lineno, f"import {name}"


def test_only_the_cli_prints_or_draws_progress():
    offences = []
    for path in MODULES:
        if path.is_relative_to(PACKAGE / "cli") or path in NETWORK_FILES:
            continue
        for line, what in _printing(_tree(path)):
            offences.append(f"{_rel(path)}:{line} {what}")
    assert not offences, "\n".join(offences)


def test_modules_and_functions_stay_small():
    offences = []
    for path in MODULES:
        if path in NETWORK_FILES:
            continue
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_MODULE_LINES:
            offences.append(f"{_rel(path)}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    offences.append(f"{_rel(path)}:{node.lineno} {node.name}() {length} lines")
    assert not offences, "\n".join(offences)


def test_imports_between_rooms_follow_the_arrows():
    offences = []
    for path in MODULES:
        here = _module_name(path)
        room = _room(here)
        if room in BASE or room == "":
            continue
        assert room in ARROWS, f"{_rel(path)}: room {room!r} has no arrows in this test (add it, and to docs/DEVELOPING.md)"
        for module, _names, line in _imports(_tree(path)):
            there = _room(module)
            if there in BASE or there == "" or there == room:
                continue
            if there not in ARROWS[room]:
                offences.append(f"{_rel(path)}:{line} {room} -> {there} ({module})")
    assert not offences, "\n".join(offences)


@pytest.mark.parametrize("rule", [test_no_module_imports_a_private_name_of_another, test_only_the_cli_prints_or_draws_progress])
def test_the_rules_catch_an_offence(rule, tmp_path, monkeypatch):
    """The checks are not vacuous: a planted offence is found."""
    bad = tmp_path / "cartocell_bmz" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from cartocell_bmz.core.postprocess import _secret\nprint('hello')\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "cartocell_bmz")
    monkeypatch.setattr(__import__(__name__), "MODULES", [bad])
    with pytest.raises(AssertionError):
        rule()


def test_test_files_have_unique_basenames():
    """Tests live in rootdir-relative folders without ``__init__.py``: pytest imports each
    file by its basename, so two ``test_x.py`` in different rooms break collection."""
    tests = Path(__file__).resolve().parent
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(tests.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(tests)} and {path.relative_to(tests)}")
        seen.setdefault(path.name, path)
    assert not clashes, "same basename: " + "; ".join(clashes)
