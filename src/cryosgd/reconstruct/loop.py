"""The training loop: minibatches -> objective -> optimiser step, with the divergence guard, centring,
held-out evaluations, snapshots and checkpoints.  See the package notes (:mod:`cryosgd.reconstruct`)."""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..fourier import soft_mask
from ..inference.likelihood import MarginalLikelihood
from ..inference.objective import Objective
from ..inference.prior import DensityPrior
from ..io import InputError, ParticleSet
from ..io.prefetch import Prefetcher
from ..optim import OPTIMIZERS, compose, make_optimizer, nonnegative, roll_state, windowed, with_projection
from ..runtime import parallel
from ..runtime.device import resolve_device
from ..runtime.memory import peak_rss_bytes, reuse_freed_memory
from .checkpoint import checkpoint_key, load_checkpoint, save_checkpoint
from .classes import ClassMixture, check_classes
from .dataset import initial_density, load_dataset, particle_diameter_px
from .nll_baseline import invariant_nll, one_rotation_kernel, sphere_baseline
from .schedule import band_schedule, build_kernel, check_resolution, shift_range_px
from .settings import Settings
from .symmetric import check_symmetry, symmetrise_tensor
from .tuning import probe_rate, tune_rate

__all__ = ["reconstruct", "Reconstruction", "Diverged", "centre_density"]

# the divergence guard: a minibatch objective more than BLOWUP_FACTOR times its running level (the
# median of the last GUARD_WINDOW accepted steps at this band limit), or not finite, rejects the step
# that led there and halves the rate; after MAX_REJECTIONS halvings the run stops
BLOWUP_FACTOR = 2.0
GUARD_WINDOW = 10
MAX_REJECTIONS = 10


class Diverged(InputError):
    """The run diverged and halving the learning rate did not stop it; no map is written."""


@dataclass
class Reconstruction:
    volume: np.ndarray                      # (N, N, N) final density; (K, N, N, N) with K > 1 classes
    pixel_size: float
    log: list                               # dict rows: iteration, gradients, epoch, value, test_nll, ...
    snapshots: dict                         # gradient count -> (N, N, N) (or (K, N, N, N))
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
    baseline: dict = dataclasses.field(default_factory=dict)  # held-out NLL of a uniform sphere (nll_baseline)
    proportions: list | None = None         # (K,) class proportions with K > 1 classes (reconstruct/classes.py)
    reseeds: list = dataclasses.field(default_factory=list)  # classes the collapse guard re-seeded (dicts)


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


