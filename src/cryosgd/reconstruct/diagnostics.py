"""Warnings that a finished reconstruction is probably wrong, from the map and the held-out images.

Four detectors, each a number and a threshold (the thresholds were chosen from runs scored
against the truth, with the confusion counts of each, in BENCHMARKS.md, "Failure warnings"):

- **blob**: :func:`spherical_correlation`, the correlation, inside the particle's sphere, of the
  map with its own spherical average about its centre of mass.  A featureless blob is its own
  spherical average (about 1); a protein at the same resolution is not.
- **half maps disagree** (gold standard only): the FSC-0.143 resolution between the half maps is
  much coarser than the band limit the run reached.
- **barely beats a sphere**: the map's held-out NLL against that of the best-scaled uniform sphere
  (:mod:`.nll_baseline`): the map's relative advantage is small, or its advantage is within three
  standard errors of none.
- **symmetric collapse**: :func:`collapse_residual`, the smallest residual of the high-order groups
  (C5-C8, T, O, I) fitted to the C1 map by :func:`cryosgd.symmetry.find_symmetry`.  A map that fits
  C7 or C8 is nearly cylindrical at this resolution; one that fits O or I nearly spherical.

:func:`diagnose` computes all that apply and returns a :class:`Diagnosis`: the numbers and one
line of text per warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["Diagnosis", "diagnose", "spherical_correlation", "upper_band_power", "collapse_residual",
           "THRESHOLDS", "COLLAPSE_GROUPS"]

# see the module notes and BENCHMARKS.md ("Failure warnings") for how each was chosen
THRESHOLDS = {
    # warn above: correct maps of 5FUU and 8ZPM at 48 Å scored 0.70-0.91, blobs from failed runs 0.94-1.00
    "blob_spherical_correlation": 0.93,
    # warn when the half-map resolution (Å) exceeds this x the band limit's: with noise substitution it
    # fired on 9 of 12 runs without useful signal and none of 12 with (24 Å band, BENCHMARKS.md)
    "half_map_ratio": 1.5,
    # warn below: correct maps 0.65-0.96, failed runs 0-0.54
    "sphere_relative_advantage": 0.6,
    # warn below: the map's advantage over the sphere in standard errors; correct maps 10.6-18.1 (24 Å),
    # an inverted run whose map and sphere both barely beat an empty map 1.1 (its relative advantage,
    # a ratio of two near-zero gains, was 5.4)
    "sphere_advantage_z": 3.0,
    # warn below: correct maps 0.078-0.15 (8ZPM, a dimer, is the near-cylindrical one), collapsed ones 0.01-0.05
    "collapse_residual": 0.06,
}
COLLAPSE_GROUPS = ("C5", "C6", "C7", "C8", "T", "O", "I")


@dataclass
class Diagnosis:
    metrics: dict = field(default_factory=dict)    # name -> number
    warnings: list = field(default_factory=list)   # one line of text each
    kinds: list = field(default_factory=list)      # "blob", "half_maps", "sphere_nll", "collapse", one per warning


def spherical_correlation(volume, radius_px: float) -> float:
    """Correlation of ``volume`` ``(N, N, N)`` with its spherical average about its centre of mass,
    both inside a soft sphere of ``radius_px`` pixels about that centre (means removed there).

    1 for any spherically symmetric map; lower the more the map's shape departs from a ball.
    """
    v = torch.as_tensor(np.asarray(volume), dtype=torch.float64)
    n = v.shape[-1]
    c = torch.arange(n, dtype=torch.float64) - n // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    w = v.clamp(min=0)
    total = float(w.sum())
    centre = [float((w * g).sum()) / total for g in (z, y, x)] if total > 0 else [0.0, 0.0, 0.0]
    r = torch.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    weight = (0.5 * (1 + torch.cos(torch.pi * ((r - radius_px) / 3.0).clamp(0, 1)))).reshape(-1)
    shells = torch.round(2 * r).long().reshape(-1)  # half-pixel shells
    flat = v.reshape(-1)
    count = torch.zeros(int(shells.max()) + 1, dtype=torch.float64).index_add_(0, shells, torch.ones_like(flat))
    sums = torch.zeros_like(count).index_add_(0, shells, flat)
    average = (sums / count.clamp(min=1))[shells]
    inside = weight > 0
    a = (flat - (flat * weight).sum() / weight.sum())[inside] * weight[inside]
    b = (average - (average * weight).sum() / weight.sum())[inside] * weight[inside]
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else 1.0


def upper_band_power(volume, band_px: float) -> float:
    """Share of the map's power within the band limit (shells 1 .. ``band_px`` Fourier pixels) that lies
    in its upper half (beyond ``band_px / 2``): small for a smooth blob."""
    from ..fourier import fft3c, radius_grid

    v = torch.as_tensor(np.asarray(volume), dtype=torch.float64)
    power = fft3c(v).abs() ** 2
    r = radius_grid(v.shape[-1], 3)
    total = float(power[(r >= 0.5) & (r <= band_px)].sum())
    return float(power[(r > band_px / 2) & (r <= band_px)].sum()) / total if total > 0 else 0.0


def collapse_residual(volume, radius_px: float, *, size: int = 24) -> tuple[float, str]:
    """The smallest residual (:attr:`cryosgd.symmetry.detect.GroupFit.residual`) among
    :data:`COLLAPSE_GROUPS` fitted to ``volume`` (centred), and that group's name."""
    from ..symmetry.detect import find_symmetry

    n = np.asarray(volume).shape[-1]
    report = find_symmetry(volume, candidates=COLLAPSE_GROUPS, size=min(size, n), mask_radius=radius_px,
                           n_dirs=100)
    fit = min((f for f in report.fits if f.order > 1), key=lambda f: f.residual)
    return float(fit.residual), fit.group


