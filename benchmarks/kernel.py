"""Throughput of the likelihood + gradient kernel at the paper's settings.

    python benchmarks/kernel.py [--json] [--device cpu|cuda] [--repeats N]

Settings (128 px images, minibatch of 100, quadrature chosen from the band limit):
  synthetic: 10% of Nyquist, no shifts (the paper's synthetic data)
  real:      16% of Nyquist, shifts within 8 px (the paper's real data)

For each, it reports images/s for likelihood+gradient, the implied time for an epoch of 50,000
images, the float32 matrix-multiply rate measured on this machine in the same run (the peak),
and the ratio of the kernel's achieved dense matrix-product rate (its score products forward and
backward, and the band transform of the volume and its adjoint) to that peak; ``ratio_score_products``
counts the score products alone.  Kernel and peak use the same statistic: the headline figures
are each one's best observed time (like ``timeit``: on a shared machine other work only ever adds
time); the ``*_median`` keys give medians of both.  With --json: one JSON object per line, one per
setting, with the keys setting, images_per_s, epoch_50k_s, matmul_gflops and ratio (and a few
descriptive extras).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from cryosgd.forward.ctf import CTFParams
from cryosgd.fourier import nyquist_fraction_px
from cryosgd.inference.likelihood import MarginalLikelihood
from cryosgd.reconstruct import Settings, build_kernel

BOX, BATCH = 128, 100
SETTINGS = {"synthetic": (0.10, 0.0), "real": (0.16, 8.0)}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype=torch.float32, n=3072, repeats=10) -> tuple[float, float]:
    """GFLOP/s of a square matrix product on this device: (best, median) over ``repeats``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        sync(device)
        rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
    return max(rates), float(np.median(rates))


def kernel_flops(kern: MarginalLikelihood, batch: int) -> tuple[float, float]:
    """Dense matrix-product FLOPs of one likelihood + gradient call: (score products, band transform).

    Score products: the cross and norm terms, forward and backward (the minimal counts; the
    kernel's extra rows of ones and weights are not counted).  Band transform: the partial DFT of
    the volume onto the band cube and its adjoint (the same products transposed).  The sparse
    slicing products are not counted.
    """
    mb = len(kern.rotations.base)
    p = kern.n_points
    rows = 8 * batch * len(kern.shifts)
    forward = 2 * rows * (2 * p + 1) * mb + 2 * (8 * batch) * p * mb
    backward = 2 * (2 * p) * rows * mb + 2 * p * (8 * batch) * mb
    n, k, h = kern.band.box, kern.band.size, kern.band.half + 1
    band = 2 * n * n * n * 2 * h + 2 * (2 * k) * n * (2 * n * h) + 2 * (2 * k) * n * (2 * k * h)
    return float(forward + backward), float(2 * band)


def measure(name: str, device, repeats: int | None, memory_budget: int | None) -> dict:
    fraction, max_shift = SETTINGS[name]
    r = nyquist_fraction_px(BOX, fraction)
    t0 = time.perf_counter()  # the kernel as reconstruct builds it (quadrature from the band limit)
    kern = build_kernel(r, BOX, 2.0, Settings(max_shift=max_shift, memory_budget=memory_budget, device=str(device)))
    build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vol = torch.randn(BOX, BOX, BOX) * 0.01
    ctf = CTFParams.make(rng.uniform(1e4, 3e4, BATCH), None, 0.0, 300.0, 2.7, 0.1)
    batch = kern.prepare(rng.standard_normal((BATCH, BOX, BOX)).astype(np.float32), ctf)

    def call():  # as in training: likelihood and gradient, no best poses
        kern(vol, batch, poses=False)

    call()  # warm-up
    sync(device)
    if repeats is None:  # about 10 s of calls
        t = time.perf_counter()
        call()
        sync(device)
        repeats = int(np.clip(10.0 / (time.perf_counter() - t), 3, 200))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        sync(device)
        times.append(time.perf_counter() - t)
    dt, dt_median = min(times), float(np.median(times))
    peak, peak_median = matmul_peak(device)
    score_flops, band_flops = kernel_flops(kern, BATCH)
    flops = score_flops + band_flops
    ips = BATCH / dt
    return {"setting": name, "images_per_s": round(ips, 1), "epoch_50k_s": round(50000 / ips, 1),
            "matmul_gflops": round(peak, 1), "ratio": round(flops / dt / 1e9 / peak, 3),
            "ratio_score_products": round(score_flops / dt / 1e9 / peak, 3),
            "kernel_gflops": round(flops / dt / 1e9, 1), "gflop_per_batch": round(flops / 1e9, 3),
            "band_transform_share_of_flops": round(band_flops / flops, 3), "repeats": repeats,
            "seconds_per_batch": round(dt, 4), "images_per_s_median": round(BATCH / dt_median, 1),
            "matmul_gflops_median": round(peak_median, 1),
            "ratio_median": round(flops / dt_median / 1e9 / peak_median, 3),
            "rotations": 8 * len(kern.rotations.base), "shifts": len(kern.shifts), "points": kern.n_points,
            "band_limit_px": r, "chunk": kern.chunk, "build_s": round(build, 2), "device": str(device),
            "memory_budget_gib": round(kern.memory_budget / 2**30, 2),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls (default: about 10 s worth)")
    ap.add_argument("--settings", default="synthetic,real")
    ap.add_argument("--memory-budget-gib", type=float, default=None,
                    help="score-matrix budget (default: the library's, a quarter of the available memory "
                         "on CPU; less means more rotation chunks and recomputed scores)")
    args = ap.parse_args()
    device = torch.device(args.device)
    for name in args.settings.split(","):
        budget = None if args.memory_budget_gib is None else int(args.memory_budget_gib * 2**30)
        row = measure(name, device, args.repeats, budget)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name:10s} {row['images_per_s']:8.1f} img/s  epoch(50k) {row['epoch_50k_s']:8.1f} s  "
                  f"kernel {row['kernel_gflops']:6.1f} GFLOP/s  peak {row['matmul_gflops']:6.1f}  "
                  f"ratio {row['ratio']:.2f}  ({row['rotations']} rotations x {row['shifts']} shifts, "
                  f"P={row['points']}, chunk {row['chunk']}; {platform.processor() or platform.machine()})",
                  flush=True)


if __name__ == "__main__":
    main()
