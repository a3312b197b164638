"""MRC maps and image stacks, read and written through ``mrcfile``.

Arrays are indexed ``[z, y, x]`` (maps) or ``[image, y, x]`` (stacks), as
``mrcfile`` returns them; voxel sizes are in Å, ``None`` where the header says
0.  Files are always opened with ``permissive=True``: many real files fail
strict validation (a missing map ID, an unknown machine stamp) yet hold good
data.  What cannot be read at all becomes an :class:`InputError`.

Writes are atomic: the data go to a temporary file in the target's folder,
which then replaces the target (``os.replace``), so a failed write never
leaves a partial file under the target's name.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import mrcfile
import mrcfile.utils
import numpy as np

from .errors import InputError

__all__ = ["read_map", "write_map", "write_stack", "ImageStack", "atomic_output"]


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _open(path: Path, *, mmap: bool):
    """Open an MRC file permissively; unreadable files raise :class:`InputError`."""
    if not path.is_file():
        raise InputError(path, "no such file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = (mrcfile.mmap if mmap else mrcfile.open)(path, mode="r", permissive=True)
        except (ValueError, OSError) as err:
            raise InputError(path, f"not a readable MRC file ({err})") from None
    if mrc.data is None:
        reason = _missing_data_reason(mrc, path) or "; ".join(str(w.message) for w in caught)
        mrc.close()
        raise InputError(path, f"not a readable MRC file ({reason or 'no data block'})")
    if np.iscomplexobj(mrc.data):
        mrc.close()
        raise InputError(path, "holds complex data, not real-valued images")
    return mrc


def _missing_data_reason(mrc, path: Path) -> str | None:
    """Why a permissively opened file has no data: usually a truncated file."""
    try:
        dtype = mrcfile.utils.data_dtype_from_header(mrc.header)
    except ValueError as err:
        return str(err)
    h = mrc.header
    expected = 1024 + int(h.nsymbt) + int(h.nx) * int(h.ny) * int(h.nz) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        return f"{size} bytes but the header describes {expected}; truncated?"
    return None


def _voxel_size(mrc) -> float | None:
    """The header's x voxel size in Å, or ``None`` when it is 0 (unset)."""
    size = float(mrc.voxel_size.x)
    return size if np.isfinite(size) and size > 0 else None


def read_map(path: str | os.PathLike) -> tuple[np.ndarray, float | None]:
    """Read a 3D map.

    Returns ``(volume, voxel_size)``: a float32 ``(nz, ny, nx)`` array (not
    necessarily a cube) and the voxel size in Å, ``None`` when the header says 0.
    """
    path = Path(path)
    mrc = _open(path, mmap=False)
    try:
        if mrc.data.ndim != 3:
            kind = "a 2D image" if mrc.data.ndim == 2 else "a stack of volumes"
            raise InputError(path, f"holds {kind} of shape {mrc.data.shape}, not a 3D map")
        volume = np.array(mrc.data, dtype=np.float32)
        voxel_size = _voxel_size(mrc)
    finally:
        mrc.close()
    if not np.isfinite(volume).all():
        raise InputError(path, "map has NaN or Inf voxels")
    return volume, voxel_size


def _as_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def _write(path, data: np.ndarray, voxel_size: float, *, stack: bool) -> None:
    if not voxel_size > 0:
        raise ValueError(f"voxel size must be positive, not {voxel_size}")
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(data)  # float32: mode 2
            if stack:
                mrc.set_image_stack()  # ispg = 0
            mrc.voxel_size = float(voxel_size)
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
            mrc.update_header_stats()


def write_map(path: str | os.PathLike, volume, voxel_size: float) -> None:
    """Write a ``(nz, ny, nx)`` map as float32 with the voxel size (Å) and origin 0."""
    data = _as_numpy(volume)
    if data.ndim != 3:
        raise ValueError(f"a map must be 3D, not of shape {data.shape}")
    _write(path, data, voxel_size, stack=False)


def write_stack(path: str | os.PathLike, images, voxel_size: float) -> None:
    """Write ``(n, ny, nx)`` images as a float32 MRC image stack (``.mrcs``, ispg 0)."""
    data = _as_numpy(images)
    if data.ndim != 3:
        raise ValueError(f"an image stack must be (n, ny, nx), not of shape {data.shape}")
    _write(path, data, voxel_size, stack=True)


class ImageStack:
    """A memory-mapped stack of square 2D images.

    ``shape`` is ``(n, ny, nx)`` with ``ny == nx``; ``voxel_size`` is the header
    pixel size in Å (``None`` when 0).  A 2D MRC file is a stack of one image.
    Only the images asked for are ever read from disk.  Image numbers in error
    messages are 1-based, as in RELION's ``n@stack.mrcs``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._mrc = None
        mrc = _open(self.path, mmap=True)
        data = mrc.data
        try:
            if data.ndim == 2:
                data = data[None]
            elif data.ndim != 3:
                raise InputError(self.path, f"holds data of shape {data.shape}, not a stack of 2D images")
            elif (data.shape[0] == data.shape[1] == data.shape[2] > 1
                  and not mrc.is_image_stack() and self.path.suffix.lower() != ".mrcs"):
                n = data.shape[0]
                raise InputError(self.path, f"holds a 3D volume ({n}x{n}x{n}), not a stack of 2D images")
            if data.shape[1] != data.shape[2]:
                raise InputError(self.path, f"images are {data.shape[2]}x{data.shape[1]} pixels, not square")
        except InputError:
            mrc.close()
            raise
        self._mrc = mrc
        self._data = data
        self.shape: tuple[int, int, int] = tuple(int(s) for s in data.shape)
        self.voxel_size: float | None = _voxel_size(mrc)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, indices) -> np.ndarray:
        """Read images by 0-based index: ``(k,)`` ints -> float32 ``(k, ny, nx)``."""
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        outside = (index < 0) | (index >= len(self))
        if outside.any():
            first = int(index[outside][0])
            raise InputError(self.path, f"image {first + 1} requested but the stack holds {len(self)}")
        images = np.asarray(self._data[index], dtype=np.float32)
        finite = np.isfinite(images).reshape(len(index), -1).all(axis=1)
        if not finite.all():
            bad = int(index[~finite][0])
            raise InputError(self.path, f"image {bad + 1} has NaN or Inf pixels")
        return images

    def close(self) -> None:
        if self._mrc is not None:
            self._mrc.close()
            self._mrc = None
            self._data = None

    def __enter__(self) -> "ImageStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self) -> str:
        return f"ImageStack({str(self.path)!r}, shape={self.shape}, voxel_size={self.voxel_size})"
