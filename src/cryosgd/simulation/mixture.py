"""A simulated mixture of molecules (for multi-class reconstruction): each source simulated as
``cryosgd simulate`` does, then the particles shuffled into one set with the true class of each."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..forward.ctf import CTFParams
from ..forward.simulate import draw_ctfs, simulate_particles
from ..io import InputError, ParticleSet, load_particles, write_map, write_particles_star, write_stack
from .dataset import load_source_volume

__all__ = ["MixturePaths", "simulate_mixture"]


@dataclass
class MixturePaths:
    particles: Path     # particles.star (CTF, no poses)
    truth: Path         # truth.star (true poses and rlnClassNumber)
    stack: Path         # particles.mrcs
    volumes: list       # truth_class01.mrc, ... (each on its images' scale)


def simulate_mixture(sources, outdir, *, n_each, box: int = 64, pixel_size: float = 3.0, snr: float = 0.05,
                     ctf_from=None, shift_sigma: float = 0.0, seed: int = 0) -> tuple[MixturePaths, np.ndarray]:
    """Simulate ``n_each`` particles of each source (map or atomic model; an int or one per source), each
    at ``snr`` (whole box, its own signal), and write them shuffled into one set.

    Returns the paths and the true classes ``(n,)`` (1-based, in the order of ``sources``).
    """
    sources = list(sources)
    counts = [int(n_each)] * len(sources) if np.isscalar(n_each) else [int(c) for c in n_each]
    if len(counts) != len(sources) or min(counts) < 1:
        raise InputError(sources[0], "needs one positive particle count per source")
    table = load_particles(ctf_from, require_images=False).ctf if ctf_from is not None else None
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    images, rotations, shifts, ctfs, labels, volumes = [], [], [], [], [], []
    for j, (source, n) in enumerate(zip(sources, counts)):
        rng = np.random.default_rng([seed, j])
        volume = load_source_volume(source, box, pixel_size)
        sim = simulate_particles(volume, n, pixel_size=pixel_size, snr=snr, ctf=draw_ctfs(n, rng, table=table),
                                 shift_sigma=shift_sigma, rng=rng)
        images.append(sim.images)
        rotations.append(sim.rotations)
        shifts.append(sim.shifts)
        ctfs.append(sim.ctf)
        labels.append(np.full(n, j + 1))
        path = out / f"truth_class{j + 1:02d}.mrc"
        write_map(path, sim.volume.astype(np.float32), pixel_size)
        volumes.append(path)
    order = np.random.default_rng([seed, 99]).permutation(sum(counts))
    labels = np.concatenate(labels)[order]
    ctf = CTFParams(*(np.concatenate([getattr(c, f.name) for c in ctfs]) for f in fields(CTFParams)))[order]
    paths = MixturePaths(out / "particles.star", out / "truth.star", out / "particles.mrcs", volumes)
    write_stack(paths.stack, np.concatenate(images)[order].astype(np.float32), pixel_size)
    n = len(order)
    particles = ParticleSet(paths.particles, [paths.stack] * n, np.arange(n), pixel_size, box, ctf)
    write_particles_star(paths.particles, particles)
    write_particles_star(paths.truth, particles.with_poses(np.concatenate(rotations)[order],
                                                           np.concatenate(shifts)[order]),
                         extra_columns={"rlnClassNumber": labels})
    return paths, labels

