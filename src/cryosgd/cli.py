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

__all__ = ["main"]


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                disable=os.environ.get("CRYOSGD_QUIET") == "1")


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

    from .backproject import backproject
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cryosgd", description=__doc__.splitlines()[0])
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

    f = sub.add_parser("fsc", help="Fourier shell correlation between two maps")
    f.add_argument("map")
    f.add_argument("reference")
    f.add_argument("--align", action="store_true", help="align MAP to REFERENCE (rotation, shift, hand) first")
    f.add_argument("--apix", type=float, help="pixel size in Å (default: from the headers)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=_cmd_fsc)
    return p


def main(argv=None) -> int:
    from .io import InputError

    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"cryosgd: warning: {msg}\n"
    try:
        args.func(args)
    except InputError as err:
        print(f"cryosgd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cryosgd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
