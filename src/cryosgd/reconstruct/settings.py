"""The settings of a run (:class:`Settings`), and the paper's plain setting (:meth:`Settings.paper`).

Every field that changes what a run computes is part of its checkpoint's key
(:mod:`.checkpoint`); ``device``, ``precision``, ``memory_budget`` and ``checkpoint_every`` only
change where and how fast it computes.  ``docs/reconstruction.md`` lists each default that goes
beyond the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Settings"]


@dataclass
class Settings:
    optimizer: str = "sgd"
    learning_rate: float | None = None     # None: tuned automatically
    epochs: float = 1.0
    batch_size: int | None = None          # None: the optimiser's (100; 300 for HF)
    resolution: float | None = None        # Å; None: 15 Å, or 4 pixels where Nyquist is coarser (schedule.py)
    nyquist_fraction: float | None = None   # a default target as a fraction of Nyquist instead (the paper's: 0.10)
    start_resolution: float | None = None  # Å; None: twice the target, and at least 36 Å (marching)
    marching_stages: int = 3
    positivity: bool = True
    mask: bool = True
    particle_diameter: float | None = None  # Å; None: 0.8 of the box
    centre_every: int = 25                  # steps; 0: off
    max_shift: float | None = None          # pixels; None: 10% of the box; 0: no shift search
    search: str = "auto"                    # auto | pruned (coarse-to-fine, inference/search.py) | exhaustive
    lambda_plus: float = 1e-4
    lambda_minus: float = 1e-4
    test_size: int = 100
    seed: int = 0
    snapshots: tuple = (5000, 50000)        # gradient evaluations
    evaluations: int = 12                   # test-NLL points over the run (at the band limit of the moment)
    checkpoint_every: float = 60.0          # seconds
    tune_images: int = 300
    tune_steps: int | None = None          # steps of each candidate; None: the optimiser's (tuning.TUNE_STEPS)
    tune_rate: bool = True                  # search the rate with short runs; False: one probe step (tuning.py)
    memory_budget: int | None = None       # bytes for the score matrix; None: from the memory available
    noise_std: float | None = None          # None: estimated from the background
    device: str = "cpu"
    precision: str = "auto"                 # auto | float32 | tf32 | float64 (see resolve_precision)
    invert_contrast: str = "auto"           # yes | no | auto: from the images (inference/contrast.py)
    symmetry: str = "C1"                    # point group (C<n>, D<n>, T, O, I): quadrature over one asymmetric
                                            # unit, symmetric density (reconstruct/symmetric.py)
    # two half-sets from one shared low-resolution start, and their FSC (halves.py); off by default: it
    # takes about three times the time of one run (twice without noise substitution) and each half map
    # sees only half the images
    gold_standard: bool = False
    noise_substitution: bool = True         # with gold_standard: the halves again on phase-randomised images,
                                            # and their FSC corrected by that one (noise_substitution.py)
    classes: int = 1                        # K densities, a mixture with learned proportions (classes.py)

    @classmethod
    def paper(cls, **kw) -> Settings:
        """The paper's plain setting: fixed band limit (10% of Nyquist unless given), no extras.

        No marching, positivity, mask, centring or pruning: every pose is scored (``search="exhaustive"``)
        and shifts are searched only when ``max_shift`` is given.  What stays (``docs/reconstruction.md``):
        the automatic learning rate, the noise estimate, the divergence guard, and the prior as given
        (``lambda_plus``, ``lambda_minus``).
        """
        base = dict(start_resolution=None, marching_stages=1, positivity=False, mask=False, centre_every=0,
                    nyquist_fraction=0.10, search="exhaustive", max_shift=0.0)
        base.update(kw)
        return cls(**base)

    @classmethod
    def from_options(cls, *, paper: bool = False, no_marching: bool = False, no_positivity: bool = False,
                     no_mask: bool = False, no_centring: bool = False, probe_rate: bool = False,
                     no_noise_substitution: bool = False, **kw) -> Settings:
        """Settings from command-line options: the plain default or the paper's (``paper``), the
        ``no_*`` switches, and field values, of which ``None`` leaves the default."""
        fields = {k: v for k, v in kw.items() if v is not None}
        if no_marching:
            fields["marching_stages"] = 1
        for off, key in ((no_positivity, "positivity"), (no_mask, "mask")):
            if off:
                fields[key] = False
        if no_centring:
            fields["centre_every"] = 0
        if probe_rate:
            fields["tune_rate"] = False
        if no_noise_substitution:
            fields["noise_substitution"] = False
        return (cls.paper if paper else cls)(**fields)
