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
    """Phase factors that apply origin offsets, in any dimension.

    freqs:  ``(..., d)`` frequencies in Fourier pixels, (kx, ky[, kz]) last.
    shifts: ``(S, d)`` offsets in pixels, (tx, ty[, tz]).
    Returns ``(S, ...)`` complex factors ``exp(+2 pi i k.t / box)``.
    """
    k = freqs.reshape(-1, freqs.shape[-1])
    phase = 2 * math.pi / box * (shifts.to(k.dtype) @ k.T)  # radians/cycle * cycles = radians, (S, prod(...))
    return torch.polar(torch.ones_like(phase), phase).reshape(shifts.shape[0], *freqs.shape[:-1])


def shift_spectra(spectra: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Apply per-image origin offsets ``shifts`` ``(n, 2)`` pixels to centred spectra ``(n, N, N)``."""
    from ..fourier import frequency_grid_2d

    n_box = spectra.shape[-1]
    k = frequency_grid_2d(n_box, dtype=spectra.real.dtype, device=spectra.device)
    return spectra * phase_shifts(k, shifts, n_box)
