"""Tests for cryosgd.optim: one contract run on every optimiser, plus per-method invariants.

The stochastic test problem is noisy ridge least squares with a known optimum,
the form the paper's objective takes near a solution (Sec. 3.1):
``F(x) = 1/2 ||A x - b||^2 + alpha/2 ||x||^2`` over K = 2000 rows in 100
dimensions (curvature spread over two decades), with minibatch estimates
``(K/B) 1/2 ||A_B x - b_B||^2 + alpha/2 ||x||^2`` as in eq. 6.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from cryosgd.optim import (
    OPTIMIZERS,
    AdagradState,
    SGDState,
    constant_schedule,
    finite_difference_hvp,
    hessian_free,
    inverse_power_decay,
    make_optimizer,
    nesterov,
    nonnegative,
    online_lbfgs,
    reference_learning_rate,
    sutskever_momentum,
    tonga,
    tune_learning_rate,
    with_projection,
    zero_outside,
)

ALL = sorted(OPTIMIZERS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the problems are tiny: thread start-up would dominate the run time
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class NoisyLeastSquares:
    """Ridge least squares with minibatch objectives in a seeded order."""

    def __init__(self, n_data=2000, dim=100, noise=1.0, ridge=1.0, seed=0):
        g = torch.Generator().manual_seed(seed)
        scales = torch.logspace(0, -1, dim, dtype=torch.float64)  # curvature ratio 100
        self.a = torch.randn(n_data, dim, generator=g, dtype=torch.float64) * scales
        self.x_true = torch.randn(dim, generator=g, dtype=torch.float64)
        self.b = self.a @ self.x_true + noise * torch.randn(n_data, generator=g, dtype=torch.float64)
        self.ridge, self.n_data, self.dim = ridge, n_data, dim
        hessian = self.a.T @ self.a + ridge * torch.eye(dim, dtype=torch.float64)
        self.x_opt = torch.linalg.solve(hessian, self.a.T @ self.b)
        self.f_opt = self.value(self.x_opt)
        self.lipschitz = float(torch.linalg.eigvalsh(hessian)[-1])
        self.x0 = torch.zeros(dim, dtype=torch.float64)
        self.gap0 = self.value(self.x0) - self.f_opt

    def value(self, x):
        r = self.a @ x - self.b
        return 0.5 * float(r @ r) + 0.5 * self.ridge * float(x @ x)

    def excess(self, x):
        """``(F(x) - F*) / (F(x0) - F*)``."""
        return (self.value(x) - self.f_opt) / self.gap0

    def minibatch(self, index):
        a, b, scale = self.a[index], self.b[index], self.n_data / len(index)

        def grad_fn(x):
            r = a @ x - b
            return 0.5 * scale * (r @ r) + 0.5 * self.ridge * (x @ x), scale * (a.T @ r) + self.ridge * x

        def hvp_fn(x, v):
            return scale * (a.T @ (a @ v)) + self.ridge * v

        return grad_fn, hvp_fn

    def minibatches(self, batch_size, seed):
        g = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(self.n_data, generator=g)
            for start in range(0, self.n_data - batch_size + 1, batch_size):
                yield self.minibatch(order[start:start + batch_size])[0]


def run(problem, optimizer, *, budget=None, n_steps=None, seed=0, projection=None):
    """Iterates of ``optimizer`` until ``budget`` per-example gradients or ``n_steps`` steps."""
    if projection is not None:
        optimizer = with_projection(optimizer, projection)
    x, state, used = problem.x0, optimizer.init(problem.x0), 0
    trajectory = [x]
    for step, grad_fn in enumerate(problem.minibatches(optimizer.batch_size, seed)):
        if (budget is not None and used >= budget) or (n_steps is not None and step >= n_steps):
            break
        value, grad = grad_fn(x)
        x, state, n_extra = optimizer.update(grad, state, x, value=value, grad_fn=grad_fn)
        used += optimizer.batch_size * (1 + n_extra)
        trajectory.append(x)
    return trajectory


@pytest.fixture(scope="module")
def problem():
    return NoisyLeastSquares()


# Base rates near the best for each method on this problem (1/L: the largest
# curvature); every other hyper-parameter is the paper's default.
RATES = {
    "sgd": lambda p: 0.5 / p.lipschitz,
    "cm": lambda p: 0.1 / p.lipschitz,
    "nag": lambda p: 0.1 / p.lipschitz,
    "adagrad": lambda p: 0.3,  # units of x (x_true ~ N(0, 1))
    "tonga": lambda p: 500.0,  # first step rate / (1.01 ||g_0||), ||g_0|| ~ 1e4 here
    "olbfgs": lambda p: 0.01,  # quasi-Newton steps scaled by rate / c, c = 0.1
    "hf": lambda p: 0.3,  # fraction of the CG step
}
BUDGET = 40 * 2000  # per-example gradient evaluations: 40 epochs
TOLERANCE = 5e-3  # of the initial gap F(x0) - F*


@pytest.fixture(scope="module")
def final_excess(problem):
    return {name: problem.excess(run(problem, make_optimizer(name, RATES[name](problem)),
                                     budget=BUDGET)[-1])
            for name in ALL}


# ---------------------------------------------------------------- contract


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                               reason="no CUDA device"))]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 4, 4)])
@pytest.mark.parametrize("device", DEVICES)
def test_update_contract(name, dtype, shape, device):
    target = torch.arange(math.prod(shape), dtype=dtype, device=device).reshape(shape) / 10

    def grad_fn(x):
        return 0.5 * ((x - target) ** 2).sum(), x - target

    optimizer = make_optimizer(name, 0.1)
    params = torch.zeros(shape, dtype=dtype, device=device)
    state = optimizer.init(params)
    for step in range(3):
        value, grad = grad_fn(params)
        before = (params.clone(), grad.clone())
        new_params, new_state, n_extra = optimizer.update(grad, state, params, value=value,
                                                          grad_fn=grad_fn, hvp_fn=None)
        assert torch.equal(params, before[0]) and torch.equal(grad, before[1])  # inputs untouched
        assert new_params.shape == shape and new_params.dtype == dtype
        assert new_params.device == params.device
        assert type(new_state) is type(state) and new_state.count == step + 1
        assert isinstance(n_extra, int) and n_extra >= 0
        params, state = new_params, new_state
    assert float(grad_fn(params)[0]) < float(grad_fn(torch.zeros_like(params))[0])


@pytest.mark.parametrize("name", ALL)
def test_converges_on_noisy_least_squares(name, final_excess):
    assert final_excess[name] < TOLERANCE


def test_all_methods_reach_similar_optima(final_excess):
    # the paper: "all stochastic methods are found to converge to similar optima"
    values = list(final_excess.values())
    assert max(values) - min(values) < TOLERANCE


@pytest.mark.parametrize("name", ALL)
def test_same_seed_gives_bitwise_identical_trajectory(name, problem):
    optimizer = make_optimizer(name, RATES[name](problem))
    first = run(problem, optimizer, n_steps=25, seed=3)
    second = run(problem, optimizer, n_steps=25, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other = run(problem, optimizer, n_steps=25, seed=4)
    assert not torch.equal(first[-1], other[-1])


@pytest.mark.parametrize("name", ALL)
def test_projection_keeps_iterates_nonnegative(name, problem):
    assert bool((problem.x_opt < 0).any())  # the constraint is active
    trajectory = run(problem, make_optimizer(name, RATES[name](problem)), n_steps=40,
                     projection=nonnegative())
    assert all(float(x.min()) >= 0.0 for x in trajectory)


def test_projected_sgd_reaches_the_nonnegative_least_squares_solution(problem):
    augmented = np.vstack([problem.a.numpy(), math.sqrt(problem.ridge) * np.eye(problem.dim)])
    x_nnls, _ = scipy.optimize.nnls(augmented, np.concatenate([problem.b.numpy(), np.zeros(problem.dim)]))
    x_nnls = torch.from_numpy(x_nnls)
    final = run(problem, make_optimizer("sgd", RATES["sgd"](problem)), budget=BUDGET,
                projection=nonnegative())[-1]
    gap0 = problem.value(problem.x0) - problem.value(x_nnls)
    assert (problem.value(final) - problem.value(x_nnls)) / gap0 < TOLERANCE


def test_zero_outside_mask():
    mask = torch.zeros(5, 5, 5, dtype=torch.bool)
    mask[1:4, 1:4, 1:4] = True
    optimizer = with_projection(make_optimizer("sgd", 1.0), nonnegative(), zero_outside(mask))
    params = torch.ones(5, 5, 5)
    new, _, _ = optimizer.update(-torch.ones(5, 5, 5), optimizer.init(params), params)
    assert torch.equal(new, torch.where(mask, torch.tensor(2.0), torch.tensor(0.0)))


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("count, factor", [(0, 1.0), (100, 2**-0.75), (300, 2**-1.5), (1500, 0.125)])
def test_learning_rate_schedule(count, factor):
    # eta_t = eta_0 (1 + 0.01 t)^-0.75: 1 + 0.01 t = 1, 2, 4, 16
    assert inverse_power_decay(0.3)(count) == pytest.approx(0.3 * factor, rel=1e-15)


@pytest.mark.parametrize("count, mu", [(0, 0.5), (99, 0.5), (100, 0.75), (199, 0.75), (200, 5 / 6),
                                       (300, 0.875), (399, 0.875), (400, 0.9), (10_000, 0.9)])
def test_sutskever_momentum(count, mu):
    # mu_t = 1 - 1 / (2 (floor(t/100) + 1)), capped at 0.9
    assert sutskever_momentum(count) == pytest.approx(mu, rel=1e-15)


def test_sgd_step_uses_annealed_rate():
    params, grad = torch.ones(3, dtype=torch.float64), torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    new, state, _ = make_optimizer("sgd", 0.5).update(grad, SGDState(count=100), params)
    assert torch.allclose(new, params - 0.5 * 2**-0.75 * grad, rtol=0, atol=1e-15)
    assert state.count == 101


def test_adagrad_step_is_not_annealed():
    params, grad = torch.zeros(2, dtype=torch.float64), torch.tensor([3.0, -4.0], dtype=torch.float64)
    state = AdagradState(count=500, sum_of_squares=torch.tensor([16.0, 9.0], dtype=torch.float64))
    new, _, _ = make_optimizer("adagrad", 0.5, epsilon=0.0).update(grad, state, params)
    assert torch.allclose(new, torch.tensor([-0.3, 0.4], dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name, annealed", [("sgd", True), ("cm", True), ("nag", True), ("tonga", True),
                                            ("olbfgs", True), ("adagrad", False), ("hf", False)])
def test_number_learning_rate_means_the_paper_schedule(name, annealed, problem):
    rate = RATES[name](problem)
    schedule = inverse_power_decay(rate) if annealed else constant_schedule(rate)
    from_number = run(problem, make_optimizer(name, rate), n_steps=30)
    from_schedule = run(problem, make_optimizer(name, schedule), n_steps=30)
    assert all(torch.equal(a, b) for a, b in zip(from_number, from_schedule, strict=True))


def test_nesterov_matches_sutskever_formulation():
    # theta_{t+1} = theta_t + v_{t+1}, v_{t+1} = mu_t v_t - eta_t grad(theta_t + mu_t v_t);
    # the optimiser carries the look-ahead point theta_t + mu_t v_t
    h = torch.diag(torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64))
    b = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    lr = inverse_power_decay(5e-3)
    theta, v = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    optimizer = nesterov(lr)
    params = theta
    state = optimizer.init(params)
    for t in range(250):
        v = sutskever_momentum(t) * v - lr(t) * (h @ (theta + sutskever_momentum(t) * v) - b)
        theta = theta + v
        params, state, _ = optimizer.update(h @ params - b, state, params)
        assert torch.allclose(params, theta + sutskever_momentum(t + 1) * v, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- curvature methods


def quadratic(dim, condition, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    hessian = q @ torch.diag(torch.logspace(0, math.log10(condition), dim, dtype=torch.float64)) @ q.T
    b = torch.randn(dim, generator=g, dtype=torch.float64)

    def grad_fn(x):
        return 0.5 * x @ hessian @ x - b @ x, hessian @ x - b

    return hessian, torch.linalg.solve(hessian, b), grad_fn


def steps_to_converge(optimizer, grad_fn, x_opt, max_steps, hvp_fn=None, tol=1e-8):
    x = torch.zeros_like(x_opt)
    state = optimizer.init(x)
    for step in range(max_steps):
        if torch.linalg.vector_norm(x - x_opt) <= tol * torch.linalg.vector_norm(x_opt):
            return step, state
        value, grad = grad_fn(x)
        x, state, _ = optimizer.update(grad, state, x, value=value, grad_fn=grad_fn, hvp_fn=hvp_fn)
    return max_steps, state


def test_online_lbfgs_on_a_deterministic_quadratic_converges_in_about_dimension_steps():
    dim = 20
    _, x_opt, grad_fn = quadratic(dim, condition=100.0)
    steps, _ = steps_to_converge(online_lbfgs(constant_schedule(0.1), memory=30), grad_fn, x_opt, 200)
    assert steps <= 2.5 * dim  # 44 here; gradient descent would need ~900


def test_hessian_free_with_exact_hvp_solves_a_quadratic_in_a_few_iterations():
    dim = 30
    hessian, x_opt, grad_fn = quadratic(dim, condition=100.0)
    exact = lambda x, v: hessian @ v  # noqa: E731
    full_cg = hessian_free(damping=1e-3, cg_iterations=dim)
    steps, state = steps_to_converge(full_cg, grad_fn, x_opt, 20, hvp_fn=exact)
    assert steps <= 4
    # the quadratic model is exact, rho = 1 > 3/4 at every step: damping *= 2/3 each time
    assert state.damping == pytest.approx(1e-3 * (2 / 3) ** steps, rel=1e-12)
    steps, _ = steps_to_converge(hessian_free(damping=1e-3), grad_fn, x_opt, 100, hvp_fn=exact)
    assert steps <= 40  # 5 warm-started CG iterations per step


def softplus_objective(dtype):
    """``f(x) = sum softplus(A x - b) + |x|^2 / 2`` with analytic gradient and Hessian."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 25, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(40, generator=g, dtype=torch.float64).to(dtype)

    def grad_fn(x):
        z = a @ x - b
        return torch.nn.functional.softplus(z).sum() + 0.5 * (x @ x), a.T @ torch.sigmoid(z) + x

    def hvp_fn(x, v):
        s = torch.sigmoid(a @ x - b)
        return a.T @ (s * (1 - s) * (a @ v)) + v

    return grad_fn, hvp_fn


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-2)])
def test_finite_difference_hvp_matches_exact(dtype, rtol):
    grad_fn, hvp_fn = softplus_objective(dtype)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(25, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(25, generator=g, dtype=torch.float64).to(dtype)
    exact = hvp_fn(x, v)
    approx = finite_difference_hvp(grad_fn, x, grad_fn(x)[1], v)
    assert float(torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact)) < rtol


