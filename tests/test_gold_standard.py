"""Gold-standard half-sets: the split, the low-pass of the shared start, the resolution read from the
half maps' FSC, and one end-to-end run scored against the truth."""
import numpy as np
import pytest
import torch

from cryosgd.evaluate import compare_maps
from cryosgd.fourier import fft3c, radius_grid, resolution_A
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import Settings, gold_standard, split_halves
from cryosgd.reconstruct.halves import half_map_resolution, low_pass
from cryosgd.simulation import simulate_dataset

# the shipped CTF table has no amplitude-contrast column: the reader says so and uses 0.1
pytestmark = pytest.mark.filterwarnings("ignore:.*no amplitude contrast")


def test_split_is_seeded_disjoint_and_balanced():
    a, b = split_halves(1001, 3), split_halves(1001, 3)
    assert np.array_equal(a, b)
    assert set(np.unique(a)) == {1, 2} and abs(int((a == 1).sum()) - int((a == 2).sum())) <= 1
    other = split_halves(1001, 4)
    assert 0.4 < np.mean(other == a) < 0.6  # another seed: another split, as far from this one as chance


def test_low_pass_keeps_nothing_beyond_the_band():
    v = np.random.default_rng(0).standard_normal((24, 24, 24))
    out = low_pass(v, 5.0)
    power = (fft3c(torch.as_tensor(out)).abs() ** 2).numpy()
    r = radius_grid(24, 3).numpy()
    assert power[r > 5.0].max() < 1e-20 * power.sum()
    inner = fft3c(torch.as_tensor(v)).numpy()[r <= 3.0]
    assert np.allclose(fft3c(torch.as_tensor(out)).numpy()[r <= 3.0], inner)


def test_half_map_resolution_reads_the_crossing_within_the_band():
    box, apix = 32, 6.0
    shells = np.arange(box // 2 + 1)
    curve = np.clip(1.0 - shells / 8.0, 0, 1)            # 0.143 at shell 6.86
    assert half_map_resolution(curve, 10.0, box, apix) == pytest.approx(resolution_A(8 * (1 - 0.143), box, apix))
    # above 0.143 up to the band limit: the band limit's resolution, whatever the curve does beyond it
    flat = np.where(shells <= 5, 0.9, 0.8)
    assert half_map_resolution(flat, 5.0, box, apix) == pytest.approx(resolution_A(5.0, box, apix))


@pytest.mark.slow
def test_gold_standard_resolution_matches_the_truth(tmp_path, test_data):
    paths, _ = simulate_dataset(test_data / "5fuu.pdb.gz", tmp_path / "sim", n=1200, box=32, pixel_size=6.0,
                                snr=0.05, ctf_from=test_data / "empiar10026_ctf.star", shift_sigma=2.0, seed=21)
    particles = load_particles(paths.particles)
    truth = read_map(paths.volume)[0]
    gs = gold_standard(particles, Settings(epochs=2.0, max_shift=4.0, seed=1, evaluations=2, gold_standard=True))
    against_truth = compare_maps(gs.average, truth, pixel_size=6.0, align=True)
    print(f"gold standard {gs.resolution:.1f} Å; against the truth {against_truth.resolution_0143:.1f} Å at 0.143, "
          f"{against_truth.resolution_05:.1f} Å at 0.5; halves aligned with correlation {gs.alignment.correlation:.3f}")
    assert against_truth.resolution_05 < 60.0  # the map is right (the truth's spherical average: 73 Å)
    assert 1 / 1.5 < gs.resolution / against_truth.resolution_0143 < 1.5
    assert not gs.alignment.mirror and gs.alignment.correlation > 0.9  # the halves came out close


class Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_gold_standard_run_resumes_to_the_same_maps(tmp_path, test_data):
    paths, _ = simulate_dataset(test_data / "5fuu.pdb.gz", tmp_path / "sim", n=300, box=32, pixel_size=6.0,
                                snr=0.05, ctf_from=test_data / "empiar10026_ctf.star", seed=4)
    particles = load_particles(paths.particles)
    settings = Settings(epochs=1.0, batch_size=20, test_size=30, learning_rate=0.5, evaluations=2, seed=2,
                        checkpoint_every=0.0, gold_standard=True, max_shift=0.0)  # centred particles
    whole = gold_standard(particles, settings)

    def kill_in_half2(stage, done, total, info):
        if stage == "half2" and done == 3:
            raise Killed

    with pytest.raises(Killed):
        gold_standard(particles, settings, checkpoint_dir=tmp_path / "run", progress=kill_in_half2)
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"checkpoint_start.pt", "checkpoint_half1.pt",
                                                             "checkpoint_half2.pt"}
    steps = []
    resumed = gold_standard(particles, settings, checkpoint_dir=tmp_path / "run",
                            progress=lambda stage, done, total, info: steps.append((stage, done)))
    assert steps[0] == ("half2", 3)  # the start and half 1 were finished; half 2 goes on from its step 2
    for a, b in ((whole.half1, resumed.half1), (whole.half2, resumed.half2)):
        np.testing.assert_allclose(b.volume, a.volume, rtol=0, atol=1e-5 * np.abs(a.volume).max())
    assert resumed.resolution == whole.resolution


@pytest.mark.slow
def test_the_command_writes_the_corrected_gold_standard_and_its_curves(tmp_path, test_data, capsys):
    import json

    from cryosgd.cli import main as cli

    paths, _ = simulate_dataset(test_data / "5fuu.pdb.gz", tmp_path / "sim", n=1200, box=32, pixel_size=6.0,
                                snr=0.05, ctf_from=test_data / "empiar10026_ctf.star", shift_sigma=2.0, seed=5)
    out = tmp_path / "gs"
    assert cli(["reconstruct", str(paths.particles), "-o", str(out), "--gold-standard", "--epochs", "2",
                "--max-shift", "4", "--seed", "3", "--reference", str(paths.volume), "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    gold, measured = summary["gold_standard_resolution_A"], summary["gold_standard_measured_resolution_A"]
    with capsys.disabled():
        print(f"gold standard {gold:.1f} Å (measured {measured:.1f} Å); against the truth "
              f"{summary['fsc_0.143_A']:.1f} Å at 0.143; {summary['wall_seconds']:.0f} s")
    assert summary["noise_substitution"] and summary["noise_substitution_band_A"] > summary["band_limit_resolution_A"]
    assert gold >= measured - 1e-6                           # the correction only takes resolution back
    assert 1 / 1.5 < gold / summary["fsc_0.143_A"] < 1.5     # and the result is the truth's, within 1.5x
    assert "corrected by noise substitution" in said
    assert {"checkpoint_null1.pt", "checkpoint_null2.pt", "fsc_halves.png"} <= {p.name for p in out.iterdir()}
    half1, _ = read_map(out / "map_half1.mrc")
    assert half1.shape == (32, 32, 32) and np.isfinite(half1).all()
