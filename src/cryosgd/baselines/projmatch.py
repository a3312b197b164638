"""Iterative projection matching: the classical baseline the paper compares against (Figure 6).

Each iteration

1. matches every image globally against the current map: over a rotation
   quadrature sized for the band limit (as :func:`cryosgd.reconstruct.build_kernel`
   sizes it) times a disc of shifts, it keeps the pose with the largest
   CTF-aware normalised cross-correlation in Fourier space,

       rho_bsr = Re <d_b, phi_s c_b y_r> / ( ||d_b|| ||c_b y_r|| ),

   over the band-limited half plane ``0 < |k| <= r`` (the origin left out: the
   correlation is mean-free);
2. reconstructs the map from those poses with :class:`cryosgd.baselines.backproject.BackProjector`
   (CTF-weighted insertion, Wiener-filtered), then low-passes it to the band
   limit and applies a soft spherical mask.  Since only the band is kept, the
   images are Fourier-cropped to a box that holds it first
   (:func:`reconstruct_band_limited`): the same coefficients, ``(N / n)**2``
   fewer insertions.

The correlations are two matrix products per image batch, as in
:mod:`cryosgd.inference.likelihood`: rows = (image, grid symmetry, shift) pairs
holding ``w c conj(d) phi`` as [Re, -Im], columns = base rotations holding
[Re y, Im y]; the norms ``||c y||^2`` are ``(w c^2) @ |y|^2``.  Only the base
rotations of the :class:`~cryosgd.inference.rotation_set.RotationSet` are
sliced; the eight exact grid symmetries act on the data side.  Images and
rotations are processed in chunks so the score matrix stays within a memory
budget.

The random start is the one :func:`cryosgd.reconstruct.reconstruct` uses for
the same ``seed`` and particle diameter (:func:`cryosgd.reconstruct.initial_density`).  Images are
divided by their noise std (estimated from the background as
``reconstruct`` does), so the map is on the same scale as the SGD map.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..forward.bandvolume import BandTransform
from ..forward.ctf import compute_ctf
from ..forward.shift import phase_shifts
from ..forward.slicing import extract_central_slices
from ..fourier import band_limit_px, fft2c, fft3c, ifft2c, ifft3c, radius_grid, soft_mask
from ..inference.likelihood import half_plane_frequencies
from ..inference.quadrature import choose_quadrature
from ..inference.rotation_set import expand_variants, half_plane_permutations, rotation_set_for_band
from ..io import InputError, ParticleSet
from ..reconstruct import initial_density, load_dataset, particle_diameter_px, target_resolution
from .backproject import BackProjector

__all__ = [
    "ProjMatchResult", "ProjectionMatcher", "projection_matching", "reconstruct_band_limited",
    "fourier_crop_images", "fourier_pad_volume", "lowpass", "rotation_angle",
]


@dataclass
class ProjMatchResult:
    volume: np.ndarray          # (N, N, N) final map (noise-normalised image scale)
    rotations: np.ndarray       # (n, 3, 3) poses of the last matching pass
    shifts: np.ndarray          # (n, 2) origin offsets (pixels)
    log: list                   # dict rows, one per iteration (see projection_matching)
    correlations: np.ndarray    # (n,) best normalised cross-correlation of the last pass
    pixel_size: float           # Å
    band_limit: float           # Fourier pixels
    noise_std: float            # the images' noise std (their scale before normalising)
    wall_time: float            # seconds, everything included


def lowpass(volume: torch.Tensor, band_limit: float, *, width: float = 2.0) -> torch.Tensor:
    """``(N, N, N)`` map low-passed to ``band_limit`` Fourier pixels, raised-cosine edge ``width`` pixels wide.

    The edge runs from ``band_limit`` (gain 1) to ``band_limit + width`` (gain 0).
    """
    n = volume.shape[-1]
    k = radius_grid(n, 3, dtype=volume.dtype, device=volume.device)
    t = ((k - band_limit) / width).clamp(0, 1)
    gain = 0.5 * (1 + torch.cos(math.pi * t))
    return ifft3c(fft3c(volume) * gain).real


def rotation_angle(a, b) -> np.ndarray:
    """Angle in degrees between rotations ``(n, 3, 3)`` a and b: ``arccos((trace(a^T b) - 1) / 2)``."""
    tr = np.einsum("nij,nij->n", np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return np.degrees(np.arccos(np.clip((tr - 1) / 2, -1.0, 1.0)))


_EDGE = 2.0  # Fourier pixels: width of the low-pass edge beyond the band limit


def fourier_crop_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, N, N)`` images -> ``(B, size, size)`` images holding their central ``size x size`` coefficients.

    The unitary transforms keep the coefficients: ``fft2c`` of the result is the crop of ``fft2c(images)``.
    The result is the same images at a pixel size ``N / size`` times larger.
    """
    n = images.shape[-1]
    lo = n // 2 - size // 2
    return ifft2c(fft2c(images)[..., lo:lo + size, lo:lo + size]).real


