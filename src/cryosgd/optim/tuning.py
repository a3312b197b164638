"""Automatic choice of the base learning rate ``eta_0`` by a short grid search.

The paper tuned ``eta_0`` by hand for each method "by examining performance on
a subset of the training examples"; :func:`tune_learning_rate` automates that.
The objective is abstract here: the caller supplies ``objective_factory``,

    objective_factory(batch_size, seed) -> iterable of grad_fn

an iterable of minibatch objectives ``grad_fn(params) -> (value, grad)`` (on
a few hundred training images), the same sequence for the same arguments, so
that every candidate sees the images in the same order.

Each candidate rate runs ``n_steps`` updates from ``params0``.  Its score is
``heldout(params)`` at the end when a held-out objective is given, otherwise
the mean minibatch value over the last quarter of the steps (comparable
across candidates because the minibatches are the same).  A run diverges, and
is discarded, when a value, gradient or parameter becomes non-finite or the
score is not below the starting value (``heldout(params0)``, or the first
minibatch value).

The candidates are tried from the largest down, and the walk stops after two in a row score worse
than the best so far: too large a rate diverges or overshoots, too small a one barely moves, so the
best lies where the scores turn, and the second worse score guards against one rough point (AdaGrad
with rates far too large scores unevenly: ``tests/test_optim.py``).  The rates of a reconstruction
were best at the top of their grid or next to it, so the walk runs three or four of its seven.
``exhaustive=True`` scores every candidate.

Without ``candidates`` the grid is ``eta_ref * 10 ** [-3, -2.5, ..., 1]``
(four decades) around a reference rate measured on the first minibatch
by :func:`reference_learning_rate`; with ``refine`` the search then tries the
geometric midpoint between the best rate and the better of its grid neighbours once.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from .base import GradFn, Projection, with_projection
from .hessian_free import finite_difference_hvp

__all__ = ["ObjectiveFactory", "tune_learning_rate", "reference_learning_rate"]

ObjectiveFactory = Callable[[int, int], Iterable[GradFn]]
"""``objective_factory(batch_size, seed) -> iterable of grad_fn`` (see module notes)."""


def _make(name: str, learning_rate: float, optimizer_kwargs: Mapping):
    from . import make_optimizer  # the registry lives in the package namespace

    return make_optimizer(name, learning_rate, **optimizer_kwargs)


def reference_learning_rate(name: str, objective_factory: ObjectiveFactory, params0: Tensor, *,
                            seed: int = 0, optimizer_kwargs: Mapping | None = None) -> float:
    """The rate at which optimiser ``name``'s first step has Newton length.

    On the first minibatch (gradient ``g``), the one-dimensional Newton step
    along ``-g`` has length ``||g||^3 / g^T H g`` (``H g`` by a finite
    difference, one extra gradient).  The optimiser's first step at rate 1 is
    measured (every method's first step is proportional to its rate) and the
    ratio returned: about ``1 / curvature`` for SGD, ``c`` for online L-BFGS,
    about 1 for Hessian-free.  Raises ``ValueError`` if the curvature along
    ``g`` is not positive; returns 1 if the probe step has zero length (a
    Hessian-free step rejected on its minibatch).
    """
    kwargs = dict(optimizer_kwargs or {})
    probe = _make(name, 1.0, kwargs)
    grad_fn = next(iter(objective_factory(probe.batch_size, seed)))
    value, grad = grad_fn(params0)
    g_sq = float(torch.vdot(grad.reshape(-1), grad.reshape(-1)))
    curvature = float(torch.vdot(grad.reshape(-1),
                                 finite_difference_hvp(grad_fn, params0, grad, grad).reshape(-1)))
    if not (g_sq > 0.0 and curvature > 0.0 and math.isfinite(curvature)):
        raise ValueError("no positive curvature along the gradient at params0; pass candidates")
    newton_length = g_sq**1.5 / curvature
    new_params, _, _ = probe.update(grad, probe.init(params0), params0, value=value, grad_fn=grad_fn)
    step_length = float(torch.linalg.vector_norm(new_params - params0))
    if not (step_length > 0.0 and math.isfinite(step_length)):
        return 1.0
    return newton_length / step_length


def tune_learning_rate(name: str, objective_factory: ObjectiveFactory, params0: Tensor, *,
                       candidates: Sequence[float] | None = None, n_steps: int = 50, seed: int = 0,
                       heldout: Callable[[Tensor], float] | None = None,
                       projection: Projection | None = None, refine: bool = True, exhaustive: bool = False,
                       optimizer_kwargs: Mapping | None = None) -> float:
    """The base learning rate with the best short-run score (see module notes).

    ``name``: a key of ``OPTIMIZERS``; ``optimizer_kwargs`` go to its
    constructor.  ``objective_factory(batch_size, seed)``: minibatch
    objectives in a fixed order; ``batch_size`` is the optimiser's hint.
    ``candidates``: rates to try (default: the calibrated four-decade grid).
    ``n_steps``: updates per candidate.  ``heldout(params)``: optional held-out
    objective used as the score.  ``projection``: applied after every update
    (e.g. :func:`~cryosgd.optim.base.nonnegative`).  ``exhaustive``: score
    every candidate instead of walking down from the largest (module notes).
    Raises ``RuntimeError`` if every candidate diverges.
    """
    kwargs = dict(optimizer_kwargs or {})
    if candidates is None:
        reference = reference_learning_rate(name, objective_factory, params0, seed=seed,
                                            optimizer_kwargs=kwargs)
        candidates = [reference * 10.0 ** (k / 2) for k in range(-6, 3)]
    grid = sorted(float(rate) for rate in candidates)
    baseline = None if heldout is None else float(heldout(params0))

    def score(rate: float) -> float:
        optimizer = _make(name, rate, kwargs)
        if projection is not None:
            optimizer = with_projection(optimizer, projection)
        state, params = optimizer.init(params0), params0
        values = []
        for _, grad_fn in zip(range(n_steps), objective_factory(optimizer.batch_size, seed)):
            value, grad = grad_fn(params)
            value = float(value)
            if not (math.isfinite(value) and bool(torch.isfinite(grad).all())):
                return math.inf
            values.append(value)
            params, state, _ = optimizer.update(grad, state, params, value=value, grad_fn=grad_fn)
        if not values or not bool(torch.isfinite(params).all()):
            return math.inf
        if heldout is None:
            window = values[-max(1, len(values) // 4):]
            result, start = sum(window) / len(window), values[0]
        else:
            result, start = float(heldout(params)), baseline
        return result if math.isfinite(result) and result < start else math.inf

    scores: dict[float, float] = {}
    worse = 0  # candidates in a row that scored worse than the best before them
    for rate in reversed(grid):
        lowest = min(scores.values(), default=math.inf)
        scores[rate] = score(rate)
        worse = worse + 1 if math.isfinite(lowest) and scores[rate] > lowest else 0
        if worse == 2 and not exhaustive:
            break
    best = min(scores, key=scores.__getitem__)
    if math.isinf(scores[best]):
        raise RuntimeError(f"every learning rate diverged for {name!r}: {grid}")
    if refine and len(grid) > 1:
        i = grid.index(best)
        neighbours = grid[max(i - 1, 0):i] + grid[i + 1:i + 2]   # the walk scored both
        # the best rate lies towards the better-scoring neighbour: one midpoint, on that side
        other = min(neighbours, key=scores.__getitem__)
        rate = math.sqrt(best * other)
        scores[rate] = score(rate)
        best = min(scores, key=scores.__getitem__)
    return best
