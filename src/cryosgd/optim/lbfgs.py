"""Online L-BFGS (Schraudolph, Yu & Guenter 2007).

Each step, with ``g_t`` the minibatch gradient at ``theta_t``:

1. ``p_t = -H_t g_t`` by the L-BFGS two-loop recursion over the last
   ``memory`` pairs ``(s_i, y_i)``, with the initial inverse Hessian
   ``H^0 = (1 / k) sum_i s_i^T y_i / y_i^T y_i`` averaged over the ``k``
   stored pairs (their remedy for noisy single-pair estimates).
2. ``s_t = (eta_t / c) p_t`` and ``theta_{t+1} = theta_t + s_t``, with the
   paper's annealed ``eta_t``; ``eta_0 = c`` takes full quasi-Newton steps
   at ``t = 0``.
3. ``y_t = grad f(theta_{t+1}; B_t) - g_t + lambda s_t``: the gradient at the
   new point on the *same* minibatch ``B_t`` (one ``grad_fn`` call), so the
   pair measures curvature and not minibatch noise; ``lambda >= 0`` is their
   model-trust-region damping.  The pair is stored only if
   ``s_t^T y_t > 0`` (the BFGS curvature condition; it can fail on a
   non-convex objective).

The first step has no pairs.  Schraudolph et al. take a tiny step
``-epsilon g_0`` to collect one; here the pair is collected by a probe instead:
``s = -h g_0 / ||g_0||`` with the finite-difference length ``h`` of
:func:`~cryosgd.optim.base.finite_difference_epsilon` (large enough to
survive float32 rounding), ``y = grad f(theta_0 + s; B_0) - g_0 + lambda s``,
and then step 1 runs with that pair, so the first step is ``eta_0 / c`` times
the one-dimensional Newton step along ``-g_0``.  No pair is collected after
that first step, so every step costs exactly one extra gradient:
``n_extra = 1``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .base import Optimizer, Schedule, as_schedule, finite_difference_epsilon

__all__ = ["OnlineLBFGSState", "online_lbfgs"]


class OnlineLBFGSState(NamedTuple):
    count: int
    s_history: tuple[Tensor, ...]  # oldest first, at most `memory`, parameter-shaped
    y_history: tuple[Tensor, ...]


def _dot(a: Tensor, b: Tensor) -> float:
    return float(torch.vdot(a.reshape(-1), b.reshape(-1)))


def _two_loop(grad: Tensor, s_history, y_history) -> Tensor:
    """``-H g`` with Schraudolph et al.'s averaged initial scaling."""
    direction = -grad
    rhos = [1.0 / _dot(s, y) for s, y in zip(s_history, y_history)]
    alphas = []
    for s, y, rho in zip(reversed(s_history), reversed(y_history), reversed(rhos)):
        alpha = rho * _dot(s, direction)
        direction = direction - alpha * y
        alphas.append(alpha)
    scale = sum(1.0 / (rho * _dot(y, y)) for y, rho in zip(y_history, rhos)) / len(rhos)
    direction = scale * direction
    for s, y, rho, alpha in zip(s_history, y_history, rhos, reversed(alphas)):
        beta = rho * _dot(y, direction)
        direction = direction + (alpha - beta) * s
    return direction


def online_lbfgs(learning_rate: float | Schedule = 0.1, *, memory: int = 30, c: float = 0.1,
                 damping: float = 0.0) -> Optimizer:
    """Online L-BFGS; ``update`` needs ``grad_fn`` on the step's minibatch.

    ``learning_rate``: ``eta_0`` (annealed) or a schedule; the step is
    ``eta_t / c`` times the quasi-Newton step, so the default ``eta_0 = c``
    starts with full steps.  ``memory``: number of curvature pairs ``m``
    (the paper used 30).  ``c``: step scaling in ``(0, 1]`` (Schraudolph et
    al. used 0.1).  ``damping``: their ``lambda``, added as ``lambda s`` to
    each gradient difference (units of curvature).
    """
    lr = as_schedule(learning_rate, annealed=True)

    def init(params: Tensor) -> OnlineLBFGSState:
        return OnlineLBFGSState(count=0, s_history=(), y_history=())

    def store(s_history, y_history, s, y):
        if _dot(s, y) > 0.0:
            s_history = (s_history + (s,))[-memory:]
            y_history = (y_history + (y,))[-memory:]
        return s_history, y_history

    def update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None):
        if grad_fn is None:
            raise ValueError("online L-BFGS needs grad_fn (gradient on the same minibatch)")
        t = state.count
        s_history, y_history = state.s_history, state.y_history
        first = not s_history
        if first:
            probe = -finite_difference_epsilon(params, grad) * grad
            _, probe_grad = grad_fn(params + probe)
            s_history, y_history = store(s_history, y_history, probe,
                                         probe_grad - grad + damping * probe)
        if s_history:
            step = (lr(t) / c) * _two_loop(grad, s_history, y_history)
        else:  # negative curvature along g_0: a probe-length step, retry the pair next step
            step = -finite_difference_epsilon(params, grad) * grad
        new_params = params + step
        if not first:
            _, new_grad = grad_fn(new_params)
            s_history, y_history = store(s_history, y_history, step,
                                         new_grad - grad + damping * step)
        return new_params, OnlineLBFGSState(t + 1, s_history, y_history), 1

    return Optimizer(init, update)
