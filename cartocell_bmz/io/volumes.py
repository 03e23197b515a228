"""Reading and writing 3D TIFF volumes with their voxel size, atomically.

Volumes are ``ZYX`` (raw images, label volumes) or ``CZYX`` (probabilities).
Voxel size (``spacing``, micrometres, in ``z, y, x`` order) is read from ImageJ
metadata or OME-XML and written back as ImageJ metadata (or OME-XML for data
types ImageJ cannot hold), so that spacing travels from input to output.

Every problem with an input file raises :class:`~cartocell_bmz.errors.InputError`
with a message naming the file and the problem.  Every write goes to a
temporary file in the destination folder that is renamed into place only when
complete, so an interrupted run never leaves a half-written result.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Literal, Sequence

import numpy as np

from cartocell_bmz.core.labels import label_dtype
from cartocell_bmz.core.spacing import check_spacing
from cartocell_bmz.errors import ConfigError, InputError, OutputError
from cartocell_bmz.layout import TIFF_SUFFIXES

Kind = Literal["image", "labels", "probabilities"]
Spacing = tuple[float, float, float]

_UNIT_TO_UM = {
    "um": 1.0, "µm": 1.0, "\\u00B5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "m": 1e6, "pixel": 1.0, "": 1.0,
}


_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass(frozen=True)
class Volume:
    """A volume read from disk: its data, voxel size and origin.

    Attributes
    ----------
    data : numpy.ndarray
        ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array.
    spacing : tuple of float
        Voxel size in micrometres, ``(z, y, x)``; ``(1, 1, 1)`` when the file had none.
    spacing_known : bool
        Whether the file carried a voxel size.
    path : pathlib.Path or None
        File the volume came from.
    """

    data: np.ndarray
    spacing: Spacing = (1.0, 1.0, 1.0)
    spacing_known: bool = False
    path: Path | None = None


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    Use it for libraries that want a file name (``torch.save``, ``savefig``).
    On an exception the temporary file is removed and ``path`` is untouched;
    an ``OSError`` while writing (disk full, read-only folder) becomes an
    :class:`~cartocell_bmz.errors.OutputError` naming ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> (d / "a.txt").read_text()
    'done'
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the output folder ({exc.strerror or exc}).") from None
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{parent}: the output location is a file, not a folder; choose another --out.")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write in the output folder ({exc.strerror or exc}).") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
            if tmp.exists():  # mkstemp makes 0600 files: give the result the usual umask mode
                os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except OSError as exc:  # disk full, quota, read-only or vanished folder: one line, nothing left
            raise OutputError(
                f"{path}: cannot be written ({exc.strerror or exc}); check the free space and permissions of {parent}."
            ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; rename it into place on success.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_open(d / "b.csv") as f:
    ...     _ = f.write("x,y\\n")
    >>> (d / "b.csv").read_text()
    'x,y\\n'
    """
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) or raise :class:`OutputError` naming why it cannot be used."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: the output location is a file, not a folder; choose another --out.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the output folder ({exc.strerror or exc}).") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the output folder is not writable; choose another --out.")
    return path


