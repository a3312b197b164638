"""One entry point for particle files: the reader follows the file suffix."""
from __future__ import annotations

import os
from pathlib import Path

from .cryosparc import read_cs
from .errors import InputError
from .particles import ParticleSet
from .star import read_particles_star

__all__ = ["load_particles"]

def load_particles(path: str | os.PathLike, *, require_images: bool = True) -> ParticleSet:
    """Read a RELION ``.star`` or cryoSPARC ``.cs`` particle file.

    With ``require_images`` the images must be listed and every stack is
    checked (:meth:`ParticleSet.validate_images`); without it a metadata-only
    table (CTF parameters, no images) is accepted.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix == ".star":
        particles = read_particles_star(path, require_images=require_images)
    elif suffix == ".cs":
        particles = read_cs(path, require_images=require_images)
    else:
        raise InputError(path, f"unknown particle file type '{path.suffix}' (expected .star or .cs)")
    if require_images:
        particles.validate_images()
    return particles
