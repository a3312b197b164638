"""The mixture of K densities: its log-likelihood and gradient against an autograd reference, the
kernels' per-image weights, K = 1 against the plain objective, and the class state's bookkeeping."""
import math

import numpy as np
import pytest
import torch

from cryosgd.inference.mixture import MixtureObjective, mixture_log_likelihood
from cryosgd.inference.objective import Objective
from cryosgd.inference.prior import DensityPrior
from cryosgd.inference.search import PrunedLikelihood
from cryosgd.optim import make_optimizer, map_state, roll_state
from cryosgd.reconstruct.classes import ClassMixture
from test_likelihood import naive_log_likelihood, tiny_problem

PRIOR = DensityPrior(1e-2, 1e-2)
N_IMAGES = 50


def per_image_gradient(kern, vol, batch, b):
    """The gradient of -log p(I_b | V) alone (a batch of one image)."""
    one = type(batch)(*(getattr(batch, f)[b:b + 1] for f in ("data", "ctf", "data_norm")))
    return kern(vol, one, poses=False).gradient


@pytest.mark.parametrize("budget", [1 << 30, 1 << 12])  # one pass over the rotations; chunks (scores recomputed)
def test_image_weights_weight_each_images_gradient(budget):
    kern, vol, batch, *_ = tiny_problem(memory_budget=budget)
    w = torch.tensor([0.7, 0.0, 1.0, 0.25], dtype=torch.float64)
    got = kern(vol, batch, poses=False, image_weights=w)
    ref = sum(w[b] * per_image_gradient(kern, vol, batch, b) for b in range(len(batch)))
    assert torch.allclose(got.gradient, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    plain = kern(vol, batch, poses=False)
    assert torch.equal(got.log_likelihood, plain.log_likelihood)  # the weights touch the gradient only
    ones = kern(vol, batch, poses=False, image_weights=torch.ones(len(batch), dtype=torch.float64))
    assert torch.allclose(ones.gradient, plain.gradient, rtol=1e-12, atol=0)


def test_pruned_kernel_weights_each_images_gradient():
    from cryosgd.forward.ctf import CTFParams

    kern = PrunedLikelihood(16, 6.0, 4.0, max_shift=1.0, dtype=torch.float64, dense_above=2.0,
                            max_rotations=None, max_shifts=None)
    rng = np.random.default_rng(3)
    vol = torch.tensor(rng.standard_normal((16, 16, 16))) * 0.1
    ctf = CTFParams.make(rng.uniform(1e4, 2e4, 3), None, 0.0, 300, 2.7, 0.1)
    images = rng.standard_normal((3, 16, 16))
    w = torch.tensor([0.2, 1.0, 0.5], dtype=torch.float64)
    got = kern(vol, kern.prepare(images, ctf), poses=False, image_weights=w).gradient
    ref = sum(float(w[b]) * kern(vol, kern.prepare(images[b:b + 1], ctf[b:b + 1]), poses=False).gradient
              for b in range(3))
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))


def test_mixture_log_likelihood_is_the_log_of_the_weighted_sum():
    rng = np.random.default_rng(0)
    ll = torch.tensor(rng.normal(-500, 30, (6, 3)))
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    total, gamma = mixture_log_likelihood(ll, torch.log(pi))
    shift = ll.max()  # exp(-500) underflows nowhere in float64, but the sum is taken after a shift anyway
    ref = torch.log((pi[None] * torch.exp(ll - shift)).sum(1)) + shift
    assert torch.allclose(total, ref, rtol=1e-12)
    assert torch.allclose(gamma, pi[None] * torch.exp(ll - ref[:, None]), rtol=1e-10)
    assert torch.allclose(gamma.sum(1), torch.ones(6, dtype=torch.float64))


def test_mixture_objective_and_gradient_match_autograd():
    """Value and gradient of the mixture objective against autograd through the naive likelihood."""
    kern, vol, batch, rs, shifts, sw = tiny_problem(n_shifts=3)
    rng = np.random.default_rng(7)
    vols = torch.stack([vol, vol + 0.1 * torch.tensor(rng.standard_normal(vol.shape))])
    log_pi = torch.log(torch.tensor([0.35, 0.65], dtype=torch.float64))
    out = MixtureObjective(kern, PRIOR, N_IMAGES, log_pi)(vols, batch)
    v = vols.clone().requires_grad_(True)
    ll = torch.stack([naive_log_likelihood(kern, v[k], batch, rs, shifts, sw)[0] for k in range(2)], 1)
    ref = -torch.logsumexp(ll + log_pi[None], 1).mean() + PRIOR.negative_log(v) / N_IMAGES
    ref.backward()
    assert out.value == pytest.approx(float(ref.detach()), rel=1e-10)
    assert torch.allclose(out.gradient, v.grad, rtol=1e-7, atol=1e-9 * float(v.grad.abs().max()))
    # both classes take part: neither gradient is the other's, nor zero
    assert float((out.gradient[0] - out.gradient[1]).norm()) > 0.1 * float(out.gradient.norm())
    assert torch.allclose(out.posteriors.sum(1), torch.ones(len(batch), dtype=torch.float64))


