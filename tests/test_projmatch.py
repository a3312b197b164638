"""Projection matching: pose recovery and map quality against simulated ground truth, and its command."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from cryosgd.baselines.projmatch import (
    fourier_crop_images,
    fourier_pad_volume,
    lowpass,
    projection_matching,
    rotation_angle,
)
from cryosgd.cli import main
from cryosgd.evaluate import compare_maps
from cryosgd.forward.density import density_from_model
from cryosgd.forward.rotations import relion_euler_to_matrix
from cryosgd.fourier import fft2c, fft3c
from cryosgd.io import load_particles, read_map, write_map
from cryosgd.simulation import simulate_dataset
from relion import print_table, relion_programs  # noqa: F401  (relion_programs: a fixture)

BOX, APIX = 40, 8.0
BAND = 12.0                       # Fourier pixels: matching band limit
RESOLUTION = BOX * APIX / BAND    # 26.7 Å
HALF_NYQUIST = BOX // 4           # shell 10


@pytest.fixture(scope="module")
def particles_5fuu(tmp_path_factory, test_data):
    """600 high-SNR particles (SNR 1) of the 5FUU density (CC0 model) at 40 px, 8 Å/px, defocus 1-3 µm."""
    folder = tmp_path_factory.mktemp("env5fuu")
    write_map(folder / "source.mrc", density_from_model(test_data / "5fuu.pdb.gz", BOX, APIX), APIX)
    paths, sim = simulate_dataset(folder / "source.mrc", folder / "data", n=600, box=BOX, pixel_size=APIX,
                                  snr=1.0, seed=1)
    return paths, sim


def test_fourier_crop_keeps_coefficients():
    rng = np.random.default_rng(0)
    for n, size in ((16, 8), (15, 9)):
        images = torch.as_tensor(rng.standard_normal((3, n, n)))
        lo = n // 2 - size // 2
        expected = fft2c(images)[:, lo:lo + size, lo:lo + size]
        cropped = fft2c(fourier_crop_images(images, size))
        # the cropped transform is the crop, up to the unpaired Nyquist row/column of an even crop
        inner = slice(1, None) if size % 2 == 0 else slice(None)
        assert torch.allclose(cropped[:, inner, inner], expected[:, inner, inner], atol=1e-10)
        vol = torch.as_tensor(rng.standard_normal((size,) * 3))
        padded = fourier_pad_volume(vol, n)
        lo3 = n // 2 - size // 2
        spec = fft3c(padded)[lo3:lo3 + size, lo3:lo3 + size, lo3:lo3 + size]
        assert torch.allclose(spec[inner, inner, inner], fft3c(vol)[inner, inner, inner], atol=1e-10)


def test_rotation_angle():
    from scipy.spatial.transform import Rotation

    a = Rotation.random(5, random_state=0).as_matrix()
    b = a @ Rotation.from_rotvec([0, 0, np.radians(7.0)]).as_matrix()
    np.testing.assert_allclose(rotation_angle(a, b), 7.0, atol=1e-9)
    np.testing.assert_allclose(rotation_angle(a, a), 0.0, atol=1e-5)


def test_matching_from_the_true_map_recovers_poses(particles_5fuu):
    paths, sim = particles_5fuu
    particles = load_particles(paths.particles)
    init = lowpass(torch.as_tensor(sim.volume, dtype=torch.float64), BAND).numpy()
    result = projection_matching(particles, iterations=2, init=init, resolution=RESOLUTION)
    assert [row["iteration"] for row in result.log] == [1, 2]
    assert result.band_limit == pytest.approx(BAND)
    # the quadrature's angular step is arctan(1 / 12) = 4.8 degrees: errors are grid-sized
    error = rotation_angle(result.rotations, sim.rotations)
    assert np.median(error) < 3.5
    assert np.mean(error < 6.0) > 0.95
    assert result.log[-1]["median_angle_change"] < 1.0   # converged: the poses no longer move
    assert 0.5 < result.log[-1]["mean_correlation"] < 1.0
    np.testing.assert_array_equal(result.shifts, 0.0)
    # the map is in the truth's frame and on its scale: no alignment
    report = compare_maps(result.volume, sim.volume, pixel_size=APIX)
    assert report.curve[HALF_NYQUIST] >= 0.9
    assert report.resolution_05 < 2.5 * APIX * 2      # FSC 0.5 beyond 40 Å, near the 26.7 Å band


def test_matching_finds_shifts():
    """Shifted, centred-spectrum particles of a small map: the best shifts are the true origin offsets."""
    from cryosgd.baselines.projmatch import ProjectionMatcher
    from cryosgd.forward.density import random_spheres
    from cryosgd.forward.simulate import draw_ctfs, simulate_particles

    rng = np.random.default_rng(3)
    box, apix = 32, 6.0
    volume = random_spheres(box, rng, n_spheres=12)
    sim = simulate_particles(volume, 60, pixel_size=apix, snr=5.0, ctf=draw_ctfs(60, rng), shift_sigma=1.2,
                             rng=rng)
    matcher = ProjectionMatcher(box, apix, 8.0, max_shift=3.5)
    rot, shifts, corr = matcher.match(matcher.slices(sim.volume), sim.images, sim.ctf)
    err = np.linalg.norm(shifts - sim.shifts, axis=1)
    step = np.abs(np.diff(np.unique(matcher.shifts[:, 0]))).min()
    inside = np.linalg.norm(sim.shifts, axis=1) < 3.5 - step
    assert np.mean(err[inside] < step) > 0.9
    assert np.median(rotation_angle(rot, sim.rotations)) < 5.0


def test_projmatch_command(particles_5fuu, tmp_path, monkeypatch):
    paths, sim = particles_5fuu
    monkeypatch.setenv("CRYOSGD_QUIET", "1")
    out = tmp_path / "pm"
    status = main(["projmatch", str(paths.particles), "-o", str(out), "--iterations", "1",
                   "--init", str(paths.volume), "--resolution", f"{RESOLUTION}"])
    assert status == 0
    volume, voxel = read_map(out / "map.mrc")
    assert volume.shape == (BOX,) * 3
    assert voxel == pytest.approx(APIX)
    report = compare_maps(volume, sim.volume, pixel_size=APIX)  # started from the truth: same frame
    assert report.curve[HALF_NYQUIST] >= 0.9
    posed = load_particles(out / "particles.star")
    assert len(posed) == len(sim.rotations) and posed.pixel_size == pytest.approx(APIX)
    assert np.median(rotation_angle(posed.rotations, sim.rotations)) < 3.5
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and float(rows[0]["mean_correlation"]) > 0.5
    assert (out / "slices.png").stat().st_size > 1000


@pytest.mark.relion
def test_projmatch_poses_read_back_by_relion(particles_5fuu, tmp_path, monkeypatch, relion_programs):
    """RELION's own STAR reader makes the same rotations of ``particles.star`` as ours."""
    paths, _ = particles_5fuu
    monkeypatch.setenv("CRYOSGD_QUIET", "1")
    out = tmp_path / "pm"
    assert main(["projmatch", str(paths.particles), "-o", str(out), "--iterations", "1",
                 "--init", str(paths.volume), "--resolution", f"{RESOLUTION}"]) == 0
    posed = load_particles(out / "particles.star")
    values = print_table(relion_programs, out / "particles.star", "particles",
                         "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
    assert values.shape == (len(posed), 3)
    relion_rot = relion_euler_to_matrix(values[:, 0], values[:, 1], values[:, 2])
    assert np.max(rotation_angle(relion_rot, posed.rotations)) < 0.01
