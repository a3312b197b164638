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

from .interp import KERNELS, grid_correction

__all__ = ["BandTransform"]


class BandTransform:
    """Linear map ``(N, N, N)`` real volume -> ``(K, K, K)`` complex cube, with its adjoint.

    box:          N, the volume side (pixels).
    band_limit:   r, the largest image frequency used (Fourier pixels).
    oversampling: cube spacing is ``1 / oversampling`` Fourier pixels.
    kernel:       the interpolation kernel that will read the cube (sets the margin and the correction).

    The volume is real, so its transform is Hermitian: only the half ``kx >= 0``
    (``H = h + 1`` of the ``K = 2h + 1`` planes) is computed, and the other half is
    its conjugate mirror.  Each axis is one real matrix product.
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
        tt = dict(device=device, dtype=dtype)
        self.matrix = mat.to(device=device, dtype=cdtype)                                   # (K, N) complex
        self.stacked = torch.cat([mat.real, mat.imag]).to(**tt).contiguous()                # (2K, N): [Re; Im]
        self.stacked_t = self.stacked.T.contiguous()                                        # (N, 2K)
        half = mat[self.half:]                                                              # (H, N): kx >= 0
        self.x_stacked = torch.cat([half.real, half.imag]).to(**tt).contiguous()            # (2H, N)
        self.x_stacked_t = self.x_stacked.T.contiguous()                                    # (N, 2H)
        self._conj = torch.tensor([1.0, -1.0], **tt)                                         # (re, im) -> conj
        self.dtype, self.cdtype = dtype, cdtype

    # complex products in real arithmetic, one matrix product each
    def _apply(self, xr, xi):
        """``M @ (xr + i xi)`` for ``(N, m)`` inputs: ``(K, m)`` real and imaginary parts."""
        k, m = self.size, xr.shape[1]
        t = self.stacked @ torch.cat([xr, xi], 1)                                           # (2K, 2m)
        return t[:k, :m] - t[k:, m:], t[:k, m:] + t[k:, :m]

    def _apply_adjoint(self, cr, ci):
        """``M^H @ (cr + i ci)`` for ``(K, m)`` inputs: ``(N, m)`` real and imaginary parts."""
        m = cr.shape[1]
        t = self.stacked_t @ torch.cat([torch.cat([cr, ci], 1), torch.cat([ci, -cr], 1)])   # (N, 2m)
        return t[:, :m], t[:, m:]

    def forward_pairs(self, volume: torch.Tensor) -> torch.Tensor:
        """``(N, N, N)`` real [z, y, x] -> ``(K, K, K, 2)`` real (re, im) [kz, ky, kx]."""
        n, k, h = self.box, self.size, self.half
        hh = h + 1
        a = volume.to(self.dtype).reshape(n * n, n) @ self.x_stacked_t                      # (z*y, 2H)
        a = a.reshape(n, n, 2, hh).transpose(0, 1)                                          # (y, z, 2, H)
        br, bi = self._apply(a[:, :, 0].reshape(n, n * hh), a[:, :, 1].reshape(n, n * hh))  # (ky, z*H)
        br = br.reshape(k, n, hh).transpose(0, 1).reshape(n, k * hh)                        # (z, ky*H)
        bi = bi.reshape(k, n, hh).transpose(0, 1).reshape(n, k * hh)
        cr, ci = self._apply(br, bi)                                                        # (kz, ky*H)
        half = torch.stack([cr.reshape(k, k, hh), ci.reshape(k, k, hh)], -1)               # (K, K, H, 2)
        # the Hermitian mirror: F(-kz, -ky, -kx) = conj F(kz, ky, kx)
        mirror = half[:, :, 1:].flip(0, 1, 2) * self._conj
        return torch.cat([mirror, half], 2)

    def adjoint_pairs(self, pairs: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`forward_pairs` (real inner product): ``(K, K, K, 2)`` -> ``(N, N, N)``."""
        n, k, h = self.box, self.size, self.half
        hh = h + 1
        g = pairs[:, :, h:].clone()                                                         # (K, K, H, 2)
        g[:, :, 1:] += pairs[:, :, :h].flip(0, 1, 2) * self._conj
        cr, ci = self._apply_adjoint(g[..., 0].reshape(k, k * hh), g[..., 1].reshape(k, k * hh))  # (z, ky*H)
        cr = cr.reshape(n, k, hh).transpose(0, 1).reshape(k, n * hh)                        # (ky, z*H)
        ci = ci.reshape(n, k, hh).transpose(0, 1).reshape(k, n * hh)
        br, bi = self._apply_adjoint(cr, ci)                                                # (y, z*H)
        b = torch.stack([br.reshape(n, n, hh), bi.reshape(n, n, hh)], 2)                    # (y, z, 2, H)
        # last axis: only the real part is needed, Re(M^H c) = [Mr; Mi]^T [cr; ci]
        return (b.transpose(0, 1).reshape(n * n, 2 * hh) @ self.x_stacked).reshape(n, n, n)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(N, N, N)`` real [z, y, x] -> ``(K, K, K)`` complex [kz, ky, kx]."""
        return torch.view_as_complex(self.forward_pairs(volume).contiguous())

    def adjoint(self, cube: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`forward` for the real inner product ``Re <F v, u>``: returns a real volume."""
        return self.adjoint_pairs(torch.view_as_real(cube))
