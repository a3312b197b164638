"""Centring moves the optimiser state with the density, and a diverging run is caught while it runs."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cryosgd.optim import OPTIMIZERS, make_optimizer, roll_state
from cryosgd.reconstruct import centre_density

SHAPE = (6, 6, 6)
SHIFT = (2, -1, 3)


def quadratic(curvature, centre):
    """``f(x) = sum(a (x - b)^2) / 2 + sum(x^4) / 40``: convex and not separable in scale, so every
    method builds curvature pairs, momenta and factors that depend on where each voxel is."""

    def grad_fn(x):
        d = x - centre
        return float((0.5 * curvature * d * d).sum() + (x ** 4).sum() / 40), curvature * d + x ** 3 / 10

    return grad_fn


def run(name, grad_fn, x, n_steps, state=None):
    opt = make_optimizer(name, 0.05 if name != "hf" else 1.0)
    state = opt.init(x) if state is None else state
    for _ in range(n_steps):
        value, grad = grad_fn(x)
        x, state, _ = opt.update(grad, state, x, value=value, grad_fn=grad_fn)
    return x, state


def leaves(state):
    out = []
    for leaf in state:
        if isinstance(leaf, tuple):
            out += leaves(leaf)
        else:
            out.append(leaf)
    return out


def roll(x):
    return torch.roll(x, shifts=SHIFT, dims=(0, 1, 2))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_rolled_state_is_the_state_of_the_rolled_problem(name):
    """Run 6 steps, roll density and state, run 4 more: the same as running all 10 on the rolled problem."""
    g = torch.Generator().manual_seed(3)
    a = 0.5 + torch.rand(SHAPE, generator=g, dtype=torch.float64)
    b = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    f, f_rolled = quadratic(a, b), quadratic(roll(a), roll(b))

    x, state = run(name, f, x0, 6)
    expected_x, expected_state = run(name, f_rolled, roll(x0), 6)
    moved = roll_state(state, SHIFT, SHAPE)
    for got, want in zip(leaves(moved), leaves(expected_state)):
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)  # HF: finite differences round differently
        else:
            assert got == pytest.approx(want)
    x, _ = run(name, f_rolled, roll(x), 4, state=moved)
    expected_x, _ = run(name, f_rolled, expected_x, 4, state=expected_state)
    torch.testing.assert_close(x, expected_x, rtol=1e-4, atol=1e-7)  # HF: finite differences round differently


def test_momentum_moves_with_the_density():
    vol = torch.zeros(SHAPE)
    vol[1, 1, 1] = 1.0  # centre of mass at -2 on every axis: rolled by +2
    velocity = torch.zeros(SHAPE)
    velocity[1, 1, 1] = 0.5
    state = make_optimizer("cm", 0.1).init(vol)._replace(velocity=velocity)
    centred, shift = centre_density(vol, return_shift=True)
    assert shift == (2, 2, 2) and float(centred[3, 3, 3]) == 1.0
    moved = roll_state(state, shift, SHAPE)
    assert float(moved.velocity[3, 3, 3]) == 0.5 and float(moved.velocity.abs().sum()) == 0.5
    assert np.array_equal(centre_density(vol).numpy(), centred.numpy())


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from cryosgd.simulation import simulate_dataset

    demo = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"
    paths, _ = simulate_dataset(demo, tmp_path_factory.mktemp("guard"), n=420, box=32, pixel_size=6.0, snr=0.05,
                                seed=3)
    return paths.particles


def cryosgd(*args):
    env = {**os.environ, "CRYOSGD_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "cryosgd", *map(str, args)], env=env, capture_output=True,
                          text=True)


def test_a_blown_up_step_is_rejected_and_the_rate_halved(small_set, tmp_path):
    """30 times the tuned rate (about 0.9 here) blows up; the guard undoes those steps, halves the rate
    and the run ends with a sane map, saying so in the log, the report and on the terminal."""
    proc = cryosgd("reconstruct", small_set, "-o", tmp_path / "run", "--epochs", "3", "--no-marching",
                   "--learning-rate", "30", "--test-size", "20", "--device", "cpu", "--resolution", "48",
                   "--max-shift", "0")
    assert proc.returncode == 0, proc.stderr
    assert "rejected" in proc.stderr and "learning rate halved" in proc.stderr
    with open(tmp_path / "run" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(int(r["rejected"]) for r in rows) >= 1
    assert float(rows[-1]["learning_rate"]) < 30
    nll = [float(r["test_nll"]) for r in rows if r["test_nll"]]
    assert np.isfinite(nll).all() and nll[-1] < 1.1 * min(nll)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rejected_steps"] >= 1
    assert "rejected and the learning rate halved" in (tmp_path / "run" / "report.md").read_text()


def test_a_run_that_keeps_diverging_stops_without_a_map(small_set, tmp_path):
    proc = cryosgd("reconstruct", small_set, "-o", tmp_path / "run", "--epochs", "4", "--no-marching",
                   "--learning-rate", "1e6", "--test-size", "20", "--device", "cpu", "--resolution", "48",
                   "--max-shift", "0")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cryosgd: error: ") and "sgd diverged" in last and "no map was written" in last
    assert not (tmp_path / "run" / "map.mrc").exists()


def test_the_loop_moves_the_optimiser_state_when_it_centres(small_set, monkeypatch):
    """Wiring: every centring step that moves the density hands the same roll to ``roll_state``."""
    import cryosgd.reconstruct.loop as loop
    from cryosgd.io import load_particles
    from cryosgd.reconstruct import Settings, reconstruct

    moves, rolled = [], []

    def off_by_one(volume, *, return_shift=False):  # a centring that always moves by one voxel along x
        moves.append((0, 0, 1))
        return torch.roll(volume, 1, dims=2), (0, 0, 1)

    def spy(state, shifts, shape):
        rolled.append(tuple(shifts))
        return roll_state(state, shifts, shape)

    monkeypatch.setattr(loop, "centre_density", off_by_one)
    monkeypatch.setattr(loop, "roll_state", spy)
    particles = load_particles(small_set)
    reconstruct(particles, Settings(optimizer="cm", learning_rate=0.3, epochs=6.0, centre_every=5, test_size=20,
                                    resolution=48.0, evaluations=2, max_shift=0.0))
    assert len(moves) >= 2 and rolled == moves
