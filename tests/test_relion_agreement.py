"""The forward model, the simulator, the back-projector and the STAR writer against RELION 3.1 itself.

RELION is the referee for every convention in docs/conventions.md: Euler
angles, origins, the CTF and its sign, the scale of a projection, the STAR
layout.  Two properties of ``relion_project`` (3.1.3) are part of what these
tests pin down:

* it keeps only the frequencies with ``|k| <= N // 2`` (Fourier pixels) and,
  interpolating its zero-padded 3D transform trilinearly, attenuates the
  outermost of those shells; images are therefore compared inside
  ``|k| <= N // 2 - 1``, where RELION's transform is exact;
* for an odd box it puts the projected box centre one pixel off ours, at
  ``(N // 2 + 1, N // 2 + 1)`` (a projected blob centred on voxel ``N // 2``
  lands on pixel ``N // 2 + 1``), whatever the orientation.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryosgd.evaluate import fsc
from cryosgd.forward.ctf import CTFParams
from cryosgd.forward.density import density_from_model
from cryosgd.forward.project import project
from cryosgd.fourier import fft2c, frequency_grid_2d, ifft2c
from cryosgd.io import ParticleSet, read_map, read_particles_star, write_map, write_particles_star, write_stack
from relion import print_table, relion_programs, write_relion_star  # noqa: F401  (relion_programs: a fixture)

pytestmark = pytest.mark.relion

MODEL = "5fuu.pdb.gz"  # asymmetric: a wrong rotation or hand cannot hide
CTF_TABLE = "empiar10026_ctf.star"  # real per-particle defocus and astigmatism (EMPIAR-10026)
PIXEL_SIZE = 4.0  # Å
RELION_ODD_BOX_DISPLACEMENT = 1.0  # pixels, +x and +y: where relion_project puts an odd box's centre


def relion_euler_rotations(rot, tilt, psi) -> np.ndarray:
    """The documented convention, written out: R = scipy ZYZ (rot, tilt, psi) in degrees."""
    return Rotation.from_euler("ZYZ", np.stack([rot, tilt, psi], axis=-1), degrees=True).as_matrix()


def band_limit(images: np.ndarray, radius: float) -> np.ndarray:
    """``(n, N, N)`` images keeping only the frequencies with ``|k| <= radius`` Fourier pixels."""
    k = frequency_grid_2d(images.shape[-1])
    disc = (k**2).sum(-1) <= radius**2
    return ifft2c(fft2c(torch.as_tensor(images, dtype=torch.float64)) * disc).real.numpy()


def ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of each pair of ``(n, N, N)`` images (means removed)."""
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    b = b - b.mean(axis=(-2, -1), keepdims=True)
    return (a * b).sum((-2, -1)) / np.sqrt((a * a).sum((-2, -1)) * (b * b).sum((-2, -1)))


