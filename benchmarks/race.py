"""Race: cryosgd's SGD against RELION 3.1's SGD initial model on the same particles.

    python benchmarks/race.py -o /tmp/race [--n 5000] [--snr 0.05] [--relion-minutes 60]
    python benchmarks/race.py -o /tmp/race --only relion     # one program; the other's curve is reused
    python benchmarks/race.py -o /tmp/race-shifted --shift-sigma 3 --apix 3.5 --resolution 15   # off-centre

Particles are projected by ``relion_project --ctf`` (so neither program sees its own simulator)
from the EMD-3400 map in ../shared/data (64 px at ``--apix``, 4.5 Å/px by default), centred or, with
``--shift-sigma``, off-centre by a normal of that many pixels (as picked particles are), CTFs drawn
from the real cryoSPARC table, white noise at SNR 0.05.  Both programs start from their own random
density (RELION's ``--denovo_3dref`` makes its own) and run on ``--threads`` threads each.  On
off-centre particles cryosgd runs its defaults (a shift search within 10% of the box) and RELION
searches shifts at its own defaults (``--offset_range 6 --offset_step 2``, pixels); on centred ones
neither searches.  ``--only`` runs one program and keeps the other's results (each in its own
``race_<program>.json``), so the two can run at the same time on one machine.

Each program leaves a curve of (wall time, map): cryosgd a snapshot every ``--every`` gradient
evaluations (times from its log), RELION a map every ``--relion-write`` iterations (times from the
files' modification times).  Every map is scored against the truth by FSC after alignment over
rotation, shift and hand (what ``cryosgd fsc --align`` does).  The race's figure is the wall time
each program needs, from its start, to first reach the FSC-0.5 resolution of cryosgd's final map
(cryosgd's learning-rate search included); RELION's best map and its time are reported too.
Writes ``race.json``, ``race.md`` and ``race.png`` (resolution against wall time).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cryosgd.evaluate import compare_maps
from cryosgd.forward.simulate import draw_ctfs
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import Settings, reconstruct
from cryosgd.simulation import load_source_volume, relion_simulate, require_relion
from machine import cpu_model, run_for

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BOX = 64
APIX = 4.5      # Å/pixel (--apix)
DIAMETER = 0.9 * BOX * APIX  # Å, RELION's --particle_diameter


def make_data(out: Path, n: int, snr: float, shift_sigma: float = 0.0) -> Path:
    star = out / "data" / "particles.star"
    if star.exists():
        return star
    volume = load_source_volume(SHARED / "map_emd3400_zehni2020" / "emd_3400_86.mrc", BOX, APIX)
    table = load_particles(SHARED / "ctf_metadata_real" / "cryosparc_P12_J24_001_particles.cs",
                           require_images=False).ctf
    ctf = draw_ctfs(n, np.random.default_rng(1), table=table)
    return relion_simulate(volume, APIX, out / "data", n=n, snr=snr, ctf=ctf, seed=1,
                           shift_sigma=shift_sigma).particles


def score(volume, truth) -> dict:
    c = compare_maps(volume, truth, pixel_size=APIX, align=True)
    return {"fsc05_A": round(c.resolution_05, 2), "fsc0143_A": round(c.resolution_0143, 2)}


def run_cryosgd(star: Path, truth, resolution: float, epochs: float, every: int, seed: int, centred: bool) -> dict:
    """cryosgd's defaults (as ``cryosgd reconstruct --resolution R``), with snapshots to score; on centred
    particles with ``--max-shift 0``, as RELION is told ``--offset_range 0``."""
    particles = load_particles(star)
    marks = tuple(range(every, int(epochs * len(particles)) + 1, every))
    t = time.perf_counter()
    shifts = {"max_shift": 0.0} if centred else {}
    rec = reconstruct(particles, Settings(epochs=epochs, resolution=resolution, seed=seed, snapshots=marks, **shifts))
    wall = time.perf_counter() - t
    curve = []
    for grads, vol in sorted((k, v) for k, v in rec.snapshots.items() if k != "final"):
        row = next(r for r in rec.log if r["gradients"] >= grads)
        curve.append({"seconds": round(row["seconds"], 1), "gradients": row["gradients"], **score(vol, truth)})
    curve.append({"seconds": round(wall, 1), "gradients": rec.log[-1]["gradients"], **score(rec.volume, truth)})
    return {"wall_s": round(wall, 1), "learning_rate": rec.learning_rate, "settings":
            f"Settings(epochs={epochs}, resolution={resolution}, seed={seed}"
            f"{', max_shift=0.0' if centred else ''})", "curve": curve}


def relion_command(star: Path, out: Path, iters, write: int, diameter: float, threads: int,
                   offsets: tuple = (0, 1)) -> list[str]:
    """``offsets``: RELION's ``--offset_range`` and ``--offset_step`` (pixels); ``(0, 1)``: no search."""
    ini, between, fin = iters
    return ["relion_refine", "--sgd", "--denovo_3dref", "--i", star.name, "--o", str(out.resolve() / "run"),
            "--ctf", "--K", "1", "--sym", "C1", "--zero_mask", "--flatten_solvent",
            "--particle_diameter", f"{diameter:.0f}", "--healpix_order", "1", "--offset_range", str(offsets[0]),
            "--offset_step", str(offsets[1]), "--j", str(threads), "--sgd_ini_iter", str(ini), "--sgd_inbetween_iter",
            str(between), "--sgd_fin_iter", str(fin), "--sgd_write_iter", str(write), "--pool", "30",
            "--pad", "1", "--skip_gridding", "--dont_combine_weights_via_disc", "--random_seed", "1"]


