"""MRC maps and image stacks.

Arrays are indexed ``[z, y, x]`` (maps) or ``[image, y, x]`` (stacks), as
``mrcfile`` returns them; voxel sizes are in Å, ``None`` where the header says
0.  Headers are always parsed by ``mrcfile`` with ``permissive=True``: many
real files fail strict validation (a missing map ID, an unknown machine
stamp) yet hold good data.  What cannot be read at all becomes an
:class:`InputError`.

Maps are read whole through ``mrcfile``.  Image stacks can be far larger than
memory, so :class:`ImageStack` reads only the images asked for, with
positioned reads (``pread``) at ``data_offset + index * image_bytes``, into
arrays the caller owns.  A memory map would do the same I/O, but every page it
has touched stays counted in the process's resident memory until the kernel
reclaims it, so an epoch over a 13 GB stack would show 13 GB resident; pages
read with ``pread`` sit in the kernel's page cache, which is not the process's.

Writes are atomic: the data go to a temporary file in the target's folder,
which then replaces the target (``os.replace``), so a failed write never
leaves a partial file under the target's name.  :func:`write_stack_chunks`
writes a stack larger than memory from an iterable of chunks.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import mrcfile.constants
import mrcfile.utils
import numpy as np

from .errors import InputError

__all__ = ["read_map", "write_map", "write_stack", "write_stack_chunks", "ImageStack", "atomic_output"]

_HEADER_BYTES = 1024
_READ_BYTES = 1 << 26  # the most one positioned read asks for: bounds the temporary of a mode conversion


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


def _open(path: Path):
    """Open and read an MRC file permissively; unreadable files raise :class:`InputError`."""
    if not path.is_file():
        raise InputError(path, "no such file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mrc = mrcfile.open(path, mode="r", permissive=True)
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
    return _truncation(path, _HEADER_BYTES + int(h.nsymbt) + int(h.nx) * int(h.ny) * int(h.nz) * dtype.itemsize)


def _truncation(path: Path, expected: int) -> str | None:
    """Why a file shorter than the ``expected`` bytes its header describes cannot be read."""
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
    mrc = _open(path)
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


def write_stack_chunks(path: str | os.PathLike, chunks, voxel_size: float) -> int:
    """Write an image stack from an iterable of ``(k, ny, nx)`` chunks; returns the image count.

    The same file as :func:`write_stack` on the chunks concatenated (float32,
    ispg 0, header statistics over all images), holding one chunk in memory at
    a time.  2D chunks are single images.
    """
    if not voxel_size > 0:
        raise ValueError(f"voxel size must be positive, not {voxel_size}")
    n, side = 0, None
    low, high, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as out:
            out.write(bytes(_HEADER_BYTES))  # replaced once the count and statistics are known
            for chunk in chunks:
                data = np.ascontiguousarray(_as_numpy(chunk))
                data = data[None] if data.ndim == 2 else data
                if data.ndim != 3 or side not in (None, data.shape[1:]):
                    raise ValueError(f"chunks must be (k, ny, nx) with one image size, not {data.shape}")
                side = data.shape[1:]
                out.write(memoryview(data).cast("B"))
                if data.size:
                    low, high = min(low, float(data.min())), max(high, float(data.max()))
                    total += float(data.sum(dtype=np.float64))
                    total_sq += float(np.square(data, dtype=np.float64).sum())
                n += len(data)
            if n == 0:
                raise ValueError("an image stack needs at least one image")
            header = _stack_header(n, side, voxel_size)
            count = n * side[0] * side[1]
            mean = total / count
            header.dmin, header.dmax, header.dmean = low, high, mean
            header.rms = np.sqrt(max(total_sq / count - mean * mean, 0.0))
            out.seek(0)
            out.write(header.tobytes())
    return n


def _stack_header(n: int, side: tuple[int, int], voxel_size: float) -> np.ndarray:
    """The 1024-byte header mrcfile writes for a float32 stack of ``n`` images of ``side`` (ny, nx)."""
    with tempfile.TemporaryDirectory() as folder:
        with mrcfile.new(Path(folder) / "header.mrcs") as mrc:
            mrc.set_data(np.zeros((1,) + tuple(side), dtype=np.float32))
            mrc.set_image_stack()  # ispg 0, mz 1
            mrc.voxel_size = float(voxel_size)
            mrc.header.origin = (0.0, 0.0, 0.0)
            mrc.header.nxstart = mrc.header.nystart = mrc.header.nzstart = 0
            header = mrc.header.copy()
    header.nz = n
    return header


@dataclass(frozen=True)
class _StackLayout:
    """Where a stack's images lie in its file."""

    shape: tuple[int, int, int]   # (n, ny, nx)
    dtype: np.dtype               # on disk, with its byte order
    offset: int                   # bytes before the first image: header and extended header
    voxel_size: float | None      # Å


