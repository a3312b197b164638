"""Centred discrete Fourier transforms and frequency grids.

Conventions (docs/conventions.md):

* Arrays are indexed ``[..., z, y, x]`` (numpy / mrcfile order); the real-space
  centre of a box of side N is the voxel ``N // 2`` on every axis (RELION's).
* Transforms are *centred*: the zero frequency sits at index ``N // 2`` after
  the transform, for odd and even N alike.
* Normalisation is chosen so that the Fourier slice theorem holds with no
  stray factor: the 2D transform of an image is unitary (``norm="ortho"``,
  so white noise of std sigma per pixel has std sigma per coefficient), and
  the 3D transform of a volume is the plain DFT divided by N.  Then the
  central slice of ``fft3c(v)`` equals ``fft2c(v.sum(axis=z))`` exactly.
"""
from __future__ import annotations

import torch

__all__ = [
    "fft2c", "ifft2c", "fft3c", "ifft3c", "fft3c_adjoint",
    "frequencies", "frequency_grid_2d", "radius_grid", "shell_index", "soft_mask",
    "band_limit_px", "resolution_A", "nyquist_fraction_px",
]


def fft2c(images: torch.Tensor) -> torch.Tensor:
    """Centred unitary 2D DFT of real or complex ``(..., N, N)`` images."""
    x = torch.fft.ifftshift(images, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(spectra: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2c` (complex output; take ``.real`` for images)."""
    x = torch.fft.ifftshift(spectra, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(x, norm="ortho"), dim=(-2, -1))


def fft3c(volume: torch.Tensor) -> torch.Tensor:
    """Centred 3D DFT of ``(..., N, N, N)`` divided by N (see module notes)."""
    n = volume.shape[-1]
    x = torch.fft.ifftshift(volume, dim=(-3, -2, -1))
    return torch.fft.fftshift(torch.fft.fftn(x, dim=(-3, -2, -1)), dim=(-3, -2, -1)) / n


def ifft3c(spectrum: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft3c` (complex output)."""
    n = spectrum.shape[-1]
    x = torch.fft.ifftshift(spectrum, dim=(-3, -2, -1))
    return torch.fft.fftshift(torch.fft.ifftn(x, dim=(-3, -2, -1)), dim=(-3, -2, -1)) * n


def fft3c_adjoint(spectrum: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`fft3c` (equal to ``N * ifft3c``)."""
    n = spectrum.shape[-1]
    return ifft3c(spectrum) * n


def frequencies(n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Centred integer frequencies ``-(n//2) .. (n-1)//2`` (Fourier pixels)."""
    return torch.arange(n, dtype=dtype, device=device) - n // 2


def frequency_grid_2d(n: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, n, 2)`` grid of centred (kx, ky) frequencies in Fourier pixels."""
    k = frequencies(n, dtype=dtype, device=device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack([kx, ky], dim=-1)


def radius_grid(n: int, ndim: int, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Distance (Fourier or real-space pixels) of each grid point from the centre."""
    k = frequencies(n, dtype=dtype, device=device)
    grids = torch.meshgrid(*([k] * ndim), indexing="ij")
    return torch.sqrt(sum(g**2 for g in grids))


def soft_mask(n: int, radius: float, width: float = 3.0, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n,)*3`` spherical mask: 1 inside ``radius`` pixels, a raised-cosine edge ``width`` wide, 0 beyond."""
    t = ((radius_grid(n, 3, dtype=dtype, device=device) - radius) / width).clamp(0, 1)
    return 0.5 * (1 + torch.cos(torch.pi * t))


def shell_index(n: int, ndim: int, *, device=None) -> torch.Tensor:
    """Integer shell (rounded radius) of each grid point; used for FSC and spectra."""
    return torch.round(radius_grid(n, ndim, device=device)).long()


# ---------------------------------------------------------------- where Å and Fourier pixels meet


def band_limit_px(resolution_A: float, box: int, pixel_size_A: float) -> float:
    """Band limit in Fourier pixels of a resolution in Å: ``box * pixel_size_A / resolution_A``."""
    return box * pixel_size_A / resolution_A


def resolution_A(band_limit_px: float, box: int, pixel_size_A: float) -> float:
    """Resolution in Å of a band limit in Fourier pixels: ``box * pixel_size_A / band_limit_px``."""
    return box * pixel_size_A / band_limit_px


def nyquist_fraction_px(box: int, fraction: float) -> float:
    """Band limit in Fourier pixels of a fraction of Nyquist: ``fraction * box / 2``."""
    return fraction * box / 2
