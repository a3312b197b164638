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
)
from ..inference.rotation_set import rotation_set_for_band
from ..inference.search import PrunedLikelihood
from ..io import InputError, ParticleSet
from ..runtime.device import resolve_device, resolve_precision
from .settings import Settings
from .symmetric import SymmetricKernel

__all__ = ["target_resolution", "check_resolution", "band_schedule", "build_kernel", "SEARCHES"]


def target_resolution(resolution: float | None, box: int, pixel_size: float, nyquist_fraction: float = 0.25) -> float:
    """The target resolution in Å: the one asked for, or ``nyquist_fraction`` of Nyquist (in frequency)."""
    return resolution if resolution is not None else resolution_A(nyquist_fraction_px(box, nyquist_fraction), box,
                                                                     pixel_size)


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
    r0 = band_limit_px(settings.start_resolution or 2 * target, box, pixel_size)
    r0 = min(max(r0, 2.0), r_final)
    half = n_steps // 2
    out = []
    for i in range(stages):
        r = r0 + (r_final - r0) * i / (stages - 1)
        out.append((int(round(half * i / (stages - 1))), r))
    return out


SEARCHES = ("exhaustive", "pruned")


def build_kernel(band_limit: float, box: int, pixel_size: float, settings: Settings):
    """The likelihood kernel for one band limit (Fourier pixels), on the settings' device and precision:
    the exhaustive :class:`MarginalLikelihood`, or with ``search="pruned"`` the coarse-to-fine
    :class:`~cryosgd.inference.search.PrunedLikelihood` (the same interface; ``docs/search.md``).
    With ``symmetry`` other than C1 the quadrature covers one asymmetric unit and the kernel's gradient
    is symmetrised (:class:`.symmetric.SymmetricKernel`)."""
    group = None if settings.symmetry.strip().upper() == "C1" else settings.symmetry
    if settings.search not in SEARCHES:
        raise InputError("--search", f"unknown search {settings.search!r}; choose {' or '.join(SEARCHES)}")
    device = resolve_device(settings.device)
    dtype, tf32 = resolve_precision(settings.precision, device)
    if settings.search == "pruned":
        kern = PrunedLikelihood(box, pixel_size, band_limit, max_shift=settings.max_shift, noise_std=1.0, dtype=dtype,
                                device=device, memory_budget=settings.memory_budget, tf32=tf32, symmetry=group)
    else:
        q = choose_quadrature(band_limit, box, max_shift=settings.max_shift)
        rs = rotation_set_for_band(band_limit, q.n_inplane)
        if group is not None:
            rs = restrict_to_asymmetric_unit(rs, group)
        kern = MarginalLikelihood(box, pixel_size, band_limit, rs, q.shifts, q.shift_weights, noise_std=1.0,
                                  dtype=dtype, device=device, memory_budget=settings.memory_budget, tf32=tf32)
    return kern if group is None else SymmetricKernel(kern, group)
