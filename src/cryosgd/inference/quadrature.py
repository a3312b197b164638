"""Quadrature over poses: rotations on SO(3) times shifts in the image plane.

The marginal likelihood ``p(I | V) = ∫∫ p(I | R, t, V) p(R) p(t) dR dt`` is replaced by
``sum_j w_j p(I | R_j, t_j, V)`` over a product grid (paper, eq. 4):

- rotations: Lebedev directions on the sphere (the beam direction ``R[:, 2]``, see
  ``forward/rotations.py``) times ``n_inplane`` uniform in-plane angles.  The weights are a
  probability measure (Haar, total 1), not ``4 pi`` or ``8 pi**2``: weights summing to ``8 pi**2``
  add ``log(8 pi**2) = 4.37`` nats to every log-likelihood.
- shifts: a uniform grid inside a disc of radius ``max_shift`` pixels, weighted by an isotropic
  normal prior truncated to the disc, total 1.  Shifts are ``(x, y)`` in pixels as in
  ``forward/shift.py``.

Rotation ``d * n_inplane + i`` has beam direction ``directions[d]`` and in-plane angle
``2 pi i / n_inplane``.  With a Lebedev rule of degree L and n uniform in-plane angles the product
integrates every Wigner-D function of degree ``l <= min(L, n - 1)`` exactly.

``choose_quadrature`` sizes everything from the band limit r (Fourier pixels); the rules and a
table of sizes are in ``docs/quadrature.md``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import lebedev_rule

from ..forward.rotations import relion_euler_to_matrix

__all__ = [
    "LEBEDEV_POINTS",
    "Quadrature",
    "lebedev_directions",
    "available_lebedev_orders",
    "lebedev_order_for_step",
    "finest_band_limit",
    "directions_for_step",
    "so3_quadrature",
    "shift_grid",
    "angular_step",
    "inplane_count",
    "shift_step_for_band_limit",
    "choose_quadrature",
]

# Lebedev order (degree of polynomial exactness) -> number of points, as scipy ships them.
LEBEDEV_POINTS = {
    3: 6, 5: 14, 7: 26, 9: 38, 11: 50, 13: 74, 15: 86, 17: 110, 19: 146, 21: 170, 23: 194,
    25: 230, 27: 266, 29: 302, 31: 350, 35: 434, 41: 590, 47: 770, 53: 974, 59: 1202, 65: 1454,
    71: 1730, 77: 2030, 83: 2354, 89: 2702, 95: 3074, 101: 3470, 107: 3890, 113: 4334, 119: 4802,
    125: 5294, 131: 5810,
}
# These rules have negative weights; log w_j is undefined for them, so they are not offered.
_NEGATIVE_WEIGHT_ORDERS = (13, 25, 27)

# A generalised spiral of N points (Saff & Kuijlaars 1997) has nearest-neighbour spacing
# 3.6 / sqrt(N) radians, so spacing theta needs (3.6 / theta)**2 directions.
_SPIRAL_SPACING = 3.6


@dataclass(frozen=True, eq=False)
class Quadrature:
    """Weighted rotations and shifts; the quadrature points are their product.

    rotations:        ``(M, 3, 3)`` image-to-volume rotations, ``M = D * n_inplane``,
                      index ``d * n_inplane + i``.
    rotation_weights: ``(M,)`` positive, sum 1.
    shifts:           ``(S, 2)`` shifts (x, y) in pixels.
    shift_weights:    ``(S,)`` positive, sum 1.
    directions:       ``(D, 3)`` unit beam directions, ``rotations[d * n_inplane + i][:, 2]``.
    n_inplane:        in-plane angles per direction.

    The arrays are float64 copies, read-only.
    """

    rotations: np.ndarray
    rotation_weights: np.ndarray
    shifts: np.ndarray
    shift_weights: np.ndarray
    directions: np.ndarray
    n_inplane: int

    def __post_init__(self):
        for name in ("rotations", "rotation_weights", "shifts", "shift_weights", "directions"):
            value = np.array(getattr(self, name), dtype=np.float64)
            value.setflags(write=False)
            object.__setattr__(self, name, value)
        object.__setattr__(self, "n_inplane", int(self.n_inplane))
        n_dir, m = len(self.directions), len(self.rotations)
        if self.rotations.shape != (n_dir * self.n_inplane, 3, 3):
            raise ValueError(f"rotations {self.rotations.shape} do not match {n_dir} directions x "
                             f"{self.n_inplane} in-plane angles")
        if self.rotation_weights.shape != (m,) or self.shifts.shape != (len(self.shift_weights), 2):
            raise ValueError("weights do not match rotations or shifts")
        for name in ("rotation_weights", "shift_weights"):
            w = getattr(self, name)
            if np.any(w <= 0) or abs(w.sum() - 1) > 1e-9:
                raise ValueError(f"{name} must be positive and sum to 1 (sum {w.sum()!r})")

    @property
    def n_rotations(self) -> int:
        return len(self.rotations)

    @property
    def n_shifts(self) -> int:
        return len(self.shifts)

    def describe(self) -> str:
        """One line, e.g. ``"590 directions x 41 in-plane = 24190 rotations, 25 shifts"``."""
        s = self.n_shifts
        return (f"{len(self.directions)} directions x {self.n_inplane} in-plane = "
                f"{self.n_rotations} rotations, {s} shift{'' if s == 1 else 's'}")


def available_lebedev_orders() -> list[int]:
    """Lebedev orders (degrees of exactness) with positive weights, ascending."""
    return [n for n in LEBEDEV_POINTS if n not in _NEGATIVE_WEIGHT_ORDERS]


@functools.cache
def _lebedev(order: int) -> tuple[np.ndarray, np.ndarray]:
    if order not in LEBEDEV_POINTS:
        raise ValueError(f"no Lebedev rule of order {order}; orders: {available_lebedev_orders()}")
    if order in _NEGATIVE_WEIGHT_ORDERS:
        raise ValueError(f"the Lebedev rule of order {order} has negative weights; "
                         f"orders with positive weights: {available_lebedev_orders()}")
    points, weights = lebedev_rule(order)  # (3, D), (D,) summing to 4 pi
    points, weights = np.ascontiguousarray(points.T), weights / weights.sum()
    points.setflags(write=False)
    weights.setflags(write=False)
    return points, weights


def lebedev_directions(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Lebedev rule of the given order: ``(D, 3)`` unit vectors and ``(D,)`` weights summing to 1.

    Exact for polynomials of degree <= ``order`` averaged over the sphere.
    """
    points, weights = _lebedev(int(order))
    return points.copy(), weights.copy()


