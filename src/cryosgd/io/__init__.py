"""Reading and writing maps, image stacks and particle metadata.

All conversion between file conventions (RELION 3.0/3.1 STAR, cryoSPARC
``.cs``, MRC headers) and the project's own lives here; see
:mod:`.particles` for the conventions of a :class:`ParticleSet`.
"""
from .cryosparc import read_cs
from .errors import InputError
from .load import load_particles
from .mrc import ImageStack, read_map, write_map, write_stack
from .particles import ParticleSet
from .star import read_particles_star, write_particles_star

__all__ = [
    "InputError",
    "read_map", "write_map", "write_stack", "ImageStack",
    "ParticleSet", "load_particles",
    "read_particles_star", "write_particles_star",
    "read_cs",
]
