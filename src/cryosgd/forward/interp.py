"""Interpolation kernels on a centred 3D grid, and their real-space grid correction.

A kernel turns continuous grid coordinates into a few (index, weight) taps, so
that interpolation (gather) and its exact adjoint (scatter-add) share one set of
weights.  Coordinates are ``(..., 3)`` in grid units ``(x, y, z)`` relative to
the grid centre ``K // 2``; arrays are indexed ``[z, y, x]``.

Kernels:

* ``"trilinear"``: 2 taps per axis (8 in all).
* ``"lanczos"``: windowed sinc ``sinc(t) sinc(t / a)`` with ``a = 3`` (6 taps
  per axis, 216 in all), renormalised per axis so that constants interpolate
  exactly.

Interpolating a transform multiplies the object in real space by the kernel's
continuous Fourier transform.  :func:`grid_correction` returns that profile so
callers can divide it out beforehand (the real-space grid correction).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = ["KERNELS", "interpolation_taps", "gather", "scatter_add", "grid_correction"]

KERNELS = {"trilinear": 1, "lanczos": 3}  # half-width a (taps per axis = 2a)


def _axis_taps(c: torch.Tensor, kernel: str):
    """Per-axis taps: ``(..., 2a)`` integer offsets and weights for coordinates ``c``."""
    a = KERNELS[kernel]
    base = torch.floor(c)
    offsets = torch.arange(-a + 1, a + 1, device=c.device, dtype=c.dtype)
    taps = base[..., None] + offsets  # (..., 2a)
    t = c[..., None] - taps
    if kernel == "trilinear":
        w = 1 - t.abs()
    else:
        w = torch.sinc(t) * torch.sinc(t / a)
        w = w / w.sum(-1, keepdim=True)
    return taps.long(), w


def interpolation_taps(coords: torch.Tensor, size: int, kernel: str = "trilinear"):
    """Flat indices and weights of the taps that interpolate at ``coords``.

    coords: ``(..., 3)`` grid coordinates (x, y, z) relative to the centre.
    size:   the grid side K (the grid is K x K x K, centre K // 2).
    Returns ``index (..., T)`` int64 into the flattened grid and ``weight
    (..., T)``, with ``T = (2a)**3``; taps outside the grid get weight 0.
    """
    centre = size // 2
    per_axis = [_axis_taps(coords[..., i] + centre, kernel) for i in range(3)]
    (ix, wx), (iy, wy), (iz, wz) = per_axis
    n = ix.shape[-1]
    inside = [(i >= 0) & (i < size) for i in (ix, iy, iz)]
    wx, wy, wz = (w * m for w, m in zip((wx, wy, wz), inside))
    ix, iy, iz = (i.clamp(0, size - 1) for i in (ix, iy, iz))
    index = (iz[..., :, None, None] * size + iy[..., None, :, None]) * size + ix[..., None, None, :]
    weight = wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]
    shape = coords.shape[:-1] + (n**3,)
    return index.reshape(shape), weight.reshape(shape)


def gather(grid_flat: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Interpolate: ``out[...] = sum_t grid_flat[index[..., t]] * weight[..., t]``.

    grid_flat: ``(K**3,)`` real or complex.  Returns ``index.shape[:-1]``.
    """
    values = grid_flat[index]
    return (values * weight.to(values.dtype if not values.is_complex() else values.real.dtype)).sum(-1)


def scatter_add(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, numel: int) -> torch.Tensor:
    """Adjoint of :func:`gather`: spread ``values`` ``(...)`` onto a flat grid of ``numel``."""
    contrib = values[..., None] * weight.to(values.real.dtype)
    out = torch.zeros(numel, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index.reshape(-1), contrib.reshape(-1))


@functools.lru_cache(maxsize=16)
def _kernel_ft(kernel: str, n_samples: int = 4001) -> tuple:
    a = KERNELS[kernel]
    t = np.linspace(-a, a, n_samples)
    if kernel == "trilinear":
        h = np.clip(1 - np.abs(t), 0, None)
    else:
        h = np.sinc(t) * np.sinc(t / a)
    return t, h, t[1] - t[0]


def grid_correction(n: int, grid_size: int, kernel: str = "trilinear", *, dtype=torch.float64) -> torch.Tensor:
    """``(n, n, n)`` real-space profile that interpolation of a ``grid_size`` transform imposes.

    A volume of side ``n`` (centre ``n // 2``), zero-padded to ``grid_size``
    before its transform, comes back multiplied by this profile after
    interpolating the transform with ``kernel``.  Divide it out beforehand.
    """
    x = (np.arange(n) - n // 2) / grid_size  # cycles per grid sample
    if kernel == "trilinear":
        prof = np.sinc(x) ** 2
    else:
        t, h, dt = _kernel_ft(kernel)
        prof = (h[None, :] * np.cos(2 * math.pi * x[:, None] * t[None, :])).sum(1) * dt
        prof /= (h.sum() * dt)
        # the per-axis renormalisation in _axis_taps keeps the DC gain at 1
    p = torch.as_tensor(prof, dtype=dtype)
    return p[:, None, None] * p[None, :, None] * p[None, None, :]