def directions_for_step(angular_step: float) -> float:
    """Directions needed on the sphere for a spacing of ``angular_step`` radians: ``(3.6 / step)**2``."""
    return (_SPIRAL_SPACING / angular_step) ** 2


def finest_band_limit() -> float:
    """The largest band limit (Fourier pixels) whose angular step the largest Lebedev rule covers.

    Inverts :func:`directions_for_step` at the largest rule's size and :func:`angular_step`.
    """
    most = LEBEDEV_POINTS[available_lebedev_orders()[-1]]
    return 1.0 / math.tan(_SPIRAL_SPACING / math.sqrt(most))


def lebedev_order_for_step(angular_step: float) -> int:
    """Smallest available Lebedev order with at least ``directions_for_step(angular_step)`` points."""
    needed = directions_for_step(angular_step)
    for order in available_lebedev_orders():
        if LEBEDEV_POINTS[order] >= needed:
            return order
    largest = available_lebedev_orders()[-1]
    raise ValueError(f"an angular step of {angular_step:.4g} rad needs {needed:.0f} directions, more "
                     f"than the largest Lebedev rule ({LEBEDEV_POINTS[largest]} points, order "
                     f"{largest}); pass order= explicitly to use a coarser rule")


def _rotations_with_beam_directions(directions: np.ndarray, n_inplane: int) -> np.ndarray:
    """``(D, 3)`` unit vectors -> ``(D * n_inplane, 3, 3)`` rotations, third column ``directions[d]``.

    RELION angles rot = atan2(dy, dx), tilt = acos(dz), psi = 2 pi i / n_inplane; R[:, 2] depends
    on (rot, tilt) only, psi turns the first two columns about it.
    """
    d = np.asarray(directions, dtype=np.float64)
    rot = np.degrees(np.arctan2(d[:, 1] + 0.0, d[:, 0] + 0.0))  # + 0.0 turns -0.0 into 0.0 at the poles
    tilt = np.degrees(np.arccos(np.clip(d[:, 2], -1.0, 1.0)))
    psi = 360.0 * np.arange(n_inplane) / n_inplane
    return relion_euler_to_matrix(np.repeat(rot, n_inplane), np.repeat(tilt, n_inplane),
                                  np.tile(psi, len(d)))


