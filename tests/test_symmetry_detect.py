"""``cryosgd symmetry``: the point group that best explains a map, and where its axes lie."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryosgd.align import rotate_volume
from cryosgd.cli import main
from cryosgd.forward.rotations import random_rotations, relion_euler_to_matrix
from cryosgd.io import read_map, write_map
from cryosgd.symmetry import point_group, rotation_about, symmetrise
from cryosgd.symmetry.detect import choose_group, find_symmetry


@pytest.fixture(scope="module")
def demo_map():
    from importlib.resources import files

    volume, _ = read_map(files("cryosgd") / "data" / "demo_5fuu_64px_3A.mrc")
    return volume


def _cc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _angle_between_axes(a, b):
    return np.degrees(np.arccos(min(1.0, abs(float(a @ b)) / np.linalg.norm(a) / np.linalg.norm(b))))


@pytest.fixture(scope="module")
def turned_d7(demo_map):
    """The 5FUU density made D7 in RELION's orientation, then turned by a random Q: V(p) = W(Q^T p)."""
    q = random_rotations(1, np.random.default_rng(5))[0]
    standard = symmetrise(demo_map, "D7")
    turned = rotate_volume(torch.as_tensor(standard), torch.as_tensor(q[None]))[0].numpy()
    return turned, q


def test_d7_at_a_random_orientation_is_found(turned_d7):
    volume, q = turned_d7
    report = find_symmetry(volume)
    best = report.best
    assert best.group == "D7", report.text()
    # the 7-fold axis is Q e_z; the 2-fold is one of Q Rz(k pi / 7) e_x
    (n_fold, axis), (two, two_axis) = best.axes
    assert (n_fold, two) == (7, 2)
    assert _angle_between_axes(axis, q[:, 2]) < 2.0
    true_twofolds = [q @ rotation_about((0, 0, 1), k * np.pi / 7) @ np.array([1.0, 0, 0]) for k in range(7)]
    assert min(_angle_between_axes(two_axis, t) for t in true_twofolds) < 2.0
    # the Euler angles bring the map into RELION's standard orientation: W(p) = V(R p) is D7 there
    r = relion_euler_to_matrix(*best.euler)[0]
    assert np.allclose(r, best.orientation, atol=1e-6)
    standard = rotate_volume(torch.as_tensor(volume, dtype=torch.float64), torch.as_tensor(r.T[None]))[0].numpy()
    right = _cc(standard, symmetrise(standard, "D7"))
    tilted = rotation_about((1, 0, 0), np.radians(10))
    wrong = _cc(standard, symmetrise(standard, tilted @ point_group("D7") @ tilted.T))
    assert right > 0.99 and 1 - right < (1 - wrong) / 3, (right, wrong)
    # subgroups fit as well as D7; groups the map lacks do not
    fits = {f.group: f for f in report.fits}
    assert fits["C7"].residual < 3 * fits["D7"].residual and fits["C2"].residual < 0.01
    for lacking in ("C3", "C8", "D8", "T", "O", "I"):
        assert fits[lacking].residual > 3 * fits["D7"].residual, lacking
    assert report.notes == []  # C2 and C7 fit too, and are subgroups of D7 as placed


def test_subgroup_check_and_note():
    from cryosgd.symmetry.detect import GroupFit, _is_subgroup

    q = rotation_about((1, 2, 3), 0.8)
    d7 = GroupFit("D7", 14, 1.0, q, [], np.zeros(3))
    twofold = q @ rotation_about((0, 0, 1), 3 * np.pi / 7)  # a C2 along one of D7's 2-folds
    c2 = GroupFit("C2", 2, 1.0, twofold @ rotation_about((0, 1, 0), np.pi / 2), [], np.zeros(3))
    assert _is_subgroup(c2, d7)
    assert not _is_subgroup(GroupFit("C3", 3, 1.0, q, [], np.zeros(3)), d7)
    assert not _is_subgroup(GroupFit("C2", 2, 1.0, q, [], np.zeros(3)), d7)  # along the 7-fold axis: no


def test_asymmetric_map_is_c1(demo_map):
    """5FUU has a pseudo-3-fold core but no symmetry overall: every group leaves a residual over 0.2."""
    report = find_symmetry(demo_map)
    assert report.best.group == "C1", report.text()
    fits = {f.group: f for f in report.fits}
    assert min(f.residual for f in report.fits if f.order > 1) > 0.2
    assert fits["C3"].correlation > fits["C5"].correlation  # the pseudo-3-fold shows


def test_choose_group_rule():
    from cryosgd.symmetry.detect import GroupFit

    def fit(name, order, corr):
        return GroupFit(name, order, corr, np.eye(3), [], np.zeros(3))

    c1 = fit("C1", 1, 1.0)
    # residuals: C2 0.002, C4 0.0027, D4 0.0029, C8 0.0114: D4 is the largest consistent group
    fits = [c1, fit("C2", 2, 0.9995), fit("C4", 4, 0.999), fit("D4", 8, 0.99873), fit("C8", 8, 0.995)]
    assert choose_group(fits).group == "D4"
    # all residuals above 0.1: C1, however much better one group is than the others
    assert choose_group([c1, fit("C2", 2, 0.93), fit("C3", 3, 0.80)]).group == "C1"


def test_cli_symmetry(tmp_path, turned_d7, capsys):
    volume, q = turned_d7
    small = volume[16:48, 16:48, 16:48]  # 32 px around the centre voxel 32 -> 16
    write_map(tmp_path / "map.mrc", small.astype(np.float32), 3.0)
    assert main(["symmetry", str(tmp_path / "map.mrc"), "--groups", "c3,D7", "--size", "24", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["best"] == "D7"
    assert [f["group"] for f in out["fits"]] == ["C1", "C3", "D7"]
    assert _angle_between_axes(np.array(out["fits"][2]["axes"][0]["axis"]), q[:, 2]) < 3.0
    assert main(["symmetry", str(tmp_path / "map.mrc"), "--groups", "D7h"]) == 2
    assert "D7h: not a supported point group" in capsys.readouterr().err
    write_map(tmp_path / "flat.mrc", np.zeros((8, 8, 4), np.float32), 3.0)
    assert main(["symmetry", str(tmp_path / "flat.mrc")]) == 2
