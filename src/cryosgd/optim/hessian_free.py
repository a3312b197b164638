"""Hessian-free optimisation (Martens 2010) on minibatches.

Each step, on the step's minibatch (value ``f``, gradient ``g`` at ``theta``):

1. Solve ``(H + lambda I) p = -g`` approximately by ``cg_iterations`` steps of
   linear conjugate gradients.  CG starts from ``warm_start * p_prev`` (the
   previous step's solution, Martens' 0.95 decay); a non-zero start costs one
   Hessian-vector product for its residual.  ``H v`` is the exact
   ``hvp_fn(theta, v)`` when given, otherwise the directional finite
   difference ``(g(theta + eps v) - g(theta)) / eps`` through ``grad_fn``
   (the paper's choice; ``eps`` from
   :func:`~cryosgd.optim.base.finite_difference_epsilon`).  CG stops early
   at negative curvature ``q^T (H + lambda I) q <= 0`` or a residual below
   ``1e-10 ||g||``.
2. Propose ``theta + eta p`` (``eta``: the learning rate, default 1, not
   annealed) and evaluate the minibatch objective there (one ``grad_fn``
   call).  Reduction ratio ``rho = (f(theta + eta p) - f) / (eta g^T p +
   eta^2 p^T H p / 2)``; the denominator (the undamped quadratic model) comes
   from the CG residual without more products.
3. Levenberg-Marquardt rule: ``lambda *= 3/2`` if ``rho < 1/4``,
   ``lambda *= 2/3`` if ``rho > 3/4``.
4. Accept the step if the minibatch objective decreased, otherwise keep
   ``theta`` (and drop the warm start).  A zero step (negative curvature at
   the first CG iteration) is a failure, so the damping grows until
   ``H + lambda I`` is positive along ``g``.

Extra evaluations ``n_extra`` = the Hessian-vector products (one per CG
iteration actually run, plus one for a warm-start residual) + 1 (objective at
the proposed point) + 1 if ``value`` was not passed (objective at ``theta``).
With the defaults and ``value`` given that is 6 on the first step and after a
rejected one, 7 otherwise (fewer if CG stops early).  The paper used 5 CG
iterations, minibatches of 300 images and a damping tuned by hand.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .base import GradFn, Optimizer, Schedule, as_schedule, finite_difference_epsilon

__all__ = ["HessianFreeState", "hessian_free", "finite_difference_hvp", "conjugate_gradient"]


class HessianFreeState(NamedTuple):
    count: int
    damping: float  # Tikhonov lambda, adapted by the Levenberg-Marquardt rule
    previous_solution: Tensor  # CG solution of the last accepted step (parameter-shaped)


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.vdot(a.reshape(-1), b.reshape(-1)))


def finite_difference_hvp(grad_fn: GradFn, params: Tensor, grad: Tensor, vector: Tensor,
                          epsilon: float | None = None) -> Tensor:
    """``H v ~ (g(params + eps v) - g(params)) / eps``; one call of ``grad_fn``.

    ``grad`` is ``g(params)`` on the same minibatch.  ``epsilon`` defaults to
    :func:`~cryosgd.optim.base.finite_difference_epsilon`; a zero ``vector``
    returns zeros without calling ``grad_fn``.
    """
    eps = finite_difference_epsilon(params, vector) if epsilon is None else epsilon
    if eps == 0.0:
        return torch.zeros_like(vector)
    _, shifted = grad_fn(params + eps * vector)
    return (shifted - grad) / eps


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], rhs: Tensor, x0: Tensor | None,
                       max_iterations: int, tol: float = 1e-10):
    """Truncated linear CG for ``A x = rhs`` with ``A`` symmetric.

    Returns ``(x, residual, n_matvec)`` with ``residual = rhs - A x`` kept
    by the recurrence.  Stops after ``max_iterations``, when ``||residual||
    <= tol ||rhs||``, or at non-positive curvature ``q^T A q <= 0`` (then
    ``x`` is the last iterate before it).
    """
    n_matvec = 0
    if x0 is None or not bool(torch.any(x0 != 0)):
        x = torch.zeros_like(rhs)
        residual = rhs
    else:
        x = x0
        residual = rhs - matvec(x0)
        n_matvec += 1
    threshold = (tol * float(torch.linalg.vector_norm(rhs))) ** 2
    rr = _dot(residual, residual)
    direction = residual
    for _ in range(max_iterations):
        if rr <= threshold:
            break
        a_direction = matvec(direction)
        n_matvec += 1
        curvature = _dot(direction, a_direction)
        if not curvature > 0.0:
            break
        alpha = rr / curvature
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        rr_new = _dot(residual, residual)
        direction = residual + (rr_new / rr) * direction
        rr = rr_new
    return x, residual, n_matvec


def hessian_free(learning_rate: float | Schedule = 1.0, *, damping: float = 1.0,
                 cg_iterations: int = 5, warm_start: float = 0.95,
                 batch_size: int = 300) -> Optimizer:
    """Hessian-free Newton with Levenberg-Marquardt damping; needs ``grad_fn``.

    ``learning_rate``: scale ``eta`` of the CG step (constant unless a
    schedule is passed).  ``damping``: the initial Tikhonov ``lambda`` (units
    of curvature; the paper tuned it by hand).  ``cg_iterations``: CG steps per
    update (paper: 5).  ``warm_start``: decay of the previous solution used
    to start CG (0 starts from zero and saves one product per step).
    ``batch_size``: the minibatch size hint (paper: 300).
    Pass ``value=`` (the minibatch objective at ``params``) to save one
    evaluation, and ``hvp_fn=`` for exact Hessian-vector products.
    """
    lr = as_schedule(learning_rate, annealed=False)

    def init(params: Tensor) -> HessianFreeState:
        return HessianFreeState(count=0, damping=float(damping),
                                previous_solution=torch.zeros_like(params))

    def update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None):
        if grad_fn is None:
            raise ValueError("Hessian-free needs grad_fn (objective on the same minibatch)")
        n_extra = 0
        if value is None:
            value, _ = grad_fn(params)
            n_extra += 1
        value = float(value)
        lam = state.damping

        def damped_hvp(vector: Tensor) -> Tensor:
            if hvp_fn is not None:
                product = hvp_fn(params, vector)
            else:
                product = finite_difference_hvp(grad_fn, params, grad, vector)
            return product + lam * vector

        solution, residual, n_hvp = conjugate_gradient(
            damped_hvp, -grad, warm_start * state.previous_solution, cg_iterations)
        n_extra += n_hvp

        # (H + lam) p = -g - r, so p^T H p = -p^T (g + r) - lam ||p||^2
        eta = lr(state.count)
        p_g = _dot(solution, grad)
        p_h_p = -p_g - _dot(solution, residual) - lam * _dot(solution, solution)
        predicted = eta * p_g + 0.5 * eta**2 * p_h_p
        proposal = params + eta * solution
        new_value, _ = grad_fn(proposal)
        n_extra += 1
        new_value = float(new_value)

        actual = new_value - value
        rho = actual / predicted if predicted < 0.0 else -math.inf
        if not rho >= 0.25:  # also catches NaN
            lam *= 1.5
        elif rho > 0.75:
            lam *= 2.0 / 3.0

        if actual < 0.0:
            new_params, previous = proposal, solution
        else:
            new_params, previous = params, torch.zeros_like(params)
        return new_params, HessianFreeState(state.count + 1, lam, previous), n_extra

    return Optimizer(init, update, batch_size=batch_size)
