"""Full image formation: slice, CTF, shift, back to real space."""
from __future__ import annotations

import numpy as np
import torch

from ..fourier import frequency_grid_2d, ifft2c
from .ctf import CTFParams, compute_ctf
from .shift import shift_spectra
from .slicing import extract_central_slices, volume_spectrum

__all__ = ["project", "project_spectra"]


def project_spectra(spectrum: torch.Tensor, rotations: torch.Tensor, box: int, *,
                    shifts: torch.Tensor | None = None, ctf: CTFParams | None = None, pixel_size: float = 1.0,
                    oversampling: int = 2, kernel: str = "trilinear") -> torch.Tensor:
    """``(n, box, box)`` centred image spectra from a volume spectrum (see :func:`volume_spectrum`)."""
    k = frequency_grid_2d(box, dtype=spectrum.real.dtype, device=spectrum.device).reshape(-1, 2)
    out = extract_central_slices(spectrum, rotations, k, oversampling=oversampling, kernel=kernel)
    out = out.reshape(-1, box, box)
    if ctf is not None:
        out = out * compute_ctf(ctf, k.reshape(box, box, 2) / box, pixel_size)
    if shifts is not None:
        out = shift_spectra(out, shifts)
    return out


def project(volume: torch.Tensor, rotations, *, shifts=None, ctf: CTFParams | None = None,
            pixel_size: float = 1.0, oversampling: int = 2, kernel: str = "trilinear",
            batch_size: int = 64) -> torch.Tensor:
    """Simulated noise-free images of a volume.

    volume:     ``(N, N, N)`` real, indexed [z, y, x].
    rotations:  ``(n, 3, 3)`` (see :mod:`cryosgd.forward.rotations`).
    shifts:     ``(n, 2)`` pixels (x, y), or None.
    ctf:        n images' CTF parameters, or None for no CTF.
    pixel_size: Å per pixel (for the CTF).
    Returns ``(n, N, N)`` real images: line integrals of the volume in voxel
    units, CTF-modulated and shifted.
    """
    n = volume.shape[-1]
    rotations = torch.as_tensor(np.asarray(rotations), dtype=volume.dtype, device=volume.device)
    if shifts is not None:
        shifts = torch.as_tensor(np.asarray(shifts), dtype=volume.dtype, device=volume.device)
    spectrum = volume_spectrum(volume, oversampling=oversampling, kernel=kernel)
    if kernel == "lanczos":
        batch_size = max(1, batch_size // 16)
    images = []
    for start in range(0, len(rotations), batch_size):
        sl = slice(start, start + batch_size)
        spectra = project_spectra(spectrum, rotations[sl], n, shifts=None if shifts is None else shifts[sl],
                                  ctf=None if ctf is None else ctf[sl], pixel_size=pixel_size,
                                  oversampling=oversampling, kernel=kernel)
        images.append(ifft2c(spectra).real)
    return torch.cat(images)
