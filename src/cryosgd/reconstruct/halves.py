"""Gold-standard half-sets: two independent reconstructions from one shared low-resolution start.

As in RELION's gold standard, the particles are split into two random halves (by ``seed``), and
each half is reconstructed on its own, so that the Fourier shell correlation between the two half
maps measures how far the map is reproducible from independent data: its resolution is read where
that FSC falls below 0.143.  The halves may share only what both would find anyway, a
low-resolution start:

1. **start**: :func:`~.loop.reconstruct` on all particles at a fixed band limit, the first
   marching stage's (``start_resolution``, by default twice the target, but at least 3 Fourier
   pixels, since a band of 2 pixels holds too little of the shape to share), for half of ``epochs``;
2. the start is low-passed to that band limit (a raised-cosine edge two Fourier pixels wide), so
   the halves share nothing finer than it (the random spheres' fine detail would otherwise be
   common to both and inflate their FSC);
3. **halves**: :func:`~.loop.reconstruct` on each half from that start, marching from the start's
   band limit to the target as a plain run does, for ``epochs`` passes over the half's images, at
   the learning rate tuned for the start (unless one is given);
4. half 2 is aligned onto half 1 (:func:`cryosgd.align.align_maps`: rotation, shift and hand; the
   halves come out close, since they share a start, but centring moves each on its own);
5. the FSC between half 1 and aligned half 2, both under the soft spherical mask of the particle's
   diameter (the mask :mod:`.loop` applies to the density; raised-cosine edge 3 px);
6. **noise substitution** (:mod:`.noise_substitution`, with ``settings.noise_substitution``): steps
   3-5 again on copies of the images whose phases beyond the start's band are random, and the FSC
   corrected by theirs.  A shared start is not enough to keep the halves independent: on pure
   noise (32 px, 6 Å/px, 24 Å band, 48 Å start) the half maps agreed to the band limit, FSC
   0.38-0.74 in the four shells past the start; corrected, the FSC falls below 0.143 at 41.7 Å, where
   the truth's own FSC 0.143 lies (40.2 Å); over 24 runs of four sets, 23 within 1.5x of the
   truth against 13 uncorrected (BENCHMARKS.md);
7. the resolution at FSC 0.143 within the band limit (:func:`half_map_resolution`: beyond it the
   halves share what positivity and the mask make of their common low frequencies, and their FSC
   there stays high whatever the images say); the map is the average of the aligned halves.

Each stage has its own checkpoint (``checkpoint_start.pt``, ``checkpoint_half1.pt``,
``checkpoint_half2.pt``, ``checkpoint_null1.pt``, ``checkpoint_null2.pt`` in one folder): a killed
run started again resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..align import Alignment, align_maps, apply_alignment
from ..evaluate import fsc, resolution_at
from ..fourier import fft3c, ifft3c, radius_grid, resolution_A, soft_mask
from ..io import InputError, ParticleSet
from .dataset import particle_diameter_px
from .loop import Reconstruction, reconstruct
from .noise_substitution import PhaseRandomised, corrected_fsc
from .schedule import target_resolution
from .settings import Settings

__all__ = ["GoldStandard", "gold_standard", "split_halves", "low_pass", "half_map_resolution", "START_EPOCHS"]

START_EPOCHS = 0.5   # the shared start's epochs, as a fraction of ``settings.epochs``
START_MIN_BAND = 3.0  # Fourier pixels: the shared start's band limit at least (2 px hold too little shape)
SPLIT_SALT = 6011    # mixed into the seed of the split, so it does not repeat the test split's order


def split_halves(n: int, seed: int) -> np.ndarray:
    """``(n,)`` subset of each particle, 1 or 2: a random half each (sizes differ by at most one)."""
    order = np.random.default_rng([seed, SPLIT_SALT]).permutation(n)
    labels = np.empty(n, dtype=np.int64)
    labels[order[:n // 2]] = 1
    labels[order[n // 2:]] = 2
    return labels


def low_pass(volume: np.ndarray, band_px: float, width: float = 2.0) -> np.ndarray:
    """``(N, N, N)`` map with frequencies beyond ``band_px`` Fourier pixels removed (raised-cosine edge
    ``width`` pixels wide, ending at ``band_px``)."""
    v = torch.as_tensor(np.asarray(volume), dtype=torch.float64)
    t = ((radius_grid(v.shape[-1], 3) - (band_px - width)) / width).clamp(0, 1)
    return ifft3c(fft3c(v) * (0.5 * (1 + torch.cos(torch.pi * t)))).real.numpy()


@dataclass
class GoldStandard:
    start: Reconstruction         # the shared low-resolution start (all particles)
    half1: Reconstruction
    half2: Reconstruction
    labels: np.ndarray            # (n,) 1 or 2: each particle's half
    alignment: Alignment          # half 2 onto half 1
    half2_aligned: np.ndarray     # (N, N, N)
    average: np.ndarray           # (N, N, N) the map: mean of half 1 and aligned half 2
    curve: np.ndarray             # FSC per shell 0 .. N//2 between the masked half maps (corrected when
                                  # ``curve_null`` is given: FSC_true of :mod:`.noise_substitution`)
    resolution: float             # Å at FSC 0.143 of ``curve``
    mask_radius_px: float         # the soft spherical mask's radius (pixels)
    curve_measured: np.ndarray | None = None  # the half maps' FSC before correction
    curve_null: np.ndarray | None = None      # the phase-randomised halves' FSC (None: not run)
    null_band_px: float = 0.0                 # Fourier pixels: phases randomised beyond this
    null_wall_time: float = 0.0               # seconds the phase-randomised halves took

    def combined(self) -> Reconstruction:
        """Half 1's record with the average as its map and the three maps as snapshots, for the writers."""
        snaps = {"half 1": self.half1.volume, "half 2 (aligned)": self.half2_aligned, "final": self.average}
        return dataclasses.replace(self.half1, volume=self.average, snapshots=snaps,
                                   wall_time=self.start.wall_time + self.half1.wall_time + self.half2.wall_time
                                   + self.null_wall_time)


