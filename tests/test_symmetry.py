"""Point groups (RELION's orientations), symmetrised maps, asymmetric units.

``test_symmetrise_matches_relion`` is the referee: ``relion_image_handler --sym G`` on an asymmetric
map (the 5FUU density) against :func:`cryosgd.symmetry.symmetrise`.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import ndimage

from cryosgd.forward.density import density_from_model
from cryosgd.fourier import soft_mask
from cryosgd.inference.quadrature import lebedev_directions, so3_quadrature
from cryosgd.io import InputError, read_map, write_map
from cryosgd.symmetry import (
    asymmetric_unit_mask,
    asymmetric_unit_share,
    parse_group,
    point_group,
    reduce_quadrature,
    rotation_about,
    symmetrise,
)
from cryosgd.symmetry.groups import _seed_for
from relion import RelionPrograms, relion_programs  # noqa: F401  (relion_programs: a fixture)

GROUPS = ["C1", "C2", "C5", "D2", "D7", "T", "O", "I"]
ORDERS = {"C1": 1, "C2": 2, "C5": 5, "D2": 4, "D7": 14, "T": 12, "O": 24, "I": 60}


def _masked_cc(a, b, radius):
    m = soft_mask(a.shape[0], radius).numpy()
    a = (a - a.mean()) * m
    b = (b - b.mean()) * m
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _index_in(group, m, tol=1e-6):
    d = np.abs(group - m).reshape(len(group), -1).max(1)
    return int(d.argmin()) if d.min() < tol else -1


@pytest.mark.parametrize("name", GROUPS)
def test_groups_are_closed_rotations_of_the_right_order(name):
    g = point_group(name)
    assert g.shape == (ORDERS[name], 3, 3)
    assert np.allclose(g[0], np.eye(3))
    assert np.allclose(g @ g.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(g), 1.0)
    # closed under products and inverses, and no element twice
    for a in g:
        assert all(_index_in(g, a @ b) >= 0 for b in g)
        assert _index_in(g, a.T) >= 0
    assert len({tuple(np.round(m, 6).ravel()) for m in g}) == len(g)


def test_relion_axes():
    """RELION's generating axes are axes of the groups as built (symmetries.cpp, fill_symmetry_class)."""
    relion_axes = {
        "D7": [(7, (0, 0, 1)), (2, (1, 0, 0))],
        "T": [(3, (0, 0, 1)), (2, (0, 0.816496, 0.577350))],
        "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0, 0, 1))],
        "I": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807)), (3, (0, 0.356822076, 0.934172364))],
    }
    for name, axes in relion_axes.items():
        g = point_group(name)
        for fold, axis in axes:
            assert _index_in(g, rotation_about(axis, 2 * np.pi / fold), tol=1e-5) >= 0, (name, fold, axis)
    # RELION's other icosahedral setting, I1 (5-fold along (0.850651, 0, -0.525731)), is a different group
    assert _index_in(point_group("I"), rotation_about((0.85065080702670, 0, -0.5257311142635), 0.4 * np.pi)) < 0


def test_parse_group_names():
    assert parse_group("d7") == ("D", 7)
    assert parse_group(" c12 ") == ("C", 12)
    assert parse_group("i2") == ("I", 60)
    assert parse_group("t") == ("T", 12)
    for bad in ["C0", "D1", "Q3", "C", "D7h", "I1", "", "C3v", "O2"]:
        with pytest.raises(InputError):
            parse_group(bad)


