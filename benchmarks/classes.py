"""Two molecules in one particle set: cryosgd ``--classes 2`` against RELION 3.1's ab initio with K = 2.

    python benchmarks/classes.py -o /tmp/classes --only data
    python benchmarks/classes.py -o /tmp/classes --only cryosgd
    python benchmarks/classes.py -o /tmp/classes --only relion [--relion-minutes 25]
    python benchmarks/classes.py -o /tmp/classes --only cost     # CPU time of a 2-class step against 1
    python benchmarks/classes.py -o /tmp/classes --only report

The particles: ``--n`` of each of 5FUU (HIV-1 Env trimer, tests/data/5fuu.pdb.gz) and 8ZPM
(tests/data/8zpm.cif.gz), simulated by cryosgd's forward model at 32 px and 6 Å/px, each at SNR 0.05
(whole box, its own signal), CTFs drawn from the EMPIAR-10026 table, off-centre by a normal shift
of 1 px per axis (truncated at 3 px), shuffled into one set.

cryosgd: ``Settings(classes=2, epochs, resolution=24 Å, max_shift=2)`` from random densities, the
learning rate tuned.  RELION: ``relion_refine --denovo_3dref --sgd --K 2`` (its ab initio with
classes: the same task, from its own random start, no reference), 1 thread, niced, translations
within 2 px (the particles are within 3 px, mostly within 2), a schedule of 10 + 30 + 10 iterations
(RELION's default 50 + 200 + 50 does not fit the time limit), stopped after ``--relion-minutes``;
scored on the last iteration it wrote (every 5).

Scores: the fraction of particles in the right class (up to label permutation; RELION's
``rlnClassNumber``, cryosgd's most probable class) and, for each true map, the FSC-0.5
resolution of the better-matching class map after alignment over rotation, shift and hand.
Each program's stage writes ``classes_<program>.json``; ``report`` joins them into ``classes.json`` and
``classes.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import starfile

from cryosgd.evaluate import compare_maps
from cryosgd.io import load_particles, read_map
from cryosgd.simulation import simulate_mixture
from machine import cpu_model, run_for

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
BOX, APIX = 32, 6.0
DIAMETER = 180  # Å, RELION's --particle_diameter (the box is 192 Å)


def make_data(out: Path, n: int, snr: float) -> Path:
    star = out / "data" / "particles.star"
    if not star.exists():
        simulate_mixture([DATA / "5fuu.pdb.gz", DATA / "8zpm.cif.gz"], out / "data", n_each=n, box=BOX,
                         pixel_size=APIX, snr=snr, ctf_from=DATA / "empiar10026_ctf.star", shift_sigma=1.0, seed=1)
    return star


def truths(out: Path):
    labels = starfile.read(out / "data" / "truth.star")["particles"]["rlnClassNumber"].to_numpy()
    return labels, [read_map(out / "data" / f"truth_class{j:02d}.mrc")[0] for j in (1, 2)]


def score(maps, classes, out: Path) -> dict:
    """Fraction of particles in the right class (best label permutation; class 0, RELION's mark of a
    particle not yet visited, counts as wrong) and each true map's best-matching class."""
    labels, refs = truths(out)
    right = max(float(np.mean(classes == labels)), float(np.mean(classes == 3 - labels)))
    seen = classes > 0
    right_seen = max(float(np.mean(classes[seen] == labels[seen])), float(np.mean(classes[seen] == 3 - labels[seen])))
    per_truth = []
    for j, ref in enumerate(refs):
        fscs = [compare_maps(m, ref, pixel_size=APIX, align=True) for m in maps]
        best = int(np.argmin([c.resolution_05 for c in fscs]))
        per_truth.append({"truth": ["5FUU", "8ZPM"][j], "class": best + 1,
                          "fsc05_A": round(fscs[best].resolution_05, 1),
                          "fsc05_other_class_A": round(fscs[1 - best].resolution_05, 1)})
    sizes = [int(np.sum(classes == k)) for k in (1, 2)]
    return {"fraction_correct": round(right, 4), "fraction_correct_of_assigned": round(right_seen, 4),
            "class_sizes": sizes, "unassigned": int(np.sum(~seen)), "maps": per_truth}


