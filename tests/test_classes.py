"""Multi-class ab initio on a mixture of two molecules: classes recovered, maps matched, the collapse
guard, resumption, and RELION reading the class table.

The particles: 400 of 5FUU (HIV-1 Env trimer, ~160 Å) and 400 of 8ZPM (~110 Å), simulated by the
package's forward model at 32 px and 6 Å/px, each at SNR 0.05, CTFs from the EMPIAR-10026 table,
shuffled.  Centred, and so no shift search: the classes are under test here, and a shift search
would multiply the cost; benchmarks/classes.py runs off-centre particles with one.
"""
import json
import shutil
import warnings

import numpy as np
import pytest
import starfile
import torch

import cryosgd.reconstruct.classes as classes_module
from cryosgd.cli import main as cli
from cryosgd.evaluate import compare_maps
from cryosgd.io import load_particles, read_map
from cryosgd.reconstruct import Settings, reconstruct
from cryosgd.reconstruct.classes import ClassMixture, assign_class_poses
from cryosgd.simulation import simulate_mixture
from relion import relion_programs  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow
# pinned near the tuned rate (1.05 on these data at 24 Å): tuning is not under test, and costs a run
RUN = dict(classes=2, epochs=4, resolution=30.0, test_size=50, learning_rate=1.0, evaluations=4,
           max_shift=0.0)  # centred particles


@pytest.fixture(scope="module")
def mixture(tmp_path_factory, test_data):
    out = tmp_path_factory.mktemp("mixture")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the table has no amplitude contrast: 0.1 is assumed
        paths, labels = simulate_mixture([test_data / "5fuu.pdb.gz", test_data / "8zpm.cif.gz"], out, n_each=400,
                                         box=32, pixel_size=6.0, snr=0.05, seed=3,
                                         ctf_from=test_data / "empiar10026_ctf.star")
    return paths, labels


def fraction_right(classes, labels):
    """The fraction of particles in their true class, under the better of the two labellings."""
    return max(np.mean(classes == labels), np.mean(classes == 3 - labels))


@pytest.fixture(scope="module")
def cli_run(mixture, tmp_path_factory):
    paths, _ = mixture
    out = tmp_path_factory.mktemp("run")
    refs = ",".join(str(v) for v in paths.volumes)
    assert cli(["reconstruct", str(paths.particles), "-o", str(out), "--classes", "2", "--epochs", "4",
                "--resolution", "30", "--test-size", "50", "--learning-rate", "1.0", "--device", "cpu", "--max-shift", "0",
                "--reference", refs]) == 0
    return out


def test_two_molecules_are_told_apart_and_both_recovered(mixture, cli_run):
    paths, labels = mixture
    table = starfile.read(cli_run / "particles.star")["particles"]
    classes = table["rlnClassNumber"].to_numpy()
    right = fraction_right(classes, labels)
    summary = json.loads((cli_run / "summary.json").read_text())
    print(f"fraction in the right class {right:.3f}; proportions {summary['proportions']}")
    assert right >= 0.9
    # the posterior written with each class is that of the class written
    assert np.all(table["rlnMaxValueProbDistribution"].to_numpy() >= 0.5 - 1e-6)
    # each true map is matched by its own class map, clearly better than by the other
    band = summary["band_limit_px"]
    matched = []
    for truth_path in paths.volumes:
        truth = read_map(truth_path)[0]
        scores = [compare_maps(read_map(cli_run / f"map_class{k:02d}.mrc")[0], truth, pixel_size=6.0,
                               align=True).fsc_at_fraction(0.8, band) for k in (1, 2)]
        print(f"{truth_path.name}: FSC at 80% of the band limit against class 1, 2: {scores}")
        best = int(np.argmax(scores))
        assert scores[best] >= 0.5 and scores[best] - scores[1 - best] >= 0.15
        matched.append(best)
    assert sorted(matched) == [0, 1]
    assert sorted(r["class"] for r in summary["references"]) == [1, 2]


def test_relion_reads_the_classes(cli_run, relion_programs, tmp_path):  # noqa: F811
    """RELION selects the particles of class 2 by rlnClassNumber from our particles.star."""
    ours = starfile.read(cli_run / "particles.star")["particles"]["rlnClassNumber"].to_numpy()
    shutil.copy(cli_run / "particles.star", tmp_path / "particles.star")
    relion_programs.run("relion_star_handler", "--i", "particles.star", "--o", "class2.star", "--select",
                        "rlnClassNumber", "--minval", "2", "--maxval", "2", cwd=tmp_path)
    theirs = starfile.read(tmp_path / "class2.star")["particles"]
    assert len(theirs) == int(np.sum(ours == 2)) > 0
    assert set(theirs["rlnClassNumber"]) == {2}


def test_collapse_guard_revives_a_class_that_lost_every_particle(mixture, monkeypatch):
    """Class 2 starts 20 times too dense: from the first minibatch no image prefers it, and without the
    guard class 1 keeps every particle (fraction right 0.5); the guard re-seeds class 2 and the two
    molecules separate."""
    paths, labels = mixture
    particles = load_particles(paths.particles)
    start = ClassMixture.initial

    def bad_start(self, *args, **kw):
        vols = start(self, *args, **kw)
        vols[1] *= 20.0
        return vols

    monkeypatch.setattr(ClassMixture, "initial", bad_start)
    rec = reconstruct(particles, Settings(**{**RUN, "epochs": 3}))
    classes = assign_class_poses(particles, rec)[3]
    right = fraction_right(classes, labels)
    print(f"re-seeded: {rec.reseeds}; proportions {rec.proportions}; fraction right {right:.3f}")
    assert right >= 0.9


def test_resumed_run_gives_the_same_maps_and_proportions(mixture, tmp_path, monkeypatch):
    """A two-class run killed after a checkpoint continues to the maps and proportions of an uninterrupted one
    (the resumed part crosses a re-seeding, forced by a high threshold, and centring)."""
    paths, _ = mixture
    particles = load_particles(paths.particles).subset(np.arange(300))
    monkeypatch.setattr(classes_module, "RESEED_AFTER", 2)
    monkeypatch.setattr(classes_module, "RESEED_BELOW", 1.2)  # every step until 75%: a re-seeding each step
    s = Settings(**{**RUN, "epochs": 2, "batch_size": 25, "centre_every": 5, "checkpoint_every": 0.0})
    ckpt, killed = tmp_path / "whole.pt", tmp_path / "killed.pt"

    def keep(done, total, row):
        if done == 3:
            shutil.copyfile(ckpt, killed)

    whole = reconstruct(particles, s, checkpoint=ckpt, progress=keep)
    k = torch.load(killed, weights_only=False)["step"]  # the checkpoint a run killed at step 3 leaves
    assert 0 < k < 5
    resumed = reconstruct(particles, s, checkpoint=killed)
    assert any(r["step"] > k for r in whole.reseeds) and len(whole.log) > 5
    assert np.array_equal(resumed.volume, whole.volume)
    assert resumed.proportions == whole.proportions and resumed.reseeds == whole.reseeds