def test_annealed_posteriors_mix_the_gradients_but_not_the_value():
    kern, vol, batch, *_ = tiny_problem()
    vols = torch.stack([vol, 2 * vol])
    log_pi = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    exact = MixtureObjective(kern, PRIOR, N_IMAGES, log_pi)(vols, batch)
    uniform = MixtureObjective(kern, PRIOR, N_IMAGES, log_pi, similarity=1.0)(vols, batch)
    assert uniform.value == exact.value
    # s = 1: every image weighs 1/2 in each class, whatever its posterior
    plain = [kern(v, batch, poses=False).gradient / len(batch) + PRIOR.gradient(v) / N_IMAGES for v in vols]
    half = [0.5 * kern(v, batch, poses=False).gradient / len(batch) + PRIOR.gradient(v) / N_IMAGES for v in vols]
    assert torch.allclose(uniform.gradient, torch.stack(half), rtol=1e-10)
    assert not torch.allclose(uniform.gradient, torch.stack(plain), rtol=1e-3)


def test_one_class_is_the_plain_objective():
    kern, vol, batch, *_ = tiny_problem()
    plain = Objective(kern, PRIOR, N_IMAGES)(vol, batch)
    mix = MixtureObjective(kern, PRIOR, N_IMAGES, torch.zeros(1, dtype=torch.float64))(vol[None], batch)
    assert mix.value == pytest.approx(plain.value, rel=1e-14)
    assert torch.allclose(mix.gradient[0], plain.gradient, rtol=1e-12, atol=0)
    assert torch.all(mix.posteriors == 1)
    test = Objective(kern, PRIOR, N_IMAGES).test_nll(vol, batch)
    assert MixtureObjective(kern, PRIOR, N_IMAGES, torch.zeros(1, dtype=torch.float64)).test_nll(
        vol[None], batch) == pytest.approx(test, rel=1e-14)


def test_each_class_and_its_optimiser_state_move_on_their_own():
    """Centring rolls class k's density and its momentum by class k's shift only (as roll_state for one)."""
    n = 12
    rng = np.random.default_rng(2)
    vols = torch.zeros((2, n, n, n))
    vols[0, 2:5, 3:6, 4:7] = 1.0      # off-centre
    vols[1, 5:8, 5:8, 5:8] = 1.0      # near the centre already
    opt = make_optimizer("cm", 0.1)
    grad = torch.tensor(rng.standard_normal(vols.shape), dtype=torch.float32)
    _, state, _ = opt.update(grad, opt.init(vols), vols)
    mix = ClassMixture(2, 100, 0)
    from cryosgd.reconstruct import centre_density

    moved, new_state = mix.centre(vols, state, centre_density)
    for k in range(2):
        v, shift = centre_density(vols[k], return_shift=True)
        assert torch.equal(moved[k], v)
        single = roll_state(map_state(state, vols.shape, lambda t, k=k: t[k].clone()), shift, (n,) * 3)
        assert torch.equal(map_state(new_state, vols.shape, lambda t, k=k: t[k].clone()).velocity,
                           single.velocity)
    assert torch.equal(new_state.velocity[1], state.velocity[1])  # class 2 did not move


def test_proportions_follow_the_posteriors_with_a_floor():
    mix = ClassMixture(2, 100, 0)
    gamma = torch.tensor([[1.0, 0.0]] * 70 + [[0.0, 1.0]] * 30, dtype=torch.float64)
    for _ in range(200):
        mix.update_proportions(gamma, len(gamma))
    assert np.allclose(mix.proportions, [0.7, 0.3], atol=1e-6)
    for _ in range(200):
        mix.update_proportions(gamma[:70], 70)
    assert 0.02 / 1.02 - 1e-12 <= mix.proportions[1] < 0.021  # held at the floor (then renormalised)
    assert math.isclose(mix.proportions.sum(), 1.0)


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "two"])
def test_classes_must_be_a_whole_number_of_at_least_one(value, tmp_path, capsys):
    from cryosgd.cli import main as cli

    assert cli(["reconstruct", str(tmp_path / "p.star"), "-o", str(tmp_path / "run"), "--classes", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cryosgd: error: --classes: {value} is not a whole number of classes >= 1"]
    assert not (tmp_path / "run").exists()