def run_cryosgd(out: Path, epochs: float, seed: int) -> dict:
    from cryosgd.reconstruct import Settings, reconstruct
    from cryosgd.reconstruct.classes import assign_class_poses

    particles = load_particles(out / "data" / "particles.star")
    settings = Settings(classes=2, epochs=epochs, resolution=24.0, max_shift=2.0, seed=seed)
    t, cpu = time.perf_counter(), time.process_time()
    rec = reconstruct(particles, settings)
    _, _, _, classes, _ = assign_class_poses(particles, rec)
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "settings": repr(settings),
            "learning_rate": rec.learning_rate, "proportions": rec.proportions, "reseeds": rec.reseeds,
            "steps": rec.log[-1]["step"], "final_test_nll": rec.log[-1].get("test_nll"),
            **score(list(rec.volume), classes, out)}


def run_relion(out: Path, minutes: float, iters=(10, 30, 10), write: int = 5) -> dict:
    star = out / "data" / "particles.star"
    rdir = out / "relion"
    rdir.mkdir(parents=True, exist_ok=True)
    for old in rdir.glob("run_*"):
        old.unlink()
    ini, between, fin = iters
    cmd = ["nice", "-n", "10", "relion_refine", "--sgd", "--denovo_3dref", "--i", star.name,
           "--o", str(rdir.resolve() / "run"), "--ctf", "--K", "2", "--sym", "C1", "--zero_mask",
           "--flatten_solvent", "--particle_diameter", str(DIAMETER), "--healpix_order", "1",
           "--offset_range", "2", "--offset_step", "1", "--j", "1", "--sgd_ini_iter", str(ini),
           "--sgd_inbetween_iter", str(between), "--sgd_fin_iter", str(fin), "--sgd_write_iter", str(write),
           "--pool", "30", "--pad", "1", "--skip_gridding", "--dont_combine_weights_via_disc",
           "--random_seed", "1"]
    t0 = time.time()
    finished, _ = run_for(cmd, cwd=star.parent, log_path=rdir / "stdout.txt", minutes=minutes,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.time() - t0
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu.ru_utime + cpu.ru_stime, 1), "finished": finished,
            "of_iterations": ini + between + fin, "command": " ".join(cmd), **score_relion(out, t0)}


def score_relion(out: Path, t0: float) -> dict:
    """The last iteration RELION wrote in ``out/relion``, scored (``t0``: the run's start, epoch seconds)."""
    rdir = out / "relion"
    last = sorted(rdir.glob("run_it*_data.star"))
    if not last:
        return {"iteration": 0}
    data = last[-1]
    it = int(data.name[6:9])
    table = starfile.read(data)["particles"]
    classes = np.empty(len(table), dtype=np.int64)
    classes[_relion_order(table["rlnImageName"])] = table["rlnClassNumber"].to_numpy()
    maps = [read_map(rdir / f"run_it{it:03d}_class{k:03d}.mrc")[0] for k in (1, 2)]
    return {"iteration": it, "written_at_s": round(data.stat().st_mtime - t0, 1), **score(maps, classes, out)}


def _relion_order(names) -> np.ndarray:
    """0-based image index of each row of a RELION data.star (RELION may reorder the rows)."""
    return np.array([int(str(n).split("@")[0]) - 1 for n in names])


