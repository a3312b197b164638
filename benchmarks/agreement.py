"""Pruned search against exhaustive search on one particle set, for several pruning settings.

    python benchmarks/agreement.py sim/particles.star sim/truth.mrc --resolution 15 --max-shift 6.4 -n 20 \\
        --variants '[{}, {"coarse_shift_step": 2.0}, {"min_rotations": 16}]'

For the true density (a posterior near convergence) and the random start of a run (seed 0), the
exhaustive kernel's log-likelihoods and gradient on the first ``n`` images, then for each variant
(keyword arguments of :class:`cryosgd.inference.search.PrunedLikelihood`) one JSON line: seconds
of one call (likelihood + gradient), the evaluated fraction of the exhaustive poses, the largest
and the mean log-likelihood error (nats; negative: the truncated sum's bias) and the gradient's
relative error.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from cryosgd.fourier import band_limit_px
from cryosgd.inference.likelihood import MarginalLikelihood
from cryosgd.inference.quadrature import choose_quadrature
from cryosgd.inference.rotation_set import rotation_set_for_band
from cryosgd.inference.search import PrunedLikelihood
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import initial_density, load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("particles")
    ap.add_argument("truth", help="the true map, on the images' scale (cryosgd simulate's truth.mrc)")
    ap.add_argument("--resolution", type=float, default=15.0)
    ap.add_argument("--max-shift", type=float, default=6.4)
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--variants", default="[{}]")
    args = ap.parse_args()
    p = load_particles(args.particles)
    ds = load_dataset(p, test_size=100, seed=0, diameter_A=None, noise_std=None, invert_contrast="auto")
    r = band_limit_px(args.resolution, p.box, p.pixel_size)
    idx = np.arange(args.n)
    images = ds.images(idx)
    truth = torch.as_tensor(np.asarray(read_map(args.truth)[0]), dtype=torch.float32) / ds.noise_std * ds.contrast
    volumes = {"truth": truth, "random": initial_density(p.box, ds, seed=0, diameter_A=None)}
    q = choose_quadrature(r, p.box, max_shift=args.max_shift)
    exhaustive = MarginalLikelihood(p.box, p.pixel_size, r, rotation_set_for_band(r, q.n_inplane), q.shifts,
                                    q.shift_weights, memory_budget=1 << 29)
    batch = exhaustive.prepare(images, p.ctf[idx])
    reference = {}
    for name, v in volumes.items():
        t = time.perf_counter()
        reference[name] = exhaustive(v, batch, gradient=True, poses=False)
        print(json.dumps({"exhaustive": name, "s": round(time.perf_counter() - t, 1)}), flush=True)
    for kw in json.loads(args.variants):
        kern = PrunedLikelihood(p.box, p.pixel_size, r, max_shift=args.max_shift, **kw)
        pb = kern.prepare(images, p.ctf[idx])
        for name, v in volumes.items():
            t = time.perf_counter()
            out = kern(v, pb, gradient=True, poses=False)
            dt = time.perf_counter() - t
            ref = reference[name]
            d = (out.log_likelihood - ref.log_likelihood).double()
            print(json.dumps({"variant": kw, "volume": name, "s": round(dt, 2),
                              "evaluated_fraction": round(kern.last_stats["evaluated_fraction"], 4),
                              "max_loglik_error": round(float(d.abs().max()), 4),
                              "mean_loglik_error": round(float(d.mean()), 4),
                              "grad_rel_error": round(float((out.gradient - ref.gradient).norm()
                                                            / ref.gradient.norm()), 5)}), flush=True)


if __name__ == "__main__":
    main()
