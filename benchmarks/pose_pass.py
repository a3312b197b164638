"""The pose pass's search against training's: time per 100 images and the poses' error against the truth.

    python benchmarks/pose_pass.py RUN SIM [--n 1000] [--variants JSON] [--json]

RUN: a finished ``cryosgd reconstruct`` output folder (its ``map.mrc`` and ``summary.json``); SIM: the
``cryosgd simulate`` folder it came from (``particles.star``, ``truth.star``, ``truth.mrc``).  The map
is aligned onto the truth (:func:`cryosgd.evaluate.compare_maps`); the first ``--n`` particles are
given their most probable pose under the map by the run's final kernel with training's search,
with the pose pass's (``build_kernel(..., poses_only=True)``: :data:`cryosgd.reconstruct.schedule.POSE_SEARCH`
where the shift radius allows), and with each
``--variants`` entry (keywords of :class:`cryosgd.inference.search.PrunedLikelihood`).  Per search:
seconds per 100 images, the median angle to the true rotation and the fraction within 10 degrees.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cryosgd.baselines.projmatch import rotation_angle
from cryosgd.evaluate import compare_maps
from cryosgd.inference.search import PrunedLikelihood
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import Settings, build_kernel
from cryosgd.reconstruct.schedule import POSE_SEARCH, shift_range_px
from cryosgd.runtime.memory import reuse_freed_memory


def angles_to_truth(est: np.ndarray, true: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Degrees between each estimated rotation and the true one carried onto the map (``rotation`` or its
    transpose, whichever fits better)."""
    best = None
    for q in (rotation, rotation.T):
        err = rotation_angle(est, np.einsum("ij,njk->nik", q, true))
        best = err if best is None or np.median(err) < np.median(best) else best
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("sim", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--variants", default="[]")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    reuse_freed_memory()
    summary = json.loads((args.run / "summary.json").read_text())
    parts = load_particles(args.sim / "particles.star")
    vol, _ = read_map(args.run / "map.mrc")
    truth, _ = read_map(args.sim / "truth.mrc")
    alignment = compare_maps(vol, truth, pixel_size=parts.pixel_size, align=True).alignment
    true = load_particles(args.sim / "truth.star", require_images=False).rotations[:args.n]
    idx = np.arange(args.n)
    images = parts.read_images(idx) / summary["noise_std"]
    v = torch.as_tensor(vol, dtype=torch.float32)
    max_shift = shift_range_px(Settings(), parts.box)
    band = summary["band_limit_px"]
    box, apix = parts.box, parts.pixel_size
    searches = [("training", {}, build_kernel(band, box, apix, Settings())),
                ("pose pass", POSE_SEARCH, build_kernel(band, box, apix, Settings(), poses_only=True))]
    searches += [("variant", kw, PrunedLikelihood(parts.box, parts.pixel_size, band, max_shift=max_shift, **kw))
                 for kw in json.loads(args.variants)]
    for name, kw, kern in searches:
        rots = []
        t = time.perf_counter()
        for a in range(0, args.n, 100):
            batch = kern.prepare(images[a:a + 100], parts.ctf[idx[a:a + 100]])
            rots.append(kern(v, batch, gradient=False).best_rotation)
        seconds = (time.perf_counter() - t) / args.n * 100
        err = angles_to_truth(np.concatenate(rots), true, alignment.rotation)
        row = {"search": name, "keywords": kw, "s_per_100": round(seconds, 3),
               "median_error_deg": round(float(np.median(err)), 2), "within_10": round(float(np.mean(err < 10)), 3)}
        print(json.dumps(row) if args.json else
              f"{name:9s} {json.dumps(kw):45s} {seconds:.3f} s/100  median {row['median_error_deg']:.2f} deg, "
              f"{100 * row['within_10']:.1f}% within 10", flush=True)


if __name__ == "__main__":
    main()
