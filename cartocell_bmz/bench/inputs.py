"""What a benchmark ranks and on what: the models (resolved once, fingerprinted) and the test set.

``--models`` values become :class:`~cartocell_bmz.bench.tasks.BenchmarkModel` records
(:func:`resolve_models`: every download happens here, once, before any task runs); a test
folder with ``x/`` and ``y/`` becomes :class:`~cartocell_bmz.bench.tasks.BenchImage`
records (:func:`list_test_images`); without ``--test`` the embedded synthetic test set is
written to ``OUT/test_set/`` (:func:`default_test_set`). Their content fingerprints
(:func:`file_fingerprint`) tell a rerun which earlier outputs still hold.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Sequence

from cartocell_bmz.bench.tasks import BenchImage, BenchmarkModel
from cartocell_bmz.errors import ConfigError, InputError
from cartocell_bmz.layout import LABEL_DIR, RAW_DIR

#: Folder (inside OUT) of the default synthetic test set.
TEST_SET_DIR = "test_set"
#: Seed of the default synthetic test set: the test split of ``PhantomConfig(seed=0)``,
#: the data the packages in model_packages/ were measured on.
DEFAULT_TEST_SEED = 0


# --------------------------------------------------------------------------- fingerprints


def file_fingerprint(path: str | os.PathLike) -> str:
    """Content fingerprint of a file or of a folder (names and contents).

    A file: its sha256 (:func:`cartocell_bmz.io.hashing.sha256_file`). A folder: the
    sha256 of the lines ``<relative path>\\0<sha256 of the file>`` of its files, sorted
    by path (``__pycache__`` left out), so a renamed, added, removed or changed file
    changes it. Only contents and names count, not sizes or modification times.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "rdf.yaml").write_text("abc")
    >>> file_fingerprint(d / "rdf.yaml")[:16]
    'ba7816bf8f01cfea'
    >>> file_fingerprint(d) == file_fingerprint(d), file_fingerprint(d) == file_fingerprint(d / "rdf.yaml")
    (True, False)
    """
    from cartocell_bmz.io.hashing import sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def fingerprint_image(image: BenchImage) -> BenchImage:
    """``image`` with the fingerprint of its raw image and ground truth together."""
    both = file_fingerprint(image.raw) + file_fingerprint(image.gt)
    return replace(image, fingerprint=hashlib.sha256(both.encode()).hexdigest())


# --------------------------------------------------------------------------- test set


def default_test_set(out: str | os.PathLike) -> Path:
    """Write (once) and return the embedded synthetic test set ``OUT/test_set/test``.

    It is the ``test`` split of :class:`~cartocell_bmz.core.phantoms.PhantomConfig` with seed
    :data:`DEFAULT_TEST_SEED` and default sizes: the same cysts every time, on every
    machine, and the ones the packages in ``model_packages/`` were measured on. An
    existing copy is reused when its ``dataset.json`` matches.
    """
    from cartocell_bmz.core.phantoms import PhantomConfig
    from cartocell_bmz.io.phantom_sets import make_dataset

    base = PhantomConfig(seed=DEFAULT_TEST_SEED)
    config = PhantomConfig(seed=DEFAULT_TEST_SEED, counts={"test": base.counts["test"]})
    root = Path(out) / TEST_SET_DIR
    expected = json.loads(json.dumps({"generator": "cartocell_bmz.core.phantoms", **asdict(config)}))
    try:
        current = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        current = None
    if current != expected:
        make_dataset(root, config)
    return root / "test"


def list_test_images(test_dir: str | os.PathLike) -> list[BenchImage]:
    """Pairs of raw image and ground truth in a test folder with ``x/`` and ``y/`` (no fingerprints yet).

    Raises
    ------
    InputError
        The folder is missing, has no ``x/`` or ``y/``, no images, or an image without
        ground truth.
    """
    from cartocell_bmz.io.volumes import list_volumes

    test_dir = Path(test_dir)
    if not test_dir.exists():
        raise InputError(f"{test_dir}: test folder not found.")
    if not test_dir.is_dir():
        raise InputError(f"{test_dir}: --test must be a folder with x/ (images) and y/ (ground-truth labels).")
    for sub, what in ((RAW_DIR, "images"), (LABEL_DIR, "ground-truth labels")):
        if not (test_dir / sub).is_dir():
            raise InputError(f"{test_dir}: has no {sub}/ folder of {what}; a test folder needs x/ and y/.")
    raws = list_volumes(test_dir / RAW_DIR, what="test images")
    missing = [p.name for p in raws if not (test_dir / LABEL_DIR / p.name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"{test_dir / LABEL_DIR}: no ground truth for {missing[0]}{more}; y/ needs the same file names as x/.")
    return [BenchImage(p.name, p, test_dir / LABEL_DIR / p.name) for p in raws]


# --------------------------------------------------------------------------- models


def list_local_packages() -> list[str]:
    """Names of the packages in ``model_packages/`` (see :func:`cartocell_bmz.bmz.resolve.local_packages`), sorted."""
    from cartocell_bmz.bmz.resolve import local_packages

    return sorted(local_packages())


def published_model_ids() -> list[str]:
    """The six published CartoCell models' BMZ ids (from :mod:`cartocell_bmz.bmz.known_models`)."""
    from cartocell_bmz.bmz.known_models import KNOWN_MODELS

    return list(KNOWN_MODELS)


