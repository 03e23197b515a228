"""Turn a ``--model`` value into a verified local model package.

A value may be, tried in this order:

1. a path to a package folder, a package zip or an ``rdf.yaml``;
2. the name of a package in ``model_packages/`` (a folder or a ``.zip``: the
   project's own packages; the folder is found next to the installed
   ``cartocell_bmz`` and can be moved with ``CARTOCELL_BMZ_MODEL_PACKAGES``);
3. a BioImage Model Zoo id (``happy-honeybee``) or, for the six published
   CartoCell models, its emoji: first the local copy in the cartocell-bmz
   cache, else downloaded through bioimageio's own id resolution (its
   collection URL, ``BIOIMAGEIO_COLLECTION_HTTP_PATTERN``, and its download
   cache).  Every downloaded package is kept as a plain folder in
   ``<cache>/models/<id>/`` with its original ``rdf.yaml``, so it runs offline
   afterwards.  (bioimageio's own cache is not enough: resolving an id asks the
   server again.)  The cache is ``~/.cache/cartocell-bmz`` or
   ``CARTOCELL_BMZ_CACHE``.

Zips are unpacked safely (:func:`~cartocell_bmz.bmz.safety.safe_extract`)
into ``<cache>/unzipped/<sha256 of the zip>/``; every file the description
lists is checked against its sha256, and the description must be shaped like
a CartoCell model, before anything is loaded.

For the six published CartoCell ids the sha256 of the downloaded
``rdf.yaml`` is compared with the one recorded in
:mod:`cartocell_bmz.bmz.known_models`.  A different description is reported with
both hashes as a *warning*, not an error: the Model Zoo may legitimately
publish a new version of a description (new metadata, new test tensors), and
the files it lists are still checked against its own hashes.  A user who
needs the exact published model can compare the hashes shown.

Packages from outside ``model_packages/`` run Python code (the architecture
file of ``pytorch_state_dict`` weights): the first time such a package is used
a notice says which file that is; ``trust=True`` (``--trust``) silences it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cartocell_bmz.errors import CartoCellWarning, ModelError, one_line
from cartocell_bmz.bmz.formats import RDF_FILE, RDF_NAMES, WEIGHT_FORMATS
from cartocell_bmz.bmz.known_models import KNOWN_MODELS, KnownModel, find_known
from cartocell_bmz.bmz.safety import (
    check_cartocell_shape,
    code_notice,
    declared_files,
    find_rdf,
    read_rdf,
    safe_extract,
    sha256_file,
    verify_files,
)

#: Environment variable moving the cartocell-bmz cache.
CACHE_ENV = "CARTOCELL_BMZ_CACHE"
#: Environment variable moving the folder of the project's own packages.
MODEL_PACKAGES_ENV = "CARTOCELL_BMZ_MODEL_PACKAGES"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model package ready to use: local, verified, CartoCell-shaped.

    Attributes
    ----------
    value : str
        What the user gave.
    name : str
        Short name for messages and output folders (package folder name or BMZ id).
    root : pathlib.Path
        Package folder.
    rdf_path : pathlib.Path
        Its description file.
    origin : str
        ``"path"``, ``"zip"``, ``"model_packages"``, ``"cache"`` (a BMZ package
        downloaded earlier) or ``"bmz"`` (downloaded now).
    description : bioimageio.spec.model.v0_5.ModelDescr
        The loaded description.
    rdf_sha256 : str
        sha256 of the description file.
    model_id : str or None
        BMZ id from the description (or the id asked for).
    known : KnownModel or None
        The published CartoCell model with this id, if any.
    warnings : tuple of str
        Things the user should know (a published description that differs, ...).
    notice : str or None
        What code the package runs, when it should be shown (first use of a
        package from outside ``model_packages/``).
    """

    value: str
    name: str
    root: Path
    rdf_path: Path
    origin: str
    description: Any = field(repr=False)
    rdf_sha256: str = ""
    model_id: str | None = None
    known: KnownModel | None = None
    warnings: tuple[str, ...] = ()
    notice: str | None = None

    @property
    def weight_formats(self) -> tuple[str, ...]:
        """Weight formats the package has (``pytorch_state_dict``, ``torchscript``, ...)."""
        return tuple(f for f in WEIGHT_FORMATS if getattr(self.description.weights, f, None) is not None)

    def __str__(self) -> str:
        return f"{self.name} ({self.origin}: {self.root})"