def _sphere(n, rng):
    d = rng.standard_normal((n, 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


@pytest.mark.parametrize("name", GROUPS)
def test_asymmetric_unit_tiles_the_sphere_once(name):
    rng = np.random.default_rng(1)
    g = point_group(name)
    q = rotation_about(rng.standard_normal(3), 0.7)
    for ops in (g, q @ g @ q.T):  # RELION's orientation and an arbitrary one
        d = _sphere(3000, rng)
        # d lies in g . unit  <=>  g^T d lies in the unit; rows of d @ g are g^T d
        total = sum(asymmetric_unit_share(d @ m, ops) for m in ops)
        np.testing.assert_allclose(total, 1.0, atol=1e-12)
        if len(ops) > 1:
            # directions on a cell boundary: midway between the seed and its nearest image
            seed = _seed_for(ops)
            images = ops @ seed
            nearest = images[np.argsort(np.linalg.norm(images - seed, axis=1))[1]]
            edge = ((seed + nearest) / np.linalg.norm(seed + nearest))[None]
            assert asymmetric_unit_share(edge, ops)[0] == pytest.approx(0.5)
            assert sum(asymmetric_unit_share(edge @ m, ops) for m in ops)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("name", GROUPS)
def test_reduced_quadrature_integrates_symmetric_functions(name):
    """One asymmetric unit of a Lebedev x in-plane quadrature: 1/|G| of the rotations, the same integral."""
    g = point_group(name)
    rotations, weights = so3_quadrature(41, 12)
    kept, w = reduce_quadrature(rotations, weights, g)
    assert abs(len(kept) * len(g) / len(rotations) - 1) < 0.1
    assert np.isclose(w.sum(), 1.0)
    # a G-invariant function of the pose: f(g R) = f(R)
    u = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    v = np.array([0.9, 0.2, -0.1]) / np.linalg.norm([0.9, 0.2, -0.1])

    def f(r):
        return sum(np.exp(2 * r[:, :, 2] @ (m @ u)) * (2 + r[:, :, 0] @ (m @ v)) for m in g)

    full = float(weights @ f(rotations))
    reduced = float(w @ f(kept))
    assert abs(reduced / full - 1) < 0.01, (reduced, full)
    share = asymmetric_unit_mask(rotations, g)
    d, wd = lebedev_directions(41)
    # the unshrunk weight of the unit is 1/|G| only up to the rule's coarseness (I: ~10 of 590 directions)
    assert abs(wd @ asymmetric_unit_share(d, g) * len(g) - 1) < 0.2
    assert np.isclose(weights @ share * len(g), wd @ asymmetric_unit_share(d, g) * len(g))


def test_symmetrised_map_is_symmetric():
    rng = np.random.default_rng(2)
    vol = ndimage.gaussian_filter(rng.standard_normal((24, 24, 24)), 1.5) * soft_mask(24, 8.0).numpy()
    sym = symmetrise(vol, "D3")
    again = symmetrise(sym, "D3")
    # symmetrising twice changes little (interpolation only), and the result is not the input
    assert _masked_cc(sym, again, 8.0) > 0.99
    assert _masked_cc(sym, vol, 8.0) < 0.7
    assert np.allclose(symmetrise(vol, "C1"), vol)


@pytest.fixture(scope="module")
def asymmetric_map(test_data):
    return density_from_model(test_data / "5fuu.pdb.gz", 48, 4.0)


@pytest.mark.relion
@pytest.mark.parametrize("name", ["C3", "D7", "T", "O", "I"])
def test_symmetrise_matches_relion(tmp_path, asymmetric_map, relion_programs, name):
    """``relion_image_handler --sym`` and ours agree on an asymmetric map; a group 5 degrees off does not.

    Measured (48 px, 4 Å/px): correlation 1.0000000 for all five groups.  The same group tilted
    5 degrees about x, or turned 90 degrees about z (for D7, T and I), gives 0.95-0.998, so the
    bar is 0.9999.
    """
    handler = shutil.which("relion_image_handler")
    if handler is None:
        pytest.fail("RELION is installed but relion_image_handler is not on PATH")
    relion = RelionPrograms({**relion_programs.paths, "relion_image_handler": handler})
    write_map(tmp_path / "asym.mrc", asymmetric_map, 4.0)
    relion.run("relion_image_handler", "--i", "asym.mrc", "--o", "sym.mrc", "--sym", name, cwd=tmp_path)
    theirs, _ = read_map(tmp_path / "sym.mrc")
    ours = symmetrise(asymmetric_map, name)
    radius = 20.0
    assert _masked_cc(theirs, asymmetric_map, radius) < 0.9  # the map is not symmetric to begin with
    assert _masked_cc(theirs, ours, radius) > 0.9999
    assert np.isclose((theirs * ours).sum() / (ours * ours).sum(), 1.0, atol=1e-3)
    tilt = rotation_about((1, 0, 0), np.radians(5))
    g = point_group(name)
    assert _masked_cc(theirs, symmetrise(asymmetric_map, tilt @ g @ tilt.T), radius) < 0.9995
