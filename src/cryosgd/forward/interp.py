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

__all__ = ["KERNELS", "interpolation_taps", "gather", "scatter_add", "grid_correction", "trilinear_corners",
           "trilinear_gather_planes", "trilinear_scatter_planes"]

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


def trilinear_corners(coords: torch.Tensor, size: int, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear interpolation at ``coords`` in compact form: the flat index of the lower corner and
    the fractions.

    coords: ``(3, ...)`` grid coordinates (x, y, z; axis first) relative to the centre of a
            ``size``-cube; every tap must lie inside (the band cube's margin guarantees it for its band).
    Returns ``base (...)`` (int32 below 2**31 voxels, else int64) and ``frac (3, ...)`` (x, y, z) in
    ``dtype`` (default: coords').
    The 8 taps of :func:`interpolation_taps` (``"trilinear"``) are ``base + (dz K + dy) K + dx`` with
    weights ``prod_axis (1 - f) or f``: the same interpolation, at an eighth of the index memory.
    """
    return grid_corners(coords + size // 2, size, dtype)


def grid_corners(c: torch.Tensor, size: int, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`trilinear_corners` of coordinates ``c (3, ...)`` counted from the cube's first voxel
    (``c`` is overwritten with the fractions).  The flat index is summed from the integral lower
    corners, exact in float32 below 2**24 voxels (in float64 above)."""
    lower = torch.floor(c)
    wide = lower if c.dtype == torch.float64 or size ** 3 < 2 ** 24 else lower.double()
    base = wide[0].add(wide[1], alpha=size).add_(wide[2], alpha=size * size)
    base = base.int() if size ** 3 < 2 ** 31 else base.long()
    return base, c.sub_(lower).to(dtype or c.dtype)


def trilinear_gather_planes(planes: torch.Tensor, base: torch.Tensor, frac: torch.Tensor, size: int) -> torch.Tensor:
    """Interpolate a cube held as planes ``(C, K**3)`` (for a complex cube: C = 2, its real and
    imaginary parts) at :func:`trilinear_corners` ``base (...)``, ``frac (3, ...)``: returns ``(C, ...)``.

    Each corner is gathered from each plane seen from its offset (no index arithmetic), and the eight
    are blended by seven linear interpolations along x, then y, then z.  On planes every blend runs
    over contiguous numbers with one fraction each; on (re, im) pairs the fraction broadcast over a
    last axis of two made each blend ten times slower (64 px, 15 Å: a block of 1,024 rotations in
    8 ms instead of 16)."""
    at = base.reshape(-1)                                                # int32 gathers a fifth faster
    fx, fy, fz = frac.reshape(3, -1).to(planes.dtype)
    c, n = planes.shape[0], at.numel()

    def corner(offset: int) -> torch.Tensor:                            # (C, n): the cube at base + offset
        out = torch.empty((c, n), dtype=planes.dtype, device=planes.device)
        for j in range(c):
            torch.index_select(planes[j, offset:], 0, at, out=out[j])
        return out

    row, plane = size, size * size
    x = [corner(o).lerp_(corner(o + 1), fx) for o in (0, row, plane, plane + row)]
    out = x[0].lerp_(x[1], fy).lerp_(x[2].lerp_(x[3], fy), fz)
    return out.view(c, *base.shape)


def trilinear_scatter_planes(values: torch.Tensor, base: torch.Tensor, frac: torch.Tensor, size: int,
                             out: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`trilinear_gather_planes`: adds ``values (C, ...)`` into ``out (C, K**3)``.

    The blends' adjoints split each value down the same tree (``a + f (b - a)`` sends ``g - f g`` to
    ``a`` and ``f g`` to ``b``), and the eight corners are added plane by plane."""
    c = values.shape[0]
    at = base.reshape(-1).long()
    fx, fy, fz = frac.reshape(3, -1).to(values.dtype)
    v = values.reshape(c, -1)
    row, plane = size, size * size

    def split(g: torch.Tensor, f: torch.Tensor):
        far = g * f
        return torch.sub(g, far), far

    for oz, gz in zip((0, plane), split(v, fz)):
        for oy, gy in zip((0, row), split(gz, fy)):
            for ox, gx in zip((0, 1), split(gy, fx)):
                o = oz + oy + ox
                for j in range(c):
                    out[j, o:].scatter_add_(0, at, gx[j])
    return out


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
