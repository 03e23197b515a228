"""Whole acquisitions read lazily, and uint8 scratch volumes on disk, both by boxes.

A stack of several GiB cannot be held in memory.  :func:`open_stack` checks a
TIFF (exists, 3D, numbers, a voxel size) and returns a :class:`LazyStack`
that reads only the boxes asked for:

- uncompressed contiguous pixel data (what ``write_volume`` and ImageJ write):
  with ``os.pread`` at the data's offset, one read per plane of a box; the
  pages go through the page cache, not into the process (a memory map would
  count every page touched in the process's resident memory);
- one page per z-plane (compressed or strip-wise TIFFs): each plane read by
  tifffile when a box needs it;
- anything else (a single compressed 3D page, odd layouts): read whole once.

An OME-Zarr image (a folder, OME-NGFF 0.4 on Zarr v2 or 0.5 on Zarr v3) is read
by boxes from its full-resolution level (:class:`ZarrStack`, through the
``zarr`` library: only the chunks a box touches are read), its voxel size from
the level's ``scale`` transformations.

:class:`ScratchVolume` is a ``(Z, Y, X)`` uint8 file written and read by boxes
the same way (a hidden temporary file of an output folder, removed on close).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cartocell_bmz.errors import InputError

Key = Any


class _Boxes:
    """Box reads and writes of a C-ordered ``(Z, Y, X)`` array stored contiguously at ``offset`` of a file."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    _fd: int
    _offset: int

    @property
    def ndim(self) -> int:
        return 3

    def _slices(self, key: Key) -> tuple[slice, slice, slice]:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (3 - len(key))
        out = []
        for k, n in zip(key, self.shape):
            if not isinstance(k, slice):
                raise TypeError(f"{type(self).__name__} takes slices (z0:z1, y0:y1, x0:x1), got {key!r}")
            start, stop, step = k.indices(n)
            if step != 1:
                raise TypeError(f"{type(self).__name__} takes slices of step 1, got {key!r}")
            out.append(slice(start, max(start, stop)))
        return tuple(out)  # type: ignore[return-value]

    def _read_contiguous(self, sl: tuple[slice, slice, slice]) -> np.ndarray:
        z, y, x = sl
        _, n_y, n_x = self.shape
        item = self.dtype.itemsize
        out = np.empty((z.stop - z.start, y.stop - y.start, x.stop - x.start), self.dtype)
        if out.size == 0:
            return out
        if y.start == 0 and y.stop == n_y and x.start == 0 and x.stop == n_x:  # whole planes: one read
            raw = _pread(self._fd, out.nbytes, self._offset + z.start * n_y * n_x * item)
            out[...] = np.frombuffer(raw, self.dtype).reshape(out.shape)
            return out
        rows = (y.stop - y.start) * n_x * item
        for i, plane in enumerate(range(z.start, z.stop)):
            raw = _pread(self._fd, rows, self._offset + (plane * n_y + y.start) * n_x * item)
            out[i] = np.frombuffer(raw, self.dtype).reshape(y.stop - y.start, n_x)[:, x]
        return out