def step_cost(out: Path, repeats: int = 5) -> dict:
    """CPU seconds of one minibatch (100 images) of the plain objective (K = 1) and the mixture's
    (K = 2, two passes per class), at the run's final band limit with its shift search."""
    import torch

    from cryosgd.inference.mixture import MixtureObjective
    from cryosgd.inference.objective import Objective
    from cryosgd.inference.prior import DensityPrior
    from cryosgd.reconstruct import Settings, build_kernel

    particles = load_particles(out / "data" / "particles.star")
    settings = Settings(max_shift=2.0)
    kern = build_kernel(BOX * APIX / 24.0, BOX, APIX, settings)
    idx = np.arange(100)
    batch = kern.prepare(particles.read_images(idx), particles.ctf[idx])
    labels, refs = truths(out)
    vols = torch.as_tensor(np.stack(refs), dtype=torch.float32)
    prior = DensityPrior()
    plain = Objective(kern, prior, len(particles))
    mix = MixtureObjective(kern, prior, len(particles), torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)))
    forward = [lambda: kern(vols[0], batch, gradient=False, poses=False), lambda: plain(vols[0], batch),
               lambda: mix(vols, batch)]
    times = []
    for fn in forward:
        fn()
        t = time.process_time()
        for _ in range(repeats):
            fn()
        times.append((time.process_time() - t) / repeats)
    return {"band_limit_px": kern.band_limit, "shifts": len(kern.shifts), "images": 100,
            "forward_cpu_s": round(times[0], 3), "plain_step_cpu_s": round(times[1], 3),
            "mixture_k2_step_cpu_s": round(times[2], 3), "ratio_k2_to_plain": round(times[2] / times[1], 2)}


def report(out: Path) -> str:
    res = {name: json.loads((out / f"classes_{name}.json").read_text()) for name in ("cryosgd", "relion", "cost")
           if (out / f"classes_{name}.json").exists()}
    res["machine"] = cpu_model()
    (out / "classes.json").write_text(json.dumps(res, indent=2))
    lines = [f"Machine: {res.get('machine', '')}", "",
             "| program | wall s | CPU s | fraction correct (of assigned) | class sizes | 5FUU: FSC 0.5 (Å) "
             "| 8ZPM: FSC 0.5 (Å) |",
             "|---|---|---|---|---|---|---|"]
    for name in ("cryosgd", "relion"):
        r = res.get(name)
        if not r or "maps" not in r:
            continue
        m = {x["truth"]: f"{x['fsc05_A']} (class {x['class']})" for x in r["maps"]}
        of_assigned = r.get("fraction_correct_of_assigned", r["fraction_correct"])
        lines.append(f"| {name} | {r['wall_s']} | {r.get('cpu_s', '')} | {r['fraction_correct']:.3f} "
                     f"({of_assigned:.3f} of {sum(r['class_sizes'])} assigned) | "
                     f"{r['class_sizes']} | {m['5FUU']} | {m['8ZPM']} |")
    if "cost" in res:
        c = res["cost"]
        lines += ["", f"One minibatch of {c['images']} images at band limit {c['band_limit_px']:.1f} px, {c['shifts']} "
                  f"shifts, CPU s: forward {c['forward_cpu_s']}, plain step {c['plain_step_cpu_s']}, two-class step "
                  f"{c['mixture_k2_step_cpu_s']} ({c['ratio_k2_to_plain']}x)"]
    text = "\n".join(lines) + "\n"
    (out / "classes.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--n", type=int, default=2500, help="particles of each molecule (default 2500)")
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relion-minutes", type=float, default=25.0)
    ap.add_argument("--only", choices=("data", "cryosgd", "relion", "relion-rescore", "cost", "report"), required=True)
    args = ap.parse_args()
    out = Path(args.output)
    make_data(out, args.n, args.snr)
    if args.only == "data":
        return
    if args.only == "report":
        print(report(out))
        return
    if args.only == "relion-rescore":  # score the files of an earlier run again
        result = json.loads((out / "classes_relion.json").read_text())
        t0 = (out / "relion" / "run_it000_data.star").stat().st_mtime
        result.update(score_relion(out, t0))
        args.only = "relion"
    elif args.only == "cost":
        result = step_cost(out)
    elif args.only == "cryosgd":
        result = run_cryosgd(out, args.epochs, args.seed)
    else:
        result = run_relion(out, args.relion_minutes)
    (out / f"classes_{args.only}.json").write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
