"""AdaGrad (Duchi, Hazan & Singer 2011), diagonal form.

``G_t = G_{t-1} + g_t**2`` (elementwise) and
``theta_{t+1} = theta_t - eta_0 * g_t / sqrt(epsilon + G_t)``.  The
accumulated squares already shrink the steps, so as in the paper the base rate
is not annealed.  No extra evaluations (``n_extra = 0``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .base import Optimizer, Schedule, as_schedule

__all__ = ["AdagradState", "adagrad"]


class AdagradState(NamedTuple):
    count: int
    sum_of_squares: Tensor  # same shape as the parameters


def adagrad(learning_rate: float | Schedule, *, epsilon: float = 1e-8) -> Optimizer:
    """AdaGrad.

    ``learning_rate``: ``eta_0`` (constant) or a schedule; it has the units of
    the parameters, since the first step moves each coordinate by about
    ``eta_0``.  ``epsilon``: added under the square root (units of
    gradient squared) so coordinates that have seen no gradient do not divide
    by zero.
    """
    lr = as_schedule(learning_rate, annealed=False)

    def init(params: Tensor) -> AdagradState:
        return AdagradState(count=0, sum_of_squares=torch.zeros_like(params))

    def update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None):
        sum_of_squares = state.sum_of_squares + grad * grad
        new_params = params - lr(state.count) * grad / torch.sqrt(epsilon + sum_of_squares)
        return new_params, AdagradState(count=state.count + 1, sum_of_squares=sum_of_squares), 0

    return Optimizer(init, update)