def expand_model_values(values: Sequence[str] | None) -> list[str]:
    """``--models`` values -> model references: commas split, ``published`` expanded, duplicates dropped.

    No value means every package in ``model_packages/``.

    Raises
    ------
    ConfigError
        No value and no local package.
    """
    items: list[str] = []
    for v in values or []:
        items += [s.strip() for s in str(v).split(",") if s.strip()]
    if not items:
        items = list_local_packages()
        if not items:
            from cartocell_bmz.bmz.resolve import model_packages_dir

            raise ConfigError(
                f"{model_packages_dir()}: no model packages found; build some (cartocell-bmz package) "
                "or name models with --models."
            )
    out: list[str] = []
    for item in items:
        for v in (published_model_ids() if item.lower() == "published" else [item]):
            if v not in out:
                out.append(v)
    return out


def _resolved_path(resolved) -> Path | None:
    for attr in ("package_dir", "root", "path", "source", "rdf", "rdf_path"):
        value = getattr(resolved, attr, None)
        if value is not None and not callable(value):
            try:
                p = Path(value)
            except TypeError:
                continue
            if p.exists():
                return p
    return None


def _model_name(value: str, resolved) -> str:
    name = getattr(resolved, "name", None)
    if not isinstance(name, str) or not name:
        p = Path(value)
        name = p.parent.name if p.name in ("rdf.yaml", "bioimageio.yaml") else (p.stem if p.suffix else p.name)
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "model"


def resolve_models(values: Sequence[str], *, resolver: Callable | None = None) -> list[BenchmarkModel]:
    """Resolve every model once, here, before any task runs (downloads happen once).

    Parameters
    ----------
    values : sequence of str
        Model references as accepted by ``predict --model``.
    resolver : callable, optional
        ``value -> resolved model`` (default :func:`cartocell_bmz.bmz.resolve.resolve_model`).

    Raises
    ------
    ModelError
        A value cannot be resolved (raised by the resolver).
    ConfigError
        Two values resolve to the same model name.
    """
    if resolver is None:
        from cartocell_bmz.bmz.resolve import resolve_model as resolver
    models: list[BenchmarkModel] = []
    for value in values:
        resolved = resolver(value)
        name = _model_name(value, resolved)
        if any(m.name == name for m in models):
            raise ConfigError(f"two models are both named {name!r} ({value!r} and "
                              f"{next(m.source for m in models if m.name == name)!r}); rename one package.")
        path = _resolved_path(resolved)
        models.append(BenchmarkModel(name=name, source=str(value), ref=resolved,
                                     fingerprint=file_fingerprint(path) if path is not None else str(value)))
    return models