def write_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    compress: bool = False,
) -> Path:
    """Write a ``ZYX`` or ``CZYX`` volume as TIFF with its voxel size, atomically.

    ImageJ hyperstack metadata is used for ``uint8``, ``uint16`` and ``float32``
    (readable by Fiji); other data types (``float16``, ``uint32``...) are written as
    OME-TIFF with physical sizes.

    Parameters
    ----------
    path : path-like
        Destination file (``.tif``).
    data : numpy.ndarray
        3D ``(Z, Y, X)`` or 4D ``(C, Z, Y, X)`` array.
    spacing : sequence of 3 floats, optional
        Voxel size in micrometres ``(z, y, x)``.
    compress : bool
        Deflate-compress the pixel data (lossless).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    import tifffile

    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"write_volume expects a 3D or 4D array, got shape {data.shape}")
    sz, sy, sx = (float(s) for s in (spacing if spacing is not None else (1.0, 1.0, 1.0)))
    axes = "ZYX" if data.ndim == 3 else "CZYX"
    path = Path(path)
    kwargs: dict = {"compression": "zlib"} if compress else {}
    with atomic_path(path) as tmp:
        if data.dtype in (np.uint8, np.uint16, np.float32):
            # ImageJ hyperstacks order axes TZCYXS: store CZYX as ZCYX, read back as CZYX.
            ij_data, ij_axes = (data, axes) if data.ndim == 3 else (data.transpose(1, 0, 2, 3), "ZCYX")
            tifffile.imwrite(
                tmp, ij_data, imagej=True, resolution=(1.0 / sx, 1.0 / sy),
                metadata={"spacing": sz, "unit": "um", "axes": ij_axes}, **kwargs,
            )
        elif data.dtype == np.float16:
            # Neither ImageJ nor OME holds float16: plain TIFF with a JSON description.
            tifffile.imwrite(
                tmp, data, resolution=(1.0 / sx, 1.0 / sy), resolutionunit="MICROMETER",
                metadata={"axes": axes, "spacing_um": [sz, sy, sx]}, **kwargs,
            )
        else:
            tifffile.imwrite(
                tmp, data, ome=True, resolution=(1.0 / sx, 1.0 / sy),
                metadata={
                    "axes": axes,
                    "PhysicalSizeX": sx, "PhysicalSizeXUnit": "µm",
                    "PhysicalSizeY": sy, "PhysicalSizeYUnit": "µm",
                    "PhysicalSizeZ": sz, "PhysicalSizeZUnit": "µm",
                },
                **kwargs,
            )
    return path


# --------------------------------------------------------------------------- reading


def read_volume(path: str | os.PathLike, kind: Kind = "image") -> Volume:
    """Read a TIFF volume and check that it is usable as ``kind``.

    Parameters
    ----------
    path : path-like
        TIFF file.
    kind : {"image", "labels", "probabilities"}
        ``image``: a 3D ``ZYX`` volume of finite numbers, returned as ``float32``;
        ``labels``: a 3D volume of non-negative whole numbers, returned as an
        unsigned integer array; ``probabilities``: a 4D ``CZYX`` volume of
        finite numbers, returned as ``float32``.

    Returns
    -------
    Volume

    Raises
    ------
    InputError
        The file is missing, unreadable, truncated, of the wrong dimensionality,
        holds NaN/Inf, or (labels) holds fractional or negative values.
    """
    import tifffile

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    if not path.is_file():
        raise InputError(f"{path}: not a file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty.")
    try:
        with _tiff_damage() as damage, tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            axes = tif.series[0].axes if tif.series else ""
            spacing, known = _spacing_from_tiff(tif)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot be read as a TIFF volume ({reason}); is it truncated or not a TIFF?") from None
    if damage:  # tifffile read what it could of a cut or corrupted file: never use a part of it
        raise InputError(f"{path}: the TIFF is truncated or damaged ({damage[0]}); copy the file again.")
    data = np.asarray(data)
    if data.dtype.kind == "c" or data.dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported pixel type {data.dtype}; expected integers or floats.")
    want = 4 if kind == "probabilities" else 3
    if kind == "probabilities" and len(axes) == data.ndim and "C" in axes and "Z" in axes:
        # channels first, whatever order the file stores them in (ImageJ: ZCYX)
        data = np.moveaxis(data, axes.index("C"), 0)
    data = _squeeze_to(data, want)
    if data.ndim != want:
        what = "CZYX probability volume" if want == 4 else "3D volume (Z, Y, X)"
        raise InputError(
            f"{path}: has {data.ndim} dimension(s) {tuple(data.shape)}, but a {what} is needed."
            + (" A 2D image cannot be segmented in 3D." if data.ndim == 2 else "")
        )
    if min(data.shape) < 1:
        raise InputError(f"{path}: has an empty dimension {tuple(data.shape)}.")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n_bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{path}: holds {n_bad} NaN or infinite value(s); clean the file first.")
    if kind == "labels":
        data = _as_label_array(data, path)
    elif kind in ("image", "probabilities"):
        data = data.astype(np.float32, copy=False)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return Volume(data=data, spacing=spacing, spacing_known=known, path=path)


#: Words of tifffile's log messages that mean a file ends early or its structure is broken.
_DAMAGE_WORDS = ("invalid page offset", "invalid offset to page", "invalid value offset", "corrupted")


@contextlib.contextmanager
def _tiff_damage() -> Iterator[list[str]]:
    """Collect (and keep off stderr) tifffile's log messages that say a file is cut or corrupted.

    tifffile logs such problems and returns what it could read (a truncated
    stack reads as its first slice), so they are caught here and turned into
    one :class:`InputError` by the caller.
    """
    import logging

    found: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            for word in _DAMAGE_WORDS:
                if word in text:  # keep "invalid page offset 16592", drop tifffile's object reprs
                    found.append(re.split(r"['\")\n]", text[text.index(word):])[0].strip()[:100])
                    break

    log = logging.getLogger("tifffile")
    handler = _Collect(logging.WARNING)
    log.addHandler(handler)
    propagate, log.propagate = log.propagate, False  # its messages become our one-line error
    try:
        yield found
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def read_spacing(path: str | os.PathLike) -> tuple[Spacing, bool]:
    """Return ``(spacing, known)`` of a TIFF without reading its pixels."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _spacing_from_tiff(tif)
    except Exception as exc:
        raise InputError(f"{path}: cannot be read as a TIFF volume ({exc}).") from None


