"""The optimiser interface, learning-rate and momentum schedules, projections.

An optimiser is a pair of pure functions (the optax design, on torch tensors)::

    state = opt.init(params)
    params, state, n_extra = opt.update(grad, state, params,
                                        value=None, grad_fn=None, hvp_fn=None)

* ``params`` is one tensor of any shape (the density volume, e.g.
  ``(64, 64, 64)``); ``grad`` has the same shape and is the *minibatch*
  gradient of the objective at ``params``: the sum over the minibatch scaled
  by ``K / B`` plus the prior (the minibatch estimate of eq. 6 of Brubaker &
  Punjani 2015).  ``value`` is the minibatch objective at ``params``.
* ``grad_fn(p) -> (value, grad)`` evaluates the objective and its gradient on
  the *same minibatch* at another point ``p``; ``hvp_fn(p, v)`` returns the
  exact Hessian-vector product on that minibatch.  Every ``update`` accepts
  all three keywords and ignores those it does not use; methods that need
  ``grad_fn`` raise ``ValueError`` without it.
* ``n_extra`` counts the extra evaluations the update made, one per call of
  ``grad_fn`` or ``hvp_fn``.  Each is one gradient per minibatch image, so the
  caller's running count of per-image gradients grows by
  ``batch_size * (1 + n_extra)`` per step.
* The state is a NamedTuple of tensors and Python numbers, including the step
  counter ``count``; ``update`` never modifies its inputs.

Constraints are transforms: ``with_projection(opt, nonnegative())`` applies
the projection to the parameters after every update.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Optimizer", "GradFn", "HvpFn", "Projection", "Schedule",
    "constant_schedule", "inverse_power_decay", "sutskever_momentum", "as_schedule",
    "with_projection", "nonnegative", "zero_outside", "windowed", "compose",
    "finite_difference_epsilon", "roll_state", "map_state",
]

GradFn = Callable[[Tensor], "tuple[Tensor | float, Tensor]"]
"""``grad_fn(params) -> (value, grad)`` on one fixed minibatch."""

HvpFn = Callable[[Tensor, Tensor], Tensor]
"""``hvp_fn(params, vector) -> Hessian @ vector`` on one fixed minibatch."""

Projection = Callable[[Tensor], Tensor]
"""``projection(params) -> params`` onto a constraint set."""

Schedule = Callable[[int], float]
"""``schedule(count) -> value`` at step ``count = 0, 1, 2, ...``."""


class Optimizer(NamedTuple):
    """A pair of pure functions plus the minibatch size the method expects.

    ``init(params) -> state``;
    ``update(grad, state, params, *, value=None, grad_fn=None, hvp_fn=None)
    -> (new_params, new_state, n_extra)`` (see the module notes).
    ``batch_size`` is a hint for the caller: the paper used 100 images per
    minibatch for every method except Hessian-free (300).
    """

    init: Callable[[Tensor], Any]
    update: Callable[..., tuple[Tensor, Any, int]]
    batch_size: int = 100


def constant_schedule(value: float) -> Schedule:
    """``schedule(t) = value``."""
    value = float(value)

    def schedule(count: int) -> float:
        return value

    return schedule


def inverse_power_decay(init_value: float, decay_rate: float = 1e-2, power: float = 0.75) -> Schedule:
    """The paper's annealing ``eta_t = eta_0 * (1 + decay_rate * t) ** -power``.

    Defaults are the paper's (``lambda = 1e-2``, exponent ``0.75``); it is
    applied by SGD, CM, NAG, TONGA and online L-BFGS.
    """
    init_value, decay_rate, power = float(init_value), float(decay_rate), float(power)

    def schedule(count: int) -> float:
        return init_value * (1.0 + decay_rate * count) ** -power

    return schedule


def sutskever_momentum(count: int, max_momentum: float = 0.9, period: int = 100) -> float:
    """Momentum ``mu_t = min(mu_max, 1 - 2 ** (-1 - log2(floor(t / period) + 1)))``.

    Sutskever, Martens, Dahl & Hinton (2013), with the paper's period of 100
    iterations: 0.5 for ``t < 100``, 0.75 until 200, 5/6 until 300, 0.875
    until 400, then the cap 0.9.
    """
    return min(max_momentum, 1.0 - 2.0 ** (-1.0 - math.log2(count // period + 1)))


def as_schedule(value: float | Schedule, *, annealed: bool) -> Schedule:
    """A schedule from a number or a schedule.

    A number becomes :func:`inverse_power_decay` when ``annealed`` (the
    paper's rule for the method) and :func:`constant_schedule` otherwise;
    a callable is returned unchanged.
    """
    if callable(value):
        return value
    return inverse_power_decay(value) if annealed else constant_schedule(value)


def with_projection(optimizer: Optimizer, *projections: Projection) -> Optimizer:
    """``optimizer`` followed by ``projections`` (in order) on the new parameters.

    The state is the inner optimiser's; curvature pairs or momenta it holds
    refer to the unprojected step, as in projected stochastic gradient.
    """
    inner = optimizer.update

    def update(grad, state, params, **extra):
        new_params, state, n_extra = inner(grad, state, params, **extra)
        for projection in projections:
            new_params = projection(new_params)
        return new_params, state, n_extra

    return optimizer._replace(update=update)


def nonnegative() -> Projection:
    """Projection onto non-negative densities, ``max(params, 0)``."""

    def projection(params: Tensor) -> Tensor:
        return params.clamp_min(0)

    return projection


def zero_outside(mask: Tensor) -> Projection:
    """Projection that zeroes the parameters where ``mask`` is false.

    ``mask`` is boolean and broadcasts against the parameters (e.g. a
    ``(N, N, N)`` spherical support).
    """
    mask = mask.to(torch.bool)

    def projection(params: Tensor) -> Tensor:
        zero = torch.zeros((), dtype=params.dtype, device=params.device)
        return torch.where(mask.to(params.device), params, zero)

    return projection


def windowed(window: Tensor) -> Projection:
    """Multiplication by a real ``window`` (e.g. a soft spherical mask, 1 inside, 0 outside, a smooth
    edge between), broadcast against the parameters."""

    def projection(params: Tensor) -> Tensor:
        return params * window.to(device=params.device, dtype=params.dtype)

    return projection


def compose(*projections: Projection) -> Projection:
    """The projections applied in order, as one (the identity when there are none)."""

    def projection(params: Tensor) -> Tensor:
        for p in projections:
            params = p(params)
        return params

    return projection


def finite_difference_epsilon(params: Tensor, direction: Tensor) -> float:
    """Step ``eps`` for a forward difference ``(g(p + eps * v) - g(p)) / eps``.

    ``sqrt(machine eps) * (1 + ||p||) / ||v||`` (norms over all elements,
    machine eps of the parameters' dtype): each coordinate moves by about
    ``sqrt(machine eps)`` relative to the parameters, which balances rounding
    against truncation error.
    """
    norm_v = float(torch.linalg.vector_norm(direction))
    if norm_v == 0.0:
        return 0.0
    norm_p = float(torch.linalg.vector_norm(params))
    return math.sqrt(torch.finfo(params.dtype).eps) * (1.0 + norm_p) / norm_v


def map_state(state: Any, shape: tuple[int, ...], fn: Callable[[Tensor], Tensor]) -> Any:
    """``state`` with ``fn`` applied to every tensor that lives in the frame of parameters of ``shape``.

    Parameter-shaped tensors (momenta, AdaGrad's sums, L-BFGS pairs, HF's warm start) go to ``fn`` as
    they are; ``(n_params, m)`` tensors (TONGA's factor, one column per vector) as ``(*shape, m)`` and
    back; tuples and NamedTuples are walked; everything else (counters, damping, TONGA's Gram matrix
    of inner products, scalars) stays.  ``fn`` must act on the leading ``shape`` dimensions only.
    """
    shape = tuple(shape)
    n = math.prod(shape)

    def move(leaf):
        if isinstance(leaf, Tensor):
            if tuple(leaf.shape) == shape:
                return fn(leaf)
            if leaf.dim() == 2 and leaf.shape[0] == n and n > 1:
                return fn(leaf.reshape(*shape, leaf.shape[1])).reshape(n, leaf.shape[1])
            return leaf
        if isinstance(leaf, tuple):
            moved = [move(x) for x in leaf]
            return type(leaf)(*moved) if hasattr(leaf, "_fields") else tuple(moved)
        return leaf

    return move(state)


def roll_state(state: Any, shifts: tuple[int, ...], shape: tuple[int, ...]) -> Any:
    """The optimiser state for parameters rolled by ``torch.roll(params, shifts, dims=(0, 1, ...))``.

    A roll permutes the coordinates, so running an optimiser on the rolled
    problem from the rolled start gives exactly the rolled state: every tensor
    that lives in the parameters' frame moves with them (:func:`map_state`;
    TONGA's factor column by column), and everything else stays.
    """
    dims = tuple(range(len(shape)))
    return map_state(state, shape, lambda t: torch.roll(t, shifts=tuple(shifts), dims=dims))
