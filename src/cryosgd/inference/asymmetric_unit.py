"""The rotation quadrature restricted to one asymmetric unit of a point group.

A map with point-group symmetry ``G`` (``V(g p) = V(p)`` for every ``g`` in ``G``) gives the rotations
``R`` and ``g R`` the same projection, and ``g R`` has beam direction ``g R[:, 2]``.  So the
rotations whose beam direction lies in one asymmetric unit of the sphere
(:func:`cryosgd.symmetry.asymmetric_unit_share`), with every in-plane angle, stand for all the
others: for a G-symmetric map the restricted quadrature, its weights renormalised to sum 1,
approximates the full one (exactly when the direction rule is G-invariant), so log-likelihoods of
the two are comparable (``tests/test_symmetric_training.py`` measures the difference).

The symmetry acts on the left of ``R = B T_v`` (:mod:`.rotation_set`), the grid symmetries on the
right, so the restriction is per (base, variant): ``B T_v`` keeps the share of its own beam direction,
``+B[:, 2]`` for ``v < 4`` and ``-B[:, 2]`` for ``v >= 4``.  A base is dropped when all eight variants
have share 0.  The base set covers only the directions with ``z > 0``, so a base is kept when either
of its two beam directions is in the unit: the number of base rotations (the cost of the kernels)
falls by about ``|G| / 2``, not ``|G|``.  Measured at a band limit of 8.4 Fourier pixels (6,818 base
rotations): C7 1,890 (3.6x), D7 952 (7.2x), T 1,106 (6.2x), O 588 (11.6x), I 238 (28.6x); C2 none
(its unit holds one of the two beam signs of every base).
"""
from __future__ import annotations

import math

import numpy as np

from ..symmetry.groups import asymmetric_unit_share, point_group
from .rotation_set import RotationSet

__all__ = ["restrict_to_asymmetric_unit", "group_operators"]


def group_operators(group) -> np.ndarray:
    """``(|G|, 3, 3)`` rotations of a group given by name (``"D7"``) or as matrices."""
    return point_group(group) if isinstance(group, str) else np.asarray(group, dtype=np.float64)


def restrict_to_asymmetric_unit(rotations: RotationSet, group, *, margin: float = 0.0) -> RotationSet:
    """The rotations of ``rotations`` in one asymmetric unit of ``group``, weights renormalised to sum 1.

    rotations: a :class:`RotationSet` (``Mb`` base rotations).
    group:     a point-group name (``"D7"``) or ``(|G|, 3, 3)`` rotations; ``C1`` returns ``rotations``.
    margin:    radians; > 0 dilates the unit: a beam direction within about ``margin`` of the unit
               counts as in it (with a share ``1 / k`` where ``k`` cells meet): a wider set of
               candidates, for a coarse level that must reach every fine rotation of the unit
               (:mod:`.search` measures that it does not need it).
    Returns a :class:`RotationSet` of the ``K <= Mb`` kept bases with ``(K, 8)`` log weights
    (``-inf`` where a variant lies outside the unit).
    """
    ops = group_operators(group)
    if len(ops) == 1:
        return rotations
    beam = np.asarray(rotations.base, dtype=np.float64)[:, :, 2]                     # (Mb, 3)
    tolerance = 2.0 * math.sin(margin) if margin > 0 else 1e-9
    plus = asymmetric_unit_share(beam, ops, tolerance=tolerance)                     # (Mb,)
    minus = asymmetric_unit_share(-beam, ops, tolerance=tolerance)
    share = np.concatenate([np.repeat(plus[:, None], 4, 1), np.repeat(minus[:, None], 4, 1)], 1)  # (Mb, 8)
    w = np.exp(rotations.variant_log_weights()) * share
    keep = w.sum(1) > 0
    w = w[keep] / w[keep].sum()
    with np.errstate(divide="ignore"):
        return RotationSet(rotations.base[keep], np.log(w))