def gold_standard(particles: ParticleSet, settings: Settings, *, checkpoint_dir: str | Path | None = None,
                  progress: Callable | None = None) -> GoldStandard:
    """Reconstruct ``particles`` as two half-sets from one shared start (see the module notes).

    checkpoint_dir: folder of the three stages' checkpoints (none when ``None``).
    progress:       ``progress(stage, done, total, info)``, stage ``"start"``, ``"half1"``, ``"half2"``,
                    ``"null1"`` or ``"null2"``.
    """
    n, box, apix = len(particles), particles.box, particles.pixel_size
    if n < 2 * (settings.test_size + 10):
        raise InputError(particles.source, f"only {n} particles: each half needs more than the "
                                           f"{settings.test_size} held out for testing")
    target = target_resolution(settings.resolution, box, apix, settings.nyquist_fraction)
    start_A = settings.start_resolution or 2 * target
    start_A = max(min(start_A, resolution_A(START_MIN_BAND, box, apix)), target)
    folder = Path(checkpoint_dir) if checkpoint_dir else None

    def run(stage, subset, stage_settings, initial=None):
        report = None if progress is None else (lambda done, total, info: progress(stage, done, total, info))
        return reconstruct(subset, stage_settings, checkpoint=folder / f"checkpoint_{stage}.pt" if folder else None,
                           progress=report, initial_volume=initial)

    start = run("start", particles, dataclasses.replace(settings, resolution=max(start_A, target), marching_stages=1,
                                                        epochs=START_EPOCHS * settings.epochs, snapshots=()))
    initial = low_pass(start.volume, start.band_limit)
    halves_settings = dataclasses.replace(settings, learning_rate=settings.learning_rate or start.learning_rate,
                                          start_resolution=start_A)
    labels = split_halves(n, settings.seed)
    half1 = run("half1", particles.subset(labels == 1), halves_settings, initial)
    half2 = run("half2", particles.subset(labels == 2), halves_settings, initial)
    radius = 0.5 * particle_diameter_px(box, apix, settings.particle_diameter)
    mask = soft_mask(box, radius).numpy()

    def compare(one: Reconstruction, two: Reconstruction):
        alignment = align_maps(two.volume, one.volume, seed=settings.seed)
        two_aligned = apply_alignment(two.volume, alignment)
        return alignment, two_aligned, fsc(one.volume * mask, two_aligned * mask)

    alignment, half2_aligned, measured = compare(half1, half2)
    curve, null, null_time = measured, None, 0.0
    if settings.noise_substitution:
        randomised = PhaseRandomised.of(particles, start.band_limit, settings.seed)
        null1 = run("null1", randomised.subset(labels == 1), halves_settings, initial)
        null2 = run("null2", randomised.subset(labels == 2), halves_settings, initial)
        null, null_time = compare(null1, null2)[2], null1.wall_time + null2.wall_time
        curve = corrected_fsc(measured, null, start.band_limit)
    return GoldStandard(start, half1, half2, labels, alignment, half2_aligned, 0.5 * (half1.volume + half2_aligned),
                        curve, half_map_resolution(curve, half1.band_limit, box, apix), radius,
                        curve_measured=measured, curve_null=null, null_band_px=start.band_limit,
                        null_wall_time=null_time)


def half_map_resolution(curve: np.ndarray, band_limit: float, box: int, pixel_size: float) -> float:
    """Å where the half maps' FSC first falls below 0.143 within the band limit (Fourier pixels); the band
    limit's resolution when it stays above.  Beyond the band limit the halves hold only what positivity
    and the mask make of their shared low frequencies, not information from their images."""
    return max(resolution_at(curve, box, pixel_size, 0.143), resolution_A(band_limit, box, pixel_size))

