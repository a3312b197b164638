"""A pruned call in one piece against the same call split over threads (``PrunedLikelihood.workers``).

    python benchmarks/threads.py [--settings real,e2e] [--calls 15] [--json]

Images as in ``benchmarks/search.py`` (the bundled 5FUU map, SNR 0.05, shifts of sigma 3 px,
minibatches of 100); the true density.  In one process, blocks of ``--calls`` calls with one group
(``workers=1``: PyTorch's intra-op threads only) and with one group per intra-op thread (the
default), in the order 1, 2, 2, 1 so that a drift of the machine's speed weighs on both alike.  Per
setting and with and without the gradient: the median seconds of a call each way, their ratio, and
the float32 matmul peak of the same run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cryosgd.forward.ctf import CTFParams
from cryosgd.forward.simulate import simulate_particles
from cryosgd.inference.search import PrunedLikelihood
from cryosgd.runtime.memory import reuse_freed_memory
from cryosgd.simulation import load_source_volume

DEMO = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"
SETTINGS = {"real": (128, 1.5, 0.16 * 64, 8.0), "e2e": (64, 3.5, 64 * 3.5 / 15.0, 6.4)}


def matmul_peak(n: int = 3072) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    a @ b
    return 2 * n**3 / (time.perf_counter() - t) / 1e9


def one(name: str, calls: int) -> list[dict]:
    box, apix, r, max_shift = SETTINGS[name]
    truth = load_source_volume(DEMO, box, apix)
    rng = np.random.default_rng(0)
    ctf = CTFParams.make(rng.uniform(1e4, 2.5e4, 100), None, 0.0, 300.0, 2.7, 0.1)
    images = simulate_particles(truth, 100, pixel_size=apix, snr=0.05, ctf=ctf, shift_sigma=3.0, rng=rng).images
    kern = PrunedLikelihood(box, apix, r, max_shift=max_shift)
    batch = kern.prepare(images, ctf)
    vol = torch.as_tensor(truth, dtype=torch.float32)
    rows = []
    for gradient in (False, True):
        times: dict[int | None, list[float]] = {1: [], None: []}
        for workers in (1, None, None, 1):
            kern.workers = workers
            kern(vol, batch, gradient=gradient, poses=False)   # warm-up
            for _ in range(calls):
                t = time.perf_counter()
                kern(vol, batch, gradient=gradient, poses=False)
                times[workers].append(time.perf_counter() - t)
        whole, split = float(np.median(times[1])), float(np.median(times[None]))
        rows.append({"setting": name, "gradient": gradient, "threads": torch.get_num_threads(),
                     "one_group_s": round(whole, 3), "split_s": round(split, 3), "ratio": round(split / whole, 3),
                     "matmul_gflops": round(matmul_peak(), 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", default="real,e2e")
    ap.add_argument("--calls", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    reuse_freed_memory()   # as the command line does
    for name in args.settings.split(","):
        for row in one(name, args.calls):
            print(json.dumps(row) if args.json else
                  f"{row['setting']:5s} gradient={row['gradient']!s:5s} one group {row['one_group_s']:.3f} s, "
                  f"split {row['split_s']:.3f} s, ratio {row['ratio']:.2f} ({row['threads']} threads, "
                  f"matmul {row['matmul_gflops']:.0f} GFLOP/s)", flush=True)


if __name__ == "__main__":
    main()
