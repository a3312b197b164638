"""A D7 assembly reconstructed with ``--symmetry D7`` and without (C1): FSC against the truth and time.

    python benchmarks/symmetry.py -o OUT [--n 3000] [--box 48] [--apix 3.5] [--resolution 15]
                                  [--shift-sigma 0] [--max-shift 0] [--search exhaustive] [--epochs 1]
                                  [--groups C1,D7] [--json]

The model: chain N of 8ZPM (``tests/data/8zpm.cif.gz``, 116 residues) moved off the axes (its centre
25 Å from z and 12 Å above the xy plane) and copied by the 14 operators of D7 in RELION's orientation
(:func:`cryosgd.symmetry.point_group`): a 14-chain assembly, 100 Å across.  ``cryosgd simulate`` makes
the images (SNR 0.05, CTFs from ``tests/data/empiar10026_ctf.star``); each group runs
``cryosgd reconstruct ... --symmetry G`` from the same random start seed.  Per group one JSON line
(or a table row): the command, the base rotations of the final quadrature, the median seconds per
step at the final band limit, the reconstruction's wall time (pose assignment excluded), and FSC 0.5
/ 0.143 against the truth after alignment (:func:`cryosgd.evaluate.compare_maps`, ``align=True``),
and the assigned poses' error modulo G against the true ones (median, fraction within 10 degrees).
A run whose ``summary.json`` exists is analysed again, not rerun.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from cryosgd.evaluate import compare_maps
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import Settings, build_kernel
from cryosgd.simulation import symmetric_assembly
from cryosgd.symmetry import point_group

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"


def cryosgd(*args, run: bool = True) -> str:
    cmd = [sys.executable, "-m", "cryosgd", *map(str, args)]
    if run:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return "cryosgd " + " ".join(shlex.quote(str(a)) for a in args)


def pose_errors(run: Path, sim: Path, alignment, truth_group: str = "D7") -> np.ndarray | None:
    """Per particle, degrees between the assigned rotation and the nearest ``Q g R_true`` (g in the
    truth's group: a pose is defined up to it, in a C1 run too; Q the map's alignment rotation onto
    the truth, or its transpose, whichever fits better); ``None`` when the map aligns only mirrored
    (no rotation relates the poses)."""
    if alignment is None or alignment.mirror:
        return None
    est = load_particles(run / "particles.star", require_images=False).rotations
    true = load_particles(sim / "truth.star", require_images=False).rotations
    ops = point_group(truth_group)
    best = None
    for q in (alignment.rotation, alignment.rotation.T):
        cand = np.einsum("ij,gjk,nkl->ngil", q, ops, true)
        cos = (np.einsum("nij,ngij->ng", est, cand) - 1) / 2
        err = np.degrees(np.arccos(np.clip(cos, -1, 1))).min(1)
        best = err if best is None or np.median(err) < np.median(best) else best
    return best


def seconds_per_step(log_csv: Path) -> float:
    """Median seconds between steps at the final band limit (held-out evaluations included)."""
    rows = list(csv.DictReader(log_csv.open()))
    final = float(rows[-1]["band_limit"])
    t = [float(r["seconds"]) for r in rows if float(r["band_limit"]) == final]
    return float(np.median(np.diff(t))) if len(t) > 1 else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--box", type=int, default=48)
    p.add_argument("--apix", type=float, default=3.5)
    p.add_argument("--resolution", type=float, default=15.0)
    p.add_argument("--shift-sigma", type=float, default=0.0)
    p.add_argument("--max-shift", type=float, default=0.0)
    p.add_argument("--search", default="exhaustive")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", default="C1,D7")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    sim = out / "sim"
    if not (sim / "particles.star").is_file():
        model = symmetric_assembly(DATA / "8zpm.cif.gz", out / "d7_assembly.pdb", chain="N", group="D7")
        print(cryosgd("simulate", model, "-o", sim, "-n", args.n, "--box", args.box, "--apix", args.apix,
                      "--snr", 0.05, "--shift-sigma", args.shift_sigma, "--seed", 1,
                      "--ctf-from", DATA / "empiar10026_ctf.star"), file=sys.stderr)
    truth, _ = read_map(sim / "truth.mrc")
    rows = []
    for group in args.groups.split(","):
        run = out / f"run_{group}"
        done = (run / "summary.json").is_file()  # a finished run is analysed again, not rerun
        command = cryosgd("reconstruct", sim / "particles.star", "-o", run, "--symmetry", group, "--resolution",
                          args.resolution, "--max-shift", args.max_shift, "--search", args.search, "--epochs",
                          args.epochs, "--seed", args.seed, "--device", "cpu", run=not done)
        summary = json.loads((run / "summary.json").read_text())
        volume, _ = read_map(run / "map.mrc")
        cmp = compare_maps(volume, truth, pixel_size=args.apix, align=True)
        settings = Settings(symmetry=group, max_shift=args.max_shift, search=args.search)
        kern = build_kernel(summary["band_limit_px"], args.box, args.apix, settings)
        row = {"group": group, "command": command, "base_rotations": len(kern.rotations.base),
               "band_limit_px": summary["band_limit_px"], "steps": summary["steps"],
               "seconds_per_step": seconds_per_step(run / "log.csv"), "wall_seconds": summary["wall_seconds"],
               "fsc_0.5_A": cmp.resolution_05, "fsc_0.143_A": cmp.resolution_0143,
               "fsc_at_0.8_band": cmp.fsc_at_fraction(0.8, summary["band_limit_px"]),
               "final_test_nll": summary["final_test_nll"]}
        errors = pose_errors(run, sim, cmp.alignment)
        if errors is not None:
            row.update({"pose_error_median_deg": float(np.median(errors)),
                        "poses_within_10_deg": float((errors < 10).mean())})
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        print("| group | base rotations | s/step | wall s | FSC 0.5 Å | FSC 0.143 Å | FSC at 0.8 band |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['group']} | {r['base_rotations']:,} | {r['seconds_per_step']:.2f} | {r['wall_seconds']:.0f} | "
                  f"{r['fsc_0.5_A']:.1f} | {r['fsc_0.143_A']:.1f} | {r['fsc_at_0.8_band']:.3f} |")


if __name__ == "__main__":
    main()
