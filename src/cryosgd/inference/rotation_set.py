"""Rotation quadrature factored into base rotations and eight exact grid symmetries.

Every rotation of the quadrature is written ``R = B T_v`` with ``B`` a *base*
rotation and ``T_v`` (v = 0..7) one of ``Rz(m pi/2) F^f`` (m = 0..3, f = 0, 1),
``F = diag(1, -1, -1)``.  Because ``T_v (kx, ky, 0) = (t_v(kx, ky), 0)`` with
``t_v`` a 90-degree rotation and/or reflection of the Cartesian frequency
grid, the slice of ``R`` at ``k`` is the slice of ``B`` at ``t_v(k)``: a
permutation of the same points (and, through Hermitian symmetry, a complex
conjugation on a half plane).  So only the base rotations are ever sliced;
the symmetries act on the (cheap) data side.  This is exact, not an
approximation.

Given Lebedev directions (closed under inversion) and ``n_inplane`` divisible
by 4, the base set is: one direction of each antipodal pair, times in-plane
angles in ``[0, pi/2)``.  ``R = B T_v`` then runs over every direction and
every in-plane angle exactly once.

The beam direction ``R[:, 2]`` of ``B T_v`` is ``+B[:, 2]`` for ``v < 4`` and ``-B[:, 2]`` for
``v >= 4``.  A weight may depend on the variant (``log_weights`` of shape ``(Mb, 8)``): a quadrature
restricted to an asymmetric unit (:mod:`.asymmetric_unit`) keeps a base's variants of one beam sign
and not the other's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ..forward.rotations import relion_euler_to_matrix
from .quadrature import angular_step, lebedev_directions, lebedev_order_for_step

__all__ = ["RotationSet", "build_rotation_set", "rotation_set_for_band", "VARIANT_MATRICES", "half_plane_permutations",
           "expand_variants", "variant_tables", "rotation_parents"]


def _variant_matrices() -> np.ndarray:
    out = []
    flip = np.diag([1.0, -1.0, -1.0])
    for f in (0, 1):
        for m in range(4):
            c, s = np.cos(m * np.pi / 2), np.sin(m * np.pi / 2)
            rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
            out.append(np.round(rz @ (flip if f else np.eye(3))))
    return np.stack(out)


VARIANT_MATRICES = _variant_matrices()  # (8, 3, 3), exact integers


@dataclass(frozen=True)
class RotationSet:
    base: np.ndarray          # (Mb, 3, 3) base rotations
    log_weights: np.ndarray   # (Mb,) log weight of each full rotation B T_v (same for all v), or (Mb, 8)
                              # per variant (-inf: the rotation is not in the quadrature)

    @property
    def size(self) -> int:
        return 8 * len(self.base)

    def variant_log_weights(self) -> np.ndarray:
        """``(Mb, 8)`` log weight of each full rotation ``B[b] T_v`` at ``[b, v]`` (they sum to 1)."""
        w = np.asarray(self.log_weights, dtype=np.float64)
        return np.repeat(w[:, None], 8, axis=1) if w.ndim == 1 else w

    def subset(self, index) -> RotationSet:
        """The base rotations ``index`` (integers or a boolean mask) with their weights, not renormalised."""
        return RotationSet(self.base[index], np.asarray(self.log_weights)[index])

    def rotation(self, variant, base_index) -> np.ndarray:
        """Full rotation(s) ``B[base_index] @ T[variant]``: ``(..., 3, 3)``."""
        return self.base[base_index] @ VARIANT_MATRICES[variant]

    def all_rotations(self) -> tuple[np.ndarray, np.ndarray]:
        """``(8 * Mb, 3, 3)`` rotations (variant-major) and their ``(8 * Mb,)`` weights (sum 1)."""
        rots = np.einsum("bij,vjk->vbik", self.base, VARIANT_MATRICES).reshape(-1, 3, 3)
        return rots, np.exp(self.variant_log_weights().T).reshape(-1)


def build_rotation_set(directions: np.ndarray, direction_weights: np.ndarray, n_inplane: int) -> RotationSet:
    """Base set from directions ``(D, 3)`` (closed under inversion) with weights summing to 1.

    ``n_inplane`` is rounded up to a multiple of 4.
    """
    n_inplane = int(4 * np.ceil(n_inplane / 4))
    d = np.asarray(directions, dtype=np.float64)
    w = np.asarray(direction_weights, dtype=np.float64)
    w = w / w.sum()
    # keep one of each antipodal pair: the one with z > 0, or on the equator y > 0, or x > 0
    key = np.where(np.abs(d[:, 2]) > 1e-9, d[:, 2], np.where(np.abs(d[:, 1]) > 1e-9, d[:, 1], d[:, 0]))
    keep = key > 0
    if 2 * keep.sum() != len(d):
        raise ValueError("the directions are not closed under inversion")
    d, w = d[keep], w[keep] * 2  # each kept direction stands for itself and its antipode
    rot = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
    quarter = n_inplane // 4
    psi = np.arange(quarter) * 360.0 / n_inplane
    rr = np.repeat(rot, quarter)
    tt = np.repeat(tilt, quarter)
    pp = np.tile(psi, len(d))
    base = relion_euler_to_matrix(rr, tt, pp)
    # R[:, 2] is the direction for R = Rz(rot) Ry(tilt) Rz(psi) (scipy intrinsic ZYZ)
    weights = np.repeat(w, quarter) / (2 * n_inplane)  # / 2: the antipode; / n_inplane: the angles
    return RotationSet(base, np.log(weights))


def rotation_set_for_band(band_limit: float, n_inplane: int) -> RotationSet:
    """The base rotations of the quadrature at ``band_limit`` (Fourier pixels): the Lebedev rule whose
    angular step suits the band limit (:func:`.quadrature.angular_step`), times ``n_inplane`` angles."""
    base, log_weights = _rotation_set(lebedev_order_for_step(angular_step(band_limit)), int(n_inplane))
    return RotationSet(base.copy(), log_weights.copy())


@functools.lru_cache(maxsize=4)
def _rotation_set(order: int, n_inplane: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays of :func:`rotation_set_for_band`, kept: a run builds the same set for its kernel, the
    held-out images and the pose pass (with :func:`.quadrature.so3_quadrature`'s, 1.8 s of Euler-angle
    conversions in a 2-minute run)."""
    rs = build_rotation_set(*lebedev_directions(order), n_inplane)
    return rs.base, rs.log_weights