def run_relion(star: Path, out: Path, truth, iters, write: int, minutes: float, threads: int = 2,
               offsets: tuple = (0, 1)) -> dict:
    """RELION's SGD with its maps written every ``write`` iterations; stopped after ``minutes``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("run_*"):
        old.unlink()
    cmd = relion_command(star, out, iters, write, DIAMETER, threads, offsets)
    t0 = time.time()
    (out / "started.txt").write_text(f"{t0}\n")
    finished, code = run_for(cmd, cwd=star.parent, log_path=out / "stdout.txt", minutes=minutes)
    wall = time.time() - t0
    if finished and code != 0:
        raise RuntimeError(f"relion_refine failed; see {out / 'stdout.txt'}")
    return {"wall_s": round(wall, 1), "finished": finished, "command": " ".join(cmd),
            "curve": relion_curve(out, truth, t0)}


def relion_curve(out: Path, truth, t0: float) -> list[dict]:
    """Every map RELION wrote in ``out``, timed from the run's start ``t0`` (epoch seconds) and scored."""
    curve = []
    for path in sorted(out.glob("run_it*_class001.mrc")):
        it = int(path.name[6:9])
        if it == 0:
            continue
        vol, _ = read_map(path)
        curve.append({"seconds": round(path.stat().st_mtime - t0, 1), "iteration": it, **score(vol, truth)})
    return curve


