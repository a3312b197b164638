"""The resolution policy of a run: the target, the band limits it marches through, and the
likelihood kernel built for each band limit.

Resolutions are in Å, band limits in Fourier pixels (``cryosgd.fourier.band_limit_px``).
"""
from __future__ import annotations

import math

from ..fourier import band_limit_px, nyquist_fraction_px, resolution_A
from ..inference.asymmetric_unit import restrict_to_asymmetric_unit
from ..inference.likelihood import MarginalLikelihood
from ..inference.quadrature import (
    LEBEDEV_POINTS,
    angular_step,
    available_lebedev_orders,
    choose_quadrature,
    directions_for_step,
    finest_band_limit,
    shift_step_for_band_limit,
)
from ..inference.rotation_set import rotation_set_for_band
from ..inference.search import PrunedLikelihood
from ..io import InputError, ParticleSet
from ..runtime.device import resolve_device, resolve_precision
from .settings import Settings
from .symmetric import SymmetricKernel

__all__ = ["target_resolution", "shift_range_px", "check_resolution", "band_schedule", "build_kernel", "SEARCHES",
           "DEFAULT_TARGET_A", "DEFAULT_START_A", "MAX_SHIFT_FRACTION", "EXHAUSTIVE_POSES", "POSE_SEARCH"]


DEFAULT_TARGET_A = 15.0    # what users expect of an initial model (cryoSPARC 12 Å, RELION's SGD 15 Å)
DEFAULT_START_A = 36.0     # marching starts at twice the target, and no finer than this
MAX_SHIFT_FRACTION = 0.1   # the default shift range: 10% of the box, as picked particles need


def target_resolution(resolution: float | None, box: int, pixel_size: float,
                      nyquist_fraction: float | None = None) -> float:
    """The target resolution in Å: the one asked for; else ``nyquist_fraction`` of Nyquist (in frequency)
    when given; else 15 Å, or half of the Nyquist frequency (4 pixels) where that is coarser."""
    if resolution is not None:
        return resolution
    if nyquist_fraction is not None:
        return resolution_A(nyquist_fraction_px(box, nyquist_fraction), box, pixel_size)
    return max(DEFAULT_TARGET_A, 4.0 * pixel_size)


def shift_range_px(settings: Settings, box: int) -> float:
    """The radius (pixels) of the shift search: ``settings.max_shift``, or 10% of the box when ``None``."""
    return MAX_SHIFT_FRACTION * box if settings.max_shift is None else float(settings.max_shift)


def check_resolution(settings: Settings, particles: ParticleSet) -> None:
    """The target resolution must lie above Nyquist and within reach of the finest quadrature rule."""
    box, apix = particles.box, particles.pixel_size
    if settings.resolution is not None and not (settings.resolution > 0 and math.isfinite(settings.resolution)):
        raise InputError(particles.source, f"--resolution {settings.resolution:g} Å is not a positive number")
    target = target_resolution(settings.resolution, box, apix, settings.nyquist_fraction)
    band = band_limit_px(target, box, apix)
    # the band limit must stay below box / 2: the images hold no frequency +N/2
    if not band < box / 2:
        raise InputError(particles.source, f"--resolution {target:g} Å is not coarser than Nyquist ({2 * apix:g} Å "
                                           f"at {apix:g} Å/pixel)")
    if band > finest_band_limit():
        needed = directions_for_step(angular_step(band))
        most = LEBEDEV_POINTS[available_lebedev_orders()[-1]]
        reach = resolution_A(finest_band_limit(), box, apix)
        raise InputError(particles.source, f"--resolution {target:g} Å needs {needed:.0f} viewing directions, more "
                                           f"than the finest Lebedev rule ({most}); ab initio search reaches "
                                           f"{reach:.1f} Å at {box} px and {apix:g} "
                                           "Å/pixel (refine further with a local search)")


