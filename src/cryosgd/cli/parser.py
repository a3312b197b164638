"""The command line's options: one subcommand per task, each with its defaults, the choices the library
offers, and an example at the end of its ``--help``."""
from __future__ import annotations

import argparse

from .. import __version__
from . import commands

__all__ = ["build_parser", "EXAMPLES"]


def _add_run_options(p, *, epochs=1.0) -> None:
    from ..inference.contrast import CONTRAST_CHOICES
    from ..reconstruct.schedule import SEARCHES
    from ..runtime.device import PRECISIONS

    p.add_argument("--epochs", type=float, default=epochs, help=f"passes over the training images (default {epochs:g})")
    p.add_argument("--resolution", type=float, help="target resolution in Å (default: 15 Å, or 4 pixels where "
                                                    "Nyquist is coarser; 10%% of Nyquist with --paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--learning-rate", type=float, help="base learning rate (default: a short search of "
                                                       "candidates on training images)")
    p.add_argument("--probe-rate", action="store_true", help="set the learning rate from one probe step instead "
                                                             "of the search: much faster, less reliable "
                                                             "(docs/reconstruction.md)")
    p.add_argument("--max-shift", type=float, help="largest shift searched, pixels (default: 10%% of the box; "
                                                   "0: none, for centred particles)")
    p.add_argument("--search", choices=SEARCHES,
                   help="pose search: pruned (the quadrature of half the band first, then the fine poses near "
                        "the coarse ones that matter; docs/search.md), exhaustive (every pose of the quadrature; "
                        "--paper's), or auto (default: exhaustive up to 2 million poses per image, pruned above)")
    p.add_argument("--symmetry", default="C1",
                   help="point group of the particle in RELION's orientation (C<n>, D<n>, T, O, I; default C1): "
                        "poses over one asymmetric unit (about |G|/2 times fewer rotations) and a symmetric "
                        "map; `cryosgd symmetry` finds a map's group")
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
    p.add_argument("--gold-standard", action="store_true",
                   help="split the particles into two random halves, reconstruct each from one shared "
                        "low-resolution start, and report the resolution where the half maps' FSC falls below "
                        "0.143, corrected by noise substitution (map_half1.mrc, map_half2.mrc; map.mrc is their "
                        "average; about three times the time of one run)")
    p.add_argument("--no-noise-substitution", action="store_true",
                   help="with --gold-standard: skip reconstructing the halves again from phase-randomised "
                        "images, and report the half maps' FSC uncorrected (about 2/3 of the time; on images "
                        "with little signal the halves can then agree to the band limit)")
    p.add_argument("--invert-contrast", choices=CONTRAST_CHOICES, default="auto",
                   help="multiply the images by -1 (yes: dark protein), keep them (no), or decide from their "
                        "low frequencies (auto, default; a one-line notice when it inverts them)")
    p.add_argument("--no-positivity", action="store_true")
    p.add_argument("--no-mask", action="store_true")
    p.add_argument("--no-centring", action="store_true")
    p.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between checkpoints (default 60)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (a GPU when present; default)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the kernel's arithmetic: auto (default) is float32, with TF32 score products on GPUs "
                        "that have them (compute capability 8.0+); float64 for checks")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (default 1); "
                                                       "for several machines use torchrun")


EXAMPLES = {  # each command's --help ends with one
    "simulate": "cryosgd simulate model.pdb -o sim -n 5000 --box 64 --apix 3.5 --snr 0.05 --shift-sigma 3 "
                "--ctf-from particles_ctf.star",
    "backproject": "cryosgd backproject sim/truth.star -o truth_bp.mrc",
    "reconstruct": "cryosgd reconstruct sim/particles.star -o run --resolution 15 --reference sim/truth.mrc\n"
                   "  cryosgd reconstruct d7/particles.star -o run_d7 --resolution 15 --symmetry D7\n"
                   "  cryosgd reconstruct sim/particles.star -o run_gs --gold-standard --epochs 2\n"
                   "  cryosgd reconstruct mix/particles.star -o run2 --classes 2 --reference a.mrc,b.mrc",
    "compare": "cryosgd compare sim/particles.star -o cmp --optimizers sgd,nag,olbfgs --epochs 5",
    "demo": "cryosgd demo -o cryosgd-demo",
    "projmatch": "cryosgd projmatch sim/particles.star -o pm --iterations 5",
    "fsc": "cryosgd fsc run/map.mrc sim/truth.mrc --align --json",
    "symmetry": "cryosgd symmetry run/map.mrc --groups C2,C3,D7,T,O,I --json",
}


