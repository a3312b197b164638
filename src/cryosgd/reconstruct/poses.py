"""Pose assignment: each particle's most probable pose under a finished map."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..io import ParticleSet
from ..runtime import parallel
from .loop import Reconstruction
from .schedule import build_kernel

__all__ = ["assign_poses"]


def assign_poses(particles: ParticleSet, volume: np.ndarray, rec: Reconstruction, *, batch: int = 400,
                 progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each particle's most probable pose under the final map and band limit.

    Returns rotations ``(n, 3, 3)``, origin offsets ``(n, 2)`` pixels and the
    posterior probability of that pose ``(n,)`` (among the poses scored).  Where the search is pruned it
    keeps fewer candidates than training's (:data:`.schedule.POSE_SEARCH`): a pose needs no marginal.
    (Class assignment, :func:`.classes.assign_class_poses`, compares marginals and keeps training's.)
    Images go in ``batch``es of 400: the pruned search's products are larger and its thread groups' candidates
    shared more than at 100 (0.46-0.48 s per 100 images instead of 0.51-0.53; 64 px, 15 Å).
    """
    kern = build_kernel(rec.band_limit, particles.box, particles.pixel_size, rec.settings, poses_only=True)
    vol = torch.as_tensor(volume, dtype=torch.float32, device=kern.device)
    n = len(particles)
    rots, shifts, probs = np.empty((n, 3, 3)), np.empty((n, 2)), np.empty(n)
    mine = parallel.shard(np.arange(n))
    for start in range(0, len(mine), batch):
        idx = mine[start:start + batch]
        mb = kern.prepare(particles.read_images(idx) * (rec.contrast / rec.noise_std), particles.ctf[idx])
        res = kern(vol, mb, gradient=False)
        rots[idx], shifts[idx], probs[idx] = res.best_rotation, res.best_shift, res.best_probability
        if progress is not None:
            progress(len(idx) * parallel.world_size())
    for r, part in enumerate(parallel.gather_objects((rots[mine], shifts[mine], probs[mine]))):
        theirs = np.arange(n)[r::parallel.world_size()]
        rots[theirs], shifts[theirs], probs[theirs] = part
    return rots, shifts, probs
