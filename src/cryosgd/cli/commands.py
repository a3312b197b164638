"""The commands: each reads its inputs, calls the library, and prints what it wrote.

A user error raises :class:`~cryosgd.io.InputError`; :func:`cryosgd.cli.main` turns it into one line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..progress import LazyCounter, StepBar, counter
from ..runtime import parallel


def _cmd_simulate(args) -> None:
    from ..simulation import simulate_dataset

    with counter(args.n, "simulate") as bar:
        paths, sim = simulate_dataset(args.source, args.output, n=args.n, box=args.box, pixel_size=args.apix,
                                      snr=args.snr, ctf_from=args.ctf_from, shift_sigma=args.shift_sigma,
                                      seed=args.seed, progress=bar.update)
    print(f"wrote {args.n} particles ({args.box} px, {args.apix} Å/px, SNR {args.snr}) to {paths.stack}, "
          f"{paths.particles}, {paths.truth} and {paths.volume}")


def _cmd_backproject(args) -> None:
    import numpy as np

    from ..baselines.backproject import backproject_particles
    from ..io import load_particles, write_map

    parts = load_particles(args.particles)
    with counter(len(parts), "backproject") as bar:
        volume = backproject_particles(parts, noise_std=args.noise_std, kernel=args.kernel, progress=bar.update)
    write_map(args.output, volume.numpy().astype(np.float32), parts.pixel_size)
    print(f"wrote {args.output} ({parts.box} px, {parts.pixel_size:g} Å/px) from {len(parts)} particles")


def _cmd_fsc(args) -> None:
    from ..evaluate import compare_maps
    from ..io import read_map

    a, va = read_map(args.map)
    b, vb = read_map(args.reference)
    report = compare_maps(a, b, pixel_size=args.apix or va or vb or 1.0, align=args.align,
                          map_name=args.map, reference_name=args.reference)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(report.text())


def _cmd_symmetry(args) -> None:
    from ..symmetry.detect import symmetry_of_map_file

    report = symmetry_of_map_file(args.map, groups=args.groups, size=args.size)
    print(json.dumps(report.as_dict()) if args.json else report.text())


RUN_FIELDS = ("epochs", "resolution", "seed", "max_shift", "search", "learning_rate", "test_size", "device",
              "precision", "checkpoint_every", "particle_diameter", "lambda_plus", "lambda_minus", "invert_contrast",
              "symmetry", "gold_standard")
SWITCHES = ("paper", "no_marching", "no_positivity", "no_mask", "no_centring", "probe_rate", "no_noise_substitution")


def _settings_from(args, **overrides):
    """The :class:`~cryosgd.reconstruct.Settings` of a run's command-line options (``overrides`` last)."""
    from ..reconstruct import Settings
    from ..reconstruct.symmetric import check_symmetry

    options = {k: getattr(args, k) for k in RUN_FIELDS + SWITCHES if hasattr(args, k)}
    if options.get("symmetry") is not None:  # a bad name stops here, before any file is read or written
        options["symmetry"] = check_symmetry(options["symmetry"])
    return Settings.from_options(**{**options, **overrides})


def _run_one(particles, outdir: Path, settings, *, reference=None, reference_name="", assign=True, label=""):
    """Run one reconstruction with progress bars and write its outputs; ``(summary, Reconstruction)``."""
    from ..outputs import reconstruct_and_write

    steps = StepBar(label or settings.optimizer, particles.box, particles.pixel_size)
    # the map is on disk before the poses are assigned (outputs.reconstruct_and_write), but for classes
    poses = LazyCounter(len(particles), "poses" if settings.classes > 1 else "poses (map.mrc written)")
    try:
        return reconstruct_and_write(particles, outdir, settings, reference=reference, reference_name=reference_name,
                                     assign=assign, progress=steps, pose_progress=poses)
    finally:
        steps.close()
        poses.close()


def _reference(args):
    if not getattr(args, "reference", None):
        return None, ""
    from ..io import read_map

    vol, _ = read_map(args.reference)
    return vol, str(args.reference)


