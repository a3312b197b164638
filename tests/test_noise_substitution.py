"""Noise substitution: phase-randomised images keep their amplitudes and low frequencies, the same image
reads the same way in any subset, the corrected FSC, and a gold-standard run on pure noise that the
correction stops from claiming the band limit."""
import numpy as np
import pytest
import torch

from cryosgd.fourier import fft2c, radius_grid, resolution_A
from cryosgd.io import load_particles
from cryosgd.reconstruct import Settings, gold_standard
from cryosgd.reconstruct.halves import half_map_resolution
from cryosgd.reconstruct.noise_substitution import PhaseRandomised, corrected_fsc, randomise_phases
from cryosgd.simulation import simulate_dataset, write_dataset

pytestmark = pytest.mark.filterwarnings("ignore:.*no amplitude contrast")


def test_randomised_phases_keep_amplitudes_and_the_band_and_nothing_else():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 32, 32)).astype(np.float32)
    ids = np.array([0, 1, 2])
    out = randomise_phases(images, 4.0, ids, seed=5)
    a, b = fft2c(torch.as_tensor(images, dtype=torch.float64)), fft2c(torch.as_tensor(out, dtype=torch.float64))
    inside = radius_grid(32, 2) <= 4.0
    assert torch.allclose(a.abs(), b.abs(), atol=1e-4)                       # the power spectrum is kept
    assert torch.allclose(a[:, inside], b[:, inside], atol=1e-4)             # the low frequencies are kept
    beyond = (a[:, ~inside].conj() * b[:, ~inside]).real.sum() / (a[:, ~inside].abs() ** 2).sum()
    assert abs(float(beyond)) < 0.1                                          # the rest is uncorrelated
    assert np.array_equal(out, randomise_phases(images, 4.0, ids, seed=5))  # the same ids: the same phases
    assert not np.allclose(out, randomise_phases(images, 4.0, ids, seed=6))


def test_an_image_reads_the_same_in_every_subset(tmp_path, test_data):
    paths, _ = simulate_dataset(test_data / "5fuu.pdb.gz", tmp_path / "sim", n=12, box=24, pixel_size=8.0,
                                snr=0.1, ctf_from=test_data / "empiar10026_ctf.star", seed=3)
    particles = load_particles(paths.particles)
    rnd = PhaseRandomised.of(particles, 3.0, seed=1)
    whole = rnd.read_images(np.arange(12))
    part = rnd.subset(np.arange(12) % 3 == 1)
    assert isinstance(part, PhaseRandomised) and part.band_px == 3.0
    np.testing.assert_array_equal(part.read_images(np.arange(4)), whole[1::3])
    assert not np.allclose(whole, particles.read_images(np.arange(12)), atol=1e-3)
    # the phases depend on the particle's place in the set, not on where its stack lies
    moved = tmp_path / "moved"
    (tmp_path / "sim").rename(moved)
    again = PhaseRandomised.of(load_particles(moved / "particles.star"), 3.0, seed=1)
    np.testing.assert_array_equal(again.read_images(np.arange(12)), whole)


def test_corrected_fsc_is_the_measured_one_within_the_band_and_chens_formula_beyond():
    t = np.array([1.0, 0.9, 0.8, 0.6, 0.5, 0.3])
    n = np.array([1.0, 0.9, 0.7, 0.5, 0.5, 0.0])
    c = corrected_fsc(t, n, 2.0)
    np.testing.assert_allclose(c[:3], t[:3])
    np.testing.assert_allclose(c[3:], [0.2, 0.0, 0.3])
    assert corrected_fsc(np.array([1.0, 0.2]), np.array([1.0, 0.5]), 0.0)[1] == -0.6
    assert corrected_fsc(np.array([1.0, -0.9]), np.array([1.0, 0.5]), 0.0)[1] == -1.0  # -2.8 is no correlation
    # where the randomised halves agree above MAX_NULL the shell is not read: 0.97 against 0.92 is not 0.62
    assert corrected_fsc(np.array([1.0, 0.97]), np.array([1.0, 0.92]), 0.0)[1] == 0.0


def test_the_switch_leaves_the_checkpoints_of_the_start_and_halves_usable():
    from cryosgd.reconstruct.checkpoint import checkpoint_key

    # a gold standard run without it can be run again with it: the start and halves resume, only the
    # randomised halves run (and a plain run's checkpoint from before the switch existed still resumes)
    assert checkpoint_key(Settings(noise_substitution=False)) == checkpoint_key(Settings())
    assert "noise_substitution" not in checkpoint_key(Settings())


@pytest.mark.slow
def test_on_pure_noise_the_correction_takes_back_the_claim_of_the_band(tmp_path, test_data):
    paths, sim = simulate_dataset(test_data / "5fuu.pdb.gz", tmp_path / "sim", n=1200, box=32, pixel_size=6.0,
                                  snr=0.05, ctf_from=test_data / "empiar10026_ctf.star", shift_sigma=2.0, seed=21)
    noise = np.random.default_rng(0).standard_normal(sim.images.shape)
    write_dataset(tmp_path / "noise", noise, sim.volume, 6.0, sim.ctf, sim.rotations, sim.shifts)
    particles = load_particles(tmp_path / "noise" / "particles.star")
    gs = gold_standard(particles, Settings(epochs=2.0, max_shift=4.0, seed=1, evaluations=2, gold_standard=True))
    band_A, start_A = resolution_A(gs.half1.band_limit, 32, 6.0), resolution_A(gs.null_band_px, 32, 6.0)
    measured_A = half_map_resolution(gs.curve_measured, gs.half1.band_limit, 32, 6.0)
    shells = slice(int(gs.null_band_px) + 1, int(gs.half1.band_limit) + 1)
    past = gs.curve_measured[shells]
    print(f"band {band_A:.1f} Å, start {start_A:.1f} Å; measured FSC past the start {np.round(past, 2)} "
          f"({measured_A:.1f} Å); noise-substituted {np.round(gs.curve_null[shells], 2)}; corrected "
          f"{gs.resolution:.1f} Å")
    # uncorrected, the halves of pure noise agree past their shared start, out to the band limit
    assert past.min() > 0.143 and measured_A == pytest.approx(band_A)
    # corrected, that agreement is cut and the claim falls back towards the start.  How far is one draw
    # of random phases against the images' own noise (BENCHMARKS.md "Noise substitution"): on this set
    # three draws gave 26.1, 26.2 and 29.9 Å, the corrected FSC past the start averaging 0.26-0.30
    # against 0.67 measured
    assert gs.curve[shells].mean() < past.mean() - 0.2
    assert gs.resolution > band_A
