"""Reconstruction throughput with 1 and 2 data-parallel processes on this machine.

    python benchmarks/parallel.py [--n 3000] [--nproc 1,2] [-o /tmp/parallel]

Simulates particles of the bundled 5FUU density (64 px, 3 Å/px, SNR 0.05), then runs
``cryosgd reconstruct --nproc N`` with a fixed learning rate (no tuning) and reports images per
second of training (per-image gradient evaluations divided by the time from the first to the
last step, from the run's log) and the whole command's wall time.  One JSON line per N.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cryosgd.simulation import simulate_dataset

DEMO = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="/tmp/cryosgd-parallel")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--nproc", default="1,2")
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args()
    out = Path(args.output)
    paths, _ = simulate_dataset(DEMO, out / "data", n=args.n, box=64, pixel_size=3.0, snr=0.05, seed=3)
    for nproc in (int(x) for x in args.nproc.split(",")):
        run = out / f"np{nproc}"
        shutil.rmtree(run, ignore_errors=True)  # a fresh run each time, never a resumed one
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cryosgd", "reconstruct", str(paths.particles), "-o", str(run),
                               "--epochs", str(args.epochs), "--resolution", "20", "--learning-rate", "0.3",
                               "--nproc", str(nproc), "--device", "cpu"],
                              env={**os.environ, "CRYOSGD_QUIET": "1"}, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        rows = list(csv.DictReader(open(run / "log.csv")))
        first, last = rows[0], rows[-1]
        seconds = float(last["seconds"]) - float(first["seconds"])
        images = int(last["gradients"]) - int(first["gradients"])
        summary = json.loads((run / "summary.json").read_text())
        print(json.dumps({"nproc": nproc, "images_per_s": round(images / seconds, 1), "steps": int(last["step"]),
                          "train_seconds": round(seconds, 1), "wall_s": round(wall, 1),
                          "peak_memory_rank0_MiB": round(summary["peak_memory_bytes"] / 2**20)}), flush=True)


if __name__ == "__main__":
    main()