def _cmd_reconstruct(args) -> None:
    from ..io import load_particles, read_map
    from ..reconstruct.classes import check_classes

    classes = check_classes(args.classes)  # options first: a bad one costs no file reading
    settings = _settings_from(args, optimizer=args.optimizer, classes=classes)
    particles = load_particles(args.particles)
    if classes > 1:  # several references, comma-separated
        names = args.reference.split(",") if args.reference else []
        reference, name = [read_map(n)[0] for n in names], names
    else:
        reference, name = _reference(args)
    out = Path(args.output)
    summary, _ = _run_one(particles, out, settings, reference=reference, reference_name=name)
    if not parallel.is_main():
        return
    if classes > 1:
        print(f"wrote {out}/map_class01.mrc ... map_class{classes:02d}.mrc (proportions "
              + ", ".join(f"{p:.2f}" for p in summary["proportions"]) + "), particles.star with classes; "
              f"{summary['wall_seconds']:.0f} s; report: {out / 'report.md'}")
        return
    msg = (f"wrote {out / 'map.mrc'} ({summary['band_limit_resolution_A']:.1f} Å band limit, "
           f"{summary['wall_seconds']:.0f} s")
    if "pose_assignment_seconds" in summary:
        msg += f"; poses {summary['pose_assignment_seconds']:.0f} s"
    msg += ")"
    if "gold_standard_resolution_A" in summary:
        msg += f"; half maps agree to {summary['gold_standard_resolution_A']:.1f} Å at FSC 0.143"
        if summary.get("noise_substitution"):
            measured = summary["gold_standard_measured_resolution_A"]
            msg += f" (corrected by noise substitution; {measured:.1f} Å as measured)"
    if "fsc_0.5_A" in summary:
        msg += f"; FSC vs reference: {summary['fsc_0.5_A']:.1f} Å at 0.5, {summary['fsc_0.143_A']:.1f} Å at 0.143"
    from ..runtime.memory import format_bytes

    print(msg + f"; peak memory {format_bytes(summary['peak_memory_bytes'])}; report: {out / 'report.md'}")


def _cmd_compare(args) -> None:
    from ..io import load_particles
    from ..optim import OPTIMIZERS
    from ..outputs import write_comparison

    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    bad = [n for n in names if n not in OPTIMIZERS]
    if bad:
        from ..io import InputError

        raise InputError(args.particles, f"unknown optimiser(s) {', '.join(bad)}; choose from {', '.join(OPTIMIZERS)}")
    particles = load_particles(args.particles)
    reference, ref_name = _reference(args)
    out = Path(args.output)
    logs, montage, rows = {}, {}, []
    from ..reconstruct import Diverged

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
    table = write_comparison(out, f"cryosgd comparison: {particles.source.name}", rows, logs, montage,
                             _settings_from(args).snapshots, with_fsc=reference is not None)
    print(table)
    print(f"wrote {out / 'nll.png'}, {out / 'montage.png'}, {out / 'table.md'} and {out / 'report.md'}")


def _cmd_demo(args) -> None:
    from importlib import resources

    from ..io import load_particles
    from ..simulation import simulate_dataset

    out = Path(args.output)
    source = resources.files("cryosgd") / "data" / "demo_5fuu_64px_3A.mrc"
    print(f"1/3 simulating {args.n} particles of PDB 5FUU (64 px, 3 Å/px, SNR {args.snr}, real CTF values)")
    with counter(args.n, "simulate") as bar:
        paths, _ = simulate_dataset(source, out / "data", n=args.n, box=64, pixel_size=3.0, snr=args.snr,
                                    seed=args.seed, progress=bar.update)
    print("2/3 reconstructing from random spheres with SGD (1 epoch)")
    particles = load_particles(paths.particles)
    from ..reconstruct import Settings

    settings = Settings(epochs=args.epochs, resolution=20.0, seed=args.seed, max_shift=0.0)  # centred particles
    from ..io import read_map

    truth, _ = read_map(paths.volume)
    summary, _ = _run_one(particles, out / "reconstruction", settings, reference=truth,
                          reference_name=str(paths.volume))
    print("3/3 scored against the ground truth after alignment: "
          f"{summary['fsc_0.5_A']:.1f} Å at FSC 0.5, {summary['fsc_0.143_A']:.1f} Å at 0.143 "
          f"(band limit {summary['band_limit_resolution_A']:.1f} Å) in {summary['wall_seconds']:.0f} s")
    print(f"report: {out / 'reconstruction' / 'report.md'}")


def _cmd_projmatch(args) -> None:
    from ..baselines.projmatch import projection_matching
    from ..io import load_particles
    from ..outputs import write_projmatch_outputs
    from ..simulation import load_source_volume

    particles = load_particles(args.particles)
    init = None if args.init is None else load_source_volume(args.init, particles.box, particles.pixel_size)
    out = Path(args.output)
    with counter(args.iterations, "projmatch", unit="it") as bar:
        result = projection_matching(particles, iterations=args.iterations, init=init, resolution=args.resolution,
                                     max_shift=args.max_shift, seed=args.seed,
                                     particle_diameter=args.particle_diameter, progress=lambda *_: bar.update(1))
    write_projmatch_outputs(out, result, particles)
    print(f"wrote {out / 'map.mrc'}, particles.star, log.csv and slices.png ({result.wall_time:.0f} s; "
          f"mean correlation {result.log[-1]['mean_correlation']:.3f})")