def fourier_pad_volume(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Inverse of a Fourier crop for volumes: ``(n, n, n)`` -> ``(size,)*3``, the same ``fft3c`` coefficients.

    With :func:`cryosgd.fourier.fft3c`'s normalisation (slices of it are unitary image transforms), a
    map reconstructed from :func:`fourier_crop_images` images comes back on the full grid's scale.
    """
    n = volume.shape[-1]
    lo = size // 2 - n // 2
    spec = torch.zeros((size,) * 3, dtype=torch.complex128)
    spec[lo:lo + n, lo:lo + n, lo:lo + n] = fft3c(volume.to(torch.float64))
    return ifft3c(spec).real


def reconstruct_band_limited(batches: Iterable, box: int, pixel_size: float,
                             band_limit: float | None) -> torch.Tensor:
    """Wiener reconstruction (:class:`~cryosgd.baselines.backproject.BackProjector`) from posed images, within a band.

    batches:    ``(images (B, N, N), rotations (B, 3, 3), shifts (B, 2) pixels or None, ctf)`` tuples,
                images with noise std 1.
    band_limit: Fourier pixels; the images are Fourier-cropped to the smallest box that holds it
                (plus interpolation margin), but at least half the box (the back-projector's
                real-space sphere then stays outside the particle), and the map is padded back to
                ``(box,)*3``.  None: full band.
    """
    size = box if band_limit is None else min(box, max(2 * (math.ceil(band_limit) + 2), box // 2))
    size += (box - size) % 2  # same parity as the box, so both centres are the zero frequency
    scale = size / box
    bp = BackProjector(size, pixel_size / scale, dtype=torch.float32)
    for images, rotations, shifts, ctf in batches:
        imgs = torch.as_tensor(np.asarray(images), dtype=torch.float32)
        if size < box:
            imgs = fourier_crop_images(imgs, size)
        bp.insert(imgs, torch.as_tensor(np.asarray(rotations)),
                  None if shifts is None else torch.as_tensor(np.asarray(shifts) * scale), ctf)
    vol = bp.reconstruct(noise_std=1.0).to(torch.float64)
    return fourier_pad_volume(vol, box) if size < box else vol


class ProjectionMatcher:
    """Global pose search by normalised cross-correlation, for one box, band limit and quadrature.

    box:          image side N (pixels); pixel_size: Å/pixel.
    band_limit:   r (Fourier pixels); the half-plane coefficients ``0 < |k| <= r`` are compared.
    max_shift:    radius of the shift disc (pixels); 0: no shift search.
    rotations:    the quadrature sized for ``band_limit`` as :func:`cryosgd.reconstruct.build_kernel`
                  sizes it (Lebedev directions x in-plane angles, as base rotations x 8 grid symmetries).
    memory_budget: bytes for one score matrix (sets the rotation chunk).
    """

    def __init__(self, box: int, pixel_size: float, band_limit: float, *, max_shift: float = 0.0,
                 oversampling: int = 2, kernel: str = "trilinear", memory_budget: int = 256 << 20):
        self.box, self.pixel_size, self.band_limit = box, pixel_size, band_limit
        self.oversampling, self.kernel, self.memory_budget = oversampling, kernel, memory_budget
        q = choose_quadrature(band_limit, box, max_shift=max_shift)
        self.rotations = rotation_set_for_band(band_limit, q.n_inplane)
        self.shifts = np.array(q.shifts)
        freqs, weights = half_plane_frequencies(band_limit)
        weights[(freqs == 0).all(1)] = 0.0  # the origin left out: a mean-free correlation
        self.freqs = freqs
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        freqs_t = torch.as_tensor(freqs, dtype=torch.float64)
        self.phases = phase_shifts(freqs_t, torch.as_tensor(self.shifts), box).to(torch.complex64)  # (S, P)
        index, conj = half_plane_permutations(freqs)
        self.sym_index, self.sym_conj = torch.as_tensor(index), torch.as_tensor(conj)
        self.band = BandTransform(box, band_limit, oversampling=oversampling, kernel=kernel)
        self._base = torch.as_tensor(self.rotations.base, dtype=torch.float32)
        self._freqs = freqs_t.float()

    @property
    def n_rotations(self) -> int:
        """Rotations searched (base rotations x 8)."""
        return self.rotations.size

    def slices(self, volume: torch.Tensor, *, chunk: int = 4096) -> torch.Tensor:
        """``(Mb, P)`` complex central slices of ``(N, N, N)`` ``volume`` at the base rotations."""
        cube = self.band.forward(torch.as_tensor(np.asarray(volume), dtype=torch.float32))
        return torch.cat([extract_central_slices(cube, self._base[i:i + chunk], self._freqs,
                                                 oversampling=self.oversampling, kernel=self.kernel)
                          for i in range(0, len(self._base), chunk)])

    def match(self, slices: torch.Tensor, images, ctf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best pose of each image against the map's :meth:`slices`.

        images: ``(B, N, N)`` real; ctf: their B CTFs (or None: no CTF).
        Returns ``(B, 3, 3)`` rotations, ``(B, 2)`` origin offsets (pixels) and ``(B,)`` correlations.
        """
        y = slices
        mb, p = y.shape
        ycols = torch.cat([y.real.T, y.imag.T]).contiguous()                   # (2P, Mb)
        ynorm = (y.real**2 + y.imag**2).T.contiguous()                         # (P, Mb)
        spectra = fft2c(torch.as_tensor(np.asarray(images), dtype=torch.float64))
        n = self.box
        data = spectra[:, self.freqs[:, 1].astype(int) + n // 2, self.freqs[:, 0].astype(int) + n // 2]
        data = data.to(torch.complex64)                                        # (B, P)
        if ctf is None:
            c = torch.ones(data.shape)
        else:
            c = compute_ctf(ctf, self._freqs.double() / n, self.pixel_size).float()
        b, s, w = len(data), len(self.shifts), self.weights
        # row (b, v, s) holds w c conj(d) phi_s, moved to where grid symmetry v puts each point
        h = (w * c)[:, None, :] * data.conj()[:, None, :] * self.phases[None]                  # (B, S, P)
        g, c2v = expand_variants(h, w * c**2, self.sym_index, self.sym_conj)                  # (B,8,S,P), (B,8,P)
        cross = torch.cat([g.real, -g.imag], dim=3).reshape(b * 8 * s, 2 * p)
        c2v = c2v.reshape(b * 8, p)
        data_norm = torch.sqrt((w * data.abs() ** 2).sum(1)).clamp(min=1e-30)                  # (B,)

        chunk = max(1, min(mb, self.memory_budget // (4 * b * 8 * s)))
        best_val = torch.full((b,), -math.inf)
        best_idx = torch.zeros((b, 3), dtype=torch.long)                       # variant, shift, base rotation
        for start in range(0, mb, chunk):
            stop = min(start + chunk, mb)
            cols = stop - start
            inv = torch.rsqrt((c2v @ ynorm[:, start:stop]).clamp(min=1e-30))   # (B8, C): 1 / ||c y||
            sc = (cross @ ycols[:, start:stop]).view(b * 8, s, cols).mul_(inv[:, None, :])
            cmax, carg = sc.view(b, -1).max(1)
            better = cmax > best_val
            best_val = torch.where(better, cmax, best_val)
            best_idx[better, 0] = carg[better] // (s * cols)
            best_idx[better, 1] = (carg[better] // cols) % s
            best_idx[better, 2] = carg[better] % cols + start
        bi = best_idx.numpy()
        rotations = self.rotations.rotation(bi[:, 0], bi[:, 2])
        return rotations, self.shifts[bi[:, 1]], (best_val / data_norm).numpy()


def projection_matching(particles: ParticleSet, *, iterations: int = 5, init=None,
                        resolution: float | None = None, max_shift: float = 0.0, seed: int = 0,
                        particle_diameter: float | None = None, lowpass_map: bool = True, mask: bool = True,
                        batch_size: int = 256, memory_budget: int = 256 << 20,
                        progress: Callable | None = None) -> ProjMatchResult:
    """Iterative projection matching from ``init`` (see the module notes).

    init:              ``(N, N, N)`` starting map (any scale: the correlation is scale-free);
                       None: the random spheres :func:`cryosgd.reconstruct.reconstruct` starts from
                       with the same ``seed``.
    resolution:        Å, the matching band limit; None: ``reconstruct``'s default (15 Å, or 4 pixels
                       where Nyquist is coarser).
    max_shift:         pixels, radius of the shift search (0: images taken as centred).
    particle_diameter: Å, for the noise estimate and the mask; None: 0.8 of the box.
    progress:          ``progress(done_iterations, iterations, row)`` after every iteration.

    Log rows: ``iteration``, ``band_limit`` (Fourier pixels), ``resolution`` (Å),
    ``mean_correlation`` (mean over images of the best correlation), ``median_angle_change``
    (degrees, against the previous iteration's poses), ``match_seconds``,
    ``reconstruct_seconds``, ``seconds`` (this iteration) and ``total_seconds``.
    """
    t_start = time.time()
    if iterations < 1:
        raise InputError(particles.source, f"iterations must be >= 1, got {iterations}")
    n = len(particles)
    dataset = load_dataset(particles, test_size=min(100, max(0, n - 10)), seed=seed, diameter_A=particle_diameter)
    box, apix = particles.box, particles.pixel_size
    target = target_resolution(resolution, box, apix)
    band = band_limit_px(target, box, apix)
    if not 1.0 <= band < box / 2:  # the images hold no frequency +N/2
        raise InputError(particles.source, f"resolution {target:g} Å is outside the box's range "
                                           f"({2 * apix:g} Å to {box * apix:g} Å)")
    if init is None:
        volume = initial_density(box, dataset, seed=seed, diameter_A=particle_diameter)
    else:
        volume = torch.as_tensor(np.asarray(init), dtype=torch.float32)
        if volume.shape != (box,) * 3:
            raise InputError(particles.source, f"the initial map is {tuple(volume.shape)}, the images need "
                                               f"{(box,) * 3}")
    radius = 0.5 * particle_diameter_px(box, apix, particle_diameter)
    window = soft_mask(box, radius) if mask else None
    matcher = ProjectionMatcher(box, apix, band, max_shift=max_shift, memory_budget=memory_budget)
    torch.manual_seed(seed)

    rotations = shifts = correlations = None
    log = []
    for it in range(1, iterations + 1):
        t0 = time.time()
        slices = matcher.slices(volume)
        rots, shs, cors = [], [], []
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            r, sh, c = matcher.match(slices, dataset.images(idx), particles.ctf[idx])
            rots.append(r)
            shs.append(sh)
            cors.append(c)
        new_rotations, shifts, correlations = np.concatenate(rots), np.concatenate(shs), np.concatenate(cors)
        change = float("nan") if rotations is None else float(np.median(rotation_angle(rotations, new_rotations)))
        rotations = new_rotations
        t1 = time.time()
        new = reconstruct_band_limited(
            ((dataset.images(idx), rotations[idx], shifts[idx] if max_shift > 0 else None, particles.ctf[idx])
             for idx in np.array_split(np.arange(n), max(1, math.ceil(n / batch_size)))),
            box, apix, band + _EDGE if lowpass_map else None)
        if lowpass_map:
            new = lowpass(new, band, width=_EDGE)
        if window is not None:
            new = new * window
        volume = new.to(torch.float32)
        t2 = time.time()
        row = {"iteration": it, "band_limit": band, "resolution": target,
               "mean_correlation": float(correlations.mean()), "median_angle_change": change,
               "match_seconds": t1 - t0, "reconstruct_seconds": t2 - t1, "seconds": t2 - t0,
               "total_seconds": t2 - t_start}
        log.append(row)
        if progress is not None:
            progress(it, iterations, row)
    return ProjMatchResult(volume.numpy(), rotations, shifts, log, correlations, apix, band,
                           dataset.noise_std, time.time() - t_start)
