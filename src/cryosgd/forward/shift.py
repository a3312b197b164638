"""Translations as Fourier phase ramps.

A shift ``t = (tx, ty)`` in pixels is RELION's origin offset: RELION 3.1's
``rlnOriginX/YAngst`` divided by the pixel size.  It is the translation that
brings the particle back to the box centre, so in the image the particle centre
sits at ``box // 2 - t`` (``tests/test_relion_agreement.py`` checks this against
``relion_project``).  Image formation therefore moves content by ``-t``: in
Fourier space the phase factor ``exp(+2 pi i (kx tx + ky ty) / box)``, a
unitary diagonal operator whose adjoint is the same factor for ``-t``.
"""
from __future__ import annotations

import math

import torch

__all__ = ["phase_shifts", "shift_spectra"]


def phase_shifts(freqs: torch.Tensor, shifts: torch.Tensor, box: int) -> torch.Tensor:
    """Phase factors that apply origin offsets.

    freqs:  ``(P, 2)`` frequencies (kx, ky) in Fourier pixels.
    shifts: ``(S, 2)`` shifts (tx, ty) in pixels.
    Returns ``(S, P)`` complex factors.
    """
    phase = 2 * math.pi / box * (shifts.to(freqs.dtype) @ freqs.T)  # radians/cycle * cycles = radians
    return torch.polar(torch.ones_like(phase), phase)


def shift_spectra(spectra: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Apply per-image origin offsets ``shifts`` ``(n, 2)`` pixels to centred spectra ``(n, N, N)``."""
    from ..fourier import frequency_grid_2d

    n_box = spectra.shape[-1]
    k = frequency_grid_2d(n_box, dtype=spectra.real.dtype, device=spectra.device)
    phase = 2 * math.pi / n_box * (k[None, ..., 0] * shifts[:, 0, None, None].to(k.dtype)
                                    + k[None, ..., 1] * shifts[:, 1, None, None].to(k.dtype))
    return spectra * torch.polar(torch.ones_like(phase), phase)
