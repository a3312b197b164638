"""Direct reconstruction from known poses: CTF-weighted Fourier insertion with Wiener regularisation.

For images ``d_i`` with CTFs ``c_i``, rotations ``R_i`` and origin offsets
``t_i``, on a Fourier grid oversampled ``oversampling`` times::

    V(k) = sum_i P_i^T (c_i S_i^T d_i)  /  ( sum_i P_i^T c_i^2  +  sigma^2 / tau^2(|k|) )

where ``P^T`` inserts a central slice (the adjoint of slicing), ``S^T`` undoes
the origin offset and ``tau^2`` is the signal power per shell, estimated from
a first, lightly regularised pass (a one-step Wiener filter, as
``relion_reconstruct --ctf`` does without a half-map FSC).  Images are taken
to be normalised (noise std ``sigma`` = 1 per pixel) unless ``noise_std`` is
given.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from ..forward.ctf import CTFParams, compute_ctf
from ..forward.interp import grid_correction, interpolation_taps
from ..forward.shift import shift_spectra
from ..forward.slicing import slice_coordinates
from ..fourier import fft2c, frequency_grid_2d, ifft3c, shell_index, soft_mask

__all__ = ["backproject_particles", "BackProjector", "backproject"]


class BackProjector:
    """Accumulates CTF-weighted insertions; call :meth:`reconstruct` for the map.

    box: image side N (pixels); pixel_size: Å per pixel.
    """

    def __init__(self, box: int, pixel_size: float, *, oversampling: int = 2, kernel: str = "trilinear",
                 dtype=torch.float64, device=None):
        self.box, self.pixel_size = box, pixel_size
        self.oversampling, self.kernel = oversampling, kernel
        self.size = oversampling * box
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.data = torch.zeros(self.size**3, dtype=cdtype, device=device)
        self.weight = torch.zeros(self.size**3, dtype=dtype, device=device)
        self.freqs = frequency_grid_2d(box, dtype=dtype, device=device).reshape(-1, 2)
        self.count = 0

    def insert(self, images: torch.Tensor, rotations: torch.Tensor, shifts: torch.Tensor | None,
               ctf: CTFParams | None) -> None:
        """Add ``(n, N, N)`` real images with ``(n, 3, 3)`` rotations and ``(n, 2)`` origin offsets (pixels)."""
        dtype = self.weight.dtype
        spectra = fft2c(images.to(dtype))
        if shifts is not None:
            spectra = shift_spectra(spectra, -shifts.to(dtype))  # adjoint of the origin offset
        if ctf is not None:
            c = compute_ctf(ctf, self.freqs.reshape(self.box, self.box, 2) / self.box, self.pixel_size)
        else:
            c = torch.ones_like(spectra.real)
        coords = slice_coordinates(rotations.to(dtype), self.freqs) * self.oversampling
        index, weight = interpolation_taps(coords, self.size, self.kernel)
        index = index.reshape(-1)
        self.data.index_add_(0, index, ((c * spectra).reshape(len(images), -1, 1) * weight).reshape(-1))
        self.weight.index_add_(0, index, ((c * c).reshape(len(images), -1, 1) * weight).reshape(-1))
        self.count += len(images)

    def reconstruct(self, *, noise_std: float = 1.0, wiener: bool = True, min_weight: float = 1e-3) -> torch.Tensor:
        """``(N, N, N)`` real map (voxel units: the images' pixel values are line integrals of it)."""
        n, size = self.box, self.size
        weight = self.weight.reshape((size,) * 3)
        data = self.data.reshape((size,) * 3)
        shells = shell_index(size, 3, device=weight.device)
        inside = shells <= size // 2
        floor = min_weight * weight[inside & (weight > 0)].mean()
        estimate = data / torch.clamp(weight, min=float(floor))
        reg = torch.full_like(weight, float(floor))
        if wiener:
            # signal power per shell of the first estimate (an upper bound of tau^2: it holds noise too)
            nshell = int(shells.max()) + 1
            power = torch.zeros(nshell, dtype=weight.dtype, device=weight.device)
            cnt = torch.zeros_like(power)
            power.index_add_(0, shells.reshape(-1), (estimate.abs() ** 2).reshape(-1))
            cnt.index_add_(0, shells.reshape(-1), torch.ones_like(weight).reshape(-1))
            tau2 = power / cnt.clamp(min=1)
            reg = torch.maximum(reg, noise_std**2 / tau2.clamp(min=1e-30)[shells])
        spectrum = torch.where(inside, data / (weight + reg), torch.zeros_like(data))
        padded = ifft3c(spectrum * (n / size)).real
        lo = size // 2 - n // 2
        vol = padded[lo:lo + n, lo:lo + n, lo:lo + n]
        vol = vol / grid_correction(n, size, self.kernel, dtype=vol.dtype).to(vol.device)
        # the corners hold only noise, which the grid correction amplifies: a soft sphere of radius N/2
        return vol * soft_mask(n, n / 2 - 3, 3.0, dtype=vol.dtype, device=vol.device)



def backproject(batches: Iterable, box: int, pixel_size: float, *, noise_std: float = 1.0,
                oversampling: int = 2, kernel: str = "trilinear", dtype=torch.float64,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Reconstruct from an iterable of ``(images, rotations, shifts, ctf)`` batches (see :class:`BackProjector`)."""
    bp = BackProjector(box, pixel_size, oversampling=oversampling, kernel=kernel, dtype=dtype)
    for images, rotations, shifts, ctf in batches:
        bp.insert(torch.as_tensor(np.asarray(images)), torch.as_tensor(np.asarray(rotations)),
                  None if shifts is None else torch.as_tensor(np.asarray(shifts)), ctf)
        if progress is not None:
            progress(len(images))
    return bp.reconstruct(noise_std=noise_std)


def backproject_particles(particles, *, noise_std: float | None = None, kernel: str = "trilinear", batch: int = 256,
                          progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Reconstruct a :class:`~cryosgd.io.ParticleSet` with known poses, read ``batch`` images at a time.

    ``noise_std``: the images' noise std (default: estimated from the background of up to 500 images).
    """
    from ..inference.noise import estimate_noise_std
    from ..io import InputError

    if particles.rotations is None:
        raise InputError(particles.source, "no poses (rlnAngleRot/Tilt/Psi): back-projection needs known poses")
    particles.validate_images()
    n, box = len(particles), particles.box
    if noise_std is None:
        noise_std = estimate_noise_std(particles.read_images(np.arange(min(n, 500))), 0.45 * box)

    def batches():
        for start in range(0, n, batch):
            idx = np.arange(start, min(n, start + batch))
            yield (particles.read_images(idx), particles.rotations[idx],
                   None if particles.shifts is None else particles.shifts[idx], particles.ctf[idx])

    return backproject(batches(), box, particles.pixel_size, noise_std=noise_std, kernel=kernel, progress=progress)