def test_hessian_free_finite_difference_tracks_exact_hvp():
    grad_fn, hvp_fn = softplus_objective(torch.float64)
    exact_opt, fd_opt = hessian_free(damping=0.1), hessian_free(damping=0.1)
    x_exact = x_fd = torch.zeros(25, dtype=torch.float64)
    s_exact, s_fd = exact_opt.init(x_exact), fd_opt.init(x_fd)
    for _ in range(5):
        x_exact, s_exact, _ = exact_opt.update(grad_fn(x_exact)[1], s_exact, x_exact,
                                               grad_fn=grad_fn, hvp_fn=hvp_fn)
        x_fd, s_fd, _ = fd_opt.update(grad_fn(x_fd)[1], s_fd, x_fd, grad_fn=grad_fn)
    assert torch.allclose(x_fd, x_exact, rtol=1e-5, atol=1e-7)
    assert s_fd.damping == s_exact.damping


def test_hessian_free_rejects_an_overshooting_step_and_raises_damping():
    # f(x) = sqrt(1 + x^2) at x = 3: the Newton step lands at x ~ -27, where f is larger
    def grad_fn(x):
        return torch.sqrt(1 + x @ x), x / torch.sqrt(1 + x @ x)

    optimizer = hessian_free(damping=1e-6)
    x = torch.tensor([3.0], dtype=torch.float64)
    new, state, _ = optimizer.update(grad_fn(x)[1], optimizer.init(x), x, grad_fn=grad_fn)
    assert torch.equal(new, x)
    assert state.damping == pytest.approx(1.5e-6, rel=1e-12)
    assert not bool(state.previous_solution.any())


