"""Stochastic optimisers for the density: the seven methods compared in the paper.

Every optimiser is an :class:`Optimizer`, a pair of pure functions ``init``
and ``update`` (see :mod:`cryosgd.optim.base` for the calling convention and
the counting of extra gradient evaluations).  ``OPTIMIZERS`` maps the
command-line names to constructors::

    opt = with_projection(make_optimizer("nag", 1e-3), nonnegative())
    state = opt.init(volume)
    volume, state, n_extra = opt.update(grad, state, volume, value=value, grad_fn=grad_fn)
"""
from __future__ import annotations

from collections.abc import Callable

from .adagrad import AdagradState, adagrad
from .base import (
    GradFn,
    HvpFn,
    Optimizer,
    Projection,
    Schedule,
    as_schedule,
    compose,
    constant_schedule,
    finite_difference_epsilon,
    inverse_power_decay,
    map_state,
    nonnegative,
    roll_state,
    sutskever_momentum,
    windowed,
    with_projection,
    zero_outside,
)
from .hessian_free import HessianFreeState, conjugate_gradient, finite_difference_hvp, hessian_free
from .lbfgs import OnlineLBFGSState, online_lbfgs
from .sgd import MomentumState, SGDState, classical_momentum, nesterov, sgd
from .tonga import TongaState, tonga
from .tuning import reference_learning_rate, tune_learning_rate

__all__ = [
    "Optimizer", "GradFn", "HvpFn", "Projection", "Schedule",
    "OPTIMIZERS", "make_optimizer",
    "sgd", "classical_momentum", "nesterov", "adagrad", "tonga", "online_lbfgs", "hessian_free",
    "SGDState", "MomentumState", "AdagradState", "TongaState", "OnlineLBFGSState",
    "HessianFreeState",
    "constant_schedule", "inverse_power_decay", "sutskever_momentum", "as_schedule",
    "with_projection", "nonnegative", "zero_outside", "windowed", "compose", "roll_state", "map_state",
    "finite_difference_epsilon", "finite_difference_hvp", "conjugate_gradient",
    "tune_learning_rate", "reference_learning_rate",
]

OPTIMIZERS: dict[str, Callable[..., Optimizer]] = {
    "sgd": sgd,
    "cm": classical_momentum,
    "nag": nesterov,
    "adagrad": adagrad,
    "tonga": tonga,
    "olbfgs": online_lbfgs,
    "hf": hessian_free,
}


def make_optimizer(name: str, learning_rate: float | Schedule, **kwargs) -> Optimizer:
    """``OPTIMIZERS[name](learning_rate, **kwargs)``; ``name`` is one of ``OPTIMIZERS``."""
    try:
        constructor = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimiser {name!r}; choose from {sorted(OPTIMIZERS)}") from None
    return constructor(learning_rate, **kwargs)