# --------------------------------------------------------------------------- locations


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cartocell-bmz cache folder: ``cache_dir``, ``$CARTOCELL_BMZ_CACHE`` or ``~/.cache/cartocell-bmz``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cartocell-bmz"


def model_packages_dir() -> Path:
    """The folder of the project's own packages (``model_packages/`` or ``$CARTOCELL_BMZ_MODEL_PACKAGES``)."""
    env = os.environ.get(MODEL_PACKAGES_ENV)
    if env:
        return Path(env).expanduser()
    import cartocell_bmz

    return Path(cartocell_bmz.__file__).resolve().parents[1] / "model_packages"


def local_packages() -> dict[str, Path]:
    """Packages in ``model_packages/``: name -> folder or zip."""
    folder = model_packages_dir()
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() and any((p / n).is_file() for n in RDF_NAMES):
            found[p.name] = p
        elif p.is_file() and p.suffix.lower() == ".zip":
            found.setdefault(p.stem, p)
    return found


def cached_packages(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """BMZ packages downloaded earlier: id -> folder."""
    models = cache_root(cache_dir) / "models"
    if not models.is_dir():
        return {}
    return {
        _unsafe_id(p.name): p
        for p in sorted(models.iterdir())
        if p.is_dir() and not p.name.startswith(".") and (p / RDF_FILE).is_file()
    }


def _safe_id(model_id: str) -> str:
    return model_id.strip("/").replace("/", "__")


def _unsafe_id(folder_name: str) -> str:
    return folder_name.replace("__", "/")


# --------------------------------------------------------------------------- resolving


def resolve_model(
    value: "str | os.PathLike | ResolvedModel",
    *,
    cache_dir: str | os.PathLike | None = None,
    trust: bool = False,
    refresh: bool = False,
    notify: Callable[[str], None] | None = None,
) -> ResolvedModel:
    """Find, fetch if needed, and verify the model package named by ``value``.

    Parameters
    ----------
    value : str, path-like or ResolvedModel
        A package folder, zip or ``rdf.yaml``; a name in ``model_packages/``; a
        BMZ id (or a published CartoCell model's emoji).  A ResolvedModel is
        returned as is.
    cache_dir : path-like, optional
        The cartocell-bmz cache (default :func:`cache_root`).
    trust : bool
        Do not show the first-use notice of what code the package runs.
    refresh : bool
        Download a BMZ package again even if a local copy exists.
    notify : callable, optional
        Called with the download message, the warnings and the notice, each one
        line (default: :func:`warnings.warn` them as :class:`~cartocell_bmz.errors.CartoCellWarning`,
        which the CLI shows on stderr).

    Returns
    -------
    ResolvedModel

    Raises
    ------
    ModelError
        Unknown name, missing file, unsafe or damaged package, not a
        (CartoCell) model, or a BMZ id that cannot be fetched with no local copy.
    """
    if isinstance(value, ResolvedModel):
        return value
    text = str(value).strip()
    if not text:
        raise ModelError("no model given; name a package in model_packages/, a BMZ id or a package path.")
    cache = cache_root(cache_dir)
    path = Path(text).expanduser()
    known = find_known(text)

    if path.exists():
        resolved = _from_path(text, path, cache)
    elif text in (locals_ := local_packages()):
        resolved = _from_path(text, locals_[text], cache, origin="model_packages")
    elif _looks_like_path(text):
        raise ModelError(f"{text}: no such model file or folder.")
    else:
        model_id = known.id if known else text
        if not _ID_RE.match(model_id):
            raise ModelError(
                f"{text!r} is not a package in {model_packages_dir()}, a file, or a BioImage Model Zoo id; "
                "`cartocell-bmz models` lists the available models."
            )
        resolved = _from_bmz(text, model_id, cache, refresh=refresh, notify=notify or _warn)

    resolved = _with_checks(resolved, cache, trust=trust)
    say = notify or _warn
    for message in resolved.warnings:
        say(f"warning: {message}")
    if resolved.notice:
        say(f"notice: {resolved.notice}")
    return resolved


def _warn(message: str) -> None:
    """The default ``notify``: ``message`` as a :class:`CartoCellWarning`."""
    import warnings

    warnings.warn(message, CartoCellWarning, stacklevel=3)


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or "/" in text and not _ID_RE.match(text)
        or text.lower().endswith((".zip", ".yaml", ".yml"))
        or text.startswith((".", "~"))
    )


