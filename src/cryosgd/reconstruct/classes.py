"""Multi-class ab initio (``Settings.classes`` K > 1): K densities, learned proportions, and the
guard against collapse.  The mathematics is in :mod:`cryosgd.inference.mixture`; the choices are
described in ``docs/classes.md``.

The loop holds the densities as one ``(K, N, N, N)`` tensor, so every optimiser, the positivity
and mask projections (which broadcast) and the divergence guard work unchanged.  This module adds:

* the starts: class k from its own random spheres (class 1 is the single-class start);
* the proportions ``pi``: a running average of the minibatch mean posteriors (rate
  ``PROPORTION_RATE``), each held at ``PROPORTION_FLOOR`` or more;
* the collapse guard, in two parts: (1) annealed class posteriors: the gradients are weighted by
  ``(1 - s) gamma + s / K`` with ``s`` falling linearly from ``SIMILARITY_START`` to 0 over the
  first ``ANNEAL_FRACTION`` of the steps, so every class learns from every image at first;
  (2) re-seeding: until ``RESEED_UNTIL`` of the steps, a class whose proportion falls below
  ``RESEED_BELOW / K`` is replaced by the largest class mixed with fresh random spheres
  (``RESEED_MIX``), takes the largest class's optimiser state, and the two share its proportion;
* centring of each class on its own, the optimiser's state moving with each class;
* pose and class assignment of every particle (:func:`assign_class_poses`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..forward.density import random_spheres
from ..inference.mixture import MixtureObjective, mixture_log_likelihood
from ..io import InputError, ParticleSet
from ..optim import map_state
from ..runtime import parallel
from ..runtime.parallel import sum_across
from .dataset import initial_density
from .schedule import build_kernel

__all__ = ["ClassMixture", "assign_class_poses", "check_classes"]

PROPORTION_RATE = 0.2      # weight of a minibatch's mean posteriors in the running proportions
PROPORTION_FLOOR = 0.02    # no proportion falls below this (then renormalised)
SIMILARITY_START = 0.5     # annealing of the posteriors that weight the gradients: start ...
ANNEAL_FRACTION = 0.25     # ... falling to 0 over this fraction of the steps
RESEED_BELOW = 0.2         # re-seed a class whose proportion is below RESEED_BELOW / K ...
RESEED_AFTER = 10          # ... from this step (the proportions start uniform) ...
RESEED_UNTIL = 0.75        # ... until this fraction of the steps
RESEED_MIX = 0.3           # a re-seeded class: (1 - mix) largest class + mix fresh random spheres


def check_classes(value) -> int:
    """``value`` as a whole number of classes >= 1, or :class:`InputError` naming ``--classes``."""
    try:
        k = float(value)
    except (TypeError, ValueError):
        k = math.nan
    if not (math.isfinite(k) and k == int(k) and k >= 1):
        raise InputError("--classes", f"{value!s} is not a whole number of classes >= 1")
    return int(k)


def _roll_class(j: int, shift: tuple) -> Callable[[Tensor], Tensor]:
    def fn(t):
        t = t.clone()
        t[j] = torch.roll(t[j], shifts=shift, dims=(0, 1, 2))
        return t
    return fn


def _copy_class(src: int, dst: int) -> Callable[[Tensor], Tensor]:
    def fn(t):
        t = t.clone()
        t[dst] = t[src]
        return t
    return fn


class ClassMixture:
    """The class state of a run: K, the log proportions ``(K,)`` float64, and the re-seedings."""

    def __init__(self, k: int, n_steps: int, seed: int):
        self.k, self.n_steps, self.seed = k, n_steps, seed
        self.log_proportions = torch.full((k,), -math.log(k), dtype=torch.float64)
        self.reseeds: list[dict] = []

    # ---------------------------------------------------------------- state
    def state(self) -> dict:
        return {"log_proportions": self.log_proportions.clone(), "reseeds": list(self.reseeds)}

    def load(self, state: dict) -> None:
        self.log_proportions = state["log_proportions"].clone()
        self.reseeds = list(state["reseeds"])

    @property
    def proportions(self) -> np.ndarray:
        return torch.exp(self.log_proportions).numpy()

    # ------------------------------------------------------------ objective
    def similarity(self, step: int) -> float:
        """The annealing ``s`` at ``step``: ``SIMILARITY_START`` falling linearly to 0."""
        end = ANNEAL_FRACTION * self.n_steps
        return 0.0 if end <= 0 else SIMILARITY_START * max(0.0, 1.0 - step / end)

    def objective(self, kern, prior, n_train: int, step: int | None = None) -> MixtureObjective:
        """The mixture objective at ``step`` (``None``: exact posteriors, for evaluation)."""
        s = 0.0 if step is None else self.similarity(step)
        return MixtureObjective(kern, prior, n_train, self.log_proportions, s)

    def initial(self, box: int, dataset, *, seed: int, diameter_A: float | None) -> Tensor:
        """``(K, N, N, N)``: class k from random spheres of seed ``seed + 1000 k``."""
        return torch.stack([initial_density(box, dataset, seed=seed + 1000 * j, diameter_A=diameter_A)
                            for j in range(self.k)])

    # ------------------------------------------------------------- updates
    def update_proportions(self, posteriors: Tensor, total: int) -> None:
        """Fold a minibatch's ``(B, K)`` posteriors (this process's share of ``total``) into ``pi``."""
        mean = posteriors.sum(0).to(torch.float64).cpu()
        sum_across(mean)
        pi = (1 - PROPORTION_RATE) * torch.exp(self.log_proportions) + PROPORTION_RATE * mean / total
        pi = pi.clamp(min=PROPORTION_FLOOR)
        self.log_proportions = torch.log(pi / pi.sum())

    def guard(self, volume: Tensor, opt_state: Any, step: int, projection) -> tuple[Tensor, Any]:
        """Re-seed a class whose proportion fell below ``RESEED_BELOW / K`` (see the module notes)."""
        if not (RESEED_AFTER <= step < RESEED_UNTIL * self.n_steps):
            return volume, opt_state
        pi = torch.exp(self.log_proportions)
        small = int(torch.argmin(pi))
        if float(pi[small]) >= RESEED_BELOW / self.k:
            return volume, opt_state
        big = int(torch.argmax(pi))
        n = volume.shape[-1]
        rng = np.random.default_rng([self.seed, 13, step])
        spheres = torch.as_tensor(random_spheres(n, rng, radius=0.25 * n), dtype=volume.dtype, device=volume.device)
        spheres = spheres * (volume[big].norm() / spheres.norm().clamp(min=1e-12))
        volume = volume.clone()
        volume[small] = (1 - RESEED_MIX) * volume[big] + RESEED_MIX * spheres
        volume = projection(volume)
        opt_state = map_state(opt_state, tuple(volume.shape), _copy_class(big, small))
        share = 0.5 * (pi[big] + pi[small])
        pi[big], pi[small] = share, share
        self.log_proportions = torch.log(pi / pi.sum())
        self.reseeds.append({"step": step, "class": small + 1, "from": big + 1, "proportion": float(share)})
        return volume, opt_state

    def centre(self, volume: Tensor, opt_state: Any, centre: Callable) -> tuple[Tensor, Any]:
        """Each class centred on its own (``centre(v, return_shift=True)``), its optimiser state with it."""
        parts = []
        for j in range(self.k):
            v, shift = centre(volume[j], return_shift=True)
            parts.append(v)
            if any(shift):
                opt_state = map_state(opt_state, tuple(volume.shape), _roll_class(j, shift))
        return torch.stack(parts), opt_state


def assign_class_poses(particles: ParticleSet, rec, *, batch: int = 100, progress: Callable | None = None):
    """Each particle's class (the most probable under the final maps and proportions) and its pose
    in that class.

    Returns rotations ``(n, 3, 3)``, origin offsets ``(n, 2)`` pixels, the pose's posterior
    probability within its class ``(n,)``, classes ``(n,)`` (1-based) and the class posteriors ``(n, K)``.
    """
    kern = build_kernel(rec.band_limit, particles.box, particles.pixel_size, rec.settings)
    vols = torch.as_tensor(rec.volume, dtype=torch.float32, device=kern.device)
    log_pi = torch.log(torch.as_tensor(rec.proportions, dtype=torch.float64))
    n, k = len(particles), vols.shape[0]
    rots, shifts, probs = np.empty((n, 3, 3)), np.empty((n, 2)), np.empty(n)
    classes, post = np.empty(n, dtype=np.int64), np.empty((n, k))
    mine = parallel.shard(np.arange(n))
    for start in range(0, len(mine), batch):
        idx = mine[start:start + batch]
        mb = kern.prepare(particles.read_images(idx) * (rec.contrast / rec.noise_std), particles.ctf[idx])
        results = [kern(v, mb, gradient=False) for v in vols]
        ll = torch.stack([r.log_likelihood for r in results], 1).to(torch.float64).cpu()
        _, gamma = mixture_log_likelihood(ll, log_pi)
        best = gamma.argmax(1).numpy()
        rows = np.arange(len(idx))
        rots[idx] = np.stack([r.best_rotation for r in results], 1)[rows, best]
        shifts[idx] = np.stack([r.best_shift for r in results], 1)[rows, best]
        probs[idx] = np.stack([r.best_probability for r in results], 1)[rows, best]
        classes[idx], post[idx] = best + 1, gamma.numpy()
        if progress is not None:
            progress(len(idx) * parallel.world_size())
    for r, part in enumerate(parallel.gather_objects((rots[mine], shifts[mine], probs[mine], classes[mine],
                                                      post[mine]))):
        theirs = np.arange(n)[r::parallel.world_size()]
        rots[theirs], shifts[theirs], probs[theirs], classes[theirs], post[theirs] = part
    return rots, shifts, probs, classes, post