def test_tonga_direction_matches_dense_natural_gradient():
    # before the first refresh TONGA is exact: d = (C + lam I)^-1 g with
    # C = sum_s gamma^(t-s) g_s g_s^T / sum_s gamma^(t-s) and lam = damping ||g_0||^2
    g = torch.Generator().manual_seed(5)
    grads = torch.randn(8, 30, generator=g, dtype=torch.float64)
    decay, damping = 0.9, 0.05
    optimizer = tonga(constant_schedule(1.0), damping=damping, decay=decay)
    params = torch.zeros(30, dtype=torch.float64)
    state = optimizer.init(params)
    lam = damping * float(grads[0] @ grads[0])
    for t in range(8):
        weights = decay ** torch.arange(t, -1, -1, dtype=torch.float64)
        cov = (grads[:t + 1].T * weights) @ grads[:t + 1] / weights.sum()
        expected = torch.linalg.solve(cov + lam * torch.eye(30, dtype=torch.float64), grads[t])
        new, state, _ = optimizer.update(grads[t], state, params)
        assert torch.allclose(params - new, expected, rtol=1e-10, atol=1e-12)
        params = new


def test_tonga_refresh_keeps_the_best_rank_k_covariance():
    g = torch.Generator().manual_seed(6)
    rank, every, decay = 3, 5, 0.95
    optimizer = tonga(1.0, rank=rank, refresh_every=every, decay=decay)
    params = torch.zeros(12, dtype=torch.float64)
    state = optimizer.init(params)
    widths = []
    for _ in range(2 * every):
        grad = torch.randn(12, generator=g, dtype=torch.float64)
        before = state
        params, state, _ = optimizer.update(grad, state, params)
        widths.append(state.factor.shape[1])
    # (the paper: rank 20 every 20 steps) columns grow by one per step, cut to `rank` every `every`
    assert widths == [1, 2, 3, 4, 3, 4, 5, 6, 7, 3]
    full = torch.cat([math.sqrt(decay) * before.factor, grad[:, None]], dim=1)
    eigenvalues, eigenvectors = torch.linalg.eigh(full @ full.T)
    best = (eigenvectors[:, -rank:] * eigenvalues[-rank:]) @ eigenvectors[:, -rank:].T
    assert torch.allclose(state.factor @ state.factor.T, best, rtol=1e-10, atol=1e-12)
    assert torch.allclose(state.gram, state.factor.T @ state.factor, rtol=1e-10, atol=1e-12)