def _from_path(value: str, path: Path, cache: Path, origin: str | None = None) -> ResolvedModel:
    path = path.resolve()
    if path.is_dir():
        rdf = find_rdf(path)
        origin = origin or "path"
        name = path.name
    elif path.suffix.lower() == ".zip":
        digest = sha256_file(path)
        root = safe_extract(path, cache / "unzipped" / digest[:24])
        rdf = find_rdf(root)
        origin = origin or "zip"
        name = path.stem
    elif path.suffix.lower() in (".yaml", ".yml"):
        rdf = path
        origin = origin or "path"
        name = path.parent.name if path.name in RDF_NAMES else path.stem.split(".")[0]
    else:
        raise ModelError(f"{path}: not a model package (give a package folder, a .zip or an rdf.yaml).")
    return _load(value, name, rdf, origin)


def _from_bmz(value: str, model_id: str, cache: Path, *, refresh: bool,
              notify: Callable[[str], None]) -> ResolvedModel:
    folder = cache / "models" / _safe_id(model_id)
    rdf = folder / RDF_FILE
    if rdf.is_file() and not refresh:
        return _load(value, model_id, rdf, "cache", model_id=model_id)
    try:
        _download(model_id, folder, notify)
    except ModelError as exc:
        if rdf.is_file():  # refresh failed: fall back to the copy we have
            resolved = _load(value, model_id, rdf, "cache", model_id=model_id)
            return _replace(resolved, warnings=resolved.warnings + (f"could not refresh {model_id} ({exc}); using the local copy",))
        raise
    return _load(value, model_id, rdf, "bmz", model_id=model_id)


