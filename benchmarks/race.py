"""Race: cryosgd's SGD against RELION 3.1's SGD initial model on the same particles.

    python benchmarks/race.py -o /tmp/race [--n 5000] [--snr 0.05] [--relion-iters ini,between,fin]

Particles are projected by ``relion_project --ctf`` (so neither program sees its own simulator)
from the EMD-3400 map in ../shared/data (64 px at 4.5 Å/px), CTFs drawn from the real cryoSPARC
table, white noise at SNR 0.05.  Both programs start from their own random density (RELION's
``--denovo_3dref`` makes its own), run on 2 threads, and are scored against the truth with
``cryosgd fsc --align`` (FSC after alignment over rotation, shift and hand).  Wall time includes
each program's whole run.  Prints one JSON line and writes race.md in the output folder.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

from cryosgd.evaluate import compare_maps
from cryosgd.forward.simulate import draw_ctfs
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import Settings, reconstruct
from cryosgd.relion import relion_simulate, require_relion
from cryosgd.simulation import load_source_volume
from machine import cpu_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BOX, APIX = 64, 4.5


def run_relion_sgd(star: Path, out: Path, iters: tuple[int, int, int], diameter: float, threads: int = 2) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    ini, between, fin = iters
    # RELION finds the images relative to its working folder: run it in the STAR file's folder
    cmd = ["relion_refine", "--sgd", "--denovo_3dref", "--i", star.name, "--o", str(out.resolve() / "run"), "--ctf",
           "--K", "1", "--sym", "C1", "--zero_mask", "--flatten_solvent", "--particle_diameter", f"{diameter:.0f}",
           "--healpix_order", "1", "--offset_range", "6", "--offset_step", "2", "--j", str(threads),
           "--sgd_ini_iter", str(ini), "--sgd_inbetween_iter", str(between), "--sgd_fin_iter", str(fin),
           "--sgd_write_iter", str(ini + between + fin), "--pool", "30", "--pad", "1", "--dont_combine_weights_via_disc"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=star.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"relion_refine failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    maps = sorted(out.glob("run_it*_class001.mrc"))
    return maps[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--resolution", type=float, default=30.0, help="cryosgd's target (Å)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--relion-iters", default="50,200,50", help="RELION's --sgd_ini/inbetween/fin_iter")
    args = ap.parse_args()
    require_relion()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    volume = load_source_volume(SHARED / "map_emd3400_zehni2020" / "emd_3400_86.mrc", BOX, APIX)
    table = load_particles(SHARED / "ctf_metadata_real" / "cryosparc_P12_J24_001_particles.cs",
                           require_images=False).ctf
    ctf = draw_ctfs(args.n, np.random.default_rng(1), table=table)
    paths = relion_simulate(volume, APIX, out / "data", n=args.n, snr=args.snr, ctf=ctf, seed=1)
    truth, _ = read_map(paths.volume)
    particles = load_particles(paths.particles)

    t = time.perf_counter()
    rec = reconstruct(particles, Settings(epochs=args.epochs, resolution=args.resolution, seed=0))
    ours_s = time.perf_counter() - t
    ours = compare_maps(rec.volume, truth, pixel_size=APIX, align=True)

    iters = tuple(int(x) for x in args.relion_iters.split(","))
    t = time.perf_counter()
    relion_map = run_relion_sgd(paths.particles, out / "relion", iters, diameter=0.9 * BOX * APIX)
    relion_s = time.perf_counter() - t
    rmap, _ = read_map(relion_map)
    theirs = compare_maps(rmap, truth, pixel_size=APIX, align=True)

    row = {"particles": args.n, "box": BOX, "pixel_size": APIX, "snr": args.snr, "threads": 2, "cpu": cpu_model(),
           "cryosgd_s": round(ours_s, 1), "cryosgd_fsc05_A": round(ours.resolution_05, 1),
           "cryosgd_fsc0143_A": round(ours.resolution_0143, 1), "cryosgd_epochs": args.epochs,
           "relion_s": round(relion_s, 1), "relion_fsc05_A": round(theirs.resolution_05, 1),
           "relion_fsc0143_A": round(theirs.resolution_0143, 1), "relion_iters": args.relion_iters,
           "speedup": round(relion_s / ours_s, 1)}
    print(json.dumps(row))
    md = (f"| program | wall time (s) | FSC 0.5 (Å) | FSC 0.143 (Å) |\n|---|---|---|---|\n"
          f"| cryosgd SGD, {args.epochs:g} epoch, band limit {args.resolution:g} Å | {ours_s:.0f} | "
          f"{ours.resolution_05:.1f} | {ours.resolution_0143:.1f} |\n"
          f"| RELION 3.1 `--sgd --denovo_3dref` ({args.relion_iters} iterations) | {relion_s:.0f} | "
          f"{theirs.resolution_05:.1f} | {theirs.resolution_0143:.1f} |\n\n"
          f"Speed-up: {relion_s / ours_s:.1f}x. {args.n} particles, {BOX} px, {APIX} Å/px, SNR {args.snr}; "
          f"{cpu_model()}, 2 threads each.\n")
    (out / "race.md").write_text(md)


if __name__ == "__main__":
    main()