def build_parser() -> argparse.ArgumentParser:
    from ..forward.interp import KERNELS
    from ..optim import OPTIMIZERS

    p = argparse.ArgumentParser(prog="cryosgd", description="Ab initio cryo-EM reconstruction by stochastic "
                                                             "optimisation (Brubaker & Punjani 2015).")
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
    s.set_defaults(func=commands._cmd_simulate)

    b = sub.add_parser("backproject", help="direct reconstruction from known poses (Wiener-filtered)")
    b.add_argument("particles", help="STAR (or .cs) file with poses and CTFs")
    b.add_argument("-o", "--output", required=True, help="output map (MRC)")
    b.add_argument("--kernel", choices=list(KERNELS), default="trilinear")
    b.add_argument("--noise-std", type=float, help="image noise std (default: estimated from the background)")
    b.set_defaults(func=commands._cmd_backproject)

    r = sub.add_parser("reconstruct", help="ab initio reconstruction from a random density")
    r.add_argument("particles", help="STAR (or cryoSPARC .cs) file with CTFs")
    r.add_argument("-o", "--output", required=True, help="output folder")
    r.add_argument("--optimizer", default="sgd", choices=list(OPTIMIZERS))
    r.add_argument("--classes", default="1", help="K densities: multi-class ab initio with learned proportions, "
                   "maps map_class01.mrc ... and each particle's class in particles.star; --reference may then "
                   "name several maps, comma-separated (default 1; docs/classes.md)")
    _add_run_options(r)
    r.set_defaults(func=commands._cmd_reconstruct)

    c = sub.add_parser("compare", help="run several optimisers on the same data in the same order")
    c.add_argument("particles")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated (default: all seven)")
    _add_run_options(c)
    c.set_defaults(func=commands._cmd_compare)

    d = sub.add_parser("demo", help="simulate -> reconstruct from random spheres -> FSC against the truth")
    d.add_argument("-o", "--output", default="cryosgd-demo", help="output folder (default cryosgd-demo)")
    d.add_argument("-n", type=int, default=5000, help="particles (default 5000)")
    d.add_argument("--snr", type=float, default=0.05)
    d.add_argument("--epochs", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=commands._cmd_demo)

    pm = sub.add_parser("projmatch", help="iterative projection matching (a baseline) from random spheres or a map")
    pm.add_argument("particles", help="STAR (or cryoSPARC .cs) file with CTFs")
    pm.add_argument("-o", "--output", required=True, help="output folder")
    pm.add_argument("--iterations", type=int, default=5, help="matching + reconstruction rounds (default 5)")
    pm.add_argument("--init", help="starting map or atomic model (default: the random spheres reconstruct uses)")
    pm.add_argument("--resolution", type=float, help="matching band limit in Å (default: 15 Å, or 4 pixels "
                                                   "where Nyquist is coarser)")
    pm.add_argument("--max-shift", type=float, default=0.0, help="largest shift searched, pixels (default 0)")
    pm.add_argument("--particle-diameter", type=float, help="Å (default: 80%% of the box)")
    pm.add_argument("--seed", type=int, default=0)
    pm.set_defaults(func=commands._cmd_projmatch)

    f = sub.add_parser("fsc", help="Fourier shell correlation between two maps")
    f.add_argument("map")
    f.add_argument("reference")
    f.add_argument("--align", action="store_true", help="align MAP to REFERENCE (rotation, shift, hand) first")
    f.add_argument("--apix", type=float, help="pixel size in Å (default: from the headers)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=commands._cmd_fsc)

    y = sub.add_parser("symmetry", help="the point group that best explains a C1 map, with its axes",
                       description="Fit C2-C8, D2-D8, T, O and I (RELION's orientations) to a centred map: "
                                   "each group's correlation with the symmetrised map, its axes, and the RELION "
                                   "Euler angles at which the map is in RELION's standard orientation.")
    y.add_argument("map", help="a map (MRC), the particle at the box centre")
    y.add_argument("--groups", help="comma-separated candidates (default C2-C8, D2-D8, T, O, I)")
    y.add_argument("--size", type=int, default=32, help="search box in voxels, a low-pass (default 32)")
    y.add_argument("--json", action="store_true", help="print one JSON object")
    y.set_defaults(func=commands._cmd_symmetry)
    for name, command in sub.choices.items():
        command.epilog = f"example:\n  {EXAMPLES[name]}"
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return p
