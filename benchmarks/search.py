"""Pruned pose search against exhaustive search: throughput, pose counts and agreement.

    python benchmarks/search.py [--json] [--settings real,e2e,memory12]

Images: the bundled 5FUU density, simulated with real-looking CTFs (defocus 1-2.5 um), SNR 0.05,
shifts of sigma 3 px; minibatches of 100.  Settings:
  real:     128 px at 1.5 Å/pixel, 16% of Nyquist (r = 10.24), shifts within 8 px (the paper's
            real-data setting; exhaustive: 98,872 rotations x 49 shifts)
  e2e:      64 px at 3.5 Å/pixel, 15 Å (r = 14.9), shifts within 6.4 px (10% of the box): the last
            stage of the end-to-end run
  memory12: 128 px at 1.95 Å/pixel, 12 Å (r = 20.8), shifts within 12.8 px: peak memory of the
            pruned kernel (no exhaustive reference: its operator alone would take 8 GB)

Per setting and volume (``truth``: near convergence; ``random``: a random-spheres start), one JSON
line with: setting, images_per_s and epoch_50k_s of the pruned kernel (likelihood + gradient, best
of ``--repeats`` calls), evaluated_fraction (coarse + fine pose scores over the exhaustive ones),
flop_fraction (the same weighted by coefficients), grad_rel_error and max_loglik_error (nats) against
exhaustive search on ``--check`` images, mean_loglik_error, exhaustive_images_per_s (same run),
matmul_gflops (the machine's float32 peak, same run), peak_rss_gib (this setting's process).
Each setting runs in its own process, so its peak memory is its own.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryosgd.forward.ctf import CTFParams
from cryosgd.forward.density import random_spheres
from cryosgd.forward.simulate import simulate_particles
from cryosgd.inference.search import PrunedLikelihood
from cryosgd.reconstruct import Settings, build_kernel
from cryosgd.runtime.memory import peak_rss_bytes, reuse_freed_memory
from cryosgd.simulation import load_source_volume
from machine import matmul_peak

DEMO = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"
SETTINGS = {  # box, Å/pixel, band limit (Fourier pixels), max shift (pixels), exhaustive reference
    "real": (128, 1.5, 0.16 * 64, 8.0, True),
    "e2e": (64, 3.5, 64 * 3.5 / 15.0, 6.4, True),
    "memory12": (128, 1.95, 128 * 1.95 / 12.0, 12.8, False),
}
BATCH = 100


def simulated_minibatch(box: int, apix: float) -> tuple[np.ndarray, np.ndarray, CTFParams]:
    """The settings' images: the bundled 5FUU density at ``box`` and ``apix``, and :data:`BATCH` of its
    projections (real-looking CTFs, SNR 0.05, shifts of sigma 3 px): ``(truth, images, ctf)``."""
    truth = load_source_volume(DEMO, box, apix)
    rng = np.random.default_rng(0)
    ctf = CTFParams.make(rng.uniform(1e4, 2.5e4, BATCH), None, 0.0, 300.0, 2.7, 0.1)
    images = simulate_particles(truth, BATCH, pixel_size=apix, snr=0.05, ctf=ctf, shift_sigma=3.0, rng=rng).images
    return truth, images, ctf


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def one(name: str, repeats: int, check: int) -> list[dict]:
    box, apix, r, max_shift, reference = SETTINGS[name]
    truth, images, ctf = simulated_minibatch(box, apix)
    start = random_spheres(box, np.random.default_rng(1), radius=0.2 * box)
    start *= truth.std() / start.std()
    t0 = time.perf_counter()
    kern = PrunedLikelihood(box, apix, r, max_shift=max_shift)
    build = time.perf_counter() - t0
    batch = kern.prepare(images, ctf)
    exhaustive = build_kernel(r, box, apix, Settings(max_shift=max_shift, search="exhaustive")) if reference else None
    rows = []
    for vol_name, vol in (("truth", truth), ("random", start)):
        v = torch.as_tensor(vol, dtype=torch.float32)
        kern(v, batch, poses=False)  # warm-up
        dt = best_time(lambda v=v: kern(v, batch, poses=False), repeats)
        stats = dict(kern.last_stats)
        row = {"setting": f"{name}/{vol_name}", "images_per_s": round(BATCH / dt, 1),
               "epoch_50k_s": round(50000 / BATCH * dt, 1),
               "evaluated_fraction": round(stats["evaluated_fraction"], 4),
               "flop_fraction": round(stats["flop_fraction"], 4)}
        if exhaustive is not None:
            sub = slice(0, check)
            ex_batch = exhaustive.prepare(images[sub], ctf[np.arange(check)])
            t = time.perf_counter()
            ref = exhaustive(v, ex_batch, poses=False)
            ex_dt = time.perf_counter() - t
            res = kern(v, kern.prepare(images[sub], ctf[np.arange(check)]), poses=False)
            diff = (res.log_likelihood - ref.log_likelihood).double()
            row.update(grad_rel_error=round(float((res.gradient - ref.gradient).norm() / ref.gradient.norm()), 5),
                       max_loglik_error=round(float(diff.abs().max()), 4),
                       mean_loglik_error=round(float(diff.mean()), 5),
                       exhaustive_images_per_s=round(check / ex_dt, 2))
        else:
            row.update(grad_rel_error=None, max_loglik_error=None)
        row.update(kept_rotations=round(stats["kept_rotations"], 1), kept_shifts=round(stats["kept_shifts"], 1),
                   fine_rotations=round(stats["fine_rotations"], 1), fine_shifts=round(stats["fine_shifts"], 1),
                   dense=stats["dense"], rotations=kern.rotations.size, shifts=len(kern.shifts),
                   coarse_rotations=kern.coarse_rotations.size, coarse_shifts=len(kern.coarse.shifts),
                   points=kern.n_points, coarse_points=kern.coarse.n_points, build_s=round(build, 1),
                   operator_gib=round(kern.operator_bytes / 2**30, 3), threads=torch.get_num_threads())
        rows.append(row)
    peak = matmul_peak()
    for row in rows:
        row.update(matmul_gflops=round(peak, 1), peak_rss_gib=round(peak_rss_bytes() / 2**30, 2))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--settings", default="real,e2e,memory12")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--check", type=int, default=20, help="images compared with exhaustive search")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        reuse_freed_memory()  # as the command line does
        for row in one(args.one, args.repeats, args.check):
            print(json.dumps(row), flush=True)
        return
    for name in args.settings.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", name, "--repeats", str(args.repeats),
                              "--check", str(args.check)], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            continue
        for line in out.stdout.splitlines():
            row = json.loads(line)
            if args.json:
                print(line, flush=True)
            else:
                print(f"{row['setting']:16s} {row['images_per_s']:8.1f} img/s  epoch(50k) {row['epoch_50k_s']:7.1f} s  "
                      f"evaluated {row['evaluated_fraction']:.4f}  grad err {row['grad_rel_error']}  "
                      f"max loglik err {row['max_loglik_error']}  peak {row['peak_rss_gib']} GiB", flush=True)


if __name__ == "__main__":
    main()