def test_extra_evaluation_counts():
    hessian, _, grad_fn = quadratic(10, condition=10.0)
    calls = {"grad": 0, "hvp": 0}

    def counted_grad_fn(x):
        calls["grad"] += 1
        return grad_fn(x)

    def counted_hvp_fn(x, v):
        calls["hvp"] += 1
        return hessian @ v

    def reported(optimizer, n_steps, *, pass_value, hvp_fn=None):
        x = torch.zeros(10, dtype=torch.float64)
        state, counts = optimizer.init(x), []
        for _ in range(n_steps):
            value, grad = grad_fn(x)
            calls.update(grad=0, hvp=0)
            x, state, n_extra = optimizer.update(grad, state, x, value=value if pass_value else None,
                                                 grad_fn=counted_grad_fn, hvp_fn=hvp_fn)
            assert n_extra == calls["grad"] + calls["hvp"]
            counts.append((n_extra, calls["grad"], calls["hvp"]))
        return counts

    for name in ("sgd", "cm", "nag", "adagrad", "tonga"):
        assert reported(make_optimizer(name, 1e-2), 3, pass_value=True) == [(0, 0, 0)] * 3
    # online L-BFGS: one gradient on the same minibatch per step
    assert reported(online_lbfgs(), 4, pass_value=True) == [(1, 1, 0)] * 4
    # HF, exact products: 5 CG products (+1 warm-start residual after the first step) + 1 value
    assert reported(hessian_free(damping=1.0), 3, pass_value=True, hvp_fn=counted_hvp_fn) == [
        (6, 1, 5), (7, 1, 6), (7, 1, 6)]
    # HF, finite differences and no value: every product and value is a grad_fn call
    assert reported(hessian_free(damping=1.0), 3, pass_value=False) == [(7, 7, 0), (8, 8, 0), (8, 8, 0)]
    assert reported(hessian_free(damping=1.0, warm_start=0.0), 2, pass_value=True) == [(6, 6, 0)] * 2