def half_plane_permutations(freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For half-plane points ``(P, 2)`` (integers), where each symmetry sends each point.

    Returns ``index (8, P)`` and ``conj (8, P)`` bool: ``t_v(k_p)`` is
    ``k[index[v, p]]`` (``conj`` False) or ``-k[index[v, p]]`` (``conj`` True).
    """
    k = np.asarray(np.round(freqs), dtype=np.int64)
    lookup = {tuple(p): i for i, p in enumerate(k)}
    t2 = VARIANT_MATRICES[:, :2, :2].astype(np.int64)  # (8, 2, 2)
    index = np.empty((8, len(k)), dtype=np.int64)
    conj = np.zeros((8, len(k)), dtype=bool)
    for v in range(8):
        for p, q in enumerate(k @ t2[v].T):
            q = tuple(q)
            if q in lookup:
                index[v, p] = lookup[q]
            else:
                index[v, p] = lookup[(-q[0], -q[1])]
                conj[v, p] = True
    return index, conj


def expand_variants(rows: torch.Tensor, ctf2: torch.Tensor, index: torch.Tensor,
                    conj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Data-side rows moved to where each of the 8 variants puts their points.

    rows:  ``(B, S, P)`` complex, one row per (image, shift) over the half-plane points;
    ctf2:  ``(B, P)`` real, per image (the norm term's CTF weights);
    index, conj: ``(8, P)`` from :func:`half_plane_permutations`.
    Returns ``(B, 8, S, P)`` and ``(B, 8, P)``: variant v's row holds point p at ``index[v, p]``
    (conjugated where ``conj[v, p]``), so a base rotation's slice scores as the rotation
    ``base @ VARIANT_MATRICES[v]``.
    """
    b, s, p = rows.shape
    moved = torch.where(conj[None, :, None, :], rows.conj()[:, None], rows[:, None])       # (B, 8, S, P)
    out = torch.zeros((b, 8, s, p), dtype=rows.dtype, device=rows.device)
    out.scatter_(3, index[None, :, None, :].expand(b, 8, s, p), moved)
    ctf2v = torch.zeros((b, 8, p), dtype=ctf2.dtype, device=ctf2.device)
    ctf2v.scatter_(2, index[None].expand(b, 8, p), ctf2[:, None, :].expand(b, 8, p))
    return out, ctf2v


def variant_tables() -> tuple[np.ndarray, np.ndarray]:
    """``mult (8, 8)``: ``T_u T_v = T_mult[u, v]``; ``solve (8, 8)``: ``T_u T_solve[u, w] = T_w``."""
    v = VARIANT_MATRICES
    prod = np.einsum("uij,vjk->uvik", v, v)
    mult = np.argmin(np.abs(prod[:, :, None] - v[None, None]).sum((-1, -2)), axis=2)
    solve = np.empty((8, 8), dtype=np.int64)
    for u in range(8):
        for v_ in range(8):
            solve[u, mult[u, v_]] = v_
    return mult, solve


def rotation_parents(fine_base: np.ndarray, coarse: RotationSet, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest coarse rotations (geodesic) of each fine base rotation.

    fine_base: ``(Mf, 3, 3)``; coarse: a :class:`RotationSet` (full set ``B_c T_u``, ``8 Mc``).
    Returns ``variant (Mf, k)`` u and ``base (Mf, k)`` c of the nearest ``B_c T_u``, nearest first.
    Because the coarse set is closed under ``R -> R T_v``, the nearest coarse rotations of ``B_f T_v``
    are ``B_c T_u T_v``.
    """
    rots, _ = coarse.all_rotations()                                                   # (8 Mc, 3, 3)
    q = Rotation.from_matrix(rots).as_quat()
    tree = cKDTree(np.concatenate([q, -q]))                                            # q and -q: one rotation
    _, idx = tree.query(Rotation.from_matrix(fine_base).as_quat(), k=2 * k)
    idx = idx.reshape(len(fine_base), -1) % len(rots)
    # q and -q of one coarse rotation can both be among the 2k nearest: keep the first k distinct
    out = np.empty((len(fine_base), k), dtype=np.int64)
    for i, row in enumerate(idx):
        out[i] = list(dict.fromkeys(row.tolist()))[:k]
    return out // len(coarse.base), out % len(coarse.base)
