"""Quadrature over poses: exactness on the sphere and SO(3), shift prior moments, documented sizes."""
import math

import numpy as np
import pytest
from scipy.integrate import lebedev_rule
from scipy.special import eval_legendre, gammaln, ive

from cryosgd.forward.rotations import random_rotations
from cryosgd.fourier import band_limit_px, nyquist_fraction_px, resolution_A
from cryosgd.inference.quadrature import (
    LEBEDEV_POINTS,
    Quadrature,
    angular_step,
    available_lebedev_orders,
    choose_quadrature,
    directions_for_step,
    finest_band_limit,
    lebedev_directions,
    lebedev_order_for_step,
    shift_grid,
    so3_quadrature,
)

# Band limits of the paper's settings and their 64-pixel counterparts (Fourier pixels).
BAND_LIMITS = [nyquist_fraction_px(box, f) for box in (64, 128) for f in (0.10, 0.16)]


def sphere_monomial_mean(a: int, b: int, c: int) -> float:
    """Mean of x^a y^b z^c over the unit sphere: 0 unless all even, else
    Γ(α)Γ(β)Γ(γ) / (2π Γ(α+β+γ)) with α = (a+1)/2, ..."""
    if a % 2 or b % 2 or c % 2:
        return 0.0
    al, be, ga = (a + 1) / 2, (b + 1) / 2, (c + 1) / 2
    return math.exp(gammaln(al) + gammaln(be) + gammaln(ga) - gammaln(al + be + ga)) / (2 * math.pi)


def haar_mean_of_angle_function(f, n: int = 64) -> float:
    """Haar mean of f(ω), ω the rotation angle (density (1 - cos ω) / π on [0, π]), for f a cosine
    polynomial of degree < n - 1: the n-point trapezoid rule over [0, 2π) is exact for it."""
    omega = 2 * np.pi * np.arange(n) / n
    return float(np.mean(f(omega) * (1 - np.cos(omega))))


# ---------------------------------------------------------------------------------------------
# Lebedev rules on the sphere


def test_lebedev_table_matches_scipy_and_excludes_negative_weights():
    for order, n_points in LEBEDEV_POINTS.items():
        points, weights = lebedev_rule(order)
        assert points.shape == (3, n_points)
        assert (order in available_lebedev_orders()) == bool(np.all(weights > 0))
    assert available_lebedev_orders()[:13] == [3, 5, 7, 9, 11, 15, 17, 19, 21, 23, 29, 31, 35]
    for order in (13, 25, 27, 4):
        with pytest.raises(ValueError):
            lebedev_directions(order)


@pytest.mark.parametrize("order", [o for o in available_lebedev_orders() if o <= 71])
def test_lebedev_weights_and_exactness(order):
    x, w = lebedev_directions(order)
    assert x.shape == (LEBEDEV_POINTS[order], 3) and w.shape == (LEBEDEV_POINTS[order],)
    assert abs(w.sum() - 1) < 1e-14 and np.all(w > 0)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-15)

    # Every monomial x^a y^b z^c of degree <= order in one product: (a, b, i) @ (i, c).
    n = order + 1
    powers = x[None, :, :] ** np.arange(n)[:, None, None]  # (n, D, 3)
    table = ((w * powers[:, None, :, 0] * powers[None, :, :, 1]).reshape(n * n, -1)
             @ powers[:, :, 2].T).reshape(n, n, n)
    degree = np.add.outer(np.add.outer(np.arange(n), np.arange(n)), np.arange(n))
    for a, b, c in np.argwhere(degree <= order):
        assert abs(table[a, b, c] - sphere_monomial_mean(a, b, c)) < 1e-12
    # Zonal harmonics P_l(u·x) about random axes u have mean 0 for l >= 1: exact up to l = order,
    # missed by more than 1e-3 at l = order + 1, so the degree is what the table says.
    u = np.random.default_rng(order).standard_normal((10, 3))
    cosines = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ x.T
    for l in range(1, order + 1):
        assert np.abs(eval_legendre(l, cosines) @ w).max() < 1e-14
    assert np.abs(eval_legendre(order + 1, cosines) @ w).max() > 1e-3


