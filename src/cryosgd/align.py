"""Aligning one map to another over rotation, translation and hand.

A reconstruction from a random start comes out in an arbitrary orientation,
position and (without phase information on handedness) possibly mirrored.
:func:`align_maps` finds the rigid motion (and mirror) that best matches a
reference by real-space correlation: a global search over a rotation grid on
low-passed, downsampled maps, with the best translation for each rotation
found by FFT cross-correlation, then a local refinement at finer angular steps
and full size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .forward.shift import phase_shifts
from .fourier import fft3c, frequencies, ifft3c
from .inference.quadrature import so3_quadrature

__all__ = ["Alignment", "align_maps", "apply_alignment", "rotate_volume", "downsample"]


@dataclass(frozen=True)
class Alignment:
    rotation: np.ndarray   # (3, 3): aligned(p) = mirrored(R^T (p - t))
    shift: np.ndarray      # (3,) pixels (x, y, z) of the full-size map
    mirror: bool           # flip the map's hand (z -> -z) before rotating
    correlation: float     # real-space correlation after alignment (at the search resolution)


def downsample(volume: torch.Tensor, size: int) -> torch.Tensor:
    """Fourier-crop a ``(N, N, N)`` map to ``(size,)*3`` (a low-pass and a resample)."""
    n = volume.shape[-1]
    if size >= n:
        return volume
    spec = fft3c(volume)
    lo = n // 2 - size // 2
    crop = spec[lo:lo + size, lo:lo + size, lo:lo + size]
    return ifft3c(crop).real


def rotate_volume(volume: torch.Tensor, rotations: torch.Tensor, shift=None) -> torch.Tensor:
    """``W(p) = V(R^T (p - t))`` by trilinear interpolation: ``(B, N, N, N)`` for ``(B, 3, 3)`` rotations.

    Positions ``p`` are (x, y, z) pixels from the centre ``N // 2``; ``shift`` is ``(3,)`` pixels.
    """
    n = volume.shape[-1]
    c = torch.arange(n, dtype=volume.dtype) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    p = torch.stack([x, y, z], -1).reshape(-1, 3)  # (N^3, 3)
    if shift is not None:
        p = p - torch.as_tensor(shift, dtype=volume.dtype)
    src = torch.einsum("bji,pj->bpi", rotations.to(volume.dtype), p)  # R^T p
    # grid_sample wants (x, y, z) in [-1, 1] with align_corners=True: index i -> -1 + 2 i / (n - 1)
    grid = (src + n // 2) * (2 / (n - 1)) - 1
    out = F.grid_sample(volume[None, None].expand(len(rotations), 1, n, n, n),
                        grid.reshape(len(rotations), n, n, n, 3), mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out[:, 0]


def _best_translation(candidates: torch.Tensor, reference: torch.Tensor, max_shift: float):
    """For each ``(B, N, N, N)`` candidate, the shift maximising correlation with the reference."""
    n = reference.shape[-1]
    fr = torch.fft.fftn(reference)
    fc = torch.fft.fftn(candidates, dim=(-3, -2, -1))
    cc = torch.fft.ifftn(fc.conj() * fr, dim=(-3, -2, -1)).real  # cc[t] = sum_p cand(p) ref(p + t)
    k = torch.fft.fftfreq(n, d=1.0 / n)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    cc = torch.where((kx**2 + ky**2 + kz**2) <= max_shift**2, cc, torch.full_like(cc, -torch.inf))
    best, arg = cc.reshape(len(candidates), -1).max(1)
    iz, iy, ix = np.unravel_index(arg.numpy(), (n, n, n))
    wrap = lambda i: np.where(i > n // 2, i - n, i)  # noqa: E731
    return best, np.stack([wrap(ix), wrap(iy), wrap(iz)], 1).astype(np.float64)


def _normalise(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean()
    return v / v.norm()


def _search(moving, reference, rotations, max_shift, batch=64):
    scores, shifts = [], []
    for i in range(0, len(rotations), batch):
        rot = rotate_volume(moving, rotations[i:i + batch])
        best, sh = _best_translation(rot, reference, max_shift)
        norms = rot.reshape(len(rot), -1).norm(dim=1).clamp(min=1e-12)
        scores.append(best / norms)
        shifts.append(sh)
    return torch.cat(scores), np.concatenate(shifts)


def _local_rotations(centre: np.ndarray, step_deg: float, n: int, rng) -> np.ndarray:
    """``centre`` and ``n`` rotations within about ``step_deg`` of it."""
    from scipy.spatial.transform import Rotation

    vec = rng.standard_normal((n, 3))
    vec *= (np.radians(step_deg) * rng.uniform(0, 1, (n, 1)) ** (1 / 3)) / np.linalg.norm(vec, axis=1, keepdims=True)
    local = Rotation.from_rotvec(vec).as_matrix()
    return np.concatenate([centre[None], centre[None] @ local])


def align_maps(volume, reference, *, search_size: int = 24, max_shift_fraction: float = 0.25,
               allow_mirror: bool = True, seed: int = 0) -> Alignment:
    """Align ``volume`` to ``reference`` (both ``(N, N, N)``, same pixel size)."""
    vol = torch.as_tensor(np.asarray(volume), dtype=torch.float32)
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    n = ref.shape[-1]
    size = min(search_size, n)
    ref_s = _normalise(downsample(ref, size))
    rng = np.random.default_rng(seed)
    coarse, _ = so3_quadrature(19, 24)  # 146 directions x 24 in-plane: ~15 degree steps
    coarse_t = torch.as_tensor(coarse, dtype=torch.float32)
    best = None
    for mirror in ([False, True] if allow_mirror else [False]):
        mov = torch.flip(vol, dims=[0]) if mirror else vol
        mov_s = _normalise(downsample(mov, size))
        scores, shifts = _search(mov_s, ref_s, coarse_t, max_shift_fraction * size)
        order = torch.argsort(scores, descending=True)[:4]
        for i in order.tolist():
            rot = coarse[i]
            for step in (12.0, 6.0, 3.0, 1.5):
                cand = _local_rotations(rot, step, 48, rng)
                sc, sh = _search(mov_s, ref_s, torch.as_tensor(cand, dtype=torch.float32),
                                 max_shift_fraction * size)
                j = int(sc.argmax())
                rot, score, shift = cand[j], float(sc[j]), sh[j]
            if best is None or score > best[0]:
                best = (score, rot, shift, mirror)
    score, rot, shift, mirror = best
    # refine the translation at full size
    mov = torch.flip(vol, dims=[0]) if mirror else vol
    rotated = rotate_volume(_normalise(mov), torch.as_tensor(rot[None], dtype=torch.float32))
    _, sh = _best_translation(rotated, _normalise(ref), max_shift_fraction * n)
    return Alignment(rot, sh[0], mirror, score)


def apply_alignment(volume, alignment: Alignment) -> np.ndarray:
    """The aligned map: mirror, rotate, then shift (sub-pixel shifts by Fourier phase)."""
    vol = torch.as_tensor(np.asarray(volume), dtype=torch.float64)
    if alignment.mirror:
        vol = torch.flip(vol, dims=[0])
    out = rotate_volume(vol, torch.as_tensor(alignment.rotation[None]))[0]
    n = out.shape[-1]
    k = frequencies(n)
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    # moving the content by +t is the origin offset -t (forward/shift.py)
    ramp = phase_shifts(torch.stack([kx, ky, kz], -1), -torch.as_tensor(alignment.shift, dtype=torch.float64)[None], n)
    out = ifft3c(fft3c(out) * ramp[0]).real
    return out.numpy()
