"""The volume's transform on a small, oversampled cube around the origin.

Only frequencies inside the band limit enter the likelihood, so instead of a
full 3D FFT the transform is evaluated directly on a ``K x K x K`` cube of
spacing ``1 / oversampling`` Fourier pixels, ``K = 2 h + 1``, by three
separable matrix products (a partial DFT).  This is exact, costs
``O(N^3 K)`` and comes with an exact adjoint (the conjugate-transposed
products).  The real-space grid correction of the interpolation kernel is
folded into the matrices.

Normalisation matches :func:`cryosgd.fourier.fft3c`: at integer frequencies
the cube holds ``fft3c(volume / grid_correction)``.
"""
from __future__ import annotations

import math

import torch

from ..forward.interp import KERNELS, grid_correction

__all__ = ["BandTransform"]


class BandTransform:
    """Linear map ``(N, N, N)`` real volume -> ``(K, K, K)`` complex cube, with its adjoint.

    box:          N, the volume side (pixels).
    band_limit:   r, the largest image frequency used (Fourier pixels).
    oversampling: cube spacing is ``1 / oversampling`` Fourier pixels.
    kernel:       the interpolation kernel that will read the cube (sets the margin and the correction).
    """

    def __init__(self, box: int, band_limit: float, *, oversampling: int = 2, kernel: str = "trilinear",
                 dtype=torch.float32, device=None):
        self.box, self.band_limit, self.oversampling, self.kernel = box, band_limit, oversampling, kernel
        self.half = int(math.ceil(band_limit * oversampling)) + KERNELS[kernel] + 1
        self.size = 2 * self.half + 1
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        x = torch.arange(box, dtype=torch.float64) - box // 2
        k = (torch.arange(self.size, dtype=torch.float64) - self.half) / oversampling
        # per-axis grid correction (the 3D profile is separable); K * N padded grid
        corr1d = grid_correction(box, oversampling * box, kernel)[box // 2, box // 2, :]
        phase = -2 * math.pi * k[:, None] * x[None, :] / box  # radians
        mat = torch.polar(torch.ones_like(phase), phase) / corr1d[None, :]
        mat = mat / box ** (1 / 3)  # fft3c divides by N, spread over the 3 axes
        self.matrix = mat.to(device=device, dtype=cdtype)  # (K, N) complex
        self.real = mat.real.to(device=device, dtype=dtype).contiguous()
        self.imag = mat.imag.to(device=device, dtype=dtype).contiguous()
        self.stacked = torch.cat([self.real, self.imag], dim=0).contiguous()        # (2K, N)
        self.stacked_t = self.stacked.T.contiguous()                               # (N, 2K)
        self.dtype, self.cdtype = dtype, cdtype

    def forward_pairs(self, volume: torch.Tensor) -> torch.Tensor:
        """``(N, N, N)`` real [z, y, x] -> ``(K, K, K, 2)`` real (re, im) [kz, ky, kx]."""
        n, k = self.box, self.size
        fr, fi = self.real, self.imag
        # x axis: real input, one product with [fr; fi]
        a = volume.to(self.dtype).reshape(n * n, n) @ self.stacked_t                  # (z*y, 2k)
        ar, ai = a[:, :k].reshape(n, n, k), a[:, k:].reshape(n, n, k)                # (z, y, kx)
        # y axis (complex, in real arithmetic), then z
        br, bi = fr @ ar - fi @ ai, fr @ ai + fi @ ar                               # (z, ky, kx)
        br, bi = br.reshape(n, k * k), bi.reshape(n, k * k)
        return torch.stack([fr @ br - fi @ bi, fr @ bi + fi @ br], dim=-1).reshape(k, k, k, 2)

    def adjoint_pairs(self, pairs: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`forward_pairs` (real inner product): ``(K, K, K, 2)`` -> ``(N, N, N)``."""
        n, k = self.box, self.size
        fr, fi = self.real, self.imag  # the conjugate transpose is (fr - i fi)^T
        ur, ui = pairs[..., 0].reshape(k, k * k), pairs[..., 1].reshape(k, k * k)
        cr, ci = fr.T @ ur + fi.T @ ui, fr.T @ ui - fi.T @ ur                       # (z, ky*kx)
        cr, ci = cr.reshape(n, k, k), ci.reshape(n, k, k)
        br, bi = fr.T @ cr + fi.T @ ci, fr.T @ ci - fi.T @ cr                       # (z, y, kx)
        # last axis: only the real part is needed, one product with [fr; fi]
        b = torch.cat([br.reshape(n * n, k), bi.reshape(n * n, k)], dim=1)          # (z*y, 2k)
        return (b @ self.stacked).reshape(n, n, n)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(N, N, N)`` real [z, y, x] -> ``(K, K, K)`` complex [kz, ky, kx]."""
        return torch.view_as_complex(self.forward_pairs(volume).contiguous())

    def adjoint(self, cube: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`forward` for the real inner product ``Re <F v, u>``: returns a real volume."""
        return self.adjoint_pairs(torch.view_as_real(cube))
