"""Point groups C_n, D_n, T, O and I in RELION's standard orientations.

Operators are ``(3, 3)`` rotation matrices acting on ``(x, y, z)`` coordinates
about the box centre (voxel ``N // 2`` on every axis), the same coordinates as
``forward/rotations.py``.  A map ``V`` has the symmetry ``G`` when
``V(g p) = V(p)`` for every ``g`` in ``G``.

RELION 3.1 (``src/symmetries.cpp``) builds each group from generating axes and
closes the set under multiplication; the axes, ``(x, y, z)``:

- ``Cn``: an n-fold axis along z.
- ``Dn``: Cn, and a 2-fold axis along x.
- ``T``:  a 3-fold along z and a 2-fold along ``(0, 0.816496, 0.577350)``.
- ``O``:  a 3-fold along ``(1, 1, 1) / sqrt(3)`` and a 4-fold along z.
- ``I``:  RELION's default ``I`` = ``I2``: a 2-fold along z, a 5-fold along
  ``(0.525731, 0, 0.850651)`` and a 3-fold along ``(0, 0.356822, 0.934172)``.

A group is closed under inversion, so whether an operator or its transpose
rotates the map does not change the group, the symmetrised map, or which maps
are symmetric.  ``tests/test_symmetry.py::test_symmetrise_matches_relion``
checks :func:`symmetrise` against ``relion_image_handler --sym``.
"""
from __future__ import annotations

import functools
import re

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ..io.errors import InputError

__all__ = ["point_group", "parse_group", "group_generators", "symmetrise", "rotation_about",
           "asymmetric_unit_share", "asymmetric_unit_mask", "reduce_quadrature"]

_GOLDEN = (1 + 5 ** 0.5) / 2


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# Exact forms of RELION's rounded axes: T's 2-fold is (0, sqrt(2/3), sqrt(1/3)); I2's 5-fold is
# (1, 0, phi) / |.|, its 3-fold (0, 1, phi^2) / |.|.
_T_AXES = ((3, (0, 0, 1)), (2, (0, np.sqrt(2 / 3), np.sqrt(1 / 3))))
_O_AXES = ((3, (1, 1, 1)), (4, (0, 0, 1)))
_I_AXES = ((2, (0, 0, 1)), (5, (1, 0, _GOLDEN)), (3, (0, 1, _GOLDEN ** 2)))


def rotation_about(axis, angle) -> np.ndarray:
    """``(3, 3)`` rotation by ``angle`` radians (right hand) about the unit ``axis`` ``(x, y, z)``."""
    return Rotation.from_rotvec(_unit(axis) * float(angle)).as_matrix()


def parse_group(name: str) -> tuple[str, int]:
    """``"c3"``, ``"D7"``, ``"t"``, ``"O"``, ``"I"`` -> ``(kind, n)``; kind in ``C D T O I``.

    Case-insensitive; ``I2`` is accepted as RELION's name for its default ``I``.  Anything else
    (mirror groups, other icosahedral settings, ``C0``, ``D1``) raises :class:`InputError`.
    """
    text = str(name).strip().upper()
    m = re.fullmatch(r"([CD])(\d{1,3})|([TOI])|(I2)", text)
    if not m:
        raise InputError(name, "not a supported point group: use C<n>, D<n>, T, O or I (RELION's I2)")
    if m.group(1):
        n = int(m.group(2))
        if n < 1 or (m.group(1) == "D" and n < 2):
            raise InputError(name, "not a point group: C<n> needs n >= 1, D<n> needs n >= 2")
        return m.group(1), n
    return ("I", 60) if m.group(4) else (m.group(3), {"T": 12, "O": 24, "I": 60}[m.group(3)])


def group_generators(name: str) -> list[tuple[int, np.ndarray]]:
    """RELION's generating axes of ``name``: a list of ``(fold, unit axis (x, y, z))``."""
    kind, n = parse_group(name)
    if kind == "C":
        axes = [(n, (0, 0, 1))] if n > 1 else []
    elif kind == "D":
        axes = [(n, (0, 0, 1)), (2, (1, 0, 0))]
    else:
        axes = {"T": _T_AXES, "O": _O_AXES, "I": _I_AXES}[kind]
    return [(fold, _unit(axis)) for fold, axis in axes]


def _close(generators: list[np.ndarray], limit: int = 200) -> np.ndarray:
    """The closure of a set of rotations under multiplication, identity first."""
    elements = [np.eye(3)]

    def known(m):
        return any(np.abs(m - e).max() < 1e-6 for e in elements)

    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                m = g @ a
                if not known(m):
                    elements.append(m)
                    new.append(m)
                    if len(elements) > limit:
                        raise ValueError("the generators do not close into a finite group")
        frontier = new
    return np.stack(elements)


@functools.cache
def _point_group(kind: str, n: int) -> np.ndarray:
    name = f"{kind}{n}" if kind in "CD" else kind
    gens = [rotation_about(axis, 2 * np.pi / fold) for fold, axis in group_generators(name)]
    group = _close(gens)
    group[np.abs(group) < 1e-12] = 0.0
    group.setflags(write=False)
    return group


