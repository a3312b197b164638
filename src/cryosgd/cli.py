"""The ``cryosgd`` command line: a thin layer over the library.

User errors (bad files, bad values) end with one line, ``cryosgd: error:
<file>: <problem>``, exit status 2 and no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from . import __version__, parallel

__all__ = ["main"]


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _quiet() -> bool:
    """No progress bars: asked for (``CRYOSGD_QUIET=1``), or not the first process of a distributed run."""
    return os.environ.get("CRYOSGD_QUIET") == "1" or not parallel.is_main()


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, disable=_quiet())


def _cmd_simulate(args) -> None:
    from .simulation import simulate_dataset

    with _progress(args.n, "simulate") as bar:
        paths, sim = simulate_dataset(args.source, args.output, n=args.n, box=args.box, pixel_size=args.apix,
                                      snr=args.snr, ctf_from=args.ctf_from, shift_sigma=args.shift_sigma,
                                      seed=args.seed, progress=bar.update)
    print(f"wrote {args.n} particles ({args.box} px, {args.apix} Å/px, SNR {args.snr}) to {paths.stack}, "
          f"{paths.particles}, {paths.truth} and {paths.volume}")


def _cmd_backproject(args) -> None:
    import numpy as np

    from .baselines.backproject import backproject
    from .inference.noise import estimate_noise_std
    from .io import InputError, load_particles, write_map

    parts = load_particles(args.particles)
    if parts.rotations is None:
        raise InputError(args.particles, "no poses (rlnAngleRot/Tilt/Psi): back-projection needs known poses")
    parts.validate_images()
    n, box = len(parts), parts.box
    noise = args.noise_std
    if noise is None:
        sample = parts.read_images(np.arange(min(n, 500)))
        noise = estimate_noise_std(sample, 0.45 * box)
    batch = 256

    def batches():
        for start in range(0, n, batch):
            idx = np.arange(start, min(n, start + batch))
            yield (parts.read_images(idx), parts.rotations[idx],
                   None if parts.shifts is None else parts.shifts[idx], parts.ctf[idx])

    with _progress(n, "backproject") as bar:
        volume = backproject(batches(), box, parts.pixel_size, noise_std=noise, kernel=args.kernel,
                             progress=bar.update)
    write_map(args.output, volume.numpy().astype(np.float32), parts.pixel_size)
    print(f"wrote {args.output} ({box} px, {parts.pixel_size:g} Å/px) from {n} particles")


def _cmd_fsc(args) -> None:
    from .evaluate import compare_maps
    from .io import read_map

    a, va = read_map(args.map)
    b, vb = read_map(args.reference)
    report = compare_maps(a, b, pixel_size=args.apix or va or vb or 1.0, align=args.align,
                          map_name=args.map, reference_name=args.reference)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.text())


def _cmd_symmetry(args) -> None:
    from .symmetry.detect import symmetry_of_map_file

    report = symmetry_of_map_file(args.map, groups=args.groups, size=args.size)
    print(json.dumps(report.as_dict()) if args.json else report.text())


def _settings_from(args, **overrides):
    from .reconstruct import Settings

    base = Settings.paper if getattr(args, "paper", False) else Settings
    kw = dict(epochs=args.epochs, resolution=args.resolution, seed=args.seed, max_shift=args.max_shift,
              learning_rate=args.learning_rate, test_size=args.test_size, device=args.device,
              precision=args.precision, checkpoint_every=args.checkpoint_every)
    if args.particle_diameter:
        kw["particle_diameter"] = args.particle_diameter
    for key in ("lambda_plus", "lambda_minus"):
        if getattr(args, key, None) is not None:
            kw[key] = getattr(args, key)
    if getattr(args, "no_marching", False):
        kw["marching_stages"] = 1
    for flag, key in (("no_positivity", "positivity"), ("no_mask", "mask")):
        if getattr(args, flag, False):
            kw[key] = False
    if getattr(args, "no_centring", False):
        kw["centre_every"] = 0
    kw["invert_contrast"] = getattr(args, "invert_contrast", "auto")
    kw.update(overrides)
    return base(**kw)


def _run_one(particles, outdir: Path, settings, *, reference=None, reference_name="", assign=True, label=""):
    """Run one reconstruction with a progress bar; write its outputs; return (summary, Reconstruction)."""
    from tqdm import tqdm

    from .outputs import write_outputs
    from .reconstruct import assign_poses, reconstruct

    bars = []  # the bar appears with the first step, so bad input ends with its one line alone

    def progress(done, total, row):
        if not bars:
            bars.append(tqdm(desc=label or settings.optimizer, unit="step", file=sys.stderr, dynamic_ncols=True,
                             total=total, initial=done,  # the rate and ETA count from here (also on resume)
                             disable=_quiet()))
        bar = bars[0]
        bar.total = total
        bar.n = done
        info = {"res": f"{particles.box * particles.pixel_size / row['band_limit']:.1f}A"}
        if "test_nll" in row:
            info["test_nll"] = f"{row['test_nll']:.2f}"
        bar.set_postfix(info, refresh=True)

    rec = reconstruct(particles, settings, checkpoint=outdir / "checkpoint.pt", progress=progress)
    for bar in bars:
        bar.close()
    poses = None
    if assign:
        with _progress(len(particles), "poses") as pbar:
            poses = assign_poses(particles, rec.volume, rec, progress=pbar.update)
    if not parallel.is_main():
        return {}, rec
    summary = write_outputs(outdir, rec, particles, poses=poses, reference=reference, reference_name=reference_name)
    return summary, rec


def _reference(args):
    if not getattr(args, "reference", None):
        return None, ""
    from .io import read_map

    vol, _ = read_map(args.reference)
    return vol, str(args.reference)


def _cmd_reconstruct(args) -> None:
    from .io import load_particles

    particles = load_particles(args.particles)
    settings = _settings_from(args, optimizer=args.optimizer)
    reference, name = _reference(args)
    out = Path(args.output)
    summary, _ = _run_one(particles, out, settings, reference=reference, reference_name=name)
    if not parallel.is_main():
        return
    msg = (f"wrote {out / 'map.mrc'} ({summary['band_limit_resolution_A']:.1f} Å band limit, "
           f"{summary['wall_seconds']:.0f} s)")
    if "fsc_0.5_A" in summary:
        msg += f"; FSC vs reference: {summary['fsc_0.5_A']:.1f} Å at 0.5, {summary['fsc_0.143_A']:.1f} Å at 0.143"
    from .memory import format_bytes

    print(msg + f"; peak memory {format_bytes(summary['peak_memory_bytes'])}; report: {out / 'report.md'}")


def _cmd_compare(args) -> None:
    from .io import load_particles
    from .optim import OPTIMIZERS
    from .report import plot_compare_nll, plot_montage, write_report

    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad:
        from .io import InputError

        raise InputError(args.particles, f"unknown optimiser(s) {', '.join(bad)}; choose from {', '.join(OPTIMIZERS)}")
    particles = load_particles(args.particles)
    reference, ref_name = _reference(args)
    out = Path(args.output)
    logs, montage, rows = {}, {}, []
    from .reconstruct import Diverged

    for name in names:
        settings = _settings_from(args, optimizer=name)
        try:
            summary, rec = _run_one(particles, out / name, settings, reference=reference, reference_name=ref_name,
                                    assign=False, label=name)
        except Diverged as err:  # the others still run; the table says which one failed and why
            print(f"cryosgd: warning: {err}", file=sys.stderr)
            rows.append((name, None))
            continue
        logs[name] = rec.log
        montage[name] = {("final" if k == "final" else f"{int(k) // 1000}K"): v for k, v in rec.snapshots.items()}
        rows.append((name, summary))
    plot_compare_nll(out / "nll.png", logs)
    cols = [f"{int(s) // 1000}K" for s in sorted(_settings_from(args).snapshots)] + ["final"]
    plot_montage(out / "montage.png", montage, cols)
    head = "| method | learning rate | steps | gradient evals | final test NLL | wall s |"
    lines = [head, "|---|---|---|---|---|---|"]
    extra = reference is not None
    if extra:
        lines[0] += " FSC 0.5 (Å) | FSC 0.143 (Å) |"
        lines[1] += "---|---|"
    for name, s in rows:
        if s is None:
            lines.append(f"| {name} | diverged: no map (see the warning) |" + " |" * (lines[1].count("|") - 3))
            continue
        line = (f"| {name} | {s['learning_rate']:.3g} | {s['steps']} | {s['gradients']} | "
                f"{s['final_test_nll']:.3f} | {s['wall_seconds']:.0f} |")
        if extra:
            line += f" {s['fsc_0.5_A']:.1f} | {s['fsc_0.143_A']:.1f} |"
        lines.append(line)
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    write_report(out / "report.md", f"cryosgd comparison: {particles.source.name}",
                 [("Table", table), ("Test NLL against gradient evaluations (Figure 3)", "![nll](nll.png)"),
                  ("Densities at 5K, 50K gradients and final (Figure 4)", "![montage](montage.png)")])
    print(table)
    print(f"wrote {out / 'nll.png'}, {out / 'montage.png'}, {out / 'table.md'} and {out / 'report.md'}")


def _cmd_demo(args) -> None:
    from importlib import resources

    from .io import load_particles
    from .simulation import simulate_dataset

    out = Path(args.output)
    source = resources.files("cryosgd") / "data" / "demo_5fuu_64px_3A.mrc"
    print(f"1/3 simulating {args.n} particles of PDB 5FUU (64 px, 3 Å/px, SNR {args.snr}, real CTF values)")
    with _progress(args.n, "simulate") as bar:
        paths, _ = simulate_dataset(source, out / "data", n=args.n, box=64, pixel_size=3.0, snr=args.snr,
                                    seed=args.seed, progress=bar.update)
    print("2/3 reconstructing from random spheres with SGD (1 epoch)")
    particles = load_particles(paths.particles)
    from .reconstruct import Settings

    settings = Settings(epochs=args.epochs, resolution=20.0, seed=args.seed)
    from .io import read_map

    truth, _ = read_map(paths.volume)
    summary, _ = _run_one(particles, out / "reconstruction", settings, reference=truth,
                          reference_name=str(paths.volume))
    print("3/3 scored against the ground truth after alignment: "
          f"{summary['fsc_0.5_A']:.1f} Å at FSC 0.5, {summary['fsc_0.143_A']:.1f} Å at 0.143 "
          f"(band limit {summary['band_limit_resolution_A']:.1f} Å) in {summary['wall_seconds']:.0f} s")
    print(f"report: {out / 'reconstruction' / 'report.md'}")


def _cmd_projmatch(args) -> None:
    import csv

    import numpy as np
    from tqdm import tqdm

    from .io import load_particles, write_map, write_particles_star
    from .baselines.projmatch import projection_matching
    from .report import plot_views
    from .simulation import load_source_volume

    particles = load_particles(args.particles)
    init = None if args.init is None else load_source_volume(args.init, particles.box, particles.pixel_size)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=args.iterations, desc="projmatch", unit="it", file=sys.stderr, dynamic_ncols=True,
               disable=_quiet())

    def progress(done, total, row):
        bar.update(1)
        bar.set_postfix({"corr": f"{row['mean_correlation']:.3f}"}, refresh=True)

    result = projection_matching(particles, iterations=args.iterations, init=init, resolution=args.resolution,
                                 max_shift=args.max_shift, seed=args.seed, particle_diameter=args.particle_diameter,
                                 progress=progress)
    bar.close()
    write_map(out / "map.mrc", result.volume.astype(np.float32), particles.pixel_size)
    write_particles_star(out / "particles.star", particles.with_poses(result.rotations, result.shifts))
    with open(out / "log.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result.log[0]))
        writer.writeheader()
        writer.writerows(result.log)
    plot_views(out / "slices.png", {"projection matching": result.volume},
               title=f"{args.iterations} iterations, band limit {result.log[-1]['resolution']:.1f} Å")
    print(f"wrote {out / 'map.mrc'}, particles.star, log.csv and slices.png ({result.wall_time:.0f} s; "
          f"mean correlation {result.log[-1]['mean_correlation']:.3f})")


def _add_run_options(p, *, epochs=1.0) -> None:
    p.add_argument("--epochs", type=float, default=epochs, help=f"passes over the training images (default {epochs:g})")
    p.add_argument("--resolution", type=float, help="target resolution in Å (default: 25%% of Nyquist; "
                                                    "10%% with --paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learning-rate", type=float, help="base learning rate (default: tuned automatically)")
    p.add_argument("--max-shift", type=float, default=0.0, help="largest shift searched, pixels (default 0)")
    p.add_argument("--particle-diameter", type=float, help="Å (default: 80%% of the box)")
    p.add_argument("--test-size", type=int, default=100, help="held-out images (default 100)")
    p.add_argument("--reference", help="a map to score against (FSC after alignment) in the report")
    p.add_argument("--paper", action="store_true", help="the paper's plain setting: a fixed band limit at 10%% "
                                                        "of Nyquist (unless --resolution), no marching, "
                                                        "positivity, mask or centring")
    p.add_argument("--lambda-plus", type=float, help="prior rate on positive voxels, exp(-λ+ v) (default 1e-4; "
                                                     "the paper used 3e-2 on real data)")
    p.add_argument("--lambda-minus", type=float, help="prior rate on negative voxels, exp(-λ- |v|) (default 1e-4)")
    p.add_argument("--no-marching", action="store_true", help="fixed band limit")
    p.add_argument("--invert-contrast", choices=["yes", "no", "auto"], default="auto",
                   help="multiply the images by -1 (yes: dark protein), keep them (no), or decide from their "
                        "low frequencies (auto, default; a one-line notice when it inverts them)")
    p.add_argument("--no-positivity", action="store_true")
    p.add_argument("--no-mask", action="store_true")
    p.add_argument("--no-centring", action="store_true")
    p.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between checkpoints (default 60)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when present; default)")
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "tf32", "float64"],
                   help="the kernel's arithmetic: auto (default) is float32, with TF32 score products on GPUs "
                        "that have them (compute capability 8.0+); float64 for checks")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (default 1); "
                                                       "for several machines use torchrun")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryosgd", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"cryosgd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate particle images from a map or an atomic model")
    s.add_argument("source", help="map (MRC) or atomic model (PDB/mmCIF)")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("-n", type=int, default=1000, help="number of particles (default 1000)")
    s.add_argument("--box", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--apix", type=float, default=3.0, help="pixel size in Å (default 3.0)")
    s.add_argument("--snr", type=float, default=0.05, help="signal-to-noise ratio, whole box (default 0.05)")
    s.add_argument("--ctf-from", help="draw CTFs from this real table (STAR or cryoSPARC .cs)")
    s.add_argument("--shift-sigma", type=float, default=0.0, help="shift std in pixels (default 0: centred)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_simulate)

    b = sub.add_parser("backproject", help="direct reconstruction from known poses (Wiener-filtered)")
    b.add_argument("particles", help="STAR (or .cs) file with poses and CTFs")
    b.add_argument("-o", "--output", required=True, help="output map (MRC)")
    b.add_argument("--kernel", choices=["trilinear", "lanczos"], default="trilinear")
    b.add_argument("--noise-std", type=float, help="image noise std (default: estimated from the background)")
    b.set_defaults(func=_cmd_backproject)

    r = sub.add_parser("reconstruct", help="ab initio reconstruction from a random density")
    r.add_argument("particles", help="STAR (or cryoSPARC .cs) file with CTFs")
    r.add_argument("-o", "--output", required=True, help="output folder")
    r.add_argument("--optimizer", default="sgd", choices=["sgd", "cm", "nag", "adagrad", "tonga", "olbfgs", "hf"])
    _add_run_options(r)
    r.set_defaults(func=_cmd_reconstruct)

    c = sub.add_parser("compare", help="run several optimisers on the same data in the same order")
    c.add_argument("particles")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--optimizers", default="sgd,cm,nag,adagrad,tonga,olbfgs,hf")
    _add_run_options(c)
    c.set_defaults(func=_cmd_compare)

    d = sub.add_parser("demo", help="simulate -> reconstruct from random spheres -> FSC against the truth")
    d.add_argument("-o", "--output", default="cryosgd-demo", help="output folder (default cryosgd-demo)")
    d.add_argument("-n", type=int, default=5000, help="particles (default 5000)")
    d.add_argument("--snr", type=float, default=0.05)
    d.add_argument("--epochs", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    pm = sub.add_parser("projmatch", help="iterative projection matching (a baseline) from random spheres or a map")
    pm.add_argument("particles", help="STAR (or cryoSPARC .cs) file with CTFs")
    pm.add_argument("-o", "--output", required=True, help="output folder")
    pm.add_argument("--iterations", type=int, default=5, help="matching + reconstruction rounds (default 5)")
    pm.add_argument("--init", help="starting map or atomic model (default: the random spheres reconstruct uses)")
    pm.add_argument("--resolution", type=float, help="matching band limit in Å (default: 25%% of Nyquist)")
    pm.add_argument("--max-shift", type=float, default=0.0, help="largest shift searched, pixels (default 0)")
    pm.add_argument("--particle-diameter", type=float, help="Å (default: 80%% of the box)")
    pm.add_argument("--seed", type=int, default=0)
    pm.set_defaults(func=_cmd_projmatch)

    f = sub.add_parser("fsc", help="Fourier shell correlation between two maps")
    f.add_argument("map")
    f.add_argument("reference")
    f.add_argument("--align", action="store_true", help="align MAP to REFERENCE (rotation, shift, hand) first")
    f.add_argument("--apix", type=float, help="pixel size in Å (default: from the headers)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=_cmd_fsc)

    y = sub.add_parser("symmetry", help="the point group that best explains a C1 map, with its axes",
                       epilog="example: cryosgd symmetry run/final.mrc --groups C2,C3,D7,T,O,I --json",
                       description="Fit C2-C8, D2-D8, T, O and I (RELION's orientations) to a centred map: "
                                   "each group's correlation with the symmetrised map, its axes, and the RELION "
                                   "Euler angles at which the map is in RELION's standard orientation.")
    y.add_argument("map", help="a map (MRC), the particle at the box centre")
    y.add_argument("--groups", help="comma-separated candidates (default C2-C8, D2-D8, T, O, I)")
    y.add_argument("--size", type=int, default=32, help="search box in voxels, a low-pass (default 32)")
    y.add_argument("--json", action="store_true", help="print one JSON object")
    y.set_defaults(func=_cmd_symmetry)
    return p


def _spawned(index: int, argv: list, world: int, port: int, errors: str) -> None:
    # every process is a client of the store the parent holds (the agent store of torchrun's protocol)
    os.environ.update({"RANK": str(index), "LOCAL_RANK": str(index), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "TORCHELASTIC_USE_AGENT_STORE": "True", "CRYOSGD_ERROR_DIR": errors})
    code = main(argv)
    if code:
        sys.exit(code)


def _first_error(errors: Path) -> tuple[int, str] | None:
    """``(exit code, line)`` of the lowest rank that reported a failure, or ``None``."""
    for path in sorted(errors.glob("rank*"), key=lambda p: int(p.name[4:])):
        code, _, line = path.read_text().partition(" ")
        return int(code), line.strip()
    return None


def _run_spawned(argv: list, nproc: int) -> int:
    """``--nproc N``: run the same command in N processes on this machine.

    The parent holds the rendezvous store on a port the system picks and keeps while it lives, so
    runs started at the same time cannot collide on a port (no free-port probe that another run
    could take before the store binds it).  A failed process's first error line is what the user
    sees: processes report their one line to the parent instead of each printing it.
    """
    import datetime
    import tempfile

    import torch.distributed as dist
    import torch.multiprocessing as mp

    import logging

    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # "terminating process ..."
    minutes = float(os.environ.get("CRYOSGD_DIST_TIMEOUT_MIN", "10"))
    store = dist.TCPStore("127.0.0.1", 0, nproc, True, datetime.timedelta(minutes=minutes), wait_for_workers=False)
    resume = "the last checkpoint is intact: run the same command again to resume"
    with tempfile.TemporaryDirectory(prefix="cryosgd-errors-") as tmp:
        errors = Path(tmp)
        try:  # each process sees WORLD_SIZE > 1, so its own --nproc does not spawn again
            mp.spawn(_spawned, args=(argv, nproc, store.port, tmp), nprocs=nproc, join=True)
        except mp.ProcessExitedException as err:
            reported = _first_error(errors)
            if reported is not None:
                print(reported[1], file=sys.stderr)
                return reported[0]
            print(f"cryosgd: error: process {err.error_index} of {nproc} exited with code {err.exit_code}; "
                  f"{resume}", file=sys.stderr)
            return 3
        except mp.ProcessRaisedException as err:
            last = str(err).strip().splitlines()[-1]
            print(f"cryosgd: error: process {err.error_index} of {nproc} failed ({last}); {resume}",
                  file=sys.stderr)
            return 3
        reported = _first_error(errors)  # a handled failure in every process ends with code 0 from spawn
    del store
    if reported is not None:
        print(reported[1], file=sys.stderr)
        return reported[0]
    return 0


def _fail(line: str, code: int) -> int:
    """Print a failure's one line, or hand it to the launcher: the parent of ``--nproc`` or torchrun."""
    spawned = os.environ.get("CRYOSGD_ERROR_DIR")
    if spawned:  # the parent prints the first rank's line, once
        Path(spawned, f"rank{parallel.rank() if parallel.active() else os.environ.get('RANK', '0')}").write_text(
            f"{code} {line}\n")
        return code
    print(line, file=sys.stderr)
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file:  # torchrun shows this line in its failure summary instead of "<N/A>"
        import time

        with open(error_file, "w") as fh:
            json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                   "timestamp": str(int(time.time()))}}}, fh)
    return code


def main(argv=None) -> int:
    from .io import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if getattr(args, "nproc", 1) > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _run_spawned(argv, args.nproc)
    parallel.init_from_environment(getattr(args, "device", "cpu").replace("auto", "cuda" if _has_cuda() else "cpu"))
    show = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, *a, **k: print(f"cryosgd: warning: {msg}", file=sys.stderr)
        try:
            args.func(args)
        except InputError as err:
            return _fail(f"cryosgd: error: {err}", 2)
        except KeyboardInterrupt:
            print("cryosgd: interrupted", file=sys.stderr)
            return 130
        except parallel.DistributedFailure as err:
            return _fail(f"cryosgd: error: {err}; the last checkpoint is intact: run the same command again "
                         "(with any number of processes) to resume", 3)
        finally:
            warnings.showwarning = show
    return 0


if __name__ == "__main__":
    sys.exit(main())
