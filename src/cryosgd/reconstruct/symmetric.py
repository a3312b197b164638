"""Training under a point group: the kernel over one asymmetric unit, with its gradient kept symmetric.

With ``Settings.symmetry = G`` the density stays in the subspace of G-symmetric maps:

- the random start is symmetrised once (:func:`symmetrise_tensor`);
- every gradient is symmetrised (:class:`SymmetricKernel`), which is the gradient of the objective
  restricted to symmetric maps (the average over G is the orthogonal projection onto them), and
  the likelihood itself is the quadrature over one asymmetric unit
  (:func:`cryosgd.inference.asymmetric_unit.restrict_to_asymmetric_unit`, about ``|G| / 2`` times
  fewer base rotations), which for a symmetric map approximates the full quadrature;
- positivity and the spherical mask commute with every rotation about the centre, and the
  optimisers' steps are linear combinations of gradients, so the steps stay symmetric;
- the final map is symmetrised once, to remove what interpolation left.

Symmetrising the density itself after every step would also keep it symmetric, but each
symmetrisation interpolates (trilinear) and so low-passes the map: applied at every step it blurs
the density step after step, while symmetrising the gradient only smooths the update
(``docs/reconstruction.md`` has the measurement).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.asymmetric_unit import group_operators
from ..io import InputError
from ..symmetry.groups import parse_group

__all__ = ["symmetrise_tensor", "SymmetricKernel", "check_symmetry"]


def symmetrise_tensor(volume: torch.Tensor, group, *, batch: int = 12) -> torch.Tensor:
    """The average of ``volume`` ``(N, N, N)`` ([z, y, x]) rotated by every operator of ``group``.

    group: a name (``"D7"``) or ``(|G|, 3, 3)`` rotations about voxel ``N // 2``, acting on (x, y, z).
    Trilinear interpolation, zero outside the box (as :func:`cryosgd.symmetry.symmetrise`, on the
    volume's device and in its dtype).  C1 returns ``volume``.
    """
    ops = torch.as_tensor(group_operators(group), dtype=volume.dtype, device=volume.device)
    if len(ops) == 1:
        return volume
    n = volume.shape[-1]
    c = torch.arange(n, dtype=volume.dtype, device=volume.device) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    p = torch.stack([x, y, z], -1).reshape(-1, 3)                                     # (N^3, 3) (x, y, z)
    total = torch.zeros_like(volume)
    for i in range(0, len(ops), batch):
        r = ops[i:i + batch]
        src = torch.einsum("bji,pj->bpi", r, p)                                          # R^T p
        grid = ((src + n // 2) * (2 / (n - 1)) - 1).reshape(len(r), n, n, n, 3)
        out = F.grid_sample(volume[None, None].expand(len(r), 1, n, n, n), grid, mode="bilinear",
                            padding_mode="zeros", align_corners=True)
        total += out[:, 0].sum(0)
    return total / len(ops)


class SymmetricKernel:
    """A likelihood kernel (quadrature over one asymmetric unit of ``group``) whose gradient is
    symmetrised: the gradient with respect to G-symmetric maps.  Everything else (``prepare``,
    ``chunk``, ``last_stats``, ...) is the wrapped kernel's."""

    def __init__(self, kernel, group):
        self.kernel = kernel
        self.group = np.asarray(group_operators(group))

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def __call__(self, volume: torch.Tensor, batch, *, gradient: bool = True, poses: bool = True):
        res = self.kernel(volume, batch, gradient=gradient, poses=poses)
        if res.gradient is not None:
            res.gradient = symmetrise_tensor(res.gradient, self.group)
        return res


def check_symmetry(name: str) -> str:
    """``name`` as RELION writes it (``"d7"`` -> ``"D7"``), or an :class:`InputError` naming ``--symmetry``."""
    try:
        kind, n = parse_group(name)
    except InputError as err:
        raise InputError("--symmetry", f"{name!r}: {err.problem}") from None
    return f"{kind}{n}" if kind in "CD" else kind