def fsc_bar(rec: np.ndarray, truth: np.ndarray, label: str) -> tuple[np.ndarray, int]:
    """FSC curve and the last shell the bar applies to (2/3 of Nyquist); prints the curve."""
    curve = fsc(rec, truth)
    last = int(2 / 3 * (truth.shape[-1] // 2))
    print(f"\n{label}: FSC vs truth per shell (bar 0.9 for shells 1..{last}):")
    print("  " + " ".join(f"{i}:{c:.3f}" for i, c in enumerate(curve) if i))
    return curve, last


def run_cli(*args: str, cwd: Path) -> None:
    """``cryosgd ARGS`` in a fresh interpreter (the command line's warnings setup stays out of this one)."""
    env = dict(os.environ, CRYOSGD_QUIET="1")
    done = subprocess.run([sys.executable, "-m", "cryosgd", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"cryosgd {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


# --- 1. projection --------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [48, 49])
def test_projection_matches_relion_project(tmp_path, test_data, relion_programs, box):
    """Euler angles, origins, CTF (astigmatism, phase shift, B-factor) and scale, image by image."""
    rng = np.random.default_rng(box)
    n = 8
    voltage, cs, amplitude_contrast = 200.0, 2.0, 0.07  # none of them a default
    volume = density_from_model(test_data / MODEL, box, PIXEL_SIZE)
    write_map(tmp_path / "vol.mrc", volume, PIXEL_SIZE)

    rot, psi = rng.uniform(-180, 180, (2, n))
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    origins = rng.uniform(2, 5, (n, 2)) * rng.choice([-1, 1], (n, 2)) * PIXEL_SIZE  # Å, fractional pixels
    defocus_u = rng.uniform(8000, 25000, n)
    defocus_v = defocus_u - rng.uniform(300, 1500, n)
    defocus_angle = rng.uniform(-180, 180, n)
    phase_shift = np.zeros(n)
    bfactor = np.zeros(n)
    phase_shift[2], bfactor[3] = 70.0, 300.0  # degrees, Å^2
    write_relion_star(tmp_path / "in.star", pixel_size=PIXEL_SIZE, box=box, voltage=voltage, cs=cs,
                      amplitude_contrast=amplitude_contrast, particles={
                          "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                          "rlnOriginXAngst": origins[:, 0], "rlnOriginYAngst": origins[:, 1],
                          "rlnDefocusU": defocus_u, "rlnDefocusV": defocus_v, "rlnDefocusAngle": defocus_angle,
                          "rlnPhaseShift": phase_shift, "rlnCtfBfactor": bfactor})
    relion_programs.run("relion_project", "--i", "vol.mrc", "--o", "proj", "--ang", "in.star", "--ctf",
                        "--angpix", PIXEL_SIZE, cwd=tmp_path)
    relion = mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64)
    assert relion.shape == (n, box, box)

    rotations = relion_euler_rotations(rot, tilt, psi)
    shifts = origins / PIXEL_SIZE  # Å -> pixels: RELION's origin is our shift
    ctf = CTFParams.make(defocus_u, defocus_v, np.radians(defocus_angle), voltage, cs, amplitude_contrast,
                         np.radians(phase_shift), bfactor)
    # our reader makes the same of RELION's file
    read = read_particles_star(tmp_path / "in.star", require_images=False)
    np.testing.assert_allclose(read.rotations, rotations, atol=1e-6)
    np.testing.assert_allclose(read.shifts, shifts, atol=1e-6)
    for name in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast",
                 "phase_shift", "bfactor"):
        np.testing.assert_allclose(getattr(read.ctf, name), getattr(ctf, name), atol=1e-5, err_msg=name)

    if box % 2:
        shifts = shifts - RELION_ODD_BOX_DISPLACEMENT  # a shift t moves content by -t
    vol = torch.as_tensor(volume, dtype=torch.float64)
    ours = project(vol, rotations, shifts=shifts, ctf=ctf, pixel_size=PIXEL_SIZE).numpy()

    # RELION's band limit: nothing outside |k| <= N // 2
    spectra = fft2c(torch.as_tensor(relion)).abs() ** 2
    k2 = (frequency_grid_2d(box) ** 2).sum(-1)
    assert float(spectra[:, k2 > (box // 2) ** 2].sum() / spectra.sum()) < 1e-10

    radius = box // 2 - 1
    ours_b, relion_b = band_limit(ours, radius), band_limit(relion, radius)
    correlations = ncc(ours_b, relion_b)
    scale = float((ours_b * relion_b).sum() / (ours_b * ours_b).sum())
    print(f"\nbox {box}: NCC with relion_project per image {np.round(correlations, 6).tolist()}; "
          f"min {correlations.min():.9f}; scale relion/ours {scale:.6f}")
    assert correlations.min() >= 0.99
    assert abs(scale - 1) < 0.02

    # RELION honours rlnPhaseShift and rlnCtfBfactor: leaving either out leaves a mismatch (1 - NCC)
    # at least 100 times larger
    for row, field in ((2, "phase_shift"), (3, "bfactor")):
        values = {name: getattr(ctf, name).copy() for name in CTFParams.__dataclass_fields__}
        values[field][row] = 0.0
        without = project(vol, rotations[row:row + 1], shifts=shifts[row:row + 1],
                          ctf=CTFParams(**values)[row], pixel_size=PIXEL_SIZE).numpy()
        worse = float(ncc(band_limit(without, radius), relion_b[row:row + 1])[0])
        print(f"  row {row} without its {field}: NCC {worse:.6f}")
        assert 1 - worse > 100 * (1 - correlations[row])


# --- 2. RELION reconstructs our simulation ---------------------------------------------------------


def test_relion_reconstruct_of_our_simulation(tmp_path, test_data, relion_programs):
    """``cryosgd simulate`` (real CTF table, shifts) -> ``relion_reconstruct --ctf`` -> FSC vs truth."""
    box = 48
    run_cli("simulate", str(test_data / MODEL), "-o", "sim", "-n", "2000", "--box", str(box),
            "--apix", str(PIXEL_SIZE), "--snr", "10", "--ctf-from", str(test_data / CTF_TABLE),
            "--shift-sigma", "2", "--seed", "1", cwd=tmp_path)
    folder = tmp_path / "sim"
    truth_star = read_particles_star(folder / "truth.star")
    assert np.abs(truth_star.shifts).max() > 2  # shifts are on

    # SNR (forward/simulate.py): whole-box signal variance over noise variance, the noise std being 1,
    # so the images' variance is SNR + 1
    images = mrcfile.read(folder / "particles.mrcs").astype(np.float64)
    assert images.var() == pytest.approx(10 + 1, rel=0.02)
    # truth.mrc is on the images' scale: RELION's projections of it with the true poses and CTFs are the
    # images' signal (slope 1) and what is left is white noise of variance 1 per Fourier coefficient
    relion_programs.run("relion_project", "--i", "truth.mrc", "--o", "signal", "--ang", "truth.star", "--ctf",
                        "--angpix", PIXEL_SIZE, cwd=folder)
    signal = fft2c(torch.as_tensor(mrcfile.read(folder / "signal.mrcs").astype(np.float64)))
    data = fft2c(torch.as_tensor(images))
    band = (frequency_grid_2d(box) ** 2).sum(-1) <= (box // 2 - 1) ** 2
    signal, data = signal[:, band], data[:, band]
    slope = float((data * signal.conj()).sum().real / (signal.abs() ** 2).sum())
    noise_power = float(((data - signal).abs() ** 2).mean())
    print(f"\nimages vs relion_project of truth.mrc: slope {slope:.4f}, noise power {noise_power:.4f}")
    assert slope == pytest.approx(1, abs=0.02)
    assert noise_power == pytest.approx(1, abs=0.02)

    # RELION takes the pixel size from the optics table (no --angpix needed) and resolves the image
    # names relative to its working folder, which is the STAR file's.
    relion_programs.run("relion_reconstruct", "--i", "truth.star", "--o", "rec.mrc", "--ctf", cwd=folder)
    rec, voxel = read_map(folder / "rec.mrc")
    truth, _ = read_map(folder / "truth.mrc")
    assert voxel == pytest.approx(PIXEL_SIZE)
    curve, last = fsc_bar(rec, truth, "relion_reconstruct of cryosgd simulate")
    assert curve[1:last + 1].min() >= 0.9, f"FSC {curve[1:last + 1].min():.3f} within 2/3 Nyquist"


# --- 3. our back-projector reconstructs RELION's projections --------------------------------------


def test_backproject_of_relion_projections(tmp_path, test_data, relion_programs):
    """``relion_project --ctf --add_noise`` (random poses, origins, CTFs) -> ``cryosgd backproject`` -> FSC."""
    box, n, snr = 48, 2000, 10.0
    rng = np.random.default_rng(7)
    volume = density_from_model(test_data / MODEL, box, PIXEL_SIZE)
    write_map(tmp_path / "vol.mrc", volume, PIXEL_SIZE)
    rot, tilt, psi = Rotation.random(n, random_state=rng).as_euler("ZYZ", degrees=True).T
    mean_defocus = rng.uniform(10000, 30000, n)
    astigmatism = rng.uniform(0, 1000, n)
    write_relion_star(tmp_path / "in.star", pixel_size=PIXEL_SIZE, box=box, voltage=300.0, cs=2.7,
                      amplitude_contrast=0.1, particles={
                          "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi,
                          "rlnOriginXAngst": rng.normal(0, 2, n) * PIXEL_SIZE,
                          "rlnOriginYAngst": rng.normal(0, 2, n) * PIXEL_SIZE,
                          "rlnDefocusU": mean_defocus + astigmatism / 2, "rlnDefocusV": mean_defocus - astigmatism / 2,
                          "rlnDefocusAngle": rng.uniform(-180, 180, n)})
    common = ["--i", "vol.mrc", "--ang", "in.star", "--ctf", "--angpix", PIXEL_SIZE]
    relion_programs.run("relion_project", *common, "--o", "clean", cwd=tmp_path)
    sigma = float(np.sqrt(mrcfile.read(tmp_path / "clean.mrcs").astype(np.float64).var() / snr))
    relion_programs.run("relion_project", *common, "--o", "noisy", "--add_noise", "--white_noise", sigma,
                        cwd=tmp_path)
    noise = mrcfile.read(tmp_path / "noisy.mrcs").astype(np.float64) - mrcfile.read(tmp_path / "clean.mrcs")
    assert noise.std() == pytest.approx(sigma, rel=0.05)

    run_cli("backproject", "noisy.star", "-o", "rec.mrc", cwd=tmp_path)
    rec, voxel = read_map(tmp_path / "rec.mrc")
    assert voxel == pytest.approx(PIXEL_SIZE)
    curve, last = fsc_bar(rec, volume, "cryosgd backproject of relion_project")
    assert curve[1:last + 1].min() >= 0.9, f"FSC {curve[1:last + 1].min():.3f} within 2/3 Nyquist"


# --- 4. RELION reads our STAR files ---------------------------------------------------------------


def test_relion_reads_our_star(tmp_path, relion_programs):
    """``write_particles_star`` -> RELION's parser (``relion_star_handler``) and ``relion_star_printtable``."""
    rng = np.random.default_rng(11)
    n, box, pixel_size = 6, 32, 1.77
    write_stack(tmp_path / "stack.mrcs", rng.standard_normal((n, box, box)), pixel_size)
    ctf = CTFParams.make(rng.uniform(9000, 30000, n), rng.uniform(9000, 30000, n), rng.uniform(-np.pi, np.pi, n),
                         300.0, 2.7, 0.1, rng.uniform(0, np.pi, n), rng.uniform(0, 150, n))
    rotations = Rotation.random(n, random_state=rng).as_matrix()
    shifts = rng.uniform(-6, 6, (n, 2))
    particles = ParticleSet(tmp_path / "ours.star", [tmp_path / "stack.mrcs"] * n, np.arange(n), pixel_size, box,
                            ctf, rotations, shifts)
    write_particles_star(tmp_path / "ours.star", particles)
    # RELION's own reader and writer (MetaDataTable, optics groups): a numeric selection that keeps every row
    relion_programs.run("relion_star_handler", "--i", "ours.star", "--o", "parsed.star", "--select", "rlnDefocusU",
                        "--minval", 0, "--maxval", 1e9, cwd=tmp_path)

    for star in ("ours.star", "parsed.star"):
        path = tmp_path / star
        optics = print_table(relion_programs, path, "optics", "rlnVoltage", "rlnSphericalAberration",
                             "rlnAmplitudeContrast", "rlnImagePixelSize", "rlnImageSize")
        np.testing.assert_allclose(optics, [[300.0, 2.7, 0.1, pixel_size, box]], rtol=1e-6)
        table = print_table(relion_programs, path, "particles", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle",
                            "rlnPhaseShift", "rlnCtfBfactor", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi",
                            "rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup")
        assert table.shape == (n, 11), star
        np.testing.assert_allclose(table[:, 0], ctf.defocus_u, rtol=1e-6, err_msg=star)
        np.testing.assert_allclose(table[:, 1], ctf.defocus_v, rtol=1e-6, err_msg=star)
        np.testing.assert_allclose(table[:, 2], np.degrees(ctf.defocus_angle), atol=1e-4, err_msg=star)
        np.testing.assert_allclose(table[:, 3], np.degrees(ctf.phase_shift), atol=1e-4, err_msg=star)
        np.testing.assert_allclose(table[:, 4], ctf.bfactor, atol=1e-4, err_msg=star)
        # the angles RELION reads give back our rotations under the documented convention
        np.testing.assert_allclose(relion_euler_rotations(*table[:, 5:8].T), rotations, atol=1e-5, err_msg=star)
        np.testing.assert_allclose(table[:, 8:10], shifts * pixel_size, atol=1e-4, err_msg=star)
        np.testing.assert_array_equal(table[:, 10], 1)
    names = relion_programs.run("relion_star_printtable", tmp_path / "parsed.star", "data_particles",
                                "rlnImageName").split()
    assert names == [f"{k:06d}@stack.mrcs" for k in range(1, n + 1)]
