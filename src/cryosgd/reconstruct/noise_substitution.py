"""High-resolution noise substitution (Chen et al. 2013, Ultramicroscopy 135:24): what two half maps
share that their images did not give them.

The gold-standard halves (:mod:`.halves`) share a low-resolution start.  With no signal in their
images they still agree beyond it: both follow the same deterministic flow from that start (the
posterior-weighted sums of noise images reproduce the current map, "Einstein from noise", and
positivity turns its low frequencies into common fine detail), so their FSC can stay above 0.143 out
to the band limit on pure noise.  The test: reconstruct the halves again from the same start on
copies of their images whose Fourier phases beyond the start's band are replaced by random ones
(the amplitudes, the CTF's envelope and the low frequencies kept), and correct the FSC shell by shell,

    FSC_true = (FSC_t - FSC_n) / (1 - FSC_n)      beyond the randomised band (FSC_t below it),

FSC_t between the half maps, FSC_n between the maps of the phase-randomised halves.  With signal,
FSC_n measures only the shared flow; without, FSC_true falls to about zero beyond the start.  Shells
where FSC_n exceeds :data:`MAX_NULL` are not read (set to 0; see :func:`corrected_fsc`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..fourier import fft2c, ifft2c, radius_grid
from ..io import ParticleSet

__all__ = ["randomise_phases", "PhaseRandomised", "corrected_fsc", "MAX_NULL"]


def randomise_phases(images: np.ndarray, band_px: float, ids: np.ndarray, seed: int) -> np.ndarray:
    """``(k, N, N)`` real images with the phases of every frequency beyond ``band_px`` (Fourier pixels)
    replaced by those of white noise drawn from ``(seed, ids[i])``: the same image gets the same
    phases on every read.  Amplitudes are kept, so the images' power spectrum is unchanged."""
    images = np.asarray(images)
    n = images.shape[-1]
    noise = np.stack([np.random.default_rng([seed, int(i)]).standard_normal((n, n)) for i in np.asarray(ids)])
    spec = fft2c(torch.as_tensor(images, dtype=torch.float64))
    phase = fft2c(torch.as_tensor(noise))
    phase = phase / phase.abs().clamp_min(1e-300)        # unit phasors, Hermitian like the noise
    beyond = radius_grid(n, 2) > band_px
    out = torch.where(beyond, spec.abs() * phase, spec)
    return ifft2c(out).real.numpy().astype(images.dtype, copy=False)


@dataclasses.dataclass
class PhaseRandomised(ParticleSet):
    """A :class:`~cryosgd.io.ParticleSet` whose images are read with :func:`randomise_phases` beyond
    ``band_px``.  An image's phases depend on ``seed`` and its position in the set they were made for
    (``ids``, kept by :meth:`subset`) only: subsets, resumed runs and a set moved to another folder
    read the same images."""

    band_px: float = 0.0
    seed: int = 0
    ids: np.ndarray | None = None   # (n,) each particle's index in the set of :meth:`of`

    @classmethod
    def of(cls, particles: ParticleSet, band_px: float, seed: int) -> PhaseRandomised:
        fields = {f.name: getattr(particles, f.name) for f in dataclasses.fields(ParticleSet) if f.init}
        return cls(**fields, band_px=float(band_px), seed=int(seed), ids=np.arange(len(particles)))

    def subset(self, indices) -> PhaseRandomised:
        index = np.arange(len(self))[np.asarray(indices)].reshape(-1)
        return dataclasses.replace(super().subset(index), ids=self.ids[index])

    def read_images(self, indices) -> np.ndarray:
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        images = super().read_images(index)
        return randomise_phases(images, self.band_px, self.ids[index], self.seed)


MAX_NULL = 0.8   # beyond this FSC_n a shell is not read (see corrected_fsc)


def corrected_fsc(fsc_t: np.ndarray, fsc_n: np.ndarray, band_px: float, max_null: float = MAX_NULL) -> np.ndarray:
    """Shells ``0 .. N//2``: ``(FSC_t - FSC_n) / (1 - FSC_n)`` beyond ``band_px``, FSC_t up to it; at
    least -1 (where FSC_n is near 1 the ratio can fall below, a correlation cannot).

    Where the phase-randomised halves agree above ``max_null`` the shell is set to 0, not read: the
    images' own fine detail cannot show there beyond what the start and positivity already give both,
    and the ratio divides the difference of two noisy correlations by ``1 - FSC_n``, amplifying it more
    than 5 times.  On pure noise such shells held FSC 0.94-0.97 against 0.89-0.95 randomised, which
    the ratio turned into 0.6 and a claim of 28.5 Å (BENCHMARKS.md, "Noise substitution")."""
    fsc_t, fsc_n = np.asarray(fsc_t, dtype=np.float64), np.asarray(fsc_n, dtype=np.float64)
    shells = np.arange(len(fsc_t))
    true = np.maximum((fsc_t - fsc_n) / np.maximum(1.0 - fsc_n, 1e-6), -1.0)
    true = np.where(fsc_n > max_null, 0.0, true)
    return np.where(shells > band_px, true, fsc_t)