def _squeeze_to(data: np.ndarray, ndim: int) -> np.ndarray:
    """Drop leading/trailing singleton axes until ``data`` has ``ndim`` dimensions."""
    while data.ndim > ndim and 1 in data.shape:
        axis = data.shape.index(1)
        data = data.reshape(data.shape[:axis] + data.shape[axis + 1 :])
    return data


def _as_label_array(data: np.ndarray, path: Path) -> np.ndarray:
    if data.dtype.kind == "f":
        if not np.array_equal(data, np.round(data)):
            raise InputError(
                f"{path}: label volume holds fractional values (type {data.dtype}); "
                "labels must be whole-number cell ids, not probabilities."
            )
    if data.size and data.min() < 0:
        raise InputError(f"{path}: label volume holds negative values; labels must be >= 0.")
    top = int(data.max()) if data.size else 0
    if data.dtype.kind == "u":
        return data
    return data.astype(label_dtype(top))


def _spacing_from_tiff(tif) -> tuple[Spacing, bool]:
    """Voxel size in micrometres from OME-XML (preferred) or ImageJ metadata."""
    if tif.is_ome and tif.ome_metadata:
        got = _spacing_from_ome(tif.ome_metadata)
        if got is not None:
            return got, True
    shaped = tif.shaped_metadata[0] if tif.is_shaped and tif.shaped_metadata else {}
    if "spacing_um" in shaped:
        return tuple(float(v) for v in shaped["spacing_um"]), True
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    ij = tif.imagej_metadata or {}
    unit = str(ij.get("unit", "")).strip()
    scale = _UNIT_TO_UM.get(unit.lower() if unit else "", 1.0)
    known = False
    yx = [1.0, 1.0]
    for i, tag_name in enumerate(("YResolution", "XResolution")):
        tag = page.tags.get(tag_name)
        if tag is not None:
            num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
            if num and den and num / den not in (0.0, 1.0):
                yx[i] = den / num * scale
                known = True
            elif num and den:
                yx[i] = den / num * scale
    z = 1.0
    if "spacing" in ij:
        try:
            z = float(ij["spacing"]) * scale
            known = True
        except (TypeError, ValueError):
            pass
    spacing = (z, yx[0], yx[1])
    try:
        return check_spacing(spacing), known
    except ConfigError:
        return (1.0, 1.0, 1.0), False


def _spacing_from_ome(xml: str) -> Spacing | None:
    found = {}
    for axis in "ZYX":
        m = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', xml)
        if m is None:
            continue
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]*)"', xml)
        scale = _UNIT_TO_UM.get(unit.group(1).lower() if unit else "µm", 1.0)
        found[axis] = float(m.group(1)) * scale
    if not found:
        return None
    return (found.get("Z", 1.0), found.get("Y", 1.0), found.get("X", 1.0))


# --------------------------------------------------------------------------- folders


def list_volumes(folder: str | os.PathLike, *, what: str = "volumes") -> list[Path]:
    """Sorted TIFF files in ``folder``; :class:`InputError` if missing, not a folder or empty."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found.")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()
                   and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no TIFF {what} (.tif/.tiff) found.")
    return files


def resolve_inputs(spec: str | os.PathLike) -> list[Path]:
    """Expand a file, a folder or a glob pattern into a sorted list of TIFF files."""
    import glob

    text = str(spec)
    path = Path(text)
    if path.is_dir():
        return list_volumes(path)
    if path.is_file():
        return [path]
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text) if Path(p).suffix.lower() in TIFF_SUFFIXES)
        if not files:
            raise InputError(f"{text}: the pattern matches no TIFF file.")
        return files
    raise InputError(f"{text}: no such file, folder or pattern.")


def check_same_shape(image_shape: Sequence[int], gt_shape: Sequence[int], image: Path, gt: Path) -> None:
    """Raise :class:`InputError` when a ground truth's shape differs from its image's."""
    if tuple(image_shape) != tuple(gt_shape):
        raise InputError(
            f"{gt}: ground-truth shape {tuple(gt_shape)} differs from its image {image.name} {tuple(image_shape)}."
        )
