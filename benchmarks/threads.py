"""A pruned call in one piece against the same call split over threads (``PrunedLikelihood.workers``).

    python benchmarks/threads.py [--settings real,e2e] [--calls 15] [--json]

Images and settings of ``benchmarks/search.py`` (``simulated_minibatch``: the bundled 5FUU map, SNR
0.05, shifts of sigma 3 px, minibatches of 100); the true density.  In one process, blocks of
``--calls`` calls with one group (``workers=1``: PyTorch's intra-op threads only) and with one group
per intra-op thread (the default), in the order 1, 2, 2, 1 so that a drift of the machine's speed
weighs on both alike.  Per setting and with and without the gradient: the median seconds of a call
each way, their ratio, and the float32 matmul peak of the same run.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from cryosgd.inference.search import PrunedLikelihood
from cryosgd.runtime.memory import reuse_freed_memory
from machine import matmul_peak
from search import SETTINGS, simulated_minibatch


def one(name: str, calls: int) -> list[dict]:
    box, apix, r, max_shift, _ = SETTINGS[name]
    truth, images, ctf = simulated_minibatch(box, apix)
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
