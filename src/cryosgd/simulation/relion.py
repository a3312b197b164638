"""RELION 3.1 as an external referee: particles projected by ``relion_project``.

RELION is optional (Debian: ``apt-get install -y relion``); these functions
raise :class:`RelionMissing` with that advice when it is not on the PATH.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..forward.ctf import CTFParams
from ..forward.rotations import random_rotations
from ..forward.simulate import truncated_normal_shifts
from ..io import ParticleSet, read_map, write_map, write_particles_star
from .dataset import SimulationPaths, write_dataset

__all__ = ["RelionMissing", "relion_available", "require_relion", "relion_simulate"]

INSTALL_HINT = "RELION 3.1 is needed: apt-get install -y relion"


class RelionMissing(RuntimeError):
    pass


def relion_available() -> bool:
    return shutil.which("relion_project") is not None


def require_relion() -> None:
    if not relion_available():
        raise RelionMissing(INSTALL_HINT)


def run(cmd: list[str], cwd: Path | None = None) -> str:
    """Run a RELION command; its output on failure goes into the exception."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def relion_simulate(volume: np.ndarray, pixel_size: float, outdir, *, n: int, snr: float, ctf: CTFParams,
                    seed: int = 0, shift_sigma: float = 0.0) -> SimulationPaths:
    """Particles projected by ``relion_project --ctf`` at uniform random poses, with white noise at ``snr``.

    The same outputs and conventions as :func:`.simulate_dataset` (both write with :func:`.write_dataset`):
    normalised images (noise std 1), ``particles.star`` (CTF, no poses),
    ``truth.star`` (with poses) and ``truth.mrc`` on the images' scale.
    """
    require_relion()
    rng = np.random.default_rng(seed)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    box = volume.shape[-1]
    rotations = random_rotations(n, rng)
    shifts = truncated_normal_shifts(n, shift_sigma, rng)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp = Path(tmp)
        write_map(tmp / "source.mrc", volume.astype(np.float32), pixel_size)
        # relion_project reads poses and CTFs from a particle STAR; the image names are placeholders
        poses = ParticleSet(tmp / "angles.star", [tmp / "none.mrcs"] * n, np.arange(n), pixel_size, box, ctf,
                            rotations, shifts)
        write_particles_star(tmp / "angles.star", poses)
        run(["relion_project", "--i", "source.mrc", "--o", "proj", "--ang", "angles.star", "--ctf",
             "--angpix", f"{pixel_size}"], cwd=tmp)
        clean, _ = read_map(tmp / "proj.mrcs")
    clean = clean.reshape(n, box, box).astype(np.float64)
    noise_std = float(np.sqrt(clean.var() / snr))
    images = clean / noise_std + rng.standard_normal(clean.shape)
    return write_dataset(out, images, volume / noise_std, pixel_size, ctf, rotations, shifts)
