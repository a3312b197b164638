"""Stochastic gradient descent, classical momentum (CM) and Nesterov's accelerated gradient (NAG).

With ``g_t`` the minibatch gradient at the parameters, ``eta_t`` the learning
rate schedule (the paper's ``eta_0 (1 + 0.01 t)^-0.75`` by default) and
``mu_t`` the momentum schedule (:func:`~cryosgd.optim.base.sutskever_momentum`
by default):

* SGD: ``theta_{t+1} = theta_t - eta_t g_t``.
* CM (Polyak; Sutskever et al. 2013): ``v_{t+1} = mu_t v_t - eta_t g_t``,
  ``theta_{t+1} = theta_t + v_{t+1}``.
* NAG (Nesterov; Sutskever et al. 2013): ``v_{t+1} = mu_t v_t - eta_t
  grad f(theta_t + mu_t v_t)``, ``theta_{t+1} = theta_t + v_{t+1}``.  The
  parameters held and returned are the look-ahead point ``Theta_t = theta_t +
  mu_t v_t``, where the caller evaluates the gradient, so NAG needs no extra
  evaluation: ``Theta_{t+1} = Theta_t - eta_t g_t + mu_{t+1} v_{t+1}``
  (Bengio, Boulanger-Lewandowski & Pascanu 2013).  With ``v_0 = 0`` the two
  sequences start at the same point and converge to the same limit.

None of them makes extra evaluations (``n_extra = 0``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .base import Optimizer, Schedule, as_schedule, sutskever_momentum

__all__ = ["SGDState", "MomentumState", "sgd", "classical_momentum", "nesterov"]


class SGDState(NamedTuple):
    count: int


class MomentumState(NamedTuple):
    count: int
    velocity: Tensor  # same shape as the parameters


def sgd(learning_rate: float | Schedule) -> Optimizer:
    """Plain SGD.

    ``learning_rate``: ``eta_0`` (annealed by the paper's schedule) or a
    schedule ``t -> eta_t``.
    """
    lr = as_schedule(learning_rate, annealed=True)

    def init(params: Tensor) -> SGDState:
        return SGDState(count=0)

    def update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None):
        new_params = params - lr(state.count) * grad
        return new_params, SGDState(count=state.count + 1), 0

    return Optimizer(init, update)


def _momentum_init(params: Tensor) -> MomentumState:
    return MomentumState(count=0, velocity=torch.zeros_like(params))


def classical_momentum(learning_rate: float | Schedule,
                       momentum: float | Schedule = sutskever_momentum) -> Optimizer:
    """SGD with classical (heavy-ball) momentum.

    ``learning_rate``: ``eta_0`` (annealed) or a schedule.  ``momentum``: a
    constant ``mu`` or a schedule ``t -> mu_t``; default the paper's
    ``min(0.9, 1 - 2^(-1 - log2(floor(t/100) + 1)))``.
    """
    lr = as_schedule(learning_rate, annealed=True)
    mu = as_schedule(momentum, annealed=False)

    def update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None):
        t = state.count
        velocity = mu(t) * state.velocity - lr(t) * grad
        return params + velocity, MomentumState(count=t + 1, velocity=velocity), 0

    return Optimizer(_momentum_init, update)


def nesterov(learning_rate: float | Schedule,
             momentum: float | Schedule = sutskever_momentum) -> Optimizer:
    """Nesterov's accelerated gradient in look-ahead form (see module notes).

    Same hyper-parameters as :func:`classical_momentum`.
    """
    lr = as_schedule(learning_rate, annealed=True)
    mu = as_schedule(momentum, annealed=False)

    def update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None):
        t = state.count
        step = lr(t) * grad
        velocity = mu(t) * state.velocity - step
        new_params = params - step + mu(t + 1) * velocity
        return new_params, MomentumState(count=t + 1, velocity=velocity), 0

    return Optimizer(_momentum_init, update)
