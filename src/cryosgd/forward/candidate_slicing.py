"""Slices of a chosen subset of rotations, interpolated straight from the band cube, and the adjoint.

The exhaustive kernel's slicing operator (:mod:`.sparse_slicing`) stores every rotation's taps and
grows as the fifth power of the band limit.  A pruned pose search needs the slices of a few
thousand candidate rotations per minibatch, a different set each call, so this operator computes
their taps on the fly: the rotated frequencies (a small product), then for trilinear
interpolation the lower grid corner and the fractions (:func:`.interp.trilinear_corners`), from
which the 8 taps are gathered and, for the adjoint, scattered.  Other kernels use their taps from
:func:`.interp.interpolation_taps`, stored for every rotation when ``store_taps`` is set.

Shapes: the cube is ``(K, K, K, 2)`` real (re, im) pairs of the band transform
(:class:`.bandvolume.BandTransform`), frequencies ``(P, 2)`` image Fourier pixels, slices
``(U, P, 2)`` for ``U`` rotations chosen by index.
"""
from __future__ import annotations

import torch

from .interp import grid_corners, interpolation_taps, trilinear_gather_pairs, trilinear_scatter_pairs

__all__ = ["CandidateSlicing"]


class CandidateSlicing:
    """Slices of rotations ``rotations[index]`` (``(M, 3, 3)``) at frequencies ``freqs`` (``(P, 2)``)
    from a cube of side ``size`` sampled ``oversampling`` times per Fourier pixel."""

    def __init__(self, rotations, freqs, size: int, oversampling: int, kernel: str = "trilinear", *,
                 dtype=torch.float32, device=None, store_taps: bool = False, block: int = 1024):
        self.rotations = torch.as_tensor(rotations, dtype=torch.float64)
        self.freqs = torch.as_tensor(freqs, dtype=torch.float64)
        self.size, self.oversampling, self.kernel = size, oversampling, kernel
        self.dtype, self.device, self.block = dtype, torch.device(device or "cpu"), block
        self.n_points = len(self.freqs)
        self.table = None  # every rotation's (index, weight) taps, for kernels other than trilinear
        self._kept = None  # (index, [(corners, fractions) per block]) of the last forward(keep=True)
        if store_taps and kernel != "trilinear":
            parts = [self._taps(torch.arange(i, min(i + block, len(self.rotations))))
                     for i in range(0, len(self.rotations), block)]
            self.table = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _coords(self, index: torch.Tensor) -> torch.Tensor:
        """``(U, P, 3)`` grid coordinates (x, y, z) of the rotated frequencies, relative to the centre: one
        product of the frequencies with the rotations' first two columns scaled to the grid (half the
        time of rotating, then scaling).  In the operator's precision: float32 coordinates below 100
        grid steps carry fractions to 1e-5, and cost a quarter of float64's time."""
        freqs = self.freqs if self.dtype == torch.float64 else self.freqs.float()
        r = self.rotations[index.cpu()].to(freqs.dtype)[:, :, :2].transpose(1, 2) * self.oversampling  # (U, 2, 3)
        return torch.matmul(freqs, r)

    def _taps(self, index: torch.Tensor):
        if self.table is not None:
            return self.table[0][index], self.table[1][index]
        idx, w = interpolation_taps(self._coords(index), self.size, self.kernel)
        return idx.to(self.device), w.to(self.device, self.dtype)

    def _corners(self, index: torch.Tensor):
        base, frac = grid_corners(self._coords(index).add_(self.size // 2), self.size, self.dtype)
        return base.to(self.device), frac.to(self.device)

    def forward(self, cube: torch.Tensor, index: torch.Tensor, *, keep: bool = False) -> torch.Tensor:
        """``(U, P, 2)`` slices of rotations ``index`` (``(U,)``) from ``cube`` ``(K, K, K, 2)``.

        keep: hold the trilinear corners and fractions for the next :meth:`adjoint` of the same
        ``index`` (the same tensor), which then need not compute them again: they are half the time of
        an interpolation (7,831 rotations x 167 points: 15-23 ms of 31), and hold 16 bytes a point."""
        flat = cube.reshape(-1, 2)
        out = torch.empty((len(index), self.n_points, 2), dtype=self.dtype, device=self.device)
        kept = []
        for i in range(0, len(index), self.block):
            part = index[i:i + self.block]
            if self.kernel == "trilinear":
                base, frac = self._corners(part)
                out[i:i + self.block] = trilinear_gather_pairs(flat, base, frac, self.size)
                if keep:
                    kept.append((base.int(), frac))
            else:
                idx, w = self._taps(part)
                out[i:i + self.block] = (flat[idx] * w[..., None]).sum(-2)
        self._kept = (index, kept) if kept else None
        return out

    def adjoint(self, grad: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`forward`: ``(U, P, 2)`` -> ``(K**3, 2)``."""
        out = torch.zeros((self.size ** 3, 2), dtype=self.dtype, device=self.device)
        kept = self._kept[1] if self._kept is not None and self._kept[0] is index else None
        self._kept = None
        for k, i in enumerate(range(0, len(index), self.block)):
            part = index[i:i + self.block]
            if self.kernel == "trilinear":
                base, frac = kept[k] if kept is not None else self._corners(part)
                trilinear_scatter_pairs(grad[i:i + self.block], base, frac, self.size, out)
            else:
                idx, w = self._taps(part)
                out.index_add_(0, idx.reshape(-1), (grad[i:i + self.block, :, None, :] * w[..., None]).reshape(-1, 2))
        return out
