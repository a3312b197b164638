"""Baselines of the paper's Figure 6: SGD against projection matching and RELION on the same particles.

One command runs, on one particle set and (where the method allows it) from one random density:

* ``sgd``        this package's SGD (:func:`cryosgd.reconstruct.reconstruct`, its default settings),
                 1 epoch by default;
* ``projmatch``  iterative projection matching (:func:`cryosgd.baselines.projmatch.projection_matching`), 5 iterations;
* ``relion-em``  RELION 3.1's batch EM: 3D classification with K = 1 and a fixed number of
                 iterations from ``--ref init.mrc``, the same random density;
* ``relion-sgd`` RELION 3.1's SGD initial model (``--sgd --denovo_3dref``), which starts from its
                 own random model (it takes no reference).

Each map is scored against the truth by FSC after alignment (rotation, shift, hand:
``compare_maps(..., align=True)``, what ``cryosgd fsc --align`` does).  Outputs in OUTDIR:
``table.md``, ``results.json``, ``figure6.png`` (projections of each aligned map, and of the truth and
the start), ``init.mrc`` and one folder per method.

    python benchmarks/baselines.py PARTICLES.star --truth TRUTH.mrc -o OUTDIR
    python benchmarks/baselines.py --simulate-with-relion MAP -o OUTDIR     # particles made first

``--simulate-with-relion MAP`` resamples MAP to the box, projects it with ``relion_project --ctf`` at
uniformly random poses (centred) with CTFs drawn from a real table, adds white noise at the given SNR
(whole box) and writes OUTDIR/data/{particles.star, particles.mrcs, truth.star, truth.mrc}
(:func:`cryosgd.simulation.relion_simulate`): the images are divided by the noise std (noise std 1, as
RELION expects), and so is the truth.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cryosgd.align import apply_alignment
from cryosgd.baselines.projmatch import projection_matching
from cryosgd.evaluate import compare_maps
from cryosgd.forward.density import resample_map
from cryosgd.forward.simulate import draw_ctfs
from cryosgd.fourier import band_limit_px
from cryosgd.io import InputError, load_particles, read_map, write_map
from cryosgd.reconstruct import (
    Settings,
    initial_density,
    load_dataset,
    particle_diameter_px,
    reconstruct,
    target_resolution,
)
from cryosgd.simulation import relion_simulate

METHODS = ("sgd", "projmatch", "relion-em", "relion-sgd")
LABELS = {"sgd": "SGD (this package)", "projmatch": "Projection matching", "relion-em": "RELION 3.1 EM",
          "relion-sgd": "RELION 3.1 SGD initial model"}
DEFAULT_CTF_TABLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ctf_metadata_real" / \
    "empiar10026_apoferritin_particle_data.star"
RELION_INSTALL = "RELION 3.1 is needed (relion_refine, relion_project): install it with `apt-get install -y relion`"


# ------------------------------------------------------------------------------------------ data


def simulate_with_relion(source: Path, outdir: Path, *, n: int, box: int, pixel_size: float,
                         source_pixel_size: float | None, snr: float, ctf_from: Path, seed: int) -> tuple[Path, Path]:
    """Particles of ``source`` projected by ``relion_project --ctf`` (centred, uniform random poses, CTFs
    drawn from a real table), white noise at ``snr``; returns the particle STAR and the truth map."""
    volume, voxel = read_map(source)
    volume = resample_map(volume, source_pixel_size or voxel, box, pixel_size)
    ctf = draw_ctfs(n, np.random.default_rng([seed, 1]), table=load_particles(ctf_from, require_images=False).ctf)
    paths = relion_simulate(volume, pixel_size, outdir, n=n, snr=snr, ctf=ctf, seed=seed)
    return paths.particles, paths.volume


# ------------------------------------------------------------------------------------------ runs


def _run(cmd: list[str], *, cwd: Path, log: Path) -> float:
    """Run a command (output to ``log``); returns its wall time in seconds."""
    t0 = time.time()
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); log {log}:\n" + "\n".join(tail))
    return time.time() - t0


def _iteration_times(folder: Path) -> list[float]:
    """Seconds per RELION iteration, from the times its run_itNNN_model.star files were written."""
    stamps = {}
    for f in folder.glob("run_it*_model.star"):
        m = re.match(r"run_it(\d+)_model\.star", f.name)
        if m:
            stamps[int(m.group(1))] = f.stat().st_mtime
    its = sorted(stamps)
    return [stamps[b] - stamps[a] for a, b in zip(its, its[1:])]


def _last_map(folder: Path) -> Path:
    maps = sorted(folder.glob("run_it*_class001.mrc"), key=lambda p: int(re.findall(r"it(\d+)", p.name)[0]))
    if not maps:
        raise RuntimeError(f"RELION wrote no map in {folder}")
    return maps[-1]


def relion_em_command(star: Path, init: Path, out: Path, *, iterations: int, diameter: float, threads: int,
                      healpix_order: int, offset_range: float, offset_step: float, highres: float,
                      seed: int) -> list[str]:
    """3D classification with one class and a fixed number of iterations, from ``init``.

    ``init`` is on the images' grey scale (noise std 1), so no ``--firstiter_cc``; ``--strict_highres_exp``
    keeps the E-step within ``highres`` Å, the band the other methods match in.
    """
    return ["relion_refine", "--i", str(star), "--o", str(out), "--ref", str(init),
            "--ini_high", "60", "--strict_highres_exp", f"{highres:g}",
            "--ctf", "--K", "1", "--sym", "C1", "--iter", str(iterations),
            "--tau2_fudge", "4", "--particle_diameter", f"{diameter:g}", "--flatten_solvent", "--zero_mask",
            "--healpix_order", str(healpix_order), "--oversampling", "1",
            "--offset_range", f"{offset_range:g}", "--offset_step", f"{offset_step:g}",
            "--norm", "--scale", "--pad", "2", "--dont_combine_weights_via_disc", "--pool", "3",
            "--random_seed", str(seed), "--j", str(threads)]


def relion_sgd_command(star: Path, out: Path, *, schedule: tuple[int, int, int], subsets: tuple[int, int],
                       diameter: float, threads: int, offset_range: float, offset_step: float,
                       resolutions: tuple[float, float], seed: int) -> list[str]:
    """RELION 3.1's SGD initial model (its own random start), with a given iteration schedule.

    ``resolutions``: initial and final resolution (Å) of RELION's resolution ramp (its own: 35, 15).
    ``seed`` must not be 0: RELION then keeps the particle order and every epoch sees the same subsets.
    """
    ini, mid, fin = schedule
    return ["relion_refine", "--sgd", "--denovo_3dref", "--i", str(star), "--o", str(out),
            "--sgd_ini_iter", str(ini), "--sgd_inbetween_iter", str(mid), "--sgd_fin_iter", str(fin),
            "--sgd_write_iter", str(ini + mid + fin),
            "--sgd_ini_resol", f"{resolutions[0]:g}", "--sgd_fin_resol", f"{resolutions[1]:g}",
            "--sgd_ini_subset", str(subsets[0]), "--sgd_fin_subset", str(subsets[1]),
            "--ctf", "--K", "1", "--sym", "C1", "--zero_mask", "--flatten_solvent",
            "--particle_diameter", f"{diameter:g}", "--healpix_order", "1", "--oversampling", "1",
            "--offset_range", f"{offset_range:g}", "--offset_step", f"{offset_step:g}",
            "--pad", "1", "--skip_gridding", "--dont_combine_weights_via_disc", "--pool", "3",
            "--random_seed", str(seed), "--j", str(threads)]


# ------------------------------------------------------------------------------------------ report


def _projections(volume: np.ndarray) -> list[np.ndarray]:
    return [volume.sum(axis=a) for a in (0, 1, 2)]


def write_figure(path: Path, maps: dict, titles: dict) -> None:
    """Rows: maps (name -> aligned (N, N, N)); columns: projections along z, y, x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(maps), 3, figsize=(7.5, 2.5 * len(maps)), squeeze=False)
    for row, (name, vol) in enumerate(maps.items()):
        for col, (img, axis) in enumerate(zip(_projections(vol), "zyx")):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(titles[name], fontsize=8)
            if row == 0:
                ax.set_title(f"projection along {axis}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def write_table(path: Path, results: list[dict], header: str) -> None:
    lines = [header, "",
             "| method | schedule | start | wall time | per epoch/iteration | FSC 0.5 | FSC 0.143 | mean FSC in band |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {LABELS[r['method']]} | {r['schedule']} | {r['start']} | {_fmt_time(r['wall_s'])} | "
                     f"{_fmt_time(r['per_unit_s'])} | {r['fsc_05']:.1f} Å | {r['fsc_0143']:.1f} Å | "
                     f"{r['fsc_band']:.2f} |")
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------ main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("particles", nargs="?", help="particle STAR file (RELION 3.1, with CTFs); "
                                                "omit with --simulate-with-relion")
    p.add_argument("--truth", help="true map (MRC) to score against")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--epochs", type=float, default=1.0, help="SGD epochs (default 1)")
    p.add_argument("--iterations", type=int, default=5, help="projection-matching iterations (default 5)")
    p.add_argument("--relion-iterations", type=int, default=5, help="RELION EM iterations (default 5)")
    p.add_argument("--relion-sgd-schedule", default="10,10,10",
                   help="RELION SGD initial,in-between,final iterations (default 10,10,10; RELION's own: 50,200,50)")
    p.add_argument("--relion-sgd-subsets", default="100,100",
                   help="RELION SGD initial,final mini-batch (default 100,100: with 10,10,10 that is 3000 images, "
                        "one epoch of 3000 particles; RELION's own: 100,500)")
    p.add_argument("--healpix-order", type=int, default=2,
                   help="RELION EM angular sampling (default 2: 15 degrees, 7.5 after oversampling)")
    p.add_argument("--marching-stages", type=int,
                   help="SGD frequency-marching stages (default: reconstruct's; 1: the paper's fixed band limit)")
    p.add_argument("--resolution", type=float, help="Å, band limit of SGD and projection matching "
                                                    "(default: 25%% of Nyquist)")
    p.add_argument("--particle-diameter", type=float, help="Å (default 0.8 of the box)")
    p.add_argument("--max-shift", type=float, default=0.0,
                   help="pixels, shift search of every method (default 0: centred particles; RELION "
                        "--offset_range, step 1 pixel)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    g = p.add_argument_group("simulation")
    g.add_argument("--simulate-with-relion", metavar="MAP", help="make the particles from MAP with relion_project")
    g.add_argument("--map-apix", type=float, default=None,
                   help="voxel size (Å) of MAP when its header has none (the 70S map: 5)")
    g.add_argument("-n", type=int, default=3000, help="particles (default 3000)")
    g.add_argument("--box", type=int, default=64)
    g.add_argument("--apix", type=float, default=5.0)
    g.add_argument("--snr", type=float, default=0.1)
    g.add_argument("--ctf-from", default=str(DEFAULT_CTF_TABLE), help="real CTF table (STAR or .cs)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        print(f"baselines: unknown methods {sorted(unknown)}; choose from {METHODS}", file=sys.stderr)
        return 2
    needs = ["relion_refine"] if any(m.startswith("relion") for m in methods) else []
    if args.simulate_with_relion:
        needs.append("relion_project")
    missing = [t for t in needs if shutil.which(t) is None]
    if missing:
        print(f"baselines: {', '.join(missing)} not found. {RELION_INSTALL}", file=sys.stderr)
        return 2
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_all = time.time()

    if args.simulate_with_relion:
        t0 = time.time()
        star, truth_path = simulate_with_relion(Path(args.simulate_with_relion), out / "data", n=args.n,
                                                box=args.box, pixel_size=args.apix,
                                                source_pixel_size=args.map_apix, snr=args.snr,
                                                ctf_from=Path(args.ctf_from), seed=args.seed)
        print(f"simulated {args.n} particles with relion_project in {time.time() - t0:.0f} s: {star}", flush=True)
    else:
        if not args.particles or not args.truth:
            print("baselines: give PARTICLES.star and --truth, or --simulate-with-relion MAP", file=sys.stderr)
            return 2
        star, truth_path = Path(args.particles).resolve(), Path(args.truth).resolve()

    particles = load_particles(star)
    box, apix, n = particles.box, particles.pixel_size, len(particles)
    truth, truth_voxel = read_map(truth_path)
    truth = resample_map(truth, truth_voxel or apix, box, apix)
    diameter = args.particle_diameter or particle_diameter_px(box, apix) * apix
    settings = Settings(epochs=args.epochs, seed=args.seed, resolution=args.resolution, particle_diameter=diameter,
                        max_shift=args.max_shift)
    if args.marching_stages:
        settings.marching_stages = args.marching_stages
    target = target_resolution(args.resolution, box, apix)  # Å: the band every method works in
    band = band_limit_px(target, box, apix)                   # Fourier pixels
    dataset = load_dataset(particles, test_size=settings.test_size, seed=settings.seed, diameter_A=diameter)
    init = initial_density(box, dataset, seed=settings.seed, diameter_A=diameter).numpy()
    init_path = out / "init.mrc"
    write_map(init_path, init, apix)
    offset_range, offset_step = args.max_shift, 1.0

    results, maps = [], {}
    for method in methods:
        folder = out / method
        folder.mkdir(exist_ok=True)
        print(f"running {method} ...", flush=True)
        t0 = time.time()
        if method == "sgd":
            rec = reconstruct(particles, settings)
            wall, volume = time.time() - t0, rec.volume
            stages = len({row["band_limit"] for row in rec.log})
            schedule = f"{args.epochs:g} epoch ({len(rec.log)} steps, band marched in {stages} stages)" \
                if stages > 1 else f"{args.epochs:g} epoch ({len(rec.log)} steps, fixed band)"
            start, units = "shared random spheres", args.epochs
            extra = {"learning_rate": rec.learning_rate, "band_limit_px": rec.band_limit}
        elif method == "projmatch":
            res = projection_matching(particles, iterations=args.iterations, init=init, resolution=args.resolution,
                                      max_shift=args.max_shift, seed=args.seed, particle_diameter=diameter)
            wall, volume = time.time() - t0, res.volume
            schedule, start, units = f"{args.iterations} iterations", "shared random spheres", args.iterations
            extra = {"log": res.log}
        elif method == "relion-em":
            cmd = relion_em_command(star, init_path, folder / "run", iterations=args.relion_iterations,
                                    diameter=diameter, threads=args.threads, healpix_order=args.healpix_order,
                                    offset_range=offset_range, offset_step=offset_step, highres=target,
                                    seed=args.seed + 1)
            wall = _run(cmd, cwd=star.parent, log=folder / "relion.log")
            volume, _ = read_map(_last_map(folder))
            schedule = f"{args.relion_iterations} iterations (healpix order {args.healpix_order})"
            start, units = "shared random spheres", args.relion_iterations
            extra = {"command": " ".join(cmd), "iteration_s": _iteration_times(folder)}
        else:
            sched = tuple(int(x) for x in args.relion_sgd_schedule.split(","))
            subsets = tuple(int(x) for x in args.relion_sgd_subsets.split(","))
            cmd = relion_sgd_command(star, folder / "run", schedule=sched, subsets=subsets, diameter=diameter,
                                     threads=args.threads, offset_range=offset_range, offset_step=offset_step,
                                     resolutions=(1.5 * target, target), seed=args.seed + 1)
            wall = _run(cmd, cwd=star.parent, log=folder / "relion.log")
            volume, voxel = read_map(_last_map(folder))
            volume = resample_map(volume, voxel or apix, box, apix)
            n_iter = sum(sched)
            images = _sgd_images(sched, subsets)
            units = images / n
            schedule = f"{n_iter} iterations ({images} images = {units:.1f} epochs)"
            start = "RELION's own random start"
            extra = {"command": " ".join(cmd)}
        volume = np.asarray(volume, dtype=np.float32)
        write_map(folder / "map.mrc", volume, apix)
        report = compare_maps(volume, truth, pixel_size=apix, align=True, map_name=f"{method}/map.mrc",
                              reference_name="truth")
        maps[method] = apply_alignment(volume, report.alignment)
        row = {"method": method, "schedule": schedule, "start": start, "wall_s": wall,
               "per_unit_s": wall / max(units, 1e-9), "fsc_05": report.resolution_05,
               "fsc_0143": report.resolution_0143, "fsc_band": _mean_fsc(report.curve, band),
               "fsc": report.curve.round(4).tolist(),
               "mirrored": bool(report.alignment.mirror), **extra}
        results.append(row)
        print(f"  {method}: {_fmt_time(wall)}, FSC 0.5 {report.resolution_05:.1f} Å, "
              f"0.143 {report.resolution_0143:.1f} Å", flush=True)

    maps_fig = {"truth": truth, "init": compare_aligned(init, truth, apix), **maps}
    titles = {"truth": "truth", "init": "start (random spheres)", **{m: LABELS[m] for m in maps}}
    write_figure(out / "figure6.png", maps_fig, titles)
    cpu = _cpu_model()
    header = (f"{n} particles, {box} px, {apix:g} Å/px ({star.name}); truth {truth_path.name}; "
              f"{args.threads} threads on {cpu}; total {_fmt_time(time.time() - t_all)}. "
              f"band limit {target:.1f} Å ({band:g} Fourier pixels; RELION: --strict_highres_exp, "
              f"--sgd_fin_resol); "
              f"mean FSC in band: shells 1-{int(band)}; FSC after alignment to the truth.")
    write_table(out / "table.md", results, header)
    (out / "results.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    print((out / "table.md").read_text())
    return 0


def compare_aligned(volume: np.ndarray, truth: np.ndarray, apix: float) -> np.ndarray:
    return apply_alignment(volume, compare_maps(volume, truth, pixel_size=apix, align=True).alignment)


def _mean_fsc(curve: np.ndarray, band: float) -> float:
    """Mean FSC over the shells 1 .. band (Fourier pixels): how well the map holds the band all methods share."""
    return float(np.mean(curve[1:int(math.floor(band)) + 1]))


def _sgd_images(schedule: tuple[int, int, int], subsets: tuple[int, int]) -> int:
    """Images RELION's SGD visits: initial subset, a linear ramp in between, final subset."""
    ini, mid, fin = schedule
    ramp = sum(round(subsets[0] + (subsets[1] - subsets[0]) * (i + 1) / (mid + 1)) for i in range(mid))
    return ini * subsets[0] + ramp + fin * subsets[1]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", out)
        return f"{os.cpu_count()}-core {platform.machine()}, {model.group(1).strip()}" if model else platform.machine()
    except OSError:
        return platform.machine()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except InputError as err:
        print(f"baselines: error: {err}", file=sys.stderr)
        sys.exit(2)