def point_group(name: str) -> np.ndarray:
    """The rotations of point group ``name`` in RELION's orientation: ``(|G|, 3, 3)``, identity first.

    Orders: Cn n, Dn 2n, T 12, O 24, I 60.  Matrices act on ``(x, y, z)`` coordinates.
    """
    kind, n = parse_group(name)
    group = _point_group(kind, n if kind in "CD" else 0)
    expected = {"C": n, "D": 2 * n, "T": 12, "O": 24, "I": 60}[kind]
    assert len(group) == expected, (name, len(group))
    return group.copy()


def _as_group(group) -> np.ndarray:
    return point_group(group) if isinstance(group, str) else np.asarray(group, dtype=np.float64)


def symmetrise(volume, group, *, batch: int = 12) -> np.ndarray:
    """The average of ``volume`` rotated by every operator of ``group`` (as RELION's ``--sym``).

    volume: ``(N, N, N)`` map indexed ``[z, y, x]``, rotated about voxel ``N // 2``.
    group:  a name (``"D7"``) or ``(|G|, 3, 3)`` rotations forming a group (e.g. a group in another
            orientation, ``Q @ point_group(name) @ Q.T``).
    Trilinear interpolation, zero outside the box.  Returns float64 ``(N, N, N)``.
    """
    from ..align import rotate_volume  # rotate_volume(V, R)(p) = V(R^T p)

    ops = torch.as_tensor(_as_group(group))
    vol = torch.as_tensor(np.asarray(volume, dtype=np.float64))
    total = torch.zeros_like(vol)
    for i in range(0, len(ops), batch):
        total += rotate_volume(vol, ops[i:i + batch]).sum(0)
    return (total / len(ops)).numpy()


# A direction with no symmetry axis of any supported group in RELION's orientation (nor of the groups
# rotated by the small rotations a quadrature may apply): the seed of the asymmetric unit.
_SEED = _unit((0.1834, 0.2776, 0.9430))


def _seed_for(group: np.ndarray) -> np.ndarray:
    """A direction that no operator of ``group`` other than the identity leaves (nearly) fixed."""
    seed = _SEED
    for _ in range(20):
        moved = np.sort(np.linalg.norm(group @ seed - seed, axis=1))
        if len(group) == 1 or moved[1] > 1e-2:
            return seed
        seed = _unit(seed + np.array([0.05, -0.11, 0.02]))
    raise ValueError("no direction off every symmetry axis found")


def asymmetric_unit_share(directions, group, *, tolerance: float = 1e-9) -> np.ndarray:
    """Each direction's share of one asymmetric unit of the sphere under ``group``.

    directions: ``(D, 3)`` unit vectors ``(x, y, z)``.
    group:      a name or ``(|G|, 3, 3)`` rotations.
    Returns ``(D,)`` in ``[0, 1]``: 1 inside the unit, 0 outside, ``1/k`` on a boundary shared by k
    units.  The unit is the Dirichlet cell of a seed direction ``s`` with no symmetry axis: the
    directions nearer to ``s`` than to any other ``g s``.  The cells ``g · unit`` tile the sphere,
    so for every direction ``d``, ``sum_g share(g^T d) = 1``: each direction is counted once.
    """
    ops = _as_group(group)
    d = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    images = ops @ _seed_for(ops)               # (|G|, 3): g s
    closeness = d @ images.T                    # (D, |G|)
    best = closeness.max(1, keepdims=True)
    ties = closeness >= best - tolerance
    return np.where(ties[:, 0], 1.0 / ties.sum(1), 0.0)


def asymmetric_unit_mask(rotations, group) -> np.ndarray:
    """``(M,)`` share in ``[0, 1]`` of each rotation in one asymmetric unit of SO(3) under ``group``.

    rotations: ``(M, 3, 3)`` image-to-volume rotations (``forward/rotations.py``).
    For a map with ``V(g p) = V(p)``, the rotations ``R`` and ``g R`` give the same projection, and
    ``g R`` has beam direction ``g R[:, 2]``.  The unit holds the rotations whose beam direction
    ``R[:, 2]`` lies in :func:`asymmetric_unit_share`'s unit of the sphere, any in-plane angle.
    ``share > 0`` selects the rotations to keep (about ``M / |G|`` of them).
    """
    r = np.asarray(rotations, dtype=np.float64)
    return asymmetric_unit_share(r[:, :, 2], group)


def reduce_quadrature(rotations, weights, group) -> tuple[np.ndarray, np.ndarray]:
    """A rotation quadrature restricted to one asymmetric unit: ``(K, 3, 3)`` rotations, ``(K,)`` weights.

    The kept weights are the originals times their share, rescaled to sum 1.  For a G-symmetric map
    ``sum_k w'_k f(R'_k)`` approximates the full quadrature's ``sum_j w_j f(R_j)`` with about
    ``1 / |G|`` of the rotations; exactly when the quadrature's direction set is G-invariant.
    """
    r = np.asarray(rotations, dtype=np.float64)
    share = asymmetric_unit_mask(r, group)
    keep = share > 0
    w = np.asarray(weights, dtype=np.float64)[keep] * share[keep]
    return r[keep], w / w.sum()
