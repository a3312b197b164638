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

The target resolution is 25% of Nyquist unless given (10% in the paper's
setting).  Kept in the paper's setting too: the learning rate is tuned on
validation images, and a step whose minibatch objective blows up is undone and
the rate halved (the divergence guard; see ``docs/reconstruction.md``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .forward.density import random_spheres
from .fourier import soft_mask
from .inference.likelihood import MarginalLikelihood
from .inference.noise import estimate_noise_std
from .inference.objective import Objective
from .inference.prior import DensityPrior
from .inference.quadrature import (LEBEDEV_POINTS, angular_step, available_lebedev_orders, choose_quadrature,
                                   directions_for_step, finest_band_limit, lebedev_directions,
                                   lebedev_order_for_step)
from .inference.rotation_set import build_rotation_set
from . import parallel
from .io import InputError, ParticleSet
from .io.prefetch import Prefetcher
from .memory import peak_rss_bytes
from .optim import OPTIMIZERS, make_optimizer, roll_state, tune_learning_rate, with_projection

TUNE_SAFETY = 0.5  # the tuned rate is halved: later, at higher band limits, the objective is rougher
# TONGA's short tuning runs end before its covariance estimate settles; over a 5-epoch run its best
# rate measured about half the (already halved) tuned one (test NLL 196.96 at 0.5 against 202.2 at 1.02)
TUNE_SAFETY_EXTRA = {"tonga": 0.5}

# the divergence guard: a minibatch objective more than BLOWUP_FACTOR times its running level (the
# median of the last GUARD_WINDOW accepted steps at this band limit), or not finite, rejects the step
# that led there and halves the rate; after MAX_REJECTIONS halvings the run stops
BLOWUP_FACTOR = 2.0
GUARD_WINDOW = 10
MAX_REJECTIONS = 10

__all__ = ["Settings", "Reconstruction", "reconstruct", "Dataset", "load_dataset", "Diverged"]


class Diverged(InputError):
    """The run diverged and halving the learning rate did not stop it; no map is written."""


@dataclass
class Settings:
    optimizer: str = "sgd"
    learning_rate: float | None = None     # None: tuned automatically
    epochs: float = 1.0
    batch_size: int | None = None          # None: the optimiser's (100; 300 for HF)
    resolution: float | None = None        # Å; None: nyquist_fraction of Nyquist
    nyquist_fraction: float = 0.25          # the default target's band limit as a fraction of Nyquist
    start_resolution: float | None = None  # Å; None: twice the target (marching)
    marching_stages: int = 3
    positivity: bool = True
    mask: bool = True
    particle_diameter: float | None = None  # Å; None: 0.8 of the box
    centre_every: int = 25                  # steps; 0: off
    max_shift: float = 0.0                  # pixels; 0: no shift search
    lambda_plus: float = 1e-4
    lambda_minus: float = 1e-4
    test_size: int = 100
    seed: int = 0
    snapshots: tuple = (5000, 50000)        # gradient evaluations
    evaluations: int = 40                   # test-NLL points over the run
    checkpoint_every: float = 60.0          # seconds
    tune_images: int = 300
    tune_steps: int = 12
    memory_budget: int | None = None       # bytes for the score matrix; None: from the memory available
    noise_std: float | None = None          # None: estimated from the background
    device: str = "cpu"
    precision: str = "auto"                 # auto | float32 | tf32 | float64 (see resolve_precision)
    invert_contrast: str = "auto"           # yes | no | auto: from the images (inference/contrast.py)

    @classmethod
    def paper(cls, **kw) -> "Settings":
        """The paper's plain setting: fixed band limit (10% of Nyquist unless given), no extras.

        No marching, positivity, mask or centring.  What stays (``docs/reconstruction.md``): the
        automatic learning rate, the noise estimate, the divergence guard, and the shift search and
        prior as given (``max_shift``, ``lambda_plus``, ``lambda_minus``).
        """
        base = dict(start_resolution=None, marching_stages=1, positivity=False, mask=False, centre_every=0,
                    nyquist_fraction=0.10)
        base.update(kw)
        return cls(**base)


@dataclass
class Dataset:
    """Particle images held for one run: normalised, split into training and test sets."""

    particles: ParticleSet
    noise_std: float
    train: np.ndarray        # indices into particles
    test: np.ndarray
    contrast: float = 1.0    # -1: the images are inverted as read (dark protein)

    def images(self, index) -> np.ndarray:
        return self.particles.read_images(np.asarray(index)) * (self.contrast / self.noise_std)


def load_dataset(particles: ParticleSet, settings: Settings) -> Dataset:
    particles.validate_images()
    n = len(particles)
    if n < settings.test_size + 10:
        raise InputError(particles.source, f"only {n} particles; need more than the {settings.test_size} "
                                           "held out for testing")
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(n)
    noise = settings.noise_std
    if noise is None:
        box = particles.box
        radius = 0.5 * _diameter_px(particles, settings)
        sample = particles.read_images(np.sort(order[:min(n, 1000)]))
        noise = estimate_noise_std(sample, min(radius, 0.45 * box))
        if not noise > 0:
            raise InputError(particles.source, "the images' background has zero variance")
    contrast = _contrast_factor(particles, settings, np.sort(order[:min(n, 1000)]))
    return Dataset(particles, float(noise), order[settings.test_size:], order[:settings.test_size], contrast)


def _contrast_factor(particles: ParticleSet, settings: Settings, sample: np.ndarray) -> float:
    """-1 to invert the images, +1 to keep them (``Settings.invert_contrast``); a notice when flipped."""
    from .inference.contrast import resolve_contrast

    images = particles.read_images(sample) if settings.invert_contrast == "auto" else None
    factor, notice = resolve_contrast(settings.invert_contrast, images, particles.ctf[sample], particles.pixel_size,
                                      radius=0.5 * _diameter_px(particles, settings))
    if factor < 0 and notice:
        warnings.warn(notice, stacklevel=3)
    return factor


def _diameter_px(particles: ParticleSet, settings: Settings) -> float:
    if settings.particle_diameter:
        return settings.particle_diameter / particles.pixel_size
    return 0.8 * particles.box


@dataclass
class Reconstruction:
    volume: np.ndarray                      # (N, N, N) final density
    pixel_size: float
    log: list                               # dict rows: iteration, gradients, epoch, value, test_nll, ...
    snapshots: dict                         # gradient count -> (N, N, N)
    settings: Settings
    learning_rate: float
    band_limit: float                       # final band limit (Fourier pixels)
    noise_std: float
    wall_time: float
    kernel_seconds: float = 0.0
    chunk: int = 0
    peak_memory: int = 0                    # bytes: the process's peak resident memory
    operator_bytes: int = 0                 # bytes: the final kernel's slicing operator and its transpose
    contrast: float = 1.0                   # the images' factor: -1 when they were inverted (Dataset.contrast)
    rejected: list = dataclasses.field(default_factory=list)  # steps the divergence guard undid (dicts)


# ---------------------------------------------------------------------------- pieces


def centre_density(volume: torch.Tensor, *, return_shift: bool = False):
    """Move the centre of mass of the positive density to the box centre (integer-pixel roll).

    With ``return_shift`` returns ``(volume, shifts)``, the roll along (z, y, x), so that the
    optimiser's state can move with the density (:func:`cryosgd.optim.roll_state`).
    """
    n = volume.shape[-1]
    w = volume.clamp(min=0)
    total = float(w.sum())
    shift = (0, 0, 0)
    if total > 0:
        c = torch.arange(n, dtype=volume.dtype, device=volume.device) - n // 2
        com = [float((w.sum(dim=tuple(j for j in range(3) if j != axis)) * c).sum()) / total for axis in range(3)]
        shift = tuple(-int(round(x)) for x in com)
    if any(shift):
        volume = torch.roll(volume, shifts=shift, dims=(0, 1, 2))
    return (volume, shift) if return_shift else volume


def target_resolution(resolution: float | None, box: int, pixel_size: float, nyquist_fraction: float = 0.25) -> float:
    """The target resolution in Å: the one asked for, or ``nyquist_fraction`` of Nyquist (in frequency)."""
    return resolution if resolution is not None else box * pixel_size / (nyquist_fraction * box / 2)


def check_resolution(settings: Settings, particles: ParticleSet) -> None:
    """The target resolution must lie above Nyquist and within reach of the finest quadrature rule."""
    box, apix = particles.box, particles.pixel_size
    if settings.resolution is not None and not (settings.resolution > 0 and math.isfinite(settings.resolution)):
        raise InputError(particles.source, f"--resolution {settings.resolution:g} Å is not a positive number")
    target = target_resolution(settings.resolution, box, apix, settings.nyquist_fraction)
    # the band limit box * apix / target must stay below box / 2: the images hold no frequency +N/2
    if not box * apix / target < box / 2:
        raise InputError(particles.source, f"--resolution {target:g} Å is not coarser than Nyquist ({2 * apix:g} Å "
                                           f"at {apix:g} Å/pixel)")
    if box * apix / target > finest_band_limit():
        needed = directions_for_step(angular_step(box * apix / target))
        most = LEBEDEV_POINTS[available_lebedev_orders()[-1]]
        raise InputError(particles.source, f"--resolution {target:g} Å needs {needed:.0f} viewing directions, more "
                                           f"than the finest Lebedev rule ({most}); ab initio search reaches "
                                           f"{box * apix / finest_band_limit():.1f} Å at {box} px and {apix:g} "
                                           "Å/pixel (refine further with a local search)")


def band_schedule(settings: Settings, box: int, pixel_size: float, n_steps: int) -> list[tuple[int, float]]:
    """``[(first_step, band_limit), ...]``: the marching stages."""
    target = target_resolution(settings.resolution, box, pixel_size, settings.nyquist_fraction)
    r_final = box * pixel_size / target
    stages = max(1, settings.marching_stages)
    if stages == 1:
        return [(0, r_final)]
    r0 = box * pixel_size / (settings.start_resolution or 2 * target)
    r0 = min(max(r0, 2.0), r_final)
    half = n_steps // 2
    out = []
    for i in range(stages):
        r = r0 + (r_final - r0) * i / (stages - 1)
        out.append((int(round(half * i / (stages - 1))), r))
    return out


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (a GPU when one is present)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device", "CUDA was asked for but no GPU is visible to PyTorch")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """``(dtype, tf32)`` for the kernel.

    ``auto``: float32 everywhere, with TF32 inputs to the score products on CUDA GPUs of compute
    capability 8.0 or newer.  TF32 changes the gradient by about 0.1% and a log-likelihood by at
    most 0.3 nats (``benchmarks/precision.py``), while the gradient differs by 65-140% from one
    minibatch to the next.  ``float32``: never TF32.  ``tf32``: insist on it.  ``float64``: for checks.
    """
    has_tf32 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    if name == "auto":
        return torch.float32, has_tf32
    if name == "float32":
        return torch.float32, False
    if name == "float64":
        return torch.float64, False
    if name == "tf32":
        if not has_tf32:
            raise InputError("--precision", "tf32 needs an NVIDIA GPU of compute capability 8.0 or newer")
        return torch.float32, True
    raise InputError("--precision", f"unknown precision {name!r}; choose auto, float32, tf32 or float64")


def build_kernel(band_limit: float, box: int, pixel_size: float, settings: Settings) -> MarginalLikelihood:
    q = choose_quadrature(band_limit, box, max_shift=settings.max_shift)
    order = lebedev_order_for_step(angular_step(band_limit))
    d, w = lebedev_directions(order)
    rs = build_rotation_set(d, w, q.n_inplane)
    device = resolve_device(settings.device)
    dtype, tf32 = resolve_precision(settings.precision, device)
    return MarginalLikelihood(box, pixel_size, band_limit, rs, q.shifts, q.shift_weights, noise_std=1.0,
                              dtype=dtype, device=device, memory_budget=settings.memory_budget, tf32=tf32)


def initial_density(box: int, dataset: Dataset, settings: Settings) -> torch.Tensor:
    """The paper's random spheres, scaled so its projections carry about the images' signal power."""
    rng = np.random.default_rng(settings.seed + 1)
    vol = random_spheres(box, rng, radius=0.25 * _diameter_px(dataset.particles, settings))
    sample = dataset.images(np.sort(dataset.train[:min(len(dataset.train), 500)]))
    signal_var = max(float(sample.var()) - 1.0, 0.01)
    proj_var = float(vol.sum(0).var())  # one projection: enough for a scale
    return torch.as_tensor(vol * math.sqrt(signal_var / max(proj_var, 1e-12)), dtype=torch.float32)


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # the output folder appears with the first checkpoint
    tmp = path.with_name(path.name + ".part")
    torch.save(payload, tmp)
    os.replace(tmp, path)


# where and how fast a run computes, not what: a run may resume with other values of these
NOT_IN_CHECKPOINT_KEY = ("device", "precision", "memory_budget", "checkpoint_every")


def checkpoint_key(settings: Settings) -> str:
    """The settings that change the result, as text: a checkpoint resumes only under the same key."""
    fields = {k: v for k, v in dataclasses.asdict(settings).items() if k not in NOT_IN_CHECKPOINT_KEY}
    return json.dumps(fields, sort_keys=True, default=str)


def load_checkpoint(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise InputError(path, f"not a readable checkpoint ({err.__class__.__name__})") from None


# ---------------------------------------------------------------------------- the loop


def reconstruct(particles: ParticleSet, settings: Settings, *, checkpoint: str | Path | None = None,
                progress: Callable | None = None, stop_after: int | None = None) -> Reconstruction:
    """Run ``settings.optimizer`` from a random density (see the module notes).

    checkpoint: file to save to (atomically, every ``checkpoint_every`` seconds and at
                the end) and to resume from if it exists with the same settings.
    progress:   ``progress(done_steps, total_steps, info_dict)`` after every step.
    stop_after: stop (with a checkpoint) after this many steps: for tests of resumption.
    """
    if settings.optimizer not in OPTIMIZERS:
        raise InputError(particles.source, f"unknown optimiser {settings.optimizer!r}")
    t_start = time.time()
    torch.manual_seed(settings.seed)
    box, apix = particles.box, particles.pixel_size
    for key in ("lambda_plus", "lambda_minus"):
        value = getattr(settings, key)
        if not (value >= 0 and math.isfinite(value)):
            raise InputError(particles.source, f"--{key.replace('_', '-')} {value:g} is not a non-negative number")
    check_resolution(settings, particles)
    dataset = load_dataset(particles, settings)
    probe = make_optimizer(settings.optimizer, 1.0)
    batch = settings.batch_size or probe.batch_size
    n_train = len(dataset.train)
    steps_per_epoch = max(1, n_train // batch)
    n_steps = max(1, int(round(settings.epochs * steps_per_epoch)))
    schedule = band_schedule(settings, box, apix, n_steps)
    prior = DensityPrior(settings.lambda_plus, settings.lambda_minus)
    device = resolve_device(settings.device)
    mask = soft_mask(box, 0.5 * _diameter_px(particles, settings)).float().to(device) if settings.mask else None
    if batch < parallel.world_size():
        raise InputError(particles.source, f"a minibatch of {batch} cannot be split over "
                                           f"{parallel.world_size()} processes")

    def project_constraints(v):
        if settings.positivity:
            v = v.clamp(min=0)
        if mask is not None:
            v = v * mask
        return v

    def batch_indices(step):
        epoch, within = divmod(step, steps_per_epoch)
        order = np.random.default_rng([settings.seed, 7, epoch]).permutation(dataset.train)
        return np.sort(order[within * batch:(within + 1) * batch])

    r_eval = schedule[-1][1]
    eval_kernel = build_kernel(r_eval, box, apix, settings)
    kernels: dict[float, MarginalLikelihood] = {r_eval: eval_kernel}

    def kernel_for(r):
        if r not in kernels:  # keep only the evaluation kernel and the current stage's
            for key in [k for k in kernels if k != r_eval]:
                del kernels[key]
            kernels[r] = build_kernel(r, box, apix, settings)
        return kernels[r]
    test_local = parallel.shard(np.sort(dataset.test))
    test_batch = eval_kernel.prepare(dataset.images(test_local), dataset.particles.ctf[test_local])

    ckpt_path = Path(checkpoint) if checkpoint else None
    state = load_checkpoint(ckpt_path) if ckpt_path and parallel.is_main() else None
    state = parallel.broadcast_object(state)
    settings_key = checkpoint_key(settings)
    if state is not None and state.get("settings") != settings_key:
        raise InputError(ckpt_path, "the checkpoint was written with other settings; remove it or use them")

    if state is None:
        volume = project_constraints(initial_density(box, dataset, settings).to(device))
        lr = settings.learning_rate
        if lr is None:
            lr = _tune(settings, dataset, kernel_for(schedule[0][1]), prior, volume, project_constraints, n_train)
        step, grads, log, snapshots, opt_state = 0, 0, [], {}, None
        kernel_seconds, rejected = 0.0, []
    else:
        volume, lr = state["volume"].to(device), state["learning_rate"]
        step, grads, log = state["step"], state["gradients"], state["log"]
        snapshots, opt_state, kernel_seconds = state["snapshots"], state["optimizer_state"], state["kernel_seconds"]
        rejected = state.get("rejected", [])
    tuned_lr = lr if state is None else state.get("tuned_learning_rate", lr)

    def make(rate):
        o = make_optimizer(settings.optimizer, rate)
        return with_projection(o, project_constraints) if settings.positivity or mask is not None else o

    opt = make(lr)
    if opt_state is None:
        opt_state = opt.init(volume)
    eval_every = max(1, n_steps // max(1, settings.evaluations))
    last_save = time.time()
    snap_targets = sorted(settings.snapshots)

    def band_at(s):
        return [r for first, r in schedule if first <= s][-1]

    def load(idx):
        return dataset.images(parallel.shard(idx))

    # keys are the minibatches' indices, drawn once per step
    def diverged(what):
        tried = (f"halving the learning rate {len(rejected) - 1} times (from {tuned_lr:.3g} to {2 * lr:.3g}) did "
                 "not stop it" if rejected else f"at learning rate {lr:.3g}")
        return Diverged(particles.source, f"{settings.optimizer} diverged: {what}; {tried}; no map was written "
                                          f"(try a smaller --learning-rate, or another optimiser)")

    def reject(value, level, what):
        """Undo the last update (restore ``previous``) and halve the rate; returns the restored volume."""
        nonlocal lr, opt, opt_state
        lr *= 0.5
        rejected.append({"step": step, "value": value, "level": level, "learning_rate": lr, "what": what})
        if len(rejected) > MAX_REJECTIONS:
            raise diverged(f"{what} at step {step}")
        opt = make(lr)
        restored, opt_state = previous
        for target in new_snapshots:  # taken from the rejected density: taken again from the next one
            snapshots.pop(target, None)
        if log:
            log[-1].pop("test_nll", None)  # evaluated on the rejected density
        return restored

    recent: list[float] = []           # accepted minibatch values at the current band limit
    previous, new_snapshots, last_band = None, [], None
    prefetch = Prefetcher(load, (batch_indices(s) for s in range(step, n_steps)))
    batches = iter(prefetch)
    while step < n_steps:
        r = band_at(step)
        kern = kernel_for(r)
        objective = Objective(kern, prior, n_train)
        idx, images = next(batches)
        local = parallel.shard(idx)
        mb = kern.prepare(images, dataset.particles.ctf[local])
        t0 = time.time()
        out = objective(volume, mb, total=len(idx))
        if r != last_band:
            recent, last_band = [], r
        # the guard: the value here judges the previous update
        level = float(np.median(recent)) if recent else None
        finite = math.isfinite(out.value) and bool(torch.isfinite(out.gradient).all())
        blown = not finite or (level is not None and out.value - level > (BLOWUP_FACTOR - 1) * max(abs(level), 1.0))
        n_rejected = 0
        if blown:
            if previous is None:  # nothing to go back to: the start (or the resumed point) itself is bad
                raise diverged(f"the minibatch objective is {out.value:g} at step {step}")
            what = ("a non-finite objective" if not finite else
                    f"the minibatch objective jumped to {out.value:.4g} from a level of {level:.4g}")
            volume = reject(out.value, level, what)
            n_rejected = 1
            if parallel.is_main():
                warnings.warn(f"{settings.optimizer}: step {step} rejected ({what}); learning rate halved to "
                              f"{lr:.3g}")
            out = objective(volume, mb, total=len(idx))
            grads += len(idx)
        else:
            recent = (recent + [out.value])[-GUARD_WINDOW:]

        def grad_fn(p, _objective=objective, _mb=mb, _n=len(idx)):
            o = _objective(p, _mb, total=_n)
            return o.value, o.gradient

        previous = (volume, opt_state)
        volume, opt_state, n_extra = opt.update(out.gradient, opt_state, volume, value=out.value, grad_fn=grad_fn)
        kernel_seconds += time.time() - t0
        step += 1
        grads += len(idx) * (1 + n_extra)
        if settings.centre_every and step % settings.centre_every == 0 and step < n_steps:
            # the optimiser's momenta, sums, curvature pairs and factors move with the density
            volume, shift = centre_density(volume, return_shift=True)
            if any(shift):
                opt_state = roll_state(opt_state, shift, tuple(volume.shape))
        new_snapshots = []
        for target in snap_targets:
            if target not in snapshots and grads >= target:
                snapshots[target] = volume.clone()
                new_snapshots.append(target)
        row = {"step": step, "gradients": grads, "epoch": step / steps_per_epoch, "band_limit": r,
               "value": out.value, "learning_rate": lr, "rejected": n_rejected, "seconds": time.time() - t_start}
        if step % eval_every == 0 or step == n_steps:
            row["test_nll"] = Objective(eval_kernel, prior, n_train).test_nll(volume, test_batch,
                                                                               total=len(dataset.test))
            if step == n_steps:  # no minibatch judges the last update: the held-out NLL does
                earlier = [e["test_nll"] for e in log if "test_nll" in e]
                best = min(earlier) if earlier else None
                if not math.isfinite(row["test_nll"]) or (
                        best is not None and row["test_nll"] - best > (BLOWUP_FACTOR - 1) * max(abs(best), 1.0)):
                    what = f"the held-out NLL rose to {row['test_nll']:.4g} from {best}"
                    volume = reject(row["test_nll"], best, what)
                    if parallel.is_main():
                        warnings.warn(f"{settings.optimizer}: the last step rejected ({what}); the map is the "
                                      "density before it")
                    row["rejected"] = 1
                    row["test_nll"] = Objective(eval_kernel, prior, n_train).test_nll(volume, test_batch,
                                                                                       total=len(dataset.test))
                    if not math.isfinite(row["test_nll"]):
                        raise diverged("the held-out NLL is not finite at the end")
        log.append(row)
        if progress is not None:
            progress(step, n_steps, row)
        done = step == n_steps or (stop_after is not None and step >= stop_after)
        due = parallel.broadcast_object(time.time() - last_save > settings.checkpoint_every)
        if ckpt_path and parallel.is_main() and (done or due):
            save_checkpoint(ckpt_path, {"settings": settings_key, "volume": volume, "learning_rate": lr,
                                        "step": step, "gradients": grads, "log": log, "snapshots": snapshots,
                                        "optimizer_state": opt_state, "kernel_seconds": kernel_seconds,
                                        "rejected": rejected, "tuned_learning_rate": tuned_lr})
        if ckpt_path and (done or due):
            last_save = time.time()
        if stop_after is not None and step >= stop_after and step < n_steps:
            break
    prefetch.close()
    snapshots_np = {k: v.cpu().numpy() for k, v in snapshots.items()}
    snapshots_np["final"] = volume.cpu().numpy()
    final_kernel = kernel_for(band_at(max(step - 1, 0)))
    if not bool(torch.isfinite(volume).all()):
        raise diverged("the density is not finite at the end")
    return Reconstruction(volume.cpu().numpy(), apix, log, snapshots_np, settings, lr, schedule[-1][1],
                          dataset.noise_std, time.time() - t_start, kernel_seconds, final_kernel.chunk,
                          peak_rss_bytes(), final_kernel.operator_bytes, contrast=dataset.contrast,
                          rejected=rejected)


def tuning_split(settings: Settings, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """``(tuning, validation)``: disjoint subsets of the training images for the learning-rate search.

    The candidates run on up to ``tune_images`` training images and are scored on ``test_size`` others
    (at most a third of the training set); the test images are kept for reporting only.
    """
    train = dataset.train
    n_val = max(1, min(settings.test_size, len(train) // 3))
    return train[:min(len(train) - n_val, settings.tune_images)], train[len(train) - n_val:]


def _tune(settings, dataset, kern, prior, volume, projection, n_train) -> float:
    """The base learning rate from a short search on ``tune_images`` training images."""
    subset, validation = tuning_split(settings, dataset)
    objective = Objective(kern, prior, n_train)
    cache = {}

    def factory(batch_size, seed):
        rng = np.random.default_rng([settings.seed, 11])
        for _ in range(settings.tune_steps):
            idx = np.sort(rng.choice(subset, size=min(batch_size, len(subset)), replace=False))
            key = tuple(idx)
            if key not in cache:
                local = parallel.shard(idx)
                cache[key] = kern.prepare(dataset.images(local), dataset.particles.ctf[local])
            mb = cache[key]

            def grad_fn(p, _mb=mb, _n=len(idx)):
                o = objective(p, _mb, total=_n)
                return o.value, o.gradient

            yield grad_fn

    # candidates around the rate whose first step moves the density by 10% of its norm, measured by
    # probing this optimiser's own first step at rate 1 (plain gradient, AdaGrad's scaled step, TONGA's
    # natural gradient, L-BFGS's and HF's curvature steps all differ in length); the objective is not
    # convex at a random start, so a Newton-step reference does not exist
    grad_fn = next(iter(factory(100, settings.seed)))
    value, grad = grad_fn(volume)
    probe = make_optimizer(settings.optimizer, 1.0)
    moved, _, _ = probe.update(grad, probe.init(volume), volume, value=value, grad_fn=grad_fn)
    step = float((moved - volume).norm())
    scale = 0.1 * float(volume.norm()) / step if step > 0 and math.isfinite(step) else 1.0
    if settings.optimizer == "adagrad":
        # AdaGrad's first step is about sign(g) on every voxel, far longer than its later steps:
        # its rate is a per-voxel step, so scale it by the density's voxel values instead
        scale = 0.1 * float(volume.abs().max())
    candidates = [scale * 10.0 ** (k / 2) for k in range(-4, 3)]
    # score each candidate by the NLL of validation images (training images outside the tuning subset,
    # at the tuning band limit), not by the tuning minibatches: a short run on those rewards rates at the
    # edge of stability; the test images, whose NLL the run reports, play no part
    mine = parallel.shard(np.sort(validation))
    held = kern.prepare(dataset.images(mine), dataset.particles.ctf[mine])

    def heldout(p):
        return objective.test_nll(p, held, total=len(validation))

    try:
        best = tune_learning_rate(settings.optimizer, factory, volume, candidates=candidates, heldout=heldout,
                                  n_steps=settings.tune_steps, seed=settings.seed, projection=projection)
    except parallel.DistributedFailure:
        raise
    except RuntimeError:  # every candidate diverged
        low, high = min(candidates), max(candidates)
        raise InputError(dataset.particles.source,
                         f"no learning rate from {low:.3g} to {high:.3g} lowered the NLL for {settings.optimizer} "
                         "(the images may hold no signal at this band limit); give one with "
                         "--learning-rate") from None
    return float(best) * TUNE_SAFETY * TUNE_SAFETY_EXTRA.get(settings.optimizer, 1.0)


def assign_poses(particles: ParticleSet, volume: np.ndarray, rec: Reconstruction, *, batch: int = 100,
                 progress: Callable | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each particle's most probable pose under the final map and band limit.

    Returns rotations ``(n, 3, 3)``, origin offsets ``(n, 2)`` pixels and the
    posterior probability of that pose ``(n,)``.
    """
    kern = build_kernel(rec.band_limit, particles.box, particles.pixel_size, rec.settings)
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
