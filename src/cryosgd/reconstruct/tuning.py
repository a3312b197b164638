"""The learning rate, set automatically: by a short search on training images, scored on others
(:func:`tune_rate`, the default), or from one probe step (:func:`probe_rate`, ``--probe-rate``).

Both start from the rate at which the optimiser's first step moves the density by 10% of its norm,
measured by probing that step at rate 1 (:func:`probe_scale`).  The search tries candidates around it;
the probe rule multiplies it by the factor the search chose on measured sets (:data:`PROBE_FACTOR`),
which costs one minibatch gradient instead of 50 or more, but missed by a factor of 4 on one
set (``docs/reconstruction.md``).  The test images, whose NLL a run reports, take no part.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..inference.objective import Objective
from ..io import InputError
from ..optim import make_optimizer, tune_learning_rate
from ..runtime import parallel
from .dataset import Dataset

__all__ = ["tune_rate", "probe_rate", "probe_scale", "tuning_split", "tune_steps", "TUNE_SAFETY",
           "TUNE_SAFETY_EXTRA", "TUNE_STEPS", "PROBE_FACTOR"]

TUNE_SAFETY = 0.5  # the tuned rate is halved: later, at higher band limits, the objective is rougher
# TONGA's short tuning runs end before its covariance estimate settles; over a 5-epoch run its best
# rate measured about half the (already halved) tuned one (test NLL 196.96 at 0.5 against 202.2 at 1.02)
TUNE_SAFETY_EXTRA = {"tonga": 0.5}
# steps of each candidate run (12 where not listed).  SGD's: on three sets (the end-to-end set, 64 px at
# 3.5 Å/px with shifts of sigma 3 px; 8ZPM, 48 px; the centred 5FUU demo set) every one of the seven
# candidates and the refining midpoint gave the same best after 4, 6, 8 and 12 steps, ahead of the
# runner-up by 0.9 nats or more at 6 steps (0.1 or more at 12; docs/reconstruction.md).  The others keep
# 12: TONGA's covariance estimate and the momentum methods' velocity build up over the steps, and they
# were not measured shorter
TUNE_STEPS = {"sgd": 6}
# the searched rate over the probe scale (before the safety factor), where the search's candidates were
# extended upwards until the score rose again; measured on simulated 5FUU (64 px, 3 Å/px, centred) and
# 8ZPM (48 px, 2.5 Å/px, shifts of 2 px) sets at their first marching stage (docs/reconstruction.md)
PROBE_FACTOR = {"sgd": 10 ** 1.25, "cm": 10 ** 1.25, "nag": 10 ** 1.25, "adagrad": 10 ** 0.5,
                "tonga": 10 ** 0.25, "olbfgs": 10 ** 1.0, "hf": 10 ** 1.5}


def tuning_split(dataset: Dataset, *, tune_images: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tuning, validation)``: disjoint subsets of the training images for the learning-rate search.

    The candidates run on up to ``tune_images`` training images and are scored on ``validation_size``
    others (at most a third of the training set); the test images are kept for reporting only.
    """
    train = dataset.train
    n_val = max(1, min(validation_size, len(train) // 3))
    return train[:min(len(train) - n_val, tune_images)], train[len(train) - n_val:]


def tune_steps(optimizer: str, steps: int | None = None) -> int:
    """The steps of each candidate run: ``steps``, or :data:`TUNE_STEPS` of ``optimizer`` (12 if absent)."""
    return TUNE_STEPS.get(optimizer, 12) if steps is None else int(steps)


def _minibatch_objectives(dataset: Dataset, kern, objective, subset: np.ndarray, *, seed: int, batch_size: int,
                          steps: int, cache: dict | None = None, start: torch.Tensor | None = None):
    """``steps`` minibatch objectives ``grad_fn(volume) -> (value, gradient)`` on minibatches of
    ``subset`` drawn in a fixed order from ``seed`` (the search's and the probe's first is the same);
    prepared minibatches are kept in ``cache``.  Every candidate's first step, and the probe, evaluate
    the first minibatch at the same ``start``: that result is kept in ``cache`` too and handed out again
    (a copy of its gradient) while ``start`` is unchanged."""
    cache = {} if cache is None else cache
    rng = np.random.default_rng([seed, 11])
    for _ in range(steps):
        idx = np.sort(rng.choice(subset, size=min(batch_size, len(subset)), replace=False))
        key = tuple(idx)
        if key not in cache:
            local = parallel.shard(idx)
            cache[key] = kern.prepare(dataset.images(local), dataset.particles.ctf[local])

        def grad_fn(p, _mb=cache[key], _n=len(idx), _key=key):
            if p is not start:
                o = objective(p, _mb, total=_n)
                return o.value, o.gradient
            kept = cache.get(("start", _key))
            if kept is None or kept[0] != p._version:   # _version counts in-place changes
                o = objective(p, _mb, total=_n)
                kept = cache[("start", _key)] = (p._version, o.value, o.gradient)
            return kept[1], kept[2].clone()

        yield grad_fn


def tune_rate(optimizer: str, dataset: Dataset, kern, prior, volume: torch.Tensor, projection, n_train: int, *,
              seed: int, tune_images: int = 300, steps: int | None = None, validation_size: int = 100,
              objective=None) -> float:
    """The base learning rate of ``optimizer`` from a short search on ``tune_images`` training images,
    scored on ``validation_size`` others, from ``volume`` at ``kern``'s band limit, each candidate run
    for ``steps`` (default :data:`TUNE_STEPS`); ``objective`` (default: the plain one) is another with
    the same interface (the mixture's for several classes)."""
    subset, validation = tuning_split(dataset, tune_images=tune_images, validation_size=validation_size)
    objective = Objective(kern, prior, n_train) if objective is None else objective
    n_steps = tune_steps(optimizer, steps)
    cache = {}

    def factory(batch_size, seed):
        return _minibatch_objectives(dataset, kern, objective, subset, seed=seed, batch_size=batch_size,
                                     steps=n_steps, cache=cache, start=volume)

    scale = probe_scale(optimizer, volume, next(iter(factory(100, seed))))
    candidates = [scale * 10.0 ** (k / 2) for k in range(-4, 3)]
    # score each candidate by the NLL of validation images (training images outside the tuning subset,
    # at the tuning band limit), not by the tuning minibatches: a short run on those rewards rates at the
    # edge of stability; the test images, whose NLL the run reports, play no part
    mine = parallel.shard(np.sort(validation))
    held = kern.prepare(dataset.images(mine), dataset.particles.ctf[mine])

    def heldout(p):
        return objective.test_nll(p, held, total=len(validation))

    try:
        best = tune_learning_rate(optimizer, factory, volume, candidates=candidates, heldout=heldout,
                                  n_steps=n_steps, seed=seed, projection=projection)
    except parallel.DistributedFailure:
        raise
    except RuntimeError:  # every candidate diverged
        low, high = min(candidates), max(candidates)
        raise InputError(dataset.particles.source,
                         f"no learning rate from {low:.3g} to {high:.3g} lowered the NLL for {optimizer} "
                         "(the images may hold no signal at this band limit); give one with "
                         "--learning-rate") from None
    return float(best) * TUNE_SAFETY * TUNE_SAFETY_EXTRA.get(optimizer, 1.0)


def probe_scale(optimizer: str, volume: torch.Tensor, grad_fn) -> float:
    """The rate at which ``optimizer``'s first step, on the minibatch objective ``grad_fn``, moves
    ``volume`` by 10% of its norm.

    The step is probed at rate 1 (plain gradient, AdaGrad's scaled step, TONGA's natural gradient,
    L-BFGS's and HF's curvature steps all differ in length); the objective is not convex at a random
    start, so a Newton-step reference does not exist.  AdaGrad's first step is about sign(g) on every
    voxel, far longer than its later steps: its rate is a per-voxel step, scaled by the density's
    largest voxel instead.
    """
    if optimizer == "adagrad":
        return 0.1 * float(volume.abs().max())
    value, grad = grad_fn(volume)
    probe = make_optimizer(optimizer, 1.0)
    moved, _, _ = probe.update(grad, probe.init(volume), volume, value=value, grad_fn=grad_fn)
    step = float((moved - volume).norm())
    return 0.1 * float(volume.norm()) / step if step > 0 and math.isfinite(step) else 1.0


def probe_rate(optimizer: str, dataset: Dataset, kern, prior, volume: torch.Tensor, n_train: int, *,
               seed: int, tune_images: int = 300, validation_size: int = 100, objective=None) -> float:
    """The base learning rate of ``optimizer`` from one probe step on a minibatch of training images:
    :func:`probe_scale` times :data:`PROBE_FACTOR` and the safety factors of :func:`tune_rate`;
    ``objective`` as for :func:`tune_rate`."""
    subset, _ = tuning_split(dataset, tune_images=tune_images, validation_size=validation_size)
    objective = Objective(kern, prior, n_train) if objective is None else objective
    grad_fn = next(_minibatch_objectives(dataset, kern, objective, subset, seed=seed, batch_size=100, steps=1))
    scale = probe_scale(optimizer, volume, grad_fn)
    return scale * PROBE_FACTOR[optimizer] * TUNE_SAFETY * TUNE_SAFETY_EXTRA.get(optimizer, 1.0)
