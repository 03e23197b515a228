"""Checks that make a model package safe to use before any of it runs.

A BioImage Model Zoo package is a folder (or zip) holding an ``rdf.yaml``, a
weights file and, for ``pytorch_state_dict`` weights, a Python file that is
imported and executed to build the network.  Before such a package is used:

- a zip is unpacked only when no member escapes the destination (``../``,
  absolute paths, links), it holds at most :data:`MAX_FILES` files and unpacks
  to at most :data:`MAX_UNPACKED_BYTES` (no member compresses more than
  :data:`MAX_RATIO` : 1 either: the mark of a zip bomb);
- every file the description lists with a sha256 is hashed and compared, the
  architecture file among them, before bioimageio imports it; no listed path
  may point outside the package;
- the description must have the shape of a CartoCell model: one input with
  axes ``b, c, z, y, x`` and one channel, one output with 3 channels.

Every failure is a :class:`~cartocell_bmz.errors.ModelError` with one sentence
naming the package and the file or field at fault.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cartocell_bmz.bmz.formats import RDF_NAMES
from cartocell_bmz.errors import ModelError, one_line
from cartocell_bmz.io.hashing import sha256_file  # re-exported: the package checks hash with it

#: Most files a package zip may hold.
MAX_FILES = 2000
#: Most bytes a package zip may unpack to (the published CartoCell packages: ~30 MB).
MAX_UNPACKED_BYTES = 4 * 1024**3
#: Highest compression ratio of a member larger than :data:`RATIO_MIN_BYTES`.
MAX_RATIO = 200
#: Members smaller than this are not ratio-checked (tiny text files compress well).
RATIO_MIN_BYTES = 1024**2

#: Axes of a CartoCell model's input and output tensors.
CARTOCELL_AXES: tuple[str, ...] = ("batch", "channel", "z", "y", "x")


# --------------------------------------------------------------------------- zips


def safe_extract(
    zip_path: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_files: int | None = None,
    max_bytes: int | None = None,
    max_ratio: float | None = None,
) -> Path:
    """Unpack a package zip into ``dest`` after checking every member.

    The zip is unpacked into a temporary folder beside ``dest`` and renamed
    into place when complete; an existing ``dest`` is returned untouched
    (callers key ``dest`` by the zip's sha256).

    Parameters
    ----------
    zip_path : path-like
        The zip file.
    dest : path-like
        Folder to create.
    max_files, max_bytes, max_ratio : optional
        Limits; default :data:`MAX_FILES`, :data:`MAX_UNPACKED_BYTES`, :data:`MAX_RATIO`.

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    ModelError
        The file is not a zip, a member would land outside ``dest`` (``../``,
        absolute path, link), or the limits are exceeded.
    """
    max_bytes = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
    zip_path, dest = Path(zip_path), Path(dest)
    if dest.is_dir():
        return dest
    with _open_zip(zip_path) as zf:
        infos = zf.infolist()
        _check_members(zip_path, infos, max_files=max_files, max_bytes=max_bytes, max_ratio=max_ratio)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
        try:
            written = 0
            for info in infos:
                target = tmp.joinpath(*_member_parts(info.filename))
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        written += len(block)
                        if written > max_bytes:
                            raise ModelError(f"{zip_path}: unpacks to more than its declared size; refusing it.")
                        out.write(block)
            try:
                os.replace(tmp, dest)
            except OSError:
                if not dest.is_dir():  # lost a race with another process unpacking the same zip: fine
                    raise
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as exc:
            raise ModelError(f"{zip_path}: the zip is damaged ({exc}); download the package again.") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def check_zip(
    zip_path: str | os.PathLike,
    *,
    max_files: int | None = None,
    max_bytes: int | None = None,
    max_ratio: float | None = None,
) -> None:
    """Check every member of a package zip as :func:`safe_extract` does, without unpacking it.

    For tools that read the zip themselves (``validate`` hands it to bioimageio):
    a zip that :func:`safe_extract` would refuse is refused here with the same message.

    Raises
    ------
    ModelError
        Not a zip, a member escaping the package, a link, or a limit exceeded.
    """
    zip_path = Path(zip_path)
    with _open_zip(zip_path) as zf:
        _check_members(zip_path, zf.infolist(), max_files=max_files, max_bytes=max_bytes, max_ratio=max_ratio)


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{zip_path}: not a readable zip file ({exc}); download the package again.") from None


def _check_members(zip_path: Path, infos: list[zipfile.ZipInfo], *, max_files: int | None, max_bytes: int | None,
                   max_ratio: float | None) -> None:
    max_files = MAX_FILES if max_files is None else max_files
    max_bytes = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
    max_ratio = MAX_RATIO if max_ratio is None else max_ratio
    if len(infos) > max_files:
        raise ModelError(f"{zip_path}: holds {len(infos)} files, more than the {max_files} a model package may have.")
    total = 0
    for info in infos:
        _check_member(zip_path, info)
        total += info.file_size
        if (info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1)):
            raise ModelError(
                f"{zip_path}: member {info.filename!r} would expand {info.file_size / max(info.compress_size, 1):.0f} "
                f"times (a zip bomb?); refusing to unpack it."
            )
    if total > max_bytes:
        raise ModelError(
            f"{zip_path}: would unpack to {total / 1024**3:.1f} GiB, more than the "
            f"{max_bytes / 1024**3:.1f} GiB a model package may take; refusing to unpack it."
        )


def _member_parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _check_member(zip_path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise ModelError(f"{zip_path}: member {name!r} has an absolute path; refusing to unpack this zip.")
    if ".." in norm.split("/"):
        raise ModelError(f"{zip_path}: member {name!r} points outside the package (../); refusing to unpack this zip.")
    if not _member_parts(name) and not info.is_dir():
        raise ModelError(f"{zip_path}: member {name!r} has no file name; refusing to unpack this zip.")
    mode = info.external_attr >> 16
    if mode and stat.S_ISLNK(mode):
        raise ModelError(f"{zip_path}: member {name!r} is a symbolic link; refusing to unpack this zip.")


# --------------------------------------------------------------------------- descriptions


def find_rdf(folder: str | os.PathLike) -> Path:
    """The description file of a package folder (``rdf.yaml``, ``bioimageio.yaml`` or ``*.bioimageio.yaml``)."""
    folder = Path(folder)
    for name in RDF_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.bioimageio.yaml"))
    if len(found) == 1:
        return found[0]
    raise ModelError(f"{folder}: no rdf.yaml (or bioimageio.yaml) in this folder; is it a model package?")


def read_rdf(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a description file into a dict (safe YAML), or raise :class:`ModelError`."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        content = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{path}: cannot be read as a YAML model description ({one_line(exc)}).") from None
    if not isinstance(content, dict):
        raise ModelError(f"{path}: is not a model description (no key: value fields).")
    kind = content.get("type")
    if kind != "model":
        what = f"a {kind!r} description" if kind else "not a bioimage.io description (no 'type' field)"
        raise ModelError(f"{path}: is {what}, not a model; give a model package.")
    return content


@dataclass(frozen=True)
class DeclaredFile:
    """A file listed in a description.

    Attributes
    ----------
    role : str
        Where it is listed, e.g. ``weights.pytorch_state_dict`` or
        ``weights.pytorch_state_dict.architecture``.
    source : str
        Path relative to the package (or a URL).
    sha256 : str or None
        Declared sha256.
    """

    role: str
    source: str
    sha256: str | None

    @property
    def is_code_or_weights(self) -> bool:
        """Whether the file is weights or an architecture (must be present)."""
        return self.role.startswith("weights")

    @property
    def is_remote(self) -> bool:
        """Whether the source is a URL."""
        return "://" in self.source


def declared_files(rdf: dict[str, Any]) -> list[DeclaredFile]:
    """Every file a raw description lists: weights, architecture, test tensors, docs, covers, attachments.

    Examples
    --------
    >>> rdf = {"documentation": "doc.md", "weights": {"torchscript": {"source": "w.pt", "sha256": "ab"}}}
    >>> [(f.role, f.source, f.sha256) for f in declared_files(rdf)]
    [('documentation', 'doc.md', None), ('weights.torchscript', 'w.pt', 'ab')]
    """
    found: list[DeclaredFile] = []
    doc = rdf.get("documentation")
    if isinstance(doc, str):
        found.append(DeclaredFile("documentation", doc, None))
    for cover in rdf.get("covers") or []:
        if isinstance(cover, str):
            found.append(DeclaredFile("covers", cover, None))
    for role, node in _walk(rdf, ""):
        if role == "":
            continue
        if isinstance(node.get("source"), str):
            found.append(DeclaredFile(role, node["source"], _sha(node.get("sha256"))))
        arch = node.get("architecture")
        if isinstance(arch, str) and ":" in arch and "://" not in arch.split(":")[0]:  # format 0.4
            found.append(DeclaredFile(f"{role}.architecture", arch.split(":")[0], _sha(node.get("architecture_sha256"))))
    return found


def _sha(value: Any) -> str | None:
    return str(value).lower() if value else None


def _walk(node: Any, role: str) -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        yield role, node
        for key, value in node.items():
            if key in ("config",):  # free-form tool configuration: not files
                continue
            yield from _walk(value, f"{role}.{key}" if role else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{role}[{i}]")


def package_path(root: Path, source: str, package: str) -> Path:
    """``root / source`` after checking that it stays inside the package."""
    if os.path.isabs(source) or source.replace("\\", "/").startswith("/"):
        raise ModelError(f"{package}: the description lists the absolute path {source!r}; a package may only list its own files.")
    target = (root / source).resolve()
    try:
        target.relative_to(root.resolve())
    except ValueError:
        raise ModelError(f"{package}: the description lists {source!r}, which points outside the package.") from None
    return target


def verify_files(root: str | os.PathLike, rdf: dict[str, Any], *, package: str | None = None) -> list[DeclaredFile]:
    """Check every file a description lists against its sha256, before anything uses it.

    Weights and architecture files must exist; any file with a declared sha256
    must exist and match it.  Files without a declared sha256 cannot be
    checked and are returned.

    Parameters
    ----------
    root : path-like
        Package folder.
    rdf : dict
        The raw description (:func:`read_rdf`).
    package : str, optional
        Name used in messages; default ``root``.

    Returns
    -------
    list of DeclaredFile
        Weights and architecture files present but without a declared sha256.

    Raises
    ------
    ModelError
        A listed path escapes the package, a required file is missing, or a
        file's sha256 differs from the declared one.
    """
    root = Path(root)
    package = package or str(root)
    unchecked: list[DeclaredFile] = []
    for entry in declared_files(rdf):
        if entry.is_remote:
            continue  # fetched (and hash-checked when declared) by bioimageio
        path = package_path(root, entry.source, package)
        if not path.is_file():
            if entry.sha256 or entry.is_code_or_weights:
                raise ModelError(f"{package}: file {entry.source!r} listed as {entry.role} is missing from the package.")
            continue
        if entry.sha256 is None:
            if entry.is_code_or_weights:
                unchecked.append(entry)
            continue
        got = sha256_file(path)
        if got != entry.sha256:
            raise ModelError(
                f"{package}: {entry.source} ({entry.role}) does not match the sha256 in its description "
                f"(expected {entry.sha256[:12]}..., got {got[:12]}...): it was changed or damaged, get the package again."
            )
    return unchecked


def check_cartocell_shape(descr: Any, package: str) -> None:
    """Raise :class:`ModelError` unless ``descr`` is shaped like a CartoCell model.

    One input with axes ``batch, channel, z, y, x`` and one channel; one output
    with the same axes and 3 channels (B, C, M) whose spatial sizes are fixed or
    follow the input (not data-dependent).
    """
    from bioimageio.spec.model import v0_5

    if not isinstance(descr, v0_5.ModelDescr):
        raise ModelError(f"{package}: is not a model description of format 0.5 (got {type(descr).__name__}).")
    if len(descr.inputs) != 1:
        raise ModelError(f"{package}: has {len(descr.inputs)} inputs; a CartoCell model takes one 3D image.")
    if len(descr.outputs) != 1:
        raise ModelError(f"{package}: has {len(descr.outputs)} outputs; a CartoCell model gives one (B, C, M).")
    for kind, tensor in (("input", descr.inputs[0]), ("output", descr.outputs[0])):
        ids = tuple(str(a.id) for a in tensor.axes)
        if ids != CARTOCELL_AXES:
            short = ",".join(i[0] if i in CARTOCELL_AXES else i for i in ids)
            raise ModelError(
                f"{package}: {kind} {str(tensor.id)!r} has axes {short}; a CartoCell model needs b,c,z,y,x (3D)."
            )
        channel = tensor.axes[1]
        n = len(channel.channel_names)
        want = 1 if kind == "input" else 3
        if n != want:
            what = "one image channel" if kind == "input" else "3 channels (B, C, M)"
            raise ModelError(f"{package}: {kind} {str(tensor.id)!r} has {n} channel(s); a CartoCell model needs {what}.")
    for axis in descr.outputs[0].axes[2:]:
        if isinstance(axis.size, v0_5.DataDependentSize):
            raise ModelError(f"{package}: output axis {axis.id} has a data-dependent size; cannot tile this model.")


def code_notice(descr: Any, root: Path, package: str) -> str:
    """One paragraph saying what code a package runs, for a first-use notice."""
    weights = descr.weights
    lines = []
    if weights.pytorch_state_dict is not None:
        arch = weights.pytorch_state_dict.architecture
        source = getattr(arch, "source", None)
        if source is not None:
            name = getattr(source, "path", None) or str(source)
            sha = arch.sha256
            lines.append(
                f"model {package}: its pytorch_state_dict weights run Python code from {root / str(name)} "
                f"(class {arch.callable}, sha256 {str(sha)[:16] if sha else 'not declared'}), imported when the model loads"
            )
        else:
            lines.append(f"model {package}: its pytorch_state_dict weights import {arch.import_from}.{arch.callable}")
    plain = [f for f in ("torchscript", "onnx") if getattr(weights, f, None) is not None]
    if plain:
        lines.append(f"--weights {' or '.join(plain)} runs it without importing any Python file")
    lines.append("pass --trust to silence this notice")
    return "; ".join(lines) + "."


__all__ = [
    "CARTOCELL_AXES",
    "DeclaredFile",
    "MAX_FILES",
    "MAX_RATIO",
    "MAX_UNPACKED_BYTES",
    "RDF_NAMES",
    "check_cartocell_shape",
    "check_zip",
    "code_notice",
    "declared_files",
    "find_rdf",
    "package_path",
    "read_rdf",
    "safe_extract",
    "sha256_file",
    "verify_files",
]