def reconstruct(particles: ParticleSet, settings: Settings, *, checkpoint: str | Path | None = None,
                progress: Callable | None = None, stop_after: int | None = None,
                initial_volume: np.ndarray | None = None) -> Reconstruction:
    """Run ``settings.optimizer`` from a random density (see the module notes).

    checkpoint: file to save to (atomically, every ``checkpoint_every`` seconds and at
                the end) and to resume from if it exists with the same settings.
    progress:   ``progress(done_steps, total_steps, info_dict)`` after every step, and once before the
                learning-rate search with ``info_dict["stage"]`` (no step done).
    stop_after: stop (with a checkpoint) after this many steps: for tests of resumption.
    initial_volume: ``(N, N, N)`` start instead of the random spheres (the gold-standard halves start
                from one shared low-resolution map; :mod:`.halves`); not part of the checkpoint key.

    The C library is asked to keep freed memory for reuse (:func:`.runtime.memory.reuse_freed_memory`,
    process-wide): without it every call's temporaries are page-faulted in again.
    """
    reuse_freed_memory()
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
    check_symmetry(settings.symmetry)
    n_classes = check_classes(settings.classes)
    if n_classes > 1 and (settings.symmetry.strip().upper() != "C1" or settings.gold_standard):
        raise InputError(particles.source, "--classes above 1 does not combine with --symmetry or --gold-standard yet; "
                                           "run them separately")
    dataset = load_dataset(particles, test_size=settings.test_size, seed=settings.seed,
                           diameter_A=settings.particle_diameter, noise_std=settings.noise_std,
                           invert_contrast=settings.invert_contrast)
    probe = make_optimizer(settings.optimizer, 1.0)
    batch = settings.batch_size or probe.batch_size
    n_train = len(dataset.train)
    steps_per_epoch = max(1, n_train // batch)
    n_steps = max(1, int(round(settings.epochs * steps_per_epoch)))
    schedule = band_schedule(settings, box, apix, n_steps)
    mix = ClassMixture(n_classes, n_steps, settings.seed) if n_classes > 1 else None

    def objective_for(kern, at_step=None):  # the plain objective, or the mixture's at this step
        return Objective(kern, prior, n_train) if mix is None else mix.objective(kern, prior, n_train, at_step)
    prior = DensityPrior(settings.lambda_plus, settings.lambda_minus)
    device = resolve_device(settings.device)
    radius_px = 0.5 * particle_diameter_px(box, apix, settings.particle_diameter)
    projections = ([nonnegative()] if settings.positivity else []) + \
        ([windowed(soft_mask(box, radius_px).float().to(device))] if settings.mask else [])
    project_constraints = compose(*projections)
    if batch < parallel.world_size():
        raise InputError(particles.source, f"a minibatch of {batch} cannot be split over "
                                           f"{parallel.world_size()} processes")

    def batch_indices(step):
        epoch, within = divmod(step, steps_per_epoch)
        order = np.random.default_rng([settings.seed, 7, epoch]).permutation(dataset.train)
        return np.sort(order[within * batch:(within + 1) * batch])

    kernels: dict[float, MarginalLikelihood] = {}
    test_batches: dict[float, object] = {}
    test_local = parallel.shard(np.sort(dataset.test))

    def kernel_for(r):
        if r not in kernels:  # keep only the current stage's kernel and its held-out batch
            kernels.clear()
            test_batches.clear()
            kernels[r] = build_kernel(r, box, apix, settings)
        return kernels[r]

    def test_batch_for(r):
        kern = kernel_for(r)
        if r not in test_batches:
            test_batches[r] = kern.prepare(dataset.images(test_local), dataset.particles.ctf[test_local])
        return test_batches[r]

    def test_nll(vol, r):
        """The held-out NLL (nats per image) at band limit ``r``: the current stage's, so that an
        evaluation costs what a step does (``log.csv`` gives each one's band limit)."""
        batch = test_batch_for(r)
        return objective_for(kernel_for(r)).test_nll(vol, batch, total=len(dataset.test))

    ckpt_path = Path(checkpoint) if checkpoint else None
    state = load_checkpoint(ckpt_path) if ckpt_path and parallel.is_main() else None
    state = parallel.broadcast_object(state)
    settings_key = checkpoint_key(settings)
    if state is not None and state.get("settings") != settings_key:
        raise InputError(ckpt_path, "the checkpoint was written with other settings; remove it or use them")

    if state is None:
        if initial_volume is not None:
            start = torch.as_tensor(np.asarray(initial_volume), dtype=torch.float32)
        else:
            start = (initial_density if mix is None else mix.initial)(box, dataset, seed=settings.seed,
                                                                      diameter_A=settings.particle_diameter)
        volume = project_constraints(symmetrise_tensor(start.to(device), settings.symmetry))  # C1: unchanged
        lr = settings.learning_rate
        if lr is None and progress is not None:  # the search takes a few short runs: say so before them
            progress(0, n_steps, {"band_limit": schedule[0][1], "stage": "tuning the learning rate"})
        if lr is None and settings.tune_rate:
            lr = tune_rate(settings.optimizer, dataset, kernel_for(schedule[0][1]), prior, volume, project_constraints,
                           n_train, seed=settings.seed, tune_images=settings.tune_images,
                           steps=settings.tune_steps, validation_size=settings.test_size,
                           objective=None if mix is None else objective_for(kernel_for(schedule[0][1]), 0))
        elif lr is None:
            lr = probe_rate(settings.optimizer, dataset, kernel_for(schedule[0][1]), prior, volume, n_train,
                            seed=settings.seed, tune_images=settings.tune_images, validation_size=settings.test_size,
                            objective=None if mix is None else objective_for(kernel_for(schedule[0][1]), 0))
        step, grads, log, snapshots, opt_state = 0, 0, [], {}, None
        kernel_seconds, rejected = 0.0, []
    else:
        volume, lr = state["volume"].to(device), state["learning_rate"]
        step, grads, log = state["step"], state["gradients"], state["log"]
        snapshots, opt_state, kernel_seconds = state["snapshots"], state["optimizer_state"], state["kernel_seconds"]
        rejected = state.get("rejected", [])
        if mix is not None:
            mix.load(state["classes"])
    tuned_lr = lr if state is None else state.get("tuned_learning_rate", lr)

    def make(rate):
        o = make_optimizer(settings.optimizer, rate)
        return with_projection(o, *projections) if projections else o

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
        restored, opt_state, mix_state = previous
        if mix is not None:
            mix.load(mix_state)
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
        objective = objective_for(kern, step)
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

        previous = (volume, opt_state, None if mix is None else mix.state())
        volume, opt_state, n_extra = opt.update(out.gradient, opt_state, volume, value=out.value, grad_fn=grad_fn)
        kernel_seconds += time.time() - t0
        step += 1
        if mix is not None:  # the proportions, then the collapse guard
            mix.update_proportions(out.posteriors, len(idx))
            volume, opt_state = mix.guard(volume, opt_state, step, project_constraints)
        grads += len(idx) * (1 + n_extra)
        if settings.centre_every and step % settings.centre_every == 0 and step < n_steps and mix is not None:
            volume, opt_state = mix.centre(volume, opt_state, centre_density)  # each class on its own
        elif settings.centre_every and step % settings.centre_every == 0 and step < n_steps:
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
        if mix is not None:
            row["proportions"] = mix.proportions.tolist()
        if step % eval_every == 0 or step == n_steps:
            row["test_nll"] = test_nll(volume, r)
            if step == n_steps:  # no minibatch judges the last update: the held-out NLL does
                earlier = [e["test_nll"] for e in log if "test_nll" in e and e["band_limit"] == r]
                best = min(earlier) if earlier else None
                if not math.isfinite(row["test_nll"]) or (
                        best is not None and row["test_nll"] - best > (BLOWUP_FACTOR - 1) * max(abs(best), 1.0)):
                    what = f"the held-out NLL rose to {row['test_nll']:.4g} from {best}"
                    volume = reject(row["test_nll"], best, what)
                    if parallel.is_main():
                        warnings.warn(f"{settings.optimizer}: the last step rejected ({what}); the map is the "
                                      "density before it")
                    row["rejected"] = 1
                    row["test_nll"] = test_nll(volume, r)
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
                                        "rejected": rejected, "tuned_learning_rate": tuned_lr,
                                        "classes": None if mix is None else mix.state()})
        if ckpt_path and (done or due):
            last_save = time.time()
        if stop_after is not None and step >= stop_after and step < n_steps:
            break
    def final_baseline(r_final):
        """The held-out NLL of the best-scaled uniform sphere against the map's (nll_baseline.py)."""
        final_kernel = kernel_for(r_final)
        sphere_kernel = one_rotation_kernel(box, apix, r_final, shift_range_px(settings, box), dtype=final_kernel.dtype,
                                            device=device)
        sphere_batch = sphere_kernel.prepare(dataset.images(test_local), dataset.particles.ctf[test_local])
        return sphere_baseline(Objective(final_kernel, prior, n_train), volume, test_batch_for(r_final),
                               total=len(dataset.test), radius_px=radius_px,
                               images=dataset.images(np.sort(dataset.train[:300])),
                               sphere_nll=invariant_nll(sphere_kernel, sphere_batch))

    prefetch.close()
    volume = symmetrise_tensor(volume, settings.symmetry)  # once, what interpolation left (C1: unchanged)
    snapshots_np = {k: v.cpu().numpy() for k, v in snapshots.items()}
    snapshots_np["final"] = volume.cpu().numpy()
    r_final = band_at(max(step - 1, 0))
    final_kernel = kernel_for(r_final)
    if not bool(torch.isfinite(volume).all()):
        raise diverged("the density is not finite at the end")
    baseline = final_baseline(r_final) if mix is None else {}  # several classes: no sphere baseline
    return Reconstruction(volume.cpu().numpy(), apix, log, snapshots_np, settings, lr, schedule[-1][1],
                          dataset.noise_std, time.time() - t_start, kernel_seconds, final_kernel.chunk,
                          peak_rss_bytes(), final_kernel.operator_bytes, contrast=dataset.contrast,
                          rejected=rejected, baseline=baseline,
                          proportions=None if mix is None else mix.proportions.tolist(),
                          reseeds=[] if mix is None else mix.reseeds)

