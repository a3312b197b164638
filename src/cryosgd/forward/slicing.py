"""Central slices of a 3D transform (projection) and their insertion (back-projection).

``extract_central_slices`` and ``insert_central_slices`` are an operator and its
exact adjoint: they share the taps of :mod:`cryosgd.forward.interp`.

The transform lives on a centred ``K x K x K`` grid whose spacing is ``1 /
oversampling`` Fourier pixels of the image box (``K = oversampling * box`` for
a zero-padded volume).  A 2D frequency ``(kx, ky)`` in Fourier pixels of the
image, seen with rotation R, sits at grid coordinate
``oversampling * R @ (kx, ky, 0)``.
"""
from __future__ import annotations

import torch

from ..fourier import fft3c
from .interp import gather, grid_correction, interpolation_taps, scatter_add

__all__ = [
    "slice_coordinates", "extract_central_slices", "insert_central_slices", "volume_spectrum",
]


def slice_coordinates(rotations: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``(M, P, 3)`` volume-frame (x, y, z) coordinates of frequencies ``(P, 2)`` under ``(M, 3, 3)`` rotations."""
    r = rotations.to(freqs.dtype)
    return freqs[None, :, 0, None] * r[:, None, :, 0] + freqs[None, :, 1, None] * r[:, None, :, 1]


def extract_central_slices(spectrum: torch.Tensor, rotations: torch.Tensor, freqs: torch.Tensor, *,
                           oversampling: float = 1.0, kernel: str = "trilinear") -> torch.Tensor:
    """Sample central slices.

    spectrum:  ``(K, K, K)`` complex (or real) centred transform.
    rotations: ``(M, 3, 3)``.
    freqs:     ``(P, 2)`` image frequencies (kx, ky) in Fourier pixels of the image box.
    Returns ``(M, P)`` values.
    """
    size = spectrum.shape[-1]
    coords = slice_coordinates(rotations, freqs) * oversampling
    index, weight = interpolation_taps(coords, size, kernel)
    return gather(spectrum.reshape(-1), index, weight)


def insert_central_slices(slices: torch.Tensor, rotations: torch.Tensor, freqs: torch.Tensor, size: int, *,
                          oversampling: float = 1.0, kernel: str = "trilinear") -> torch.Tensor:
    """Adjoint of :func:`extract_central_slices`: ``(M, P)`` slices -> ``(K, K, K)`` grid (``K = size``)."""
    coords = slice_coordinates(rotations, freqs) * oversampling
    index, weight = interpolation_taps(coords, size, kernel)
    return scatter_add(slices, index, weight, size**3).reshape(size, size, size)


def volume_spectrum(volume: torch.Tensor, *, oversampling: int = 2, kernel: str = "trilinear") -> torch.Tensor:
    """Grid-corrected, zero-padded transform of a real ``(N, N, N)`` volume.

    Returns ``(K, K, K)`` complex with ``K = oversampling * N``, scaled so that
    :func:`extract_central_slices` (with the same ``oversampling`` and
    ``kernel``) gives :func:`cryosgd.fourier.fft2c` of the projections.
    """
    n = volume.shape[-1]
    size = oversampling * n
    corrected = volume / grid_correction(n, size, kernel, dtype=volume.dtype).to(volume.device)
    padded = torch.zeros((size,) * 3, dtype=volume.dtype, device=volume.device)
    lo = size // 2 - n // 2
    padded[lo:lo + n, lo:lo + n, lo:lo + n] = corrected
    # fft3c divides by K; the slice theorem for the N-box needs DFT / N, hence * K / N.
    return fft3c(padded) * (size / n)
