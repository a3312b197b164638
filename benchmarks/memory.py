"""Peak memory of a reconstruction from a particle set larger than memory.

    python benchmarks/memory.py --workdir /tmp/big --size-gb 13 [--steps 300] [--resolution 24]

Builds (once; reused while the workdir's manifest matches) a RELION-style
particle set of about ``--size-gb`` GB: a few thousand particles of the
bundled 5FUU density are simulated once, nearly noise-free, at 128 px and
1.5 Å/px (64 KiB per image), and every particle of the big set is one of
them, scaled to ``--snr``, with fresh white noise.  The images go to one
stack per ``--per-stack`` particles (as RELION writes one stack per
micrograph), all listed in one ``particles.star``; noise is generated a chunk
at a time, so building never holds a stack in memory, and the stacks are
dropped from the page cache once written, so the run reads them from disk.

The build runs in a child process; this process then loads the STAR file and
runs :func:`cryosgd.reconstruct.reconstruct` for ``--steps`` minibatch steps
(``epochs`` = steps / steps per epoch; 0 skips it).  With ``--sweep`` it then
reads every particle once, in random minibatches of 100 through a
:class:`~cryosgd.io.prefetch.Prefetcher`: an epoch's worth of I/O.  It prints
one JSON line:

    stack_bytes  particles  stacks  steps  peak_rss_bytes  wall_s
    metadata_rss_bytes (resident memory after loading the STAR file)
    read_s (time inside ParticleSet.read_images during the run)
    kernel_s, resolution, box, reader, cpu, cores
    sweep_s, sweep_mb_per_s (with --sweep)

``peak_rss_bytes`` is this process's high-water resident set size
(:func:`cryosgd.runtime.memory.peak_rss_bytes`): imports, metadata, the likelihood
kernels and the minibatches; the build is not counted.  ``--reader mmap``
reads the stacks through mrcfile's memory map instead of positioned reads,
for comparison.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import cryosgd.io.particles
from cryosgd.io import ImageStack, ParticleSet, load_particles, write_particles_star
from cryosgd.io.mrc import write_stack_chunks
from cryosgd.io.prefetch import Prefetcher
from cryosgd.runtime.memory import current_rss_bytes, format_bytes, peak_rss_bytes
from machine import cpu_model

BOX, PIXEL_SIZE = 128, 1.5          # px, Å: 64 KiB float32 images
BASE_SNR = 1000.0                   # the simulated particles: noise 1/30 of the signal's std
CHUNK = 256                         # images generated and written at a time (16 MiB)
SOURCE = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"


def _say(*words) -> None:
    print(*words, file=sys.stderr, flush=True)


def _drop_from_page_cache(path: Path) -> None:
    """Write ``path`` to disk and evict it from the page cache (so later reads come from the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def build(workdir: Path, n: int, per_stack: int, n_base: int, snr: float, seed: int) -> None:
    """Simulate ``n_base`` particles (reused if present), then write ``n`` noisy copies to stacks."""
    from cryosgd.simulation import simulate_dataset

    base_dir = workdir / "base"
    base_star = base_dir / "particles.star"
    if base_star.is_file() and len(load_particles(base_star)) == n_base:
        base = load_particles(base_star)
    else:
        _say(f"simulating {n_base} particles of {SOURCE.name} at {BOX} px, {PIXEL_SIZE} Å/px ...")
        simulate_dataset(SOURCE, base_dir, n=n_base, box=BOX, pixel_size=PIXEL_SIZE, snr=BASE_SNR, seed=seed)
        base = load_particles(base_star)
    # the simulated images have noise std 1 and signal variance BASE_SNR; scaled, their signal variance is snr
    clean = base.read_images(np.arange(n_base)) * np.float32(np.sqrt(snr / BASE_SNR))
    base.close()

    stack_dir = workdir / "stacks"
    shutil.rmtree(stack_dir, ignore_errors=True)
    stack_dir.mkdir(parents=True)
    files, index = [], []
    t0 = time.time()
    for k, first in enumerate(range(0, n, per_stack)):
        count = min(per_stack, n - first)
        rng = np.random.default_rng([seed, 1, k])
        path = stack_dir / f"mic{k:05d}.mrcs"

        def chunks(first=first, count=count, rng=rng):
            for start in range(first, first + count, CHUNK):
                which = np.arange(start, min(start + CHUNK, first + count)) % n_base
                yield clean[which] + rng.standard_normal((len(which), BOX, BOX), dtype=np.float32)

        write_stack_chunks(path, chunks(), PIXEL_SIZE)
        _drop_from_page_cache(path)
        files += [path] * count
        index.append(np.arange(count))
        if k % 20 == 0:
            _say(f"  {first + count}/{n} particles written ({time.time() - t0:.0f} s)")
    base_of = np.arange(n) % n_base
    particles = ParticleSet(workdir / "particles.star", files, np.concatenate(index), PIXEL_SIZE, BOX,
                            base.ctf[base_of])
    write_particles_star(workdir / "particles.star", particles)


class _MemoryMappedStack(ImageStack):
    """For comparison: a stack whose images are read through ``mrcfile.mmap``."""

    def __init__(self, path):
        super().__init__(path)
        import mrcfile

        self._mrc = mrcfile.mmap(path, mode="r", permissive=True)

    def read(self, indices) -> np.ndarray:
        data = self._mrc.data.reshape(self.shape)
        return np.asarray(data[np.asarray(indices, dtype=np.int64)], dtype=np.float32)

    def close(self) -> None:
        self._mrc.close()
        super().close()


def sweep(particles: ParticleSet, seed: int, batch: int = 100) -> float:
    """Seconds to read every particle once in random sorted minibatches, loading two ahead."""
    order = np.random.default_rng([seed, 3]).permutation(len(particles))
    batches = (np.sort(order[i:i + batch]) for i in range(0, len(order), batch))
    t0 = time.perf_counter()
    with Prefetcher(particles.read_images, batches, depth=2) as loaded:
        for done, (_, images) in enumerate(loaded, 1):
            if done % 200 == 0:
                _say(f"  swept {done * batch}/{len(particles)}: {time.perf_counter() - t0:.0f} s, "
                     f"RSS {format_bytes(current_rss_bytes() or 0)}")
    return time.perf_counter() - t0


def _manifest(n: int, per_stack: int, n_base: int, snr: float, seed: int) -> dict:
    return {"particles": n, "per_stack": per_stack, "base_particles": n_base, "snr": snr, "seed": seed,
            "box": BOX, "pixel_size": PIXEL_SIZE}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the particle set is built")
    parser.add_argument("--size-gb", type=float, default=13.0, help="stack bytes on disk, in GB (1e9)")
    parser.add_argument("--steps", type=int, default=300, help="minibatch steps of the reconstruction")
    parser.add_argument("--resolution", type=float, default=24.0, help="target resolution (Å)")
    parser.add_argument("--per-stack", type=int, default=1000, help="particles per stack file")
    parser.add_argument("--base-particles", type=int, default=2000, help="distinct simulated particles")
    parser.add_argument("--snr", type=float, default=0.05, help="signal-to-noise ratio of the big set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reader", choices=("pread", "mmap"), default="pread",
                        help="positioned reads (ImageStack) or, for comparison, mrcfile's memory map")
    parser.add_argument("--sweep", action="store_true", help="then read every particle once")
    parser.add_argument("--clean", action="store_true", help="delete the workdir at the end")
    args = parser.parse_args(argv)

    from cryosgd.optim import make_optimizer
    from cryosgd.reconstruct import Settings, reconstruct

    image_bytes = BOX * BOX * 4
    n = int(np.ceil(args.size_gb * 1e9 / image_bytes))
    workdir = args.workdir
    manifest = _manifest(n, args.per_stack, args.base_particles, args.snr, args.seed)
    manifest_path = workdir / "manifest.json"
    if not manifest_path.is_file() or json.loads(manifest_path.read_text()) != manifest:
        workdir.mkdir(parents=True, exist_ok=True)
        manifest_path.unlink(missing_ok=True)
        _say(f"building {n} particles ({format_bytes(n * image_bytes)}) in {workdir} ...")
        t0 = time.time()
        child = multiprocessing.get_context("spawn").Process(
            target=build, args=(workdir, n, args.per_stack, args.base_particles, args.snr, args.seed))
        child.start()
        child.join()
        if child.exitcode != 0:
            _say("building the particle set failed")
            return 1
        manifest_path.write_text(json.dumps(manifest))
        _say(f"built in {time.time() - t0:.0f} s")
    else:
        for stack in sorted((workdir / "stacks").glob("*.mrcs")):
            _drop_from_page_cache(stack)

    if args.reader == "mmap":
        cryosgd.io.particles.ImageStack = _MemoryMappedStack  # what ParticleSet opens its stacks with
    particles = load_particles(workdir / "particles.star")
    metadata_rss = current_rss_bytes()
    stack_bytes = sum(p.stat().st_size for p in (workdir / "stacks").glob("*.mrcs"))

    read_seconds = 0.0
    read_images = particles.read_images

    def timed_read(indices):
        nonlocal read_seconds
        t = time.perf_counter()
        try:
            return read_images(indices)
        finally:
            read_seconds += time.perf_counter() - t

    particles.read_images = timed_read  # Dataset.images reads through the instance
    settings = Settings(resolution=args.resolution, seed=args.seed)
    batch = settings.batch_size or make_optimizer(settings.optimizer, 1.0).batch_size
    steps_per_epoch = max(1, (len(particles) - settings.test_size) // batch)
    settings.epochs = args.steps / steps_per_epoch
    t_start = time.time()

    def progress(done, total, row):
        if done % 25 == 0 or done == total:
            _say(f"  step {done}/{total}: {time.time() - t_start:.0f} s, peak RSS {format_bytes(peak_rss_bytes())}")

    figures = {"stack_bytes": stack_bytes, "particles": len(particles),
               "stacks": len({os.fspath(p) for p in particles.image_files}), "steps": 0}
    if args.steps > 0:
        _say(f"reconstructing from {len(particles)} particles ({format_bytes(stack_bytes)} of stacks), "
             f"{args.steps} steps at {args.resolution} Å ...")
        rec = reconstruct(particles, settings, progress=progress)
        figures.update(steps=len(rec.log), wall_s=round(rec.wall_time, 1), read_s=round(read_seconds, 1),
                       kernel_s=round(rec.kernel_seconds, 1))
    if args.sweep:
        _say(f"reading all {len(particles)} particles once ...")
        seconds = sweep(particles, args.seed)
        figures.update(sweep_s=round(seconds, 1), sweep_mb_per_s=round(len(particles) * image_bytes / seconds / 1e6))
    particles.close()
    figures.update(peak_rss_bytes=peak_rss_bytes(), metadata_rss_bytes=metadata_rss, resolution=args.resolution,
                   box=BOX, reader=args.reader, cpu=cpu_model(), cores=os.cpu_count())
    _say(f"peak RSS {format_bytes(figures['peak_rss_bytes'])} for {format_bytes(stack_bytes)} of stacks "
         f"({figures['steps']} steps{', a full sweep' if args.sweep else ''})")
    print(json.dumps(figures), flush=True)
    if args.clean:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
