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

__all__ = ["sphere_baseline", "one_rotation_kernel", "invariant_nll"]

GRID = tuple(2.0 ** k for k in range(-4, 4))  # scales relative to the signal-matched sphere


def _per_image_nll(objective, volume: torch.Tensor, batch) -> torch.Tensor:
    res = objective.likelihood(volume, batch, gradient=False, poses=False)
    return -res.log_likelihood.to(torch.float64)


def _mean(values: torch.Tensor, total: int) -> float:
    s = values.sum().reshape(1)
    sum_across(s)
    return float(s) / total


def sphere_baseline(objective, volume: torch.Tensor, batch, *, total: int, radius_px: float,
                    images: np.ndarray, sphere_nll=None) -> dict:
    """Score the best-scaled uniform sphere of radius ``radius_px`` pixels on the held-out ``batch``.

    objective: the run's :class:`~cryosgd.inference.objective.Objective` with its evaluation kernel.
    volume:    ``(N, N, N)`` the final map.
    batch:     this process's share of the ``total`` held-out images, prepared by that kernel.
    images:    ``(m, N, N)`` training images, noise-normalised: their variance beyond 1 sets the
               sphere's first scale (its projections then carry about the images' signal power).
    sphere_nll: ``sphere_nll(unit, scales) -> (len(scales), B)`` per-image NLL of ``scale * unit``
               for the sphere and the empty map (:func:`invariant_nll`: both are rotation-invariant,
               so one slice and one product score every scale exactly).  Default: ``objective`` on
               ``batch``, one call per scale.
    Returns the dict described in the module notes.
    """
    if sphere_nll is None:
        def sphere_nll(unit, scales):
            return torch.stack([_per_image_nll(objective, unit * float(a), batch) for a in scales])
    n = volume.shape[-1]
    sphere = soft_mask(n, radius_px, width=2.0, dtype=volume.dtype, device=volume.device)
    signal_var = max(float(np.var(images)) - 1.0, 1e-3)
    s0 = math.sqrt(signal_var / max(float(sphere.sum(0).var()), 1e-12))
    per_image: dict[float, torch.Tensor] = {}

    def score(scales) -> None:
        new = [float(a) for a in scales if float(a) not in per_image]
        if new:
            per_image.update(zip(new, sphere_nll(sphere, new)))

    grid = [s0 * k for k in GRID]
    score(grid)
    scores = {a: _mean(v, total) for a, v in per_image.items()}
    i = int(np.argmin([scores[g] for g in grid]))
    if 0 < i < len(grid) - 1:  # one parabola step in log scale through the best grid point and its neighbours
        x = np.log2(grid[i - 1:i + 2])
        a, b, _ = np.polyfit(x, [scores[g] for g in grid[i - 1:i + 2]], 2)
        if a > 0:
            step = 2.0 ** float(np.clip(-b / (2 * a), x[0], x[2]))
            score([step])
            scores[step] = _mean(per_image[step], total)
    best = min(scores, key=scores.get)
    map_nll = _per_image_nll(objective, volume, batch)
    diff = per_image[best] - map_nll
    stats = torch.stack([map_nll.sum(), diff.sum(), (diff * diff).sum()]).reshape(3)
    sum_across(stats)
    map_mean, d_mean, d2 = (float(v) / total for v in stats)
    se = math.sqrt(max(d2 - d_mean ** 2, 0.0) / max(total - 1, 1))
    empty = _mean(sphere_nll(sphere, [0.0])[0], total)
    gain = empty - map_mean
    return {"map_test_nll": map_mean, "sphere_test_nll": scores[best], "empty_test_nll": empty,
            "sphere_scale": best, "advantage": d_mean, "advantage_se": se,
            "relative_advantage": d_mean / gain if gain > 0 else 0.0}


def invariant_nll(kernel, batch):
    """``nll(unit, scales) -> (len(scales), B)``: the per-image NLL (nats, float64) of ``scale * unit``
    for a rotation-invariant map ``unit`` ``(N, N, N)`` (a sphere; zero scale: the empty map), under
    :func:`one_rotation_kernel` ``kernel`` on its prepared ``batch``.

    Every rotation gives such a map the same slice y, so its marginal is over shifts alone, and the
    scores are linear in the scale a: ``a X_bs - a^2 N_b / 2 + bias_bs`` with the cross term ``X``
    ``(B, S)`` and the norm ``N`` ``(B,)`` of the kernel's own likelihood, and its ``shift_bias``.  One
    slice and one product then score every scale; the kernel itself would expand its data over 8
    variants and all shifts on every call (2 s for 100 images at 64 px and 15 Å)."""
    inv2 = 1.0 / kernel.noise_std ** 2
    bias = kernel.shift_bias(batch)                                                                 # (B, S)

    def nll(unit: torch.Tensor, scales) -> torch.Tensor:
        y = torch.view_as_complex(kernel.slices_pairs(unit.to(kernel.device, kernel.dtype))[0].contiguous())  # (P,)
        h = (kernel.weights * batch.ctf) * batch.data.conj() * y                                     # (B, P)
        cross = (h @ kernel.phases.T).real * inv2                                                     # (B, S)
        norm = (kernel.weights * batch.ctf ** 2 * y.abs().square()).sum(1) * inv2                    # (B,)
        a = torch.as_tensor(list(scales), dtype=cross.dtype, device=cross.device)[:, None, None]
        scores = a * cross - (0.5 * a * a) * norm[:, None] + bias                                    # (n, B, S)
        return -torch.logsumexp(scores, 2).to(torch.float64)
    return nll


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
