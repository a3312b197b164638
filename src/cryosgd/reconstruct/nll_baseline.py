"""The held-out NLL of a uniform sphere: the score a reconstruction must clearly beat.

A uniform sphere of the particle's diameter, at its best scale, explains the images' mean disc of
signal and nothing else: no orientation, no shape.  A map that scores barely better on the held-out
images than that sphere has learnt little from them (pure noise, a featureless blob, data whose
band holds no signal).  :func:`sphere_baseline` scores the sphere with the run's own evaluation
kernel and held-out images (the same shifts, CTFs and band limit as the map's ``test_nll``), at the
scale among a geometric grid, refined by a parabola, that gives the lowest NLL, and records:

- ``map_test_nll``, ``sphere_test_nll``, ``empty_test_nll`` (a zero map): nats per image;
- ``advantage``: the mean over held-out images of the sphere's NLL minus the map's (nats per image,
  positive when the map is better) and ``advantage_se``, its standard error over the images;
- ``relative_advantage``: ``advantage / (empty_test_nll - map_test_nll)``, the share of what the
  map gains over an empty map that a sphere does not also gain (0 for a blob, 1 when a sphere gains
  nothing).

:mod:`.diagnostics` warns when the advantage is small; the thresholds are in BENCHMARKS.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..fourier import soft_mask
from ..runtime.parallel import sum_across

__all__ = ["sphere_baseline"]

GRID = tuple(2.0 ** k for k in range(-4, 4))  # scales relative to the signal-matched sphere


def _per_image_nll(objective, volume: torch.Tensor, batch) -> torch.Tensor:
    res = objective.likelihood(volume, batch, gradient=False, poses=False)
    return -res.log_likelihood.to(torch.float64)


def _mean(values: torch.Tensor, total: int) -> float:
    s = values.sum().reshape(1)
    sum_across(s)
    return float(s) / total


def sphere_baseline(objective, volume: torch.Tensor, batch, *, total: int, radius_px: float,
                    images: np.ndarray, sphere_objective=None, sphere_batch=None) -> dict:
    """Score the best-scaled uniform sphere of radius ``radius_px`` pixels on the held-out ``batch``.

    objective: the run's :class:`~cryosgd.inference.objective.Objective` with its evaluation kernel.
    volume:    ``(N, N, N)`` the final map.
    batch:     this process's share of the ``total`` held-out images, prepared by that kernel.
    images:    ``(m, N, N)`` training images, noise-normalised: their variance beyond 1 sets the
               sphere's first scale (its projections then carry about the images' signal power).
    sphere_objective, sphere_batch: an objective (and its prepared ``batch``) for the sphere and the empty
               map; both are rotation-invariant, so a kernel of one rotation (and the run's shifts) gives
               their marginal exactly at a fraction of the cost (:func:`one_rotation_kernel`).  Default:
               ``objective`` and ``batch``.
    Returns the dict described in the module notes.
    """
    sphere_objective = objective if sphere_objective is None else sphere_objective
    sphere_batch = batch if sphere_batch is None else sphere_batch
    n = volume.shape[-1]
    sphere = soft_mask(n, radius_px, width=2.0, dtype=volume.dtype, device=volume.device)
    signal_var = max(float(np.var(images)) - 1.0, 1e-3)
    s0 = math.sqrt(signal_var / max(float(sphere.sum(0).var()), 1e-12))
    scores: dict[float, float] = {}

    def score(scale: float) -> float:
        if scale not in scores:
            scores[scale] = _mean(_per_image_nll(sphere_objective, sphere * scale, sphere_batch), total)
        return scores[scale]

    grid = [s0 * k for k in GRID]
    for scale in grid:
        score(scale)
    i = int(np.argmin([scores[g] for g in grid]))
    if 0 < i < len(grid) - 1:  # one parabola step in log scale through the best grid point and its neighbours
        x = np.log2(grid[i - 1:i + 2])
        a, b, _ = np.polyfit(x, [scores[g] for g in grid[i - 1:i + 2]], 2)
        if a > 0:
            score(2.0 ** float(np.clip(-b / (2 * a), x[0], x[2])))
    best = min(scores, key=scores.get)
    map_nll = _per_image_nll(objective, volume, batch)
    diff = _per_image_nll(sphere_objective, sphere * best, sphere_batch) - map_nll
    stats = torch.stack([map_nll.sum(), diff.sum(), (diff * diff).sum()]).reshape(3)
    sum_across(stats)
    map_mean, d_mean, d2 = (float(v) / total for v in stats)
    se = math.sqrt(max(d2 - d_mean ** 2, 0.0) / max(total - 1, 1))
    empty = _mean(_per_image_nll(sphere_objective, torch.zeros_like(volume), sphere_batch), total)
    gain = empty - map_mean
    return {"map_test_nll": map_mean, "sphere_test_nll": scores[best], "empty_test_nll": empty,
            "sphere_scale": best, "advantage": d_mean, "advantage_se": se,
            "relative_advantage": d_mean / gain if gain > 0 else 0.0}


def one_rotation_kernel(box: int, pixel_size: float, band_limit: float, max_shift: float, **kw):
    """An exhaustive kernel over one rotation (its 8 grid variants, weight 1/8 each) and the shift
    quadrature of ``band_limit``: the marginal likelihood of a rotation-invariant map (a sphere, an
    empty map) for a tiny fraction of a full kernel's cost."""
    from ..inference.likelihood import MarginalLikelihood
    from ..inference.quadrature import choose_quadrature
    from ..inference.rotation_set import RotationSet

    q = choose_quadrature(band_limit, box, max_shift=max_shift)
    one = RotationSet(np.eye(3)[None], np.log(np.full(1, 1.0 / 8)))
    return MarginalLikelihood(box, pixel_size, band_limit, one, q.shifts, q.shift_weights, noise_std=1.0, **kw)
