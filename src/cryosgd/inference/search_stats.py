"""Pose counts of a pruned likelihood call (:class:`.search.PrunedLikelihood`), merged over the thread
groups that scored its images, and the fractions of exhaustive search's work they stand for."""
from __future__ import annotations

import numpy as np

__all__ = ["merge_stats", "fractions"]


def merge_stats(parts: list, coarse_points: int, fine_points: int) -> dict:
    """One call's :meth:`.search.PrunedLikelihood._stats` from its thread groups' ``(result, stats)``: counts
    summed, per-image means weighted by the groups' images, ``dense`` if any group went dense."""
    if len(parts) == 1:
        return parts[0][1]
    stats = [st for _, st in parts]
    sizes = np.array([len(r.log_likelihood) for r, _ in parts], dtype=float)
    out = {k: sum(st[k] for st in stats) for k in ("coarse_poses", "fine_poses", "exhaustive_poses",
                                                    "union_rotations", "rotation_cap_hits")}
    for k in ("kept_rotations", "kept_shifts", "fine_rotations", "fine_shifts"):
        out[k] = float(np.dot(sizes, [st[k] for st in stats]) / sizes.sum())
    out.update(fractions(out["coarse_poses"], out["fine_poses"], out["exhaustive_poses"], coarse_points, fine_points))
    out["dense"] = any(st["dense"] for st in stats)
    return out


def fractions(coarse: int, fine: int, exhaustive: int, coarse_points: int, fine_points: int) -> dict:
    """Poses scored over the exhaustive ones, plain and weighted by the coefficients each score reads."""
    return {"evaluated_fraction": (coarse + fine) / exhaustive,
            "flop_fraction": (coarse * coarse_points + fine * fine_points) / (exhaustive * fine_points)}
