"""Rotations and RELION's Euler angles.

A *rotation* here is a ``(..., 3, 3)`` matrix R that maps image-frame
coordinates ``(x, y, z)`` to volume-frame coordinates.  An image is the
projection along the image z axis, so its 2D transform at frequency
``(kx, ky)`` is the volume transform at ``R @ (kx, ky, 0)`` and its real-space
value at ``(x, y)`` is ``sum_z V(R @ (x, y, z))``.

RELION stores ZYZ Euler angles (rot, tilt, psi) in degrees and builds the
matrix ``A = Rz(psi) Ry(tilt) Rz(rot)`` (passive rotations), which maps volume
coordinates to image coordinates.  So ``R = A.T``; with scipy this is
``Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix()``.
``tests/test_relion_agreement.py::test_projection_matches_relion_project`` pins
this against ``relion_project``.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

__all__ = ["relion_euler_to_matrix", "matrix_to_relion_euler", "random_rotations"]


def relion_euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION (rot, tilt, psi) in degrees, shape ``(n,)`` each -> ``(n, 3, 3)`` rotations R."""
    angles = np.stack([np.atleast_1d(rot), np.atleast_1d(tilt), np.atleast_1d(psi)], axis=-1)
    return Rotation.from_euler("ZYZ", angles.astype(np.float64), degrees=True).as_matrix()


def matrix_to_relion_euler(rotations) -> np.ndarray:
    """``(n, 3, 3)`` rotations R -> ``(n, 3)`` RELION (rot, tilt, psi) in degrees."""
    r = np.asarray(rotations.detach().cpu() if isinstance(rotations, torch.Tensor) else rotations)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gimbal lock at tilt = 0 or 180 is harmless
            return Rotation.from_matrix(r.reshape(-1, 3, 3)).as_euler("ZYZ", degrees=True)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` rotations drawn uniformly (Haar measure) on SO(3)."""
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return Rotation.from_quat(q).as_matrix()