def band_schedule(settings: Settings, box: int, pixel_size: float, n_steps: int) -> list[tuple[int, float]]:
    """``[(first_step, band_limit), ...]``: the marching stages."""
    target = target_resolution(settings.resolution, box, pixel_size, settings.nyquist_fraction)
    r_final = band_limit_px(target, box, pixel_size)
    stages = max(1, settings.marching_stages)
    if stages == 1:
        return [(0, r_final)]
    r0 = band_limit_px(settings.start_resolution or max(2 * target, DEFAULT_START_A), box, pixel_size)
    r0 = min(max(r0, 2.0), r_final)
    half = n_steps // 2
    out = []
    for i in range(stages):
        r = r0 + (r_final - r0) * i / (stages - 1)
        out.append((int(round(half * i / (stages - 1))), r))
    return out


SEARCHES = ("auto", "pruned", "exhaustive")
# "auto" scores every pose where a minibatch's poses are few enough for the dense products to be the
# faster way (measured: at 64 px, pruned search fell back to the exhaustive kernel at 36 Å with shifts
# within 6.4 px, about 1.1 million poses per image, and won from 21 Å, about 17 million)
EXHAUSTIVE_POSES = 2_000_000
# the pose pass (poses.py) needs each image's most probable pose, not its marginal's mass: it keeps 8 coarse
# rotations and 2 coarse shifts (training: 32 and 4), makes each fine pose the child of its nearest coarse one
# only (training: of its 2 nearest), and spaces the coarse shifts 4 fine steps apart (training: 3) where the
# shift radius holds two such steps.  On the end-to-end set (64 px, 15 Å, shifts within 6.4 px; 2,000
# particles, the final map) 0.53 s per 100 images instead of 1.06, and the poses as close to the truth:
# median 3.7 degrees, 96.0% within 10 (95.6% with the training's search); with the shifts 6 steps apart
# (under two across the radius) the test's images fall to 80% (BENCHMARKS.md; tests/test_search.py)
POSE_SEARCH = {"min_rotations": 8, "min_shifts": 2, "neighbours": 1, "coarse_shift_step": 4.0}


def build_kernel(band_limit: float, box: int, pixel_size: float, settings: Settings, *, poses_only: bool = False):
    """The likelihood kernel for one band limit (Fourier pixels), on the settings' device and precision:
    the exhaustive :class:`MarginalLikelihood`, or the coarse-to-fine
    :class:`~cryosgd.inference.search.PrunedLikelihood` (the same interface; ``docs/search.md``).
    ``search="auto"`` takes the exhaustive kernel while an image has at most :data:`EXHAUSTIVE_POSES`
    poses (rotations x shifts), the pruned one above.  With ``symmetry`` other than C1 the quadrature
    covers one asymmetric unit and the kernel's gradient is symmetrised (:class:`.symmetric.SymmetricKernel`).
    ``poses_only``: for the pose pass, a pruned search with :data:`POSE_SEARCH`."""
    group = None if settings.symmetry.strip().upper() == "C1" else settings.symmetry
    if settings.search not in SEARCHES:
        raise InputError("--search", f"unknown search {settings.search!r}; choose {', '.join(SEARCHES)}")
    device = resolve_device(settings.device)
    dtype, tf32 = resolve_precision(settings.precision, device)
    max_shift = shift_range_px(settings, box)
    q = choose_quadrature(band_limit, box, max_shift=max_shift)
    rs = rotation_set_for_band(band_limit, q.n_inplane)
    if group is not None:
        rs = restrict_to_asymmetric_unit(rs, group)
    search = settings.search
    if search == "auto":
        search = "exhaustive" if rs.size * len(q.shifts) <= EXHAUSTIVE_POSES else "pruned"
    if search == "pruned":
        extra = {}
        if poses_only:
            extra = dict(POSE_SEARCH)
            if max_shift < 2 * extra.get("coarse_shift_step", 0) * shift_step_for_band_limit(band_limit, box):
                del extra["coarse_shift_step"]
        kern = PrunedLikelihood(box, pixel_size, band_limit, max_shift=max_shift, noise_std=1.0, dtype=dtype,
                                device=device, memory_budget=settings.memory_budget, tf32=tf32, symmetry=group,
                                **extra)
    else:
        kern = MarginalLikelihood(box, pixel_size, band_limit, rs, q.shifts, q.shift_weights, noise_std=1.0,
                                  dtype=dtype, device=device, memory_budget=settings.memory_budget, tf32=tf32)
    return kern if group is None else SymmetricKernel(kern, group)