@pytest.mark.parametrize("name", ["olbfgs", "hf"])
def test_curvature_methods_require_grad_fn(name):
    optimizer = make_optimizer(name, 0.1)
    x = torch.ones(3)
    with pytest.raises(ValueError, match="grad_fn"):
        optimizer.update(x, optimizer.init(x), x)


# ---------------------------------------------------------------- registry and tuning


def test_registry():
    assert set(OPTIMIZERS) == {"sgd", "cm", "nag", "adagrad", "tonga", "olbfgs", "hf"}
    assert {name: make_optimizer(name, 0.1).batch_size for name in ALL} == {
        "sgd": 100, "cm": 100, "nag": 100, "adagrad": 100, "tonga": 100, "olbfgs": 100, "hf": 300}
    with pytest.raises(ValueError, match="unknown optimiser"):
        make_optimizer("adam", 0.1)


def test_reference_rate_of_sgd_is_inverse_curvature_along_the_gradient(problem):
    grad_fn = next(problem.minibatches(100, 0))
    _, grad = grad_fn(problem.x0)
    curvature = float(grad @ (grad_fn(problem.x0 + grad)[1] - grad)) / float(grad @ grad)  # exact: quadratic
    rate = reference_learning_rate("sgd", problem.minibatches, problem.x0)
    assert rate == pytest.approx(1 / curvature, rel=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_tuned_rate_is_within_a_decade_of_brute_force(name, problem):
    n_steps = 60
    tuned = tune_learning_rate(name, problem.minibatches, problem.x0, n_steps=n_steps)
    # brute force: the fixed rate with the lowest full objective after the same steps
    grid = [10.0 ** (k / 4) for k in range(-20, 17)]  # 1e-5 .. 1e4
    finals = {}
    for rate in grid:
        final = run(problem, make_optimizer(name, rate), n_steps=n_steps)[-1]
        if bool(torch.isfinite(final).all()):
            finals[rate] = problem.value(final)
    best = min(finals, key=finals.get)
    assert abs(math.log10(tuned / best)) <= 1.0


def test_tuning_with_heldout_objective_and_all_diverging(problem):
    heldout = problem.value  # the full objective stands in for held-out data
    rate = tune_learning_rate("sgd", problem.minibatches, problem.x0, n_steps=40, heldout=heldout,
                              candidates=[1e-5, 1e-4, 1e-3, 1e-2])
    assert 1e-4 <= rate <= 1e-3 * 10**0.5  # 1/L ~ 5e-4; 1e-3 diverges
    with pytest.raises(RuntimeError, match="diverged"):
        tune_learning_rate("sgd", problem.minibatches, problem.x0, n_steps=40, candidates=[1.0, 10.0])


@pytest.mark.parametrize("name", ["sgd", "nag", "adagrad"])
def test_walk_down_the_grid_finds_the_grid_best_with_fewer_runs(name, problem):
    """The walk from the largest candidate stops after two worse scores: on this problem it chooses what
    scoring every candidate chooses (AdaGrad scores 10 better than 3.16 but 1 best of all), and runs fewer
    of them."""
    calls = {"walk": 0, "all": 0}

    def counted(key):
        def factory(batch_size, seed):
            calls[key] += 1
            return problem.minibatches(batch_size, seed)
        return factory

    grid = [RATES[name](problem) * 10.0 ** (k / 2) for k in range(-8, 4)]
    kw = dict(n_steps=30, candidates=grid, heldout=problem.value, refine=False)
    walk = tune_learning_rate(name, counted("walk"), problem.x0, **kw)
    full = tune_learning_rate(name, counted("all"), problem.x0, exhaustive=True, **kw)
    assert walk == full
    assert calls["all"] == len(grid) and calls["walk"] < len(grid) / 2