def test_sphere_monomial_reference_values():
    assert sphere_monomial_mean(2, 2, 2) == pytest.approx(1 / 105, rel=1e-14)
    assert sphere_monomial_mean(2, 0, 0) == pytest.approx(1 / 3, rel=1e-14)
    assert sphere_monomial_mean(4, 0, 0) == pytest.approx(1 / 5, rel=1e-14)
    assert sphere_monomial_mean(3, 1, 0) == 0.0


def test_lebedev_smooth_functions():
    # <exp(x)> = sinh(1) over the sphere, to rounding from order 15 on.
    for order in (15, 41, 65):
        x, w = lebedev_directions(order)
        assert abs(w @ np.exp(x[:, 0]) - math.sinh(1)) < 1e-15
    # A Fisher bump exp(κ (u·x - 1)) of angular width θ (κ = 1/θ²), mean (1 - e^{-2κ}) / (2κ),
    # at the rule chosen for θ, for random u: relative error below 1e-6.
    rng = np.random.default_rng(0)
    for r in BAND_LIMITS:
        theta = angular_step(r)
        x, w = lebedev_directions(lebedev_order_for_step(theta))
        kappa = 1 / theta**2
        exact = -math.expm1(-2 * kappa) / (2 * kappa)
        u = rng.standard_normal((20, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        rel = np.abs(np.exp(kappa * (u @ x.T - 1)) @ w / exact - 1)
        assert rel.max() < 1e-6


# ---------------------------------------------------------------------------------------------
# Rotations


def test_so3_rotations_structure():
    order, n_inplane = 41, 41
    rotations, weights = so3_quadrature(order, n_inplane)
    directions, dir_weights = lebedev_directions(order)
    m = len(directions) * n_inplane
    assert rotations.shape == (m, 3, 3) and weights.shape == (m,)
    assert abs(weights.sum() - 1) < 1e-14
    np.testing.assert_allclose(weights, np.repeat(dir_weights / n_inplane, n_inplane), rtol=1e-15)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), (m, 3, 3)), atol=1e-14)
    np.testing.assert_allclose(np.linalg.det(rotations), 1, atol=1e-14)
    grid = rotations.reshape(len(directions), n_inplane, 3, 3)
    # Third column = beam direction; in-plane angle i turns the first two columns by 2πi/n.
    np.testing.assert_allclose(grid[:, :, :, 2], np.broadcast_to(directions[:, None], grid[:, :, :, 2].shape),
                               atol=1e-14)
    psi = 2 * np.pi * np.arange(n_inplane) / n_inplane
    rz = np.zeros((n_inplane, 3, 3))
    rz[:, 0, 0] = rz[:, 1, 1] = np.cos(psi)
    rz[:, 1, 0], rz[:, 0, 1], rz[:, 2, 2] = np.sin(psi), -np.sin(psi), 1
    np.testing.assert_allclose(grid, grid[:, :1] @ rz, atol=1e-14)


def test_so3_trace_moments_exact():
    # Order 11 with 12 in-plane angles integrates Wigner-D functions of degree <= 11 exactly, hence
    # trace(R)^k for k <= 11.  Haar means of trace^k are the Riordan numbers (trivial copies in the
    # k-th tensor power of the 3-dim representation); check them by a 1D integral over the angle.
    rotations, w = so3_quadrature(11, 12)
    tr = np.trace(rotations, axis1=1, axis2=2)
    riordan = [1, 0, 1, 1, 3, 6, 15, 36, 91, 232, 603, 1585]
    for k, expected in enumerate(riordan):
        assert abs(haar_mean_of_angle_function(lambda om: (1 + 2 * np.cos(om)) ** k) - expected) < 1e-9
        assert abs(w @ tr**k - expected) < 1e-12 * 3**k
    # (trace - 1)^2 = 4 cos^2 ω: Haar mean 2.
    assert abs(w @ (tr - 1) ** 2 - 2) < 1e-13
    # Degree 12 is beyond the rule: trace^12 (mean 4213) is missed.
    assert abs(w @ tr**12 - 4213) > 1e-3