def _pread(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes at ``offset`` (pread may return fewer for large reads)."""
    parts = []
    while size > 0:
        got = os.pread(fd, min(size, 1 << 30), offset)
        if not got:
            raise InputError(f"a file ends early (wanted {size} more bytes at {offset}); is it truncated?")
        parts.append(got)
        size -= len(got)
        offset += len(got)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class LazyStack(_Boxes):
    """A ``(Z, Y, X)`` TIFF stack read by boxes: ``stack[z0:z1, y0:y1, x0:x1]`` is a numpy array.

    Open it with :func:`open_stack`; close it (or use it as a context manager) when done.

    Attributes
    ----------
    path : pathlib.Path
        The file.
    shape : tuple of 3 ints
        ``(Z, Y, X)``.
    dtype : numpy.dtype
        Pixel type (native byte order).
    spacing : tuple of 3 floats
        Voxel size ``(z, y, x)`` in µm.
    mode : str
        ``"contiguous"`` (read by ``pread``), ``"pages"`` (one TIFF page per plane) or ``"whole"`` (in memory).
    """

    def __init__(self, path: Path, spacing: tuple[float, float, float]) -> None:
        import tifffile

        self.path = Path(path)
        self.spacing = spacing
        self._tif = tifffile.TiffFile(self.path)
        series = self._tif.series[0]
        shape = tuple(n for n in series.shape if n != 1) if len(series.shape) > 3 else tuple(series.shape)
        self._data: np.ndarray | None = None
        self._pages: list | None = None
        self.dtype = np.dtype(series.dtype).newbyteorder("=")
        native = self._tif.byteorder == ("<" if sys.byteorder == "little" else ">") or self.dtype.itemsize == 1
        offset = series.dataoffset
        if len(shape) == 3 and offset is not None and native:
            self.mode, self._offset = "contiguous", int(offset)
            self._fd = os.open(self.path, os.O_RDONLY)
        elif len(shape) == 3 and len(series.pages) == shape[0] and all(
                p is not None and tuple(p.shape) == shape[1:] for p in series.pages):
            self.mode, self._pages = "pages", list(series.pages)
        else:
            self.mode = "whole"
            data = np.asarray(series.asarray())
            self._data = data.reshape(shape) if len(shape) == 3 else data
        self.shape = tuple(int(n) for n in shape)  # type: ignore[assignment]

    def __getitem__(self, key: Key) -> np.ndarray:
        sl = self._slices(key)
        if self.mode == "contiguous":
            return self._read_contiguous(sl)
        if self.mode == "pages":
            z, y, x = sl
            out = np.empty((z.stop - z.start, y.stop - y.start, x.stop - x.start), self.dtype)
            for i, plane in enumerate(range(z.start, z.stop)):
                out[i] = self._pages[plane].asarray()[y, x]  # type: ignore[index]
            return out
        return np.array(self._data[sl], dtype=self.dtype)  # type: ignore[index]

    def close(self) -> None:
        """Close the file."""
        if self.mode == "contiguous" and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()

    def __enter__(self) -> "LazyStack":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LazyStack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype}, mode={self.mode!r})"


def open_stack(path: str | os.PathLike, spacing: Sequence[float] | None = None) -> "LazyStack | ZarrStack":
    """Open a ``(Z, Y, X)`` TIFF stack or OME-Zarr image lazily, checked, with its voxel size.

    Parameters
    ----------
    path : path-like
        The TIFF, or the folder of an OME-Zarr image (``*.zarr``, ``*.ome.zarr``).
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in µm; default the file's.

    Raises
    ------
    InputError
        Missing or unreadable file, not 3D, not numbers, or no voxel size in the file and none given.
    """
    import tifffile

    from cartocell_bmz.core.spacing import check_spacing
    from cartocell_bmz.io.volumes import read_spacing

    path = Path(path)
    if path.is_dir() and any((path / name).is_file() for name in (".zattrs", "zarr.json")):
        return open_ome_zarr(path, spacing)
    if not path.is_file():
        raise InputError(f"{path}: file not found." if not path.exists() else
                         f"{path}: not a file (a folder is read only as an OME-Zarr image, with .zattrs or zarr.json).")
    try:
        with tifffile.TiffFile(path) as tif:
            shape, dtype = tuple(tif.series[0].shape), np.dtype(tif.series[0].dtype)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot be read as a TIFF stack ({reason}).") from None
    squeezed = tuple(n for n in shape if n != 1) if len(shape) > 3 else shape
    if len(squeezed) != 3:
        raise InputError(f"{path}: has {len(squeezed)} dimension(s) {shape}, but a 3D stack (Z, Y, X) is needed."
                         + (" A 2D image holds no 3D cysts." if len(squeezed) == 2 else ""))
    if dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported pixel type {dtype}; expected integers or floats.")
    if spacing is not None:
        sp = check_spacing(spacing, name="--spacing")
    else:
        found, known = read_spacing(path)
        if not known:
            raise InputError(f"{path}: the file holds no voxel size; give it with --spacing Z Y X (micrometres).")
        sp = check_spacing(found, name=f"voxel size of {path.name}")
    try:
        return LazyStack(path, sp)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot be read as a TIFF stack ({str(exc).splitlines()[0]}).") from None


#: Endings dropped from a stack's file name to name its crops.
STACK_SUFFIXES: tuple[str, ...] = (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif")


def stack_stem(path: str | os.PathLike) -> str:
    """A stack's name without its ending (``.tif``, ``.ome.tif``, ``.zarr``, ``.ome.zarr``...).

    Examples
    --------
    >>> stack_stem("day4/plate_1.ome.zarr"), stack_stem("a.b.tif"), stack_stem("raw")
    ('plate_1', 'a.b', 'raw')
    """
    name = Path(path).name
    for suffix in STACK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def stack_fingerprint(path: str | os.PathLike) -> dict:
    """Size and last modification of a stack: its file's, or over every file of an OME-Zarr folder.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "s.tif"
    >>> _ = f.write_bytes(b"1234")
    >>> stack_fingerprint(f)["size"]
    4
    """
    path = Path(path)
    if not path.is_dir():
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    size = mtime = 0
    for root, _, files in os.walk(path):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            size, mtime = size + stat.st_size, max(mtime, stat.st_mtime_ns)
    return {"size": size, "mtime_ns": mtime}


#: OME-NGFF units of length, in micrometres.
_UNITS_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6,
             "angstrom": 1e-4, "picometer": 1e-6}


class ZarrStack(_Boxes):
    """The full-resolution level of an OME-Zarr image read by boxes (other axes of size 1 dropped).

    Open it with :func:`open_stack` (or :func:`open_ome_zarr`).

    Attributes
    ----------
    path : pathlib.Path
        The image's folder.
    shape, dtype, spacing, mode
        As :class:`LazyStack`'s; ``mode`` is ``"zarr"``.
    """

    mode = "zarr"

    def __init__(self, path: Path, array: Any, index: tuple, spacing: tuple[float, float, float]) -> None:
        self.path = Path(path)
        self.spacing = spacing
        self._array = array
        self._index = index  # 0 for the non-spatial axes, the spatial axes in z, y, x order
        self.dtype = np.dtype(array.dtype).newbyteorder("=")
        self.shape = tuple(int(n) for n, k in zip(array.shape, index) if k is None)  # type: ignore[assignment]

    def __getitem__(self, key: Key) -> np.ndarray:
        sl = iter(self._slices(key))
        full = tuple(next(sl) if k is None else k for k in self._index)
        return np.asarray(self._array[full], dtype=self.dtype)

    def close(self) -> None:
        """Nothing to close (zarr opens chunks when read)."""

    def __enter__(self) -> "ZarrStack":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ZarrStack({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def open_ome_zarr(path: str | os.PathLike, spacing: Sequence[float] | None = None) -> ZarrStack:
    """Open the full-resolution level of an OME-Zarr image (OME-NGFF 0.4 or 0.5) as a ``(Z, Y, X)`` stack.

    Parameters
    ----------
    path : path-like
        The image's folder (it holds ``.zattrs`` or ``zarr.json`` with ``multiscales``).
    spacing : sequence of 3 floats, optional
        Voxel size ``(z, y, x)`` in µm; default the level's ``scale`` (in its axes' units).

    Raises
    ------
    InputError
        Not an OME-Zarr image, no z, y and x axes, another axis (time, channel) longer than
        1, no scale and no ``spacing``, a unit of length it does not know, or unreadable.
    """
    import json

    from cartocell_bmz.core.spacing import check_spacing

    path = Path(path)
    try:
        if (path / "zarr.json").is_file():
            attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
            attrs = attrs.get("ome", attrs)
        else:
            attrs = json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read its OME-Zarr metadata ({exc}).") from None
    multiscales = attrs.get("multiscales") if isinstance(attrs, dict) else None
    if not multiscales:
        raise InputError(f"{path}: a Zarr folder without OME-NGFF 'multiscales' metadata is not an image it can read.")
    ms = multiscales[0]
    if not ms.get("axes") or not ms.get("datasets"):
        raise InputError(f"{path}: its multiscales metadata lists no axes or no datasets (OME-NGFF 0.4 or newer is read).")
    axes = [a if isinstance(a, dict) else {"name": a} for a in ms["axes"]]
    names = [str(a.get("name", "")).lower() for a in axes]
    if not {"z", "y", "x"} <= set(names):
        raise InputError(f"{path}: its axes are {names}, but a 3D image with z, y and x axes is needed.")
    level = ms["datasets"][0]
    try:
        import zarr

        array = zarr.open_array(str(path / level["path"]), mode="r")
    except ImportError:
        raise InputError(f"{path}: reading OME-Zarr needs the zarr package: pip install zarr") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot open its level {level.get('path')!r} ({str(exc).splitlines()[0]}).") from None
    if array.ndim != len(names):
        raise InputError(f"{path}: its level has {array.ndim} dimensions but {len(names)} axes are described.")
    for name, n in zip(names, array.shape):
        if name not in ("z", "y", "x") and n != 1:
            raise InputError(f"{path}: axis {name!r} has {n} entries; crop reads one 3D image: "
                             "write one channel and one time point per image.")
    if np.dtype(array.dtype).kind not in "biuf":
        raise InputError(f"{path}: unsupported pixel type {array.dtype}; expected integers or floats.")
    if spacing is not None:
        sp = check_spacing(spacing, name="--spacing")
    else:
        scale = np.ones(len(names))
        for transforms in (level.get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
            for t in transforms or []:
                if t.get("type") == "scale":
                    scale = scale * np.asarray(t["scale"], float)
        if not any(t.get("type") == "scale" for t in level.get("coordinateTransformations", []) or []):
            raise InputError(f"{path}: the image holds no voxel size (no scale); give it with --spacing Z Y X (micrometres).")
        um = []
        for axis in ("z", "y", "x"):
            unit = str(axes[names.index(axis)].get("unit") or "micrometer").lower()
            if unit not in _UNITS_UM:
                raise InputError(f"{path}: axis {axis} has unit {unit!r}; known units: {sorted(_UNITS_UM)}.")
            um.append(float(scale[names.index(axis)]) * _UNITS_UM[unit])
        sp = check_spacing(um, name=f"voxel size of {path.name}")
    order = [names.index(a) for a in ("z", "y", "x")]
    if order != sorted(order):
        raise InputError(f"{path}: its axes {names} are not in z, y, x order.")
    index = tuple(None if name in ("z", "y", "x") else 0 for name in names)
    return ZarrStack(path, array, index, sp)


class ScratchVolume(_Boxes):
    """A ``(Z, Y, X)`` uint8 scratch file, written and read by boxes; removed by :meth:`close`.

    Parameters
    ----------
    folder : path-like
        Where the hidden file goes (an output folder).
    shape : tuple of 3 ints
        ``(Z, Y, X)``.
    """

    def __init__(self, folder: str | os.PathLike, shape: Sequence[int]) -> None:
        import tempfile

        self.shape = tuple(int(n) for n in shape)  # type: ignore[assignment]
        self.dtype = np.dtype(np.uint8)
        self._offset = 0
        self._fd, name = tempfile.mkstemp(prefix=".crop-scratch-", suffix=".u8", dir=folder)
        self.path = Path(name)
        os.ftruncate(self._fd, int(np.prod(self.shape, dtype=np.int64)))  # sparse: zeros

    def __getitem__(self, key: Key) -> np.ndarray:
        return self._read_contiguous(self._slices(key))

    def __setitem__(self, key: Key, value: np.ndarray) -> None:
        z, y, x = self._slices(key)
        _, n_y, n_x = self.shape
        block = np.broadcast_to(np.asarray(value, np.uint8), (z.stop - z.start, y.stop - y.start, x.stop - x.start))
        for i, plane in enumerate(range(z.start, z.stop)):
            if x.start == 0 and x.stop == n_x:
                os.pwrite(self._fd, np.ascontiguousarray(block[i]).tobytes(), (plane * n_y + y.start) * n_x)
                continue
            for j, row in enumerate(range(y.start, y.stop)):
                os.pwrite(self._fd, np.ascontiguousarray(block[i, j]).tobytes(), (plane * n_y + row) * n_x + x.start)

    def close(self) -> None:
        """Close and remove the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "ScratchVolume":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["LazyStack", "ScratchVolume", "ZarrStack", "open_ome_zarr", "open_stack", "stack_fingerprint", "stack_stem"]
