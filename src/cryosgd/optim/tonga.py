"""TONGA: a low-rank natural gradient (Le Roux, Manzagol & Bengio 2008).

The direction is ``d_t = (C_t + lambda I)^-1 g_t`` with ``C_t`` a
running, exponentially weighted second moment of the minibatch gradients,
kept in low-rank form:

* ``X_t = [sqrt(gamma) X_{t-1}, g_t]`` (columns; ``X_{-1}`` empty),
  ``W_t = gamma W_{t-1} + 1`` and ``C_t = X_t X_t^T / W_t`` (a weighted mean
  of ``g_s g_s^T``, so ``C_0 = g_0 g_0^T``).  The Gram matrix
  ``X_t^T X_t`` is updated column by column, at ``O(n m)`` cost per step.
* Every ``refresh_every`` steps, after the update, ``X`` is replaced by its
  best rank-``rank`` approximation ``X V_k`` from the eigendecomposition of
  the Gram matrix (``V_k``: leading ``rank`` eigenvectors); between refreshes
  it holds at most ``rank + refresh_every`` columns.
* With the Woodbury identity,
  ``d_t = (g_t - X_t (X_t^T X_t + lambda W_t I)^-1 X_t^T g_t) / lambda``;
  the small solve is done in float64.
* ``theta_{t+1} = theta_t - eta_t d_t`` with the paper's annealed ``eta_t``.

The regulariser ``lambda`` is ``damping * ||g_0||^2``: set from the first
minibatch gradient (so ``damping`` is dimensionless) and fixed thereafter.
Along directions the covariance has not seen, TONGA is SGD with rate
``eta_t / lambda``; along the dominant gradient directions the step is
shrunk.  The paper approximated the covariance with rank 20 every 20
iterations and tuned the regulariser with the learning rate.  No extra
evaluations (``n_extra = 0``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .base import Optimizer, Schedule, as_schedule

__all__ = ["TongaState", "tonga"]


class TongaState(NamedTuple):
    count: int
    factor: Tensor  # (n_params, m): X_t, columns are scaled past gradients
    gram: Tensor  # (m, m) float64: X_t^T X_t
    weight: float  # W_t, total weight of the gradients in X_t X_t^T
    regulariser: float  # lambda (absolute), set at the first update


def tonga(learning_rate: float | Schedule, *, damping: float = 1e-2, rank: int = 20,
          refresh_every: int = 20, decay: float = 0.995) -> Optimizer:
    """TONGA with a rank-``rank`` covariance refreshed every ``refresh_every`` steps.

    ``learning_rate``: ``eta_0`` (annealed) or a schedule; the first step has
    length ``eta_0 / (||g_0|| (1 + damping))``.  ``damping``: the regulariser
    relative to ``||g_0||^2`` (tune it with the learning rate).  ``decay``:
    ``gamma``, the per-step forgetting factor of the covariance (memory of
    about ``1 / (1 - gamma)`` steps).
    """
    lr = as_schedule(learning_rate, annealed=True)

    def init(params: Tensor) -> TongaState:
        n = params.numel()
        return TongaState(
            count=0,
            factor=params.new_zeros((n, 0)),
            gram=torch.zeros((0, 0), dtype=torch.float64, device=params.device),
            weight=0.0,
            regulariser=0.0,
        )

    def update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None):
        t = state.count
        g = grad.reshape(-1)
        g_sq = float(torch.dot(g, g))
        regulariser = state.regulariser
        if t == 0:
            regulariser = damping * g_sq if g_sq > 0.0 else damping

        old = state.factor * math.sqrt(decay)
        old_g = (old.T @ g).to(torch.float64)  # (m,)
        m = old.shape[1]
        gram = torch.empty((m + 1, m + 1), dtype=torch.float64, device=g.device)
        gram[:m, :m] = decay * state.gram
        gram[:m, m] = old_g
        gram[m, :m] = old_g
        gram[m, m] = g_sq
        factor = torch.cat([old, g[:, None]], dim=1)
        weight = decay * state.weight + 1.0

        # Woodbury: (X X^T / W + lam I)^-1 g = (g - X (X^T X + lam W I)^-1 X^T g) / lam
        rhs = torch.cat([old_g, gram[m, m:]])
        shift = regulariser * weight * torch.eye(m + 1, dtype=torch.float64, device=g.device)
        coeffs = torch.linalg.solve(gram + shift, rhs)
        direction = (g - factor @ coeffs.to(g.dtype)) / regulariser
        new_params = params - lr(t) * direction.reshape(params.shape)

        if (t + 1) % refresh_every == 0 and factor.shape[1] > rank:
            eigenvalues, eigenvectors = torch.linalg.eigh(gram)  # ascending
            keep = eigenvectors[:, -rank:]
            factor = factor @ keep.to(g.dtype)
            gram = torch.diag(eigenvalues[-rank:])

        new_state = TongaState(count=t + 1, factor=factor, gram=gram, weight=weight,
                               regulariser=regulariser)
        return new_params, new_state, 0

    return Optimizer(init, update)