def test_so3_second_moments_exact():
    q = choose_quadrature(nyquist_fraction_px(128, 0.10), 128)
    rotations, w = q.rotations, q.rotation_weights
    r = rotations.reshape(len(w), 9)
    np.testing.assert_allclose(w @ r, 0, atol=1e-15)
    second = np.einsum("m,mi,mj->ij", w, r, r).reshape(3, 3, 3, 3)  # E[R_ij R_kl] at [i, j, k, l]
    expected = np.einsum("ik,jl->ijkl", np.eye(3), np.eye(3)) / 3
    np.testing.assert_allclose(second, expected, atol=1e-15)


@pytest.mark.parametrize("band_limit", BAND_LIMITS)
def test_so3_bump_of_angular_width_theta(band_limit):
    # exp(κ (cos ω - 1)) about a random rotation R0, ω the angle of R0ᵀR, κ = 1/θ²: a bump of
    # angular width θ.  Haar mean e^{-κ} (I0(κ) - I1(κ)).  Relative error below 1e-6.
    theta = angular_step(band_limit)
    q = choose_quadrature(band_limit, 128)
    kappa = 1 / theta**2
    exact = ive(0, kappa) - ive(1, kappa)
    for r0 in random_rotations(5, np.random.default_rng(1)):
        cos_angle = (np.einsum("ij,mij->m", r0, q.rotations) - 1) / 2
        assert abs(q.rotation_weights @ np.exp(kappa * (cos_angle - 1)) / exact - 1) < 1e-6


# ---------------------------------------------------------------------------------------------
# Shifts


def truncated_normal_variance(radius: float, sigma: float) -> float:
    """Per-axis variance of an isotropic 2D normal (std sigma) truncated to a disc."""
    u = radius**2 / (2 * sigma**2)
    return sigma**2 * (1 - (1 + u) * math.exp(-u)) / -math.expm1(-u)


def test_shift_grid_prior_moments():
    shifts, w = shift_grid(8.0, 0.05, 4.0)
    assert abs(w.sum() - 1) < 1e-14 and np.all(w > 0)
    assert np.linalg.norm(shifts, axis=1).max() <= 8.0
    np.testing.assert_allclose(w @ shifts, 0, atol=1e-14)
    assert abs(w @ (shifts[:, 0] * shifts[:, 1])) < 1e-14
    expected = truncated_normal_variance(8.0, 4.0)  # 10.9914; untruncated 16
    assert abs(expected - 10.991435) < 1e-5
    np.testing.assert_allclose(w @ shifts**2, expected, rtol=1e-3)
    # Flat prior on the disc: per-axis variance radius² / 4.
    shifts, w = shift_grid(8.0, 0.05, math.inf)
    np.testing.assert_allclose(w @ shifts**2, 16.0, rtol=1e-3)
    # The coarse default grids (128 px, 10% and 16% Nyquist) still get the variance within 4%.
    for fraction in (0.10, 0.16):
        q = choose_quadrature(nyquist_fraction_px(128, fraction), 128, max_shift=8.0)
        np.testing.assert_allclose(q.shift_weights @ q.shifts**2, expected, rtol=0.04)


def test_shift_grid_points_and_edge_cases():
    shifts, w = shift_grid(2.0, 1.0, math.inf)  # the circle's own points count
    assert len(shifts) == 13 and np.allclose(w, 1 / 13)
    assert shifts[0].tolist() == [0.0, -2.0] and shifts[-1].tolist() == [0.0, 2.0]  # x varies fastest
    shifts, w = shift_grid(0.0, 1.0, 1.0)
    assert shifts.tolist() == [[0.0, 0.0]] and w.tolist() == [1.0]
    for args in [(-1.0, 1.0, 1.0), (2.0, 0.0, 1.0), (2.0, 1.0, 0.0)]:
        with pytest.raises(ValueError):
            shift_grid(*args)


# ---------------------------------------------------------------------------------------------
# Automatic sizes


@pytest.mark.parametrize(
    "box, fraction, max_shift, order, n_dir, n_inplane, n_shift",
    [
        (128, 0.10, 8.0, 41, 590, 41, 21),
        (128, 0.16, 8.0, 65, 1454, 65, 49),
        (64, 0.10, 4.0, 19, 146, 21, 5),
        (64, 0.16, 4.0, 31, 350, 33, 13),
        (65, 0.16, 4.0, 35, 434, 34, 13),
    ],
)
def test_documented_sizes(box, fraction, max_shift, order, n_dir, n_inplane, n_shift):
    q = choose_quadrature(nyquist_fraction_px(box, fraction), box, max_shift=max_shift)
    assert (len(q.directions), q.n_inplane, q.n_shifts) == (n_dir, n_inplane, n_shift)
    assert q.n_rotations == n_dir * n_inplane
    assert lebedev_order_for_step(angular_step(nyquist_fraction_px(box, fraction))) == order
    assert abs(q.rotation_weights.sum() - 1) < 1e-13 and abs(q.shift_weights.sum() - 1) < 1e-14
    np.testing.assert_allclose(q.rotations[::n_inplane, :, 2], q.directions, atol=1e-14)


