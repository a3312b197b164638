"""Simulated particle images with known poses, CTFs and noise.

SNR is defined over the whole box: the variance of the noise-free,
CTF-modulated, shifted images (pooled over the dataset) divided by the noise
variance.  Images are returned *normalised*: divided by the noise std, so
the noise has std 1 per pixel, and the returned ``volume`` is the source
divided by the same factor, so that projecting it reproduces the images'
signal exactly (the ground truth on the images' scale).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .ctf import CTFParams
from .project import project
from .rotations import random_rotations

__all__ = ["SimulatedParticles", "simulate_particles", "draw_ctfs", "truncated_normal_shifts"]


@dataclass
class SimulatedParticles:
    images: np.ndarray      # (n, N, N) float32, noise std 1
    rotations: np.ndarray   # (n, 3, 3)
    shifts: np.ndarray      # (n, 2) origin offsets in pixels
    ctf: CTFParams
    volume: np.ndarray      # (N, N, N) ground truth on the images' scale
    noise_std: float        # the noise std before normalisation (source units)
    pixel_size: float


def truncated_normal_shifts(n: int, sigma: float, rng: np.random.Generator, *, limit: float = 3.0) -> np.ndarray:
    """``(n, 2)`` shifts, each axis normal(0, ``sigma``) truncated at ``limit * sigma`` pixels."""
    if sigma <= 0:
        return np.zeros((n, 2))
    return stats.truncnorm.rvs(-limit, limit, scale=sigma, size=(n, 2), random_state=rng)


def draw_ctfs(n: int, rng: np.random.Generator, *, table: CTFParams | None = None,
              defocus_range=(10000.0, 30000.0), astigmatism: float = 500.0, voltage: float = 300.0,
              cs: float = 2.7, amplitude_contrast: float = 0.1) -> CTFParams:
    """``n`` CTFs: rows drawn with replacement from a real ``table``, or from the given ranges (Å, kV, mm)."""
    if table is not None:
        return table[rng.integers(0, len(table), n)]
    mean = rng.uniform(*defocus_range, n)
    astig = rng.uniform(0, astigmatism, n)
    return CTFParams.make(mean + astig / 2, mean - astig / 2, rng.uniform(0, np.pi, n), voltage, cs,
                          amplitude_contrast)


def simulate_particles(volume: np.ndarray, n: int, *, pixel_size: float, snr: float, ctf: CTFParams,
                       shift_sigma: float = 0.0, rng: np.random.Generator, kernel: str = "trilinear",
                       batch_size: int = 256, progress=None) -> SimulatedParticles:
    """Project ``volume`` at ``n`` uniform random orientations, apply CTF and shifts, add white noise."""
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float64))
    rotations = random_rotations(n, rng)
    shifts = truncated_normal_shifts(n, shift_sigma, rng)
    clean = np.empty((n,) + vol.shape[1:], dtype=np.float32)
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        clean[sl] = project(vol, rotations[sl], shifts=shifts[sl], ctf=ctf[sl], pixel_size=pixel_size,
                            kernel=kernel).numpy()
        if progress is not None:
            progress(len(clean[sl]))
    signal_var = float(clean.astype(np.float64).var())
    noise_std = float(np.sqrt(signal_var / snr))
    noise = rng.standard_normal(clean.shape).astype(np.float32)
    images = clean / noise_std + noise
    return SimulatedParticles(images.astype(np.float32), rotations, shifts, ctf,
                              (np.asarray(volume, dtype=np.float64) / noise_std).astype(np.float32),
                              noise_std, pixel_size)
