"""Particle images held for one run: the training and test split, the noise scale, the contrast sign,
and the random start scaled to the images.

Each function takes the values it needs (seed, sizes, the diameter in Å), not a whole
:class:`~cryosgd.reconstruct.settings.Settings`, so baselines and benchmarks share them.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..forward.density import random_spheres
from ..inference.noise import estimate_noise_std
from ..io import InputError, ParticleSet

__all__ = ["Dataset", "load_dataset", "initial_density", "particle_diameter_px", "DIAMETER_FRACTION"]

DIAMETER_FRACTION = 0.8  # the particle diameter, as a fraction of the box, when none is given
NOISE_SAMPLE = 1000      # images read to estimate the noise and the contrast sign


def particle_diameter_px(box: int, pixel_size_A: float, diameter_A: float | None = None) -> float:
    """The particle's diameter in pixels: ``diameter_A`` over the pixel size, or 0.8 of the box."""
    return diameter_A / pixel_size_A if diameter_A else DIAMETER_FRACTION * box


@dataclass
class Dataset:
    """Particle images held for one run: normalised, split into training and test sets."""

    particles: ParticleSet
    noise_std: float
    train: np.ndarray        # indices into particles
    test: np.ndarray
    contrast: float = 1.0    # -1: the images are inverted as read (dark protein)

    def images(self, index) -> np.ndarray:
        """``(n, N, N)`` images ``index``, divided by the noise std and turned to bright protein."""
        return self.particles.read_images(np.asarray(index)) * (self.contrast / self.noise_std)


def load_dataset(particles: ParticleSet, *, test_size: int, seed: int, diameter_A: float | None = None,
                 noise_std: float | None = None, invert_contrast: str = "auto") -> Dataset:
    """Split ``particles`` (``test_size`` held out, by ``seed``), estimate the noise std from the
    background outside the particle (unless given) and the contrast sign (``invert_contrast``:
    ``yes``, ``no`` or ``auto``, from the images; :mod:`cryosgd.inference.contrast`)."""
    particles.validate_images()
    n = len(particles)
    if n < test_size + 10:
        raise InputError(particles.source, f"only {n} particles; need more than the {test_size} "
                                           "held out for testing")
    order = np.random.default_rng(seed).permutation(n)
    radius_px = 0.5 * particle_diameter_px(particles.box, particles.pixel_size, diameter_A)
    sample = np.sort(order[:min(n, NOISE_SAMPLE)])
    # one read of the sample serves both estimates
    images = particles.read_images(sample) if noise_std is None or invert_contrast == "auto" else None
    noise = noise_std
    if noise is None:
        noise = estimate_noise_std(images, min(radius_px, 0.45 * particles.box))
        if not noise > 0:
            raise InputError(particles.source, "the images' background has zero variance")
    contrast = _contrast_factor(particles, invert_contrast, sample, images, radius_px)
    return Dataset(particles, float(noise), order[test_size:], order[:test_size], contrast)


def _contrast_factor(particles: ParticleSet, invert_contrast: str, sample: np.ndarray, images: np.ndarray | None,
                     radius_px: float) -> float:
    """-1 to invert the images, +1 to keep them; a one-line notice when flipped.  ``images``: those of
    ``sample`` as read (needed only for ``auto``)."""
    from ..inference.contrast import resolve_contrast

    factor, notice = resolve_contrast(invert_contrast, images, particles.ctf[sample], particles.pixel_size,
                                      radius=radius_px)
    if factor < 0 and notice:
        warnings.warn(notice, stacklevel=3)
    return factor


def initial_density(box: int, dataset: Dataset, *, seed: int, diameter_A: float | None = None) -> torch.Tensor:
    """The paper's random spheres (``seed + 1``) within a quarter of the particle diameter of the centre,
    scaled so that its projections carry about the images' signal power."""
    rng = np.random.default_rng(seed + 1)
    diameter_px = particle_diameter_px(box, dataset.particles.pixel_size, diameter_A)
    vol = random_spheres(box, rng, radius=0.25 * diameter_px)
    sample = dataset.images(np.sort(dataset.train[:min(len(dataset.train), 500)]))
    signal_var = max(float(sample.var()) - 1.0, 0.01)
    proj_var = float(vol.sum(0).var())  # one projection: enough for a scale
    return torch.as_tensor(vol * math.sqrt(signal_var / max(proj_var, 1e-12)), dtype=torch.float32)
