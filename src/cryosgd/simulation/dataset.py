"""Simulated datasets written as RELION files: what ``cryosgd simulate`` does, and the one writer of them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..forward.ctf import CTFParams
from ..forward.density import MODEL_SUFFIXES, density_from_model, resample_map
from ..forward.simulate import SimulatedParticles, draw_ctfs, simulate_particles
from ..io import InputError, ParticleSet, load_particles, read_map, write_map, write_particles_star, write_stack

__all__ = ["load_source_volume", "simulate_dataset", "write_dataset", "SimulationPaths"]


def load_source_volume(source: str | Path, box: int, pixel_size: float) -> np.ndarray:
    """A map (MRC) or atomic model (PDB/mmCIF) as a ``(box,)*3`` density at ``pixel_size`` Å."""
    source = Path(source)
    if not source.is_file():
        raise InputError(source, "no such file")
    name = source.name.lower()
    if name.endswith(MODEL_SUFFIXES):
        try:
            return density_from_model(source, box, pixel_size)
        except (RuntimeError, ValueError) as err:
            raise InputError(source, f"not a readable atomic model ({err})") from None
    volume, voxel = read_map(source)
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise InputError(source, f"is not a 3D map (shape {volume.shape})")
    if not np.all(np.isfinite(volume)):
        raise InputError(source, "the map has NaN or Inf voxels")
    return resample_map(volume, voxel, box, pixel_size)


@dataclass
class SimulationPaths:
    particles: Path   # particles.star (CTF, no poses)
    truth: Path       # truth.star (with the true poses)
    stack: Path       # particles.mrcs
    volume: Path      # truth.mrc


def simulate_dataset(source, outdir, *, n: int = 1000, box: int = 64, pixel_size: float = 3.0,
                     snr: float = 0.05, ctf_from: str | Path | None = None, shift_sigma: float = 0.0,
                     seed: int = 0, progress=None) -> tuple[SimulationPaths, SimulatedParticles]:
    """Simulate ``n`` particles of ``source`` and write them to ``outdir`` (see docs/simulation.md)."""
    if n < 1 or box < 8 or pixel_size <= 0 or snr <= 0:
        raise InputError(source, "needs n >= 1, box >= 8, a positive pixel size and a positive SNR")
    rng = np.random.default_rng(seed)
    volume = load_source_volume(source, box, pixel_size)
    if float(np.abs(volume).max()) == 0:
        raise InputError(source, "the density is zero inside the box")
    table: CTFParams | None = None
    if ctf_from is not None:
        table = load_particles(ctf_from, require_images=False).ctf
    ctf = draw_ctfs(n, rng, table=table)
    sim = simulate_particles(volume, n, pixel_size=pixel_size, snr=snr, ctf=ctf, shift_sigma=shift_sigma,
                             rng=rng, progress=progress)
    paths = write_dataset(outdir, sim.images, sim.volume, pixel_size, sim.ctf, sim.rotations, sim.shifts)
    return paths, sim


def write_dataset(outdir, images: np.ndarray, volume: np.ndarray, pixel_size: float, ctf: CTFParams,
                  rotations: np.ndarray, shifts: np.ndarray) -> SimulationPaths:
    """Write a simulated dataset: ``particles.mrcs``, ``particles.star`` (CTF, no poses), ``truth.star``
    (with the true poses) and ``truth.mrc`` (the volume on the images' scale).

    images ``(n, N, N)`` normalised (noise std 1); volume ``(N, N, N)``; pixel_size in Å; rotations
    ``(n, 3, 3)``; shifts ``(n, 2)`` pixels (RELION's origin convention, docs/conventions.md).
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    n, box = images.shape[0], images.shape[-1]
    paths = SimulationPaths(out / "particles.star", out / "truth.star", out / "particles.mrcs", out / "truth.mrc")
    write_stack(paths.stack, images.astype(np.float32), pixel_size)
    write_map(paths.volume, volume.astype(np.float32), pixel_size)
    particles = ParticleSet(paths.particles, [paths.stack] * n, np.arange(n), pixel_size, box, ctf)
    write_particles_star(paths.particles, particles)
    write_particles_star(paths.truth, particles.with_poses(rotations, shifts))
    return paths