def first_reaching(curve, target):
    return next((p["seconds"] for p in curve if p["fsc05_A"] <= target + 1e-6), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--resolution", type=float, default=30.0, help="cryosgd's band limit (Å)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--every", type=int, default=500, help="cryosgd snapshot every this many gradients")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relion-iters", default="50,200,50", help="RELION's --sgd_ini/inbetween/fin_iter "
                                                                 "(its defaults)")
    ap.add_argument("--relion-write", type=int, default=5, help="RELION writes its map every this many iterations")
    ap.add_argument("--relion-minutes", type=float, default=60.0, help="stop RELION after this long")
    ap.add_argument("--only", choices=["cryosgd", "relion", "report"],
                    help="run one program and reuse the other's results, or neither (report: the table and figure "
                         "from both programs' saved results)")
    ap.add_argument("--shift-sigma", type=float, default=0.0, help="particles off-centre by a normal of this "
                                                                    "many pixels (default 0: centred)")
    ap.add_argument("--apix", type=float, default=4.5, help="Å/pixel of the 64 px particles (default 4.5)")
    ap.add_argument("--threads", type=int, default=2, help="threads of each program (default 2)")
    ap.add_argument("--relion-existing", metavar="DIR", help="score a RELION run already made in DIR (timed from "
                                                             "DIR/started.txt, epoch seconds) instead of running it")
    args = ap.parse_args()
    global APIX, DIAMETER
    APIX, DIAMETER = args.apix, 0.9 * BOX * args.apix
    require_relion()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    star = make_data(out, args.n, args.snr, args.shift_sigma)
    truth, _ = read_map(star.parent / "truth.mrc")
    offsets = (6, 2) if args.shift_sigma > 0 else (0, 1)   # RELION's defaults when particles are off-centre
    results = {"particles": args.n, "box": BOX, "pixel_size": APIX, "snr": args.snr, "threads": args.threads,
               "shift_sigma": args.shift_sigma, "cpu": cpu_model()}
    for name in ("cryosgd", "relion"):
        part = out / f"race_{name}.json"
        if part.exists():
            results[name] = json.loads(part.read_text())
    if args.only in (None, "cryosgd"):
        import torch

        torch.set_num_threads(args.threads)
        results["cryosgd"] = run_cryosgd(star, truth, args.resolution, args.epochs, args.every, args.seed,
                                         centred=args.shift_sigma == 0)
        (out / "race_cryosgd.json").write_text(json.dumps(results["cryosgd"], indent=1))
    if args.only in (None, "relion"):
        iters = tuple(int(x) for x in args.relion_iters.split(","))
        if args.relion_existing:
            folder = Path(args.relion_existing)
            t0 = float((folder / "started.txt").read_text())
            curve = relion_curve(folder, truth, t0)
            results["relion"] = {"wall_s": curve[-1]["seconds"], "finished": curve[-1]["iteration"] == sum(iters),
                                 "curve": curve,
                                 "command": " ".join(relion_command(star, folder, iters, args.relion_write,
                                                                    DIAMETER, args.threads, offsets))}
        else:
            results["relion"] = run_relion(star, out / "relion", truth, iters, args.relion_write,
                                           args.relion_minutes, args.threads, offsets)
        (out / "race_relion.json").write_text(json.dumps(results["relion"], indent=1))
    results_path = out / "race.json"
    results_path.write_text(json.dumps(results, indent=1))
    if "cryosgd" not in results or "relion" not in results:
        return
    ours, theirs = results["cryosgd"], results["relion"]
    target = ours["curve"][-1]["fsc05_A"]  # what cryosgd's ab initio run ends with
    t_ours, t_theirs = first_reaching(ours["curve"], target), first_reaching(theirs["curve"], target)
    best = min(theirs["curve"], key=lambda p: p["fsc05_A"])
    summary = {"target_fsc05_A": target, "cryosgd_s_to_target": t_ours, "relion_s_to_target": t_theirs,
               "speedup": round(t_theirs / t_ours, 1) if t_theirs else None,
               "relion_best_fsc05_A": best["fsc05_A"], "relion_s_to_best": best["seconds"],
               "relion_wall_s": theirs["wall_s"], "relion_finished": theirs["finished"]}
    results["summary"] = summary
    results_path.write_text(json.dumps(results, indent=1))
    print(json.dumps(summary))
    lines = ["| program | seconds | FSC 0.5 (Å) | FSC 0.143 (Å) |", "|---|---|---|---|"]
    for name, res in (("cryosgd", ours), ("RELION", theirs)):
        lines += [f"| {name} | {p['seconds']:.0f} | {p['fsc05_A']:.1f} | {p['fsc0143_A']:.1f} |" for p in res["curve"]]
    lines.append(f"\nTime to FSC 0.5 at {target:.1f} Å (cryosgd's final map): cryosgd {t_ours:.0f} s, RELION "
                 f"{'not reached' if t_theirs is None else f'{t_theirs:.0f} s'}.  RELION's best: "
                 f"{best['fsc05_A']:.1f} Å after {best['seconds']:.0f} s.")
    (out / "race.md").write_text("\n".join(lines) + "\n")
    plot(results, target, out / "race.png")


def plot(results: dict, target: float, path: Path) -> None:
    """FSC-0.5 resolution against wall time for both programs (log time axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for key, label, style in (("cryosgd", "cryosgd SGD (1 epoch)", "o-"),
                              ("relion", "RELION 3.1 --sgd --denovo_3dref", "s-")):
        curve = results[key]["curve"]
        ax.plot([p["seconds"] for p in curve], [p["fsc05_A"] for p in curve], style, ms=3, label=label)
    ax.axhline(target, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel(f"wall time from start (s), {results['threads']} threads each")
    ax.set_ylabel("FSC 0.5 resolution against the truth (Å)")
    where = f", off-centre (σ {results['shift_sigma']:g} px)" if results.get("shift_sigma") else ""
    ax.set_title(f"{results['particles']} particles of EMD-3400, {BOX} px at {results['pixel_size']:g} Å, "
                 f"SNR {results['snr']}{where}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