def diagnose(volume, *, pixel_size: float, band_limit_A: float, radius_px: float, baselines=(),
             gold_standard_A: float | None = None, symmetry: bool = True) -> Diagnosis:
    """Run the detectors on a finished map.

    volume:          ``(N, N, N)`` the final map.
    pixel_size:      Å.
    band_limit_A:    the resolution (Å) of the band limit the run reached.
    radius_px:       the particle's radius (pixels).
    baselines:       one :func:`~.nll_baseline.sphere_baseline` dict per map scored (two for the
                     halves of a gold-standard run; the worst one counts).
    gold_standard_A: FSC-0.143 resolution between the half maps (Å), or None.
    symmetry:        run the symmetric-collapse detector (a few seconds at 32-64 px).
    """
    t = THRESHOLDS
    out = Diagnosis()
    sph = spherical_correlation(volume, radius_px)
    out.metrics["spherical_correlation"] = sph
    out.metrics["upper_band_power"] = upper_band_power(volume, np.asarray(volume).shape[-1] * pixel_size / band_limit_A)
    if sph > t["blob_spherical_correlation"]:
        out.kinds.append("blob")
        out.warnings.append(f"the map is a featureless blob: its correlation with its own spherical average is "
                            f"{sph:.2f} (above {t['blob_spherical_correlation']:g}); the run probably failed "
                            "(too little signal in the band, too few particles, or the wrong contrast)")
    if gold_standard_A is not None:
        ratio = gold_standard_A / band_limit_A
        out.metrics["half_map_ratio"] = ratio
        if ratio > t["half_map_ratio"]:
            out.kinds.append("half_maps")
            out.warnings.append(f"the half maps disagree beyond low resolution: FSC 0.143 at {gold_standard_A:.1f} Å "
                                f"against a band limit of {band_limit_A:.1f} Å ({ratio:.1f}x, above "
                                f"{t['half_map_ratio']:g}x); the map's detail is probably noise")
    if baselines:
        worst = min(baselines, key=lambda b: b["relative_advantage"])
        rel = worst["relative_advantage"]
        z = worst["advantage"] / max(worst["advantage_se"], 1e-12)
        out.metrics.update({"sphere_relative_advantage": rel, "sphere_advantage": worst["advantage"],
                            "sphere_advantage_se": worst["advantage_se"], "sphere_advantage_z": z})
        small, unsure = rel < t["sphere_relative_advantage"], z < t["sphere_advantage_z"]
        if small or unsure:
            why = (f"{100 * rel:.0f}% of the map's gain over an empty map; below "
                   f"{100 * t['sphere_relative_advantage']:.0f}%" if small else
                   f"{z:.1f} standard errors; below {t['sphere_advantage_z']:g}")
            out.kinds.append("sphere_nll")
            out.warnings.append(f"the map barely beats a uniform sphere on the held-out images: held-out NLL "
                                f"{worst['map_test_nll']:.3f} against the sphere's {worst['sphere_test_nll']:.3f} "
                                f"nats/image (advantage {worst['advantage']:.3f} +- {worst['advantage_se']:.3f}, "
                                f"{why})")
    if symmetry:
        res, group = collapse_residual(volume, radius_px)
        out.metrics.update({"collapse_residual": res, "collapse_group": group})
        if res < t["collapse_residual"]:
            out.kinds.append("collapse")
            out.warnings.append(f"the C1 map fits {group} (residual {res:.3f}, below {t['collapse_residual']:g}): "
                                "it is nearly cylindrical or spherical, a sign of symmetric collapse unless the "
                                "particle has that symmetry")
    return out

