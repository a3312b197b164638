"""A particle set: image locations, pixel size, CTF and (optional) poses.

Whatever the metadata format, a :class:`ParticleSet` holds the same things
in the project's conventions:

* ``image_files[i]`` and ``image_index[i]`` (0-based) locate image ``i``;
* ``pixel_size`` in Å, one value for the whole set;
* ``ctf``: per-image :class:`~cryosgd.forward.ctf.CTFParams` (Å, kV, mm, radians);
* ``rotations``: ``(n, 3, 3)`` matrices R mapping image to volume coordinates
  (see :mod:`cryosgd.forward.rotations`);
* ``shifts``: ``(n, 2)`` pixels (x, y), RELION's origin divided by the pixel
  size (see :mod:`cryosgd.forward.shift`).

The readers live in :mod:`.star` (RELION) and :mod:`.cryosparc`;
:func:`load_particles` picks one by the file suffix.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..forward.ctf import CTFParams
from .errors import InputError
from .mrc import ImageStack

__all__ = ["ParticleSet", "single_pixel_size", "single_box", "PIXEL_SIZE_TOLERANCE"]

PIXEL_SIZE_TOLERANCE = 0.01  # relative; larger disagreements are reported
_OPEN_STACKS = 128  # stacks kept open by read_images; an open stack holds one file descriptor


@dataclass(eq=False)
class ParticleSet:
    """n particle images and their metadata.

    source:      the metadata file (STAR or .cs).
    image_files: ``n`` absolute stack paths, one per particle; empty for a
                 metadata-only table that names no images.
    image_index: ``(n,)`` int64, 0-based image index within its stack.
    pixel_size:  Å per pixel.
    box:         image side in pixels; ``None`` while unknown (metadata only).
    ctf:         ``(n,)`` CTF parameters.
    rotations:   ``(n, 3, 3)`` float64 or ``None``.
    shifts:      ``(n, 2)`` float64 pixels or ``None``.
    """

    source: Path
    image_files: list[Path]
    image_index: np.ndarray
    pixel_size: float
    box: int | None
    ctf: CTFParams
    rotations: np.ndarray | None = None
    shifts: np.ndarray | None = None
    _stacks: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _stacks_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        n = len(self.ctf)
        self.source = Path(self.source)
        self.image_files = [Path(p) for p in self.image_files]
        self.image_index = np.asarray(self.image_index, dtype=np.int64).reshape(-1)
        if self.image_files and (len(self.image_files) != n or len(self.image_index) != n):
            raise ValueError(f"{len(self.image_files)} image files and {len(self.image_index)} "
                             f"indices for {n} particles")
        if self.rotations is not None:
            self.rotations = np.asarray(self.rotations, dtype=np.float64)
            if self.rotations.shape != (n, 3, 3):
                raise ValueError(f"rotations must be ({n}, 3, 3), not {self.rotations.shape}")
        if self.shifts is not None:
            self.shifts = np.asarray(self.shifts, dtype=np.float64)
            if self.shifts.shape != (n, 2):
                raise ValueError(f"shifts must be ({n}, 2), not {self.shifts.shape}")
        names = [os.fspath(p) for p in self.image_files]
        self._file_names, self._file_of = np.unique(np.array(names, dtype=str), return_inverse=True)
        self._file_of = self._file_of.reshape(-1)

    def __len__(self) -> int:
        return len(self.ctf)

    @property
    def has_images(self) -> bool:
        return bool(self.image_files)

    def subset(self, indices) -> ParticleSet:
        """The particles at ``indices`` (ints or a boolean mask), in that order."""
        index = np.arange(len(self))[np.asarray(indices)].reshape(-1)
        return dataclasses.replace(
            self,
            image_files=[self.image_files[i] for i in index] if self.image_files else [],
            image_index=self.image_index[index] if self.image_files else self.image_index,
            ctf=self.ctf[index],
            rotations=None if self.rotations is None else self.rotations[index],
            shifts=None if self.shifts is None else self.shifts[index],
        )

    def with_poses(self, rotations, shifts) -> ParticleSet:
        """A copy with ``(n, 3, 3)`` rotations and ``(n, 2)`` shifts (pixels)."""
        return dataclasses.replace(self, rotations=rotations, shifts=shifts)

    def _stack(self, file_id: int) -> ImageStack:
        """The open stack of ``_file_names[file_id]``, from a small LRU cache."""
        stack = self._stacks.pop(file_id, None)
        if stack is None:
            stack = _open_stack(Path(self._file_names[file_id]), self.source)
        self._stacks[file_id] = stack
        while len(self._stacks) > _OPEN_STACKS:
            self._stacks.popitem(last=False)[1].close()
        return stack

    def _require_images(self) -> None:
        if not self.image_files:
            raise InputError(self.source, "lists no particle images (rlnImageName or blob/path)")

    def read_images(self, indices) -> np.ndarray:
        """Read particle images: ``(k,)`` particle indices -> float32 ``(k, box, box)``.

        Only these images are read (see :class:`~cryosgd.io.mrc.ImageStack`), so
        memory grows with ``k``, not with the set.  Safe to call from several
        threads (e.g. a :class:`~cryosgd.io.prefetch.Prefetcher`); calls take turns.
        """
        self._require_images()
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"particle indices must lie in [0, {len(self)})")
        with self._stacks_lock:  # one reader at a time: the cache may close a stack another would read
            return self._read_images(index)

    def _read_images(self, index: np.ndarray) -> np.ndarray:
        files = self._file_of[index]
        box, out = self.box, None
        for file_id in np.unique(files):
            stack = self._stack(int(file_id))
            side = stack.shape[1]
            if box is None:
                box = side
            elif side != box:
                raise InputError(self.source, f"{stack.path} holds {side}x{side} images but the "
                                              f"metadata says {box}x{box}")
            if out is None:
                out = np.empty((len(index), box, box), dtype=np.float32)
            chosen = files == file_id
            out[chosen] = stack.read(self.image_index[index[chosen]])
        if out is None:
            out = np.empty((0, box or 0, box or 0), dtype=np.float32)
        return out

    def validate_images(self) -> None:
        """Open every referenced stack once and check it against the metadata.

        Checks that each stack exists and holds square images of side ``box``
        (filling ``box`` in when the metadata did not give it) and at least as
        many images as the metadata refers to.  The pixel size stays the
        metadata's: a header that says 0 is ignored, one that disagrees by more
        than 1% draws a warning.
        """
        self._require_images()
        kind = "STAR file" if self.source.suffix.lower() == ".star" else "metadata"
        needed = np.zeros(len(self._file_names), dtype=np.int64)
        np.maximum.at(needed, self._file_of, self.image_index + 1)  # images each stack must hold
        warned = set()
        for file_id, name in enumerate(self._file_names):
            with _open_stack(Path(name), self.source) as stack:
                side = stack.shape[1]
                if self.box is None:
                    self.box = side
                elif side != self.box:
                    raise InputError(self.source, f"{name} holds {side}x{side} images but the "
                                                  f"metadata says {self.box}x{self.box}")
                if needed[file_id] > len(stack):
                    raise InputError(self.source, f"{kind} lists image {needed[file_id]} of {name} but "
                                                  f"that stack holds {len(stack)}")
                header = stack.voxel_size
            if (header is not None and abs(header / self.pixel_size - 1) > PIXEL_SIZE_TOLERANCE
                    and round(header, 4) not in warned):
                warned.add(round(header, 4))
                warnings.warn(f"{name}: MRC header pixel size {header:g} Å disagrees with "
                              f"{self.source.name} ({self.pixel_size:g} Å); using {self.pixel_size:g} Å",
                              stacklevel=2)

    def close(self) -> None:
        """Close the stacks kept open by :meth:`read_images`."""
        with self._stacks_lock:
            while self._stacks:
                self._stacks.popitem()[1].close()

    def __getstate__(self) -> dict:
        # open stacks and the lock belong to this process; a copy opens its own
        state = self.__dict__.copy()
        state["_stacks"] = OrderedDict()
        del state["_stacks_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._stacks_lock = threading.Lock()


def single_pixel_size(source, pixel_sizes, groups: str = "optics groups") -> float:
    """The set's one pixel size (Å) from ``(n,)`` per-particle values.

    Values within 1% of each other are merged to the most common one, with a
    warning; a wider spread raises :class:`InputError` (split the set), and so
    does a pixel size that is not a positive number.
    """
    sizes = np.asarray(pixel_sizes, dtype=np.float64)
    bad = ~(np.isfinite(sizes) & (sizes > 0))
    if bad.any():
        raise InputError(source, f"pixel size {sizes[bad][0]:g} Å (particle {int(np.argmax(bad)) + 1}) is not a "
                                 "positive number")
    values, group, counts = np.unique(np.round(sizes, 6), return_inverse=True, return_counts=True)
    if len(values) == 1:
        return float(sizes.mean())
    listing = ", ".join(f"{v:g}" for v in values)
    if values.max() / values.min() - 1 > PIXEL_SIZE_TOLERANCE:
        raise InputError(source, f"{groups} have different pixel sizes ({listing} Å); this set must be split")
    chosen = float(sizes[group.reshape(-1) == np.argmax(counts)].mean())
    warnings.warn(f"{source}: {groups} have pixel sizes {listing} Å, within 1%; using the most "
                  f"common, {chosen:g} Å", stacklevel=3)
    return chosen


def single_box(source, boxes, groups: str = "optics groups") -> int:
    """The set's one image side (pixels) from ``(n,)`` per-particle values."""
    values = np.unique(np.asarray(boxes, dtype=np.int64))
    if len(values) > 1:
        listing = ", ".join(str(v) for v in values)
        raise InputError(source, f"{groups} have different image sizes ({listing} pixels); "
                                 f"this set must be split")
    return int(values[0])


def _open_stack(path: Path, source: Path) -> ImageStack:
    if not path.is_file():
        raise InputError(path, f"no such file (listed in {source})")
    return ImageStack(path)
