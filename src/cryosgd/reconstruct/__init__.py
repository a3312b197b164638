"""Ab initio reconstruction: data -> objective -> optimiser, with checkpoints and logs.

:func:`reconstruct` runs one stochastic optimiser from a random density on a
particle set and returns a :class:`Reconstruction`.  Everything a run needs
to continue after being killed is in its checkpoint; a resumed run gives the
same result as an uninterrupted one.

Defaults beyond the paper (each can be switched off in :class:`Settings`, so
the paper's plain setting stays reproducible: ``Settings.paper()``):

* frequency marching: the band limit rises from ``start_resolution`` to the
  target over the first half of the run, in ``marching_stages`` steps, with
  the quadrature matched to each band limit;
* positivity: the density is clipped at 0 after every step;
* a soft spherical mask at the particle diameter;
* centring: every ``centre_every`` steps the density's centre of mass is moved
  to the box centre, and the optimiser's state with it (:func:`cryosgd.optim.roll_state`);
* noise: images are divided by their noise std, estimated from the background
  outside the particle, so sigma = 1 in the likelihood.

Also by default: shifts are searched within 10% of the box, the pose search is
pruned where an image has more than 2 million poses, and the target resolution is
15 Å (4 pixels where Nyquist is coarser) unless given (10% of Nyquist, every pose
and no shifts in the paper's setting).  Kept in the paper's setting too: the
learning rate is tuned on validation images, and a step whose minibatch objective
blows up is undone and the rate halved (the divergence guard; see
``docs/reconstruction.md``).

The package, one concern a module: :mod:`.settings` (the settings), :mod:`.dataset` (images, split,
noise and contrast, the random start), :mod:`.schedule` (target resolution, band limits, kernels),
:mod:`.checkpoint`, :mod:`.loop` (the training loop), :mod:`.tuning` (the learning rate) and
:mod:`.poses` (pose assignment), :mod:`.halves` (gold-standard half-sets), :mod:`.nll_baseline` (the held-out
NLL of a uniform sphere) and :mod:`.diagnostics` (warnings that a result is probably wrong).
"""
from .checkpoint import checkpoint_key, load_checkpoint, save_checkpoint
from .dataset import Dataset, initial_density, load_dataset, particle_diameter_px
from .diagnostics import Diagnosis, diagnose
from .halves import GoldStandard, gold_standard, split_halves
from .loop import Diverged, Reconstruction, centre_density, reconstruct
from .poses import assign_poses
from .schedule import band_schedule, build_kernel, check_resolution, target_resolution
from .settings import Settings
from .tuning import tune_rate, tuning_split

__all__ = ["Settings", "Reconstruction", "reconstruct", "Dataset", "load_dataset", "initial_density",
           "particle_diameter_px", "Diverged", "centre_density", "assign_poses", "band_schedule", "build_kernel",
           "check_resolution", "target_resolution", "checkpoint_key", "load_checkpoint", "save_checkpoint",
           "tune_rate", "tuning_split", "GoldStandard", "gold_standard", "split_halves", "Diagnosis", "diagnose"]