def so3_quadrature(order: int, n_inplane: int) -> tuple[np.ndarray, np.ndarray]:
    """Lebedev directions of ``order`` times ``n_inplane`` uniform in-plane angles.

    Returns ``(D * n_inplane, 3, 3)`` rotations (index ``d * n_inplane + i``) and ``(D * n_inplane,)``
    weights summing to 1 (Lebedev weight / n_inplane).
    """
    if n_inplane < 1:
        raise ValueError(f"n_inplane must be >= 1, got {n_inplane}")
    rotations, weights = _so3_quadrature(int(order), int(n_inplane))
    return rotations.copy(), weights.copy()


@functools.lru_cache(maxsize=4)
def _so3_quadrature(order: int, n_inplane: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`so3_quadrature`, kept: a run builds the same rule for its kernel, its coarse level, the held-out
    images and the pose pass, and the Euler-angle conversion took 1.8 s of a 2-minute run (21 calls)."""
    directions, weights = _lebedev(order)
    rotations = _rotations_with_beam_directions(directions, n_inplane)
    return rotations, np.repeat(weights / n_inplane, n_inplane)


def shift_grid(max_shift: float, step: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Shifts on a square grid of spacing ``step`` inside the disc ``|t| <= max_shift`` (pixels).

    Weights are the isotropic normal prior ``exp(-|t|**2 / (2 sigma**2))`` truncated to the disc,
    normalised to sum 1; ``sigma = inf`` gives a flat prior.  ``max_shift = 0`` gives the single
    shift (0, 0).  Returns ``(S, 2)`` shifts (x, y), x varying fastest, and ``(S,)`` weights.
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return np.zeros((1, 2)), np.ones(1)
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (inf for a flat prior), got {sigma}")
    radius = max_shift / step  # grid units
    n = math.floor(radius * (1 + 1e-12))
    i = np.arange(-n, n + 1)
    ix, iy = np.meshgrid(i, i, indexing="xy")
    inside = ix**2 + iy**2 <= radius**2 * (1 + 1e-12)  # points on the circle count as inside
    shifts = step * np.stack([ix[inside], iy[inside]], axis=-1).astype(np.float64)
    weights = np.exp(-np.sum(shifts**2, axis=-1) / (2 * sigma**2))
    return shifts, weights / weights.sum()


def angular_step(band_limit: float) -> float:
    """Angular step in radians at which the band-edge sample moves one Fourier pixel: ``arctan(1 / r)``."""
    if not band_limit > 0:
        raise ValueError(f"band_limit must be > 0 Fourier pixels, got {band_limit}")
    return math.atan2(1.0, band_limit)


def inplane_count(angular_step: float) -> int:
    """In-plane angles for a step of ``angular_step`` radians: ``ceil(2 pi / step)``."""
    return math.ceil(2 * math.pi / angular_step * (1 - 1e-12))  # no extra angle from rounding


def shift_step_for_band_limit(band_limit: float, box: int) -> float:
    """Shift step in pixels matched to the angular step: ``box * theta / (2 pi)``.

    It turns the phase of the band-edge coefficient by ``2 pi r step / box = r theta`` radians (about
    1), the number of Fourier pixels one angular step moves that coefficient.
    """
    return box * angular_step(band_limit) / (2 * math.pi)


def choose_quadrature(band_limit: float, box: int, *, max_shift: float = 0.0,
                      shift_sigma: float | None = None, order: int | None = None,
                      n_inplane: int | None = None, shift_step: float | None = None) -> Quadrature:
    """Quadrature sized for the band limit ``band_limit`` (Fourier pixels) of a ``box``-pixel image.

    Defaults (``docs/quadrature.md``), each overridable:
    angular step ``theta = arctan(1 / r)``; ``n_inplane = ceil(2 pi / theta)``; Lebedev ``order`` the
    smallest with at least ``(3.6 / theta)**2`` points; ``shift_step = box * theta / (2 pi)`` pixels;
    ``shift_sigma = max_shift / 2`` pixels (``inf`` for a flat prior on the disc).
    """
    theta = angular_step(band_limit)
    order = lebedev_order_for_step(theta) if order is None else int(order)
    n_inplane = inplane_count(theta) if n_inplane is None else int(n_inplane)
    directions, _ = _lebedev(order)
    rotations, rotation_weights = so3_quadrature(order, n_inplane)
    if max_shift > 0:
        step = shift_step_for_band_limit(band_limit, box) if shift_step is None else shift_step
        sigma = max_shift / 2 if shift_sigma is None else shift_sigma
        shifts, shift_weights = shift_grid(max_shift, step, sigma)
    else:
        shifts, shift_weights = shift_grid(0.0, 1.0, 1.0)
    return Quadrature(rotations=rotations, rotation_weights=rotation_weights, shifts=shifts,
                      shift_weights=shift_weights, directions=directions, n_inplane=n_inplane)