def _download(model_id: str, folder: Path, notify: Callable[[str], None]) -> None:
    """Fetch ``model_id`` through bioimageio's id resolution into ``folder`` (atomically)."""
    import logging

    from loguru import logger

    from bioimageio.spec.utils import get_reader, open_bioimageio_yaml

    logger.disable("bioimageio")  # its warnings would repeat our one-line error
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        opened = open_bioimageio_yaml(model_id)
    except Exception as exc:  # network down, unknown id, bad server reply
        reason = one_line(exc, limit=200)
        raise ModelError(
            f"cannot fetch model {model_id!r} from the BioImage Model Zoo and there is no local copy "
            f"({reason}); check the name and the network, or download its zip from "
            f"https://bioimage.io/#/?id={model_id} and run with --model path/to/model.zip."
        ) from None
    finally:  # back to bioimageio's defaults: spec and core silent (their __init__ disable them)
        logger.enable("bioimageio")
        logger.disable("bioimageio.spec")
        logger.disable("bioimageio.core")
    raw = opened.unparsed_content
    if not raw:
        raise ModelError(f"model {model_id!r}: the BioImage Model Zoo returned an empty description.")
    base = str(opened.original_root).rstrip("/")
    notify(f"downloading model {model_id} from {base} into {folder} (once: later runs use this copy)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        (tmp / RDF_FILE).write_text(raw, encoding="utf-8")
        content = read_rdf(tmp / RDF_FILE)
        seen: set[str] = set()
        for entry in declared_files(content):
            if entry.is_remote or entry.source in seen:
                continue
            seen.add(entry.source)
            target = tmp / entry.source
            try:
                target.resolve().relative_to(tmp.resolve())
            except ValueError:
                raise ModelError(f"model {model_id!r}: its description lists {entry.source!r}, outside the package.") from None
            try:
                reader = get_reader(f"{base}/{entry.source}", progressbar=False)
                data = reader.read()
            except Exception as exc:
                if entry.sha256 or entry.is_code_or_weights:
                    raise ModelError(f"cannot download {entry.source} of model {model_id!r} ({one_line(exc, limit=200)}); try again later.") from None
                continue  # optional file (documentation, cover) without a hash
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        verify_files(tmp, content, package=model_id)  # a damaged download never reaches the cache
        (tmp / ".cartocell-source.json").write_text(json.dumps({"id": model_id, "root": base}), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load(value: str, name: str, rdf_path: Path, origin: str, *, model_id: str | None = None) -> ResolvedModel:
    """Verify the files of a local package and load its description."""
    content = read_rdf(rdf_path)
    root = rdf_path.parent
    label = name if origin in ("model_packages", "cache", "bmz") else str(rdf_path.parent)
    unchecked = verify_files(root, content, package=label)
    descr = _load_description(rdf_path, label)
    check_cartocell_shape(descr, label)
    digest = sha256_file(rdf_path)
    descr_id = str(descr.id) if getattr(descr, "id", None) else None
    the_id = model_id or descr_id
    known = KNOWN_MODELS.get(the_id) if the_id else None
    warnings: list[str] = []
    if known is not None and digest != known.rdf_sha256:
        warnings.append(
            f"the description of {known.id} differs from the published one "
            f"(sha256 {digest} instead of {known.rdf_sha256}); results may not match the published figures"
        )
    for entry in unchecked:
        if entry.role.endswith(".architecture"):
            continue  # code without a sha256 is refused by the runner before it is imported
        warnings.append(f"{label}: {entry.source} ({entry.role}) has no sha256 in its description and was not checked")
    return ResolvedModel(
        value=value, name=name, root=root, rdf_path=rdf_path, origin=origin, description=descr,
        rdf_sha256=digest, model_id=the_id, known=known, warnings=tuple(warnings),
    )


def _load_description(rdf_path: Path, label: str) -> Any:
    from bioimageio.spec import InvalidDescr, load_description

    try:
        # files were hash-checked above; io checks would also query GitHub for authors
        descr = load_description(rdf_path, perform_io_checks=False, format_version="latest")
    except Exception as exc:
        raise ModelError(f"{label}: bioimageio cannot read this description ({one_line(exc, limit=200)}).") from None
    if isinstance(descr, InvalidDescr):
        errors = [e for d in descr.validation_summary.details for e in d.errors]
        first = errors[0] if errors else None
        where = ".".join(str(p) for p in first.loc) if first is not None else "?"
        msg = " ".join(first.msg.split()) if first is not None else "invalid"
        raise ModelError(f"{label}: invalid model description, field {where}: {msg}.")
    if getattr(descr, "type", None) != "model":
        raise ModelError(f"{label}: is a {getattr(descr, 'type', '?')} description, not a model.")
    return descr


def _with_checks(resolved: ResolvedModel, cache: Path, *, trust: bool) -> ResolvedModel:
    """Attach the first-use notice for packages from outside model_packages/."""
    if trust or resolved.origin == "model_packages":
        return resolved
    key = hashlib.sha256(resolved.rdf_sha256.encode() + str(resolved.root).encode()).hexdigest()[:32]
    marker = cache / "seen" / key
    if marker.exists():
        return resolved
    notice = code_notice(resolved.description, resolved.root, resolved.name)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{resolved.rdf_path}\n", encoding="utf-8")
    except OSError:
        pass  # a read-only cache only means the notice shows again
    return _replace(resolved, notice=notice)


def _replace(resolved: ResolvedModel, **changes: Any) -> ResolvedModel:
    import dataclasses

    return dataclasses.replace(resolved, **changes)


__all__ = [
    "CACHE_ENV",
    "MODEL_PACKAGES_ENV",
    "ResolvedModel",
    "cache_root",
    "cached_packages",
    "local_packages",
    "model_packages_dir",
    "resolve_model",
]