def _stack_layout(path: Path) -> _StackLayout:
    """Parse a stack's header (with ``mrcfile``) and check the file holds the images it describes."""
    if not path.is_file():
        raise InputError(path, "no such file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # permissive reading warns of what it forgives
        try:
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as mrc:
                header = mrc.header.copy()
                voxel_size = _voxel_size(mrc)
        except (ValueError, OSError) as err:
            raise InputError(path, f"not a readable MRC file ({err})") from None
    if int(header.mode) in (3, 4):
        raise InputError(path, "holds complex data, not real-valued images")
    try:
        dtype = mrcfile.utils.data_dtype_from_header(header)
    except ValueError as err:
        raise InputError(path, f"not a readable MRC file ({err})") from None
    nx, ny, nz, mz, extended = (int(header.nx), int(header.ny), int(header.nz), int(header.mz),
                                int(header.nsymbt))
    if min(nx, ny, nz) < 1 or extended < 0:
        raise InputError(path, f"not a readable MRC file (header describes {nx}x{ny}x{nz} voxels after "
                               f"{extended} bytes of extended header)")
    if mrcfile.utils.spacegroup_is_volume_stack(header.ispg):
        shape = (nz // mz, mz, ny, nx) if mz > 0 else (nz, ny, nx)
        raise InputError(path, f"holds data of shape {shape}, not a stack of 2D images")
    offset = _HEADER_BYTES + extended
    reason = _truncation(path, offset + nx * ny * nz * dtype.itemsize)
    if reason:
        raise InputError(path, f"not a readable MRC file ({reason})")
    is_image_stack = int(header.ispg) == mrcfile.constants.IMAGE_STACK_SPACEGROUP
    if nz == ny == nx > 1 and not is_image_stack and path.suffix.lower() != ".mrcs":
        raise InputError(path, f"holds a 3D volume ({nz}x{nz}x{nz}), not a stack of 2D images")
    if ny != nx:
        raise InputError(path, f"images are {nx}x{ny} pixels, not square")
    return _StackLayout((nz, ny, nx), dtype, offset, voxel_size)


class ImageStack:
    """A stack of square 2D images on disk, read a few at a time.

    ``shape`` is ``(n, ny, nx)`` with ``ny == nx``; ``voxel_size`` is the header
    pixel size in Å (``None`` when 0).  A 2D MRC file is a stack of one image.
    MRC modes 0, 1, 2, 6 and 12 (int8, int16, float32, uint16, float16) are
    read, in either byte order, as float32.

    Only the images asked for are read from disk, with positioned reads (one
    per run of consecutive indices) into the returned array: the process's
    resident memory does not grow with the stack, however much of it is read
    (see the module notes).  :meth:`read` may be called from several threads;
    the reads of one stack take turns.  Image numbers in error messages are
    1-based, as in RELION's ``n@stack.mrcs``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = None
        self._lock = threading.Lock()
        layout = _stack_layout(self.path)
        self.shape: tuple[int, int, int] = layout.shape
        self.voxel_size: float | None = layout.voxel_size
        self._dtype = layout.dtype
        self._offset = layout.offset
        self._image_bytes = layout.shape[1] * layout.shape[2] * layout.dtype.itemsize
        try:
            self._file = open(self.path, "rb", buffering=0)
        except OSError as err:
            raise InputError(self.path, f"cannot be opened ({err.strerror})") from None
        if hasattr(os, "posix_fadvise"):  # minibatches jump about: read-ahead would fetch unused pages
            os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_RANDOM)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, indices) -> np.ndarray:
        """Read images by 0-based index: ``(k,)`` ints -> float32 ``(k, ny, nx)``.

        Indices may come in any order and repeat; each image is read once.
        """
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        outside = (index < 0) | (index >= len(self))
        if outside.any():
            first = int(index[outside][0])
            raise InputError(self.path, f"image {first + 1} requested but the stack holds {len(self)}")
        wanted, inverse = np.unique(index, return_inverse=True)
        images = np.empty((len(wanted),) + self.shape[1:], dtype=np.float32)
        run_starts = np.flatnonzero(np.diff(wanted, prepend=-2) != 1)  # runs of consecutive images
        run_ends = np.append(run_starts[1:], len(wanted))
        per_read = max(1, _READ_BYTES // self._image_bytes)
        with self._lock:
            if self._file is None:
                raise ValueError(f"read from closed {self!r}")
            for start, end in zip(run_starts.tolist(), run_ends.tolist()):
                for first in range(start, end, per_read):
                    last = min(end, first + per_read)
                    self._read_run(int(wanted[first]), images[first:last])
        if len(wanted) != len(index) or not np.array_equal(wanted, index):
            images = images[inverse.reshape(-1)]
        if self._dtype.kind == "f":
            finite = np.isfinite(images).all(axis=(1, 2))
            if not finite.all():
                bad = int(index[~finite][0])
                raise InputError(self.path, f"image {bad + 1} has NaN or Inf pixels")
        return images

    def _read_run(self, first: int, out: np.ndarray) -> None:
        """Fill float32 ``out`` ``(k, ny, nx)`` with images ``first .. first + k - 1``."""
        native = self._dtype == np.dtype(np.float32)
        raw = out if native else np.empty(out.shape, dtype=self._dtype)
        view = memoryview(raw).cast("B")
        offset = self._offset + first * self._image_bytes
        while view:
            got = _pread_into(self._file, view, offset)
            if got == 0:  # the file shrank after it was opened
                image = (offset - self._offset) // self._image_bytes + 1
                raise InputError(self.path, f"ends within image {image}; truncated while being read?")
            view, offset = view[got:], offset + got
        if not native:
            out[...] = raw  # to float32, swapping bytes where the file's order is not ours

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> ImageStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __repr__(self) -> str:
        return f"ImageStack({str(self.path)!r}, shape={self.shape}, voxel_size={self.voxel_size})"


def _pread_into(file, view: memoryview, offset: int) -> int:
    """Read up to ``len(view)`` bytes at ``offset`` of the open ``file`` into ``view``; the count read.

    A positioned read leaves the file position alone, so threads can share the
    file; it releases the GIL while the disk works.
    """
    if hasattr(os, "preadv"):
        return os.preadv(file.fileno(), [view], offset)
    file.seek(offset)  # no positioned reads here (Windows): the caller holds the stack's lock
    return file.readinto(view)