def test_paper_and_design_numbers():
    # 128 px: θ = arctan(1/6.4) and arctan(1/10.24); spiral counts 540 and 1368 directions.
    assert math.ceil(directions_for_step(angular_step(6.4))) == 540
    assert math.ceil(directions_for_step(angular_step(10.24))) == 1368
    q = choose_quadrature(10.24, 128)
    assert q.describe() == "1454 directions x 65 in-plane = 94510 rotations, 1 shift"  # paper: ≈ 95,000
    q = choose_quadrature(6.4, 128, max_shift=9.0)
    assert q.describe() == "590 directions x 41 in-plane = 24190 rotations, 25 shifts"


def test_overrides_and_limits():
    q = choose_quadrature(6.4, 128, max_shift=3.0, order=11, n_inplane=7, shift_step=1.0,
                          shift_sigma=math.inf)
    assert (len(q.directions), q.n_inplane, q.n_shifts) == (50, 7, 29)
    np.testing.assert_allclose(q.shift_weights, 1 / 29)
    # Beyond the largest Lebedev rule (5810 points) the automatic choice refuses; order= overrides.
    with pytest.raises(ValueError, match="order="):
        choose_quadrature(30.0, 128)
    assert choose_quadrature(30.0, 128, order=131, n_inplane=4).n_rotations == 4 * 5810
    with pytest.raises(ValueError):
        angular_step(0.0)


def test_quadrature_is_validated_and_read_only():
    q = choose_quadrature(3.2, 64, max_shift=4.0)
    with pytest.raises(ValueError):
        q.rotation_weights[0] = 1.0
    with pytest.raises(ValueError, match="sum to 1"):
        Quadrature(q.rotations, 2 * q.rotation_weights, q.shifts, q.shift_weights, q.directions, q.n_inplane)
    with pytest.raises(ValueError, match="in-plane"):
        Quadrature(q.rotations, q.rotation_weights, q.shifts, q.shift_weights, q.directions, q.n_inplane + 1)


def test_band_limit_conversions():
    assert nyquist_fraction_px(128, 0.16) == pytest.approx(10.24)
    # 128 px at 2.8 Å/pixel: Nyquist 5.6 Å is 64 Fourier pixels; 35 Å is 10.24.
    assert band_limit_px(5.6, 128, 2.8) == pytest.approx(64.0)
    assert band_limit_px(35.0, 128, 2.8) == pytest.approx(10.24)
    assert resolution_A(10.24, 128, 2.8) == pytest.approx(35.0)


def test_finest_band_limit_is_where_the_largest_rule_runs_out():
    r = finest_band_limit()
    assert lebedev_order_for_step(angular_step(0.999 * r)) == available_lebedev_orders()[-1]
    with pytest.raises(ValueError, match="largest Lebedev rule"):
        lebedev_order_for_step(angular_step(1.001 * r))


def test_kept_rules_are_handed_out_as_copies():
    """The rules a run builds again (kernel, held-out images, pose pass) are computed once and kept; a
    caller's change to its arrays does not reach the next caller."""
    from cryosgd.inference.quadrature import so3_quadrature
    from cryosgd.inference.rotation_set import rotation_set_for_band

    rotations, weights = so3_quadrature(11, 12)
    reference = rotations.copy()
    rotations[:] = 0.0
    weights[:] = 0.0
    again, weights_again = so3_quadrature(11, 12)
    assert np.array_equal(again, reference) and np.isclose(weights_again.sum(), 1.0)
    rs = rotation_set_for_band(6.0, 40)
    base = rs.base.copy()
    rs.base[:] = 0.0
    assert np.array_equal(rotation_set_for_band(6.0, 40).base, base)
