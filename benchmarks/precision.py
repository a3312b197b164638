"""How much reduced-precision matrix products change the likelihood and its gradient.

    python benchmarks/precision.py [--n 200] [--resolution 30]

GPUs multiply float32 matrices faster with TF32 (10-bit mantissa) or bfloat16 (7-bit) inputs and
float32 accumulation.  This emulates both on the CPU by rounding the operands of the kernel's score
products (the ones that carry nearly all of its FLOPs) and compares, against a float64 evaluation:
the per-image log-likelihood (nats) and the gradient (relative norm of the difference).  For scale,
it also reports how much the gradient changes from one minibatch of 100 images to another at the
same density: the noise SGD lives with anyway.

Data: particles of EMD-3400 projected by our simulator (64 px, 4.5 Å/px, SNR 0.05, real CTFs);
two densities: the truth and the random spheres a run starts from.  Prints one JSON line per
(density, precision).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

import cryosgd.inference.likelihood as likelihood
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import Settings, build_kernel, initial_density, load_dataset
from cryosgd.simulation import simulate_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BOX, APIX = 64, 4.5


def round_mantissa(x: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 ``x`` rounded to nearest with ``bits`` explicit mantissa bits (TF32: 10, bfloat16: 7)."""
    drop = 23 - bits
    i = x.contiguous().view(torch.int32)
    i = (i + (1 << (drop - 1))) & ~((1 << drop) - 1)
    return i.view(torch.float32)


def evaluate(kern, volume, batch):
    res = kern(volume, batch, poses=False)
    return res.log_likelihood.double(), res.gradient.double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--resolution", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths, _ = simulate_dataset(SHARED / "map_emd3400_zehni2020" / "emd_3400_86.mrc", tmp, n=args.n, box=BOX,
                                    pixel_size=APIX, snr=0.05,
                                    ctf_from=SHARED / "ctf_metadata_real" / "cryosparc_P12_J24_001_particles.cs")
        particles = load_particles(paths.particles)
        truth, _ = read_map(paths.volume)
        settings = Settings(resolution=args.resolution, test_size=100)
        dataset = load_dataset(particles, test_size=settings.test_size, seed=settings.seed)
        r = BOX * APIX / args.resolution
        k32 = build_kernel(r, BOX, APIX, settings)
        k64 = likelihood.MarginalLikelihood(BOX, APIX, r, k32.rotations, k32.shifts,  # the same quadrature
                                            np.exp(k32.log_shift_weights.double().numpy()), dtype=torch.float64)
        idx = [np.sort(dataset.train[i * 100:(i + 1) * 100]) for i in range(2)]
        batches = [(k32.prepare(dataset.images(i), particles.ctf[i]), k64.prepare(dataset.images(i), particles.ctf[i]))
                   for i in idx]
        densities = {"truth": torch.as_tensor(truth / dataset.noise_std, dtype=torch.float32),
                     "random start": initial_density(BOX, dataset, seed=settings.seed)}
        pad = likelihood._pad_columns
        for name, vol in densities.items():
            ref_ll, ref_g = evaluate(k64, vol.double(), batches[0][1])
            _, other_g = evaluate(k64, vol.double(), batches[1][1])
            noise = float((other_g - ref_g).norm() / ref_g.norm())
            for label, bits in (("float32", None), ("tf32", 10), ("bfloat16", 7)):
                if bits is not None:
                    likelihood._pad_columns = lambda x, m=16, b=bits: pad(round_mantissa(x, b), m)
                try:
                    ll, g = evaluate(k32, vol, batches[0][0])
                finally:
                    likelihood._pad_columns = pad
                print(json.dumps({"density": name, "products": label,
                                  "max_abs_loglik_error_nats": round(float((ll - ref_ll).abs().max()), 4),
                                  "mean_loglik_error_nats": round(float((ll - ref_ll).mean()), 4),
                                  "gradient_relative_error": float(f"{float((g - ref_g).norm() / ref_g.norm()):.3g}"),
                                  "minibatch_to_minibatch_gradient_change": round(noise, 3)}), flush=True)


if __name__ == "__main__":
    main()
