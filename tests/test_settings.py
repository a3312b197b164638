"""Settings: the paper's plain setting, tuning on validation images, resuming with other devices."""
from pathlib import Path

import numpy as np
import pytest

import cryosgd.reconstruct as rc
from cryosgd.cli import _settings_from, build_parser
from cryosgd.inference.prior import DensityPrior
from cryosgd.io import InputError, load_particles
from cryosgd.reconstruct import Settings, band_schedule, reconstruct
from cryosgd.simulation import simulate_dataset

DEMO = Path(__file__).resolve().parents[1] / "src" / "cryosgd" / "data" / "demo_5fuu_64px_3A.mrc"


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    paths, _ = simulate_dataset(DEMO, tmp_path_factory.mktemp("settings"), n=420, box=32, pixel_size=6.0,
                                snr=0.05, seed=5)
    return load_particles(paths.particles)


def test_paper_is_the_papers_plain_setting():
    paper = Settings.paper()
    assert (paper.marching_stages, paper.positivity, paper.mask, paper.centre_every) == (1, False, False, 0)
    # 10% of Nyquist on a 64 px box: a fixed band limit of 3.2 Fourier pixels (60 Å at 3 Å/pixel)
    assert band_schedule(paper, 64, 3.0, 100) == [(0, pytest.approx(3.2))]
    assert band_schedule(Settings.paper(resolution=24.0), 64, 3.0, 100) == [(0, pytest.approx(8.0))]
    # the default marches to 25% of Nyquist
    assert band_schedule(Settings(), 64, 3.0, 100)[-1][1] == pytest.approx(8.0)


def test_command_line_paper_and_prior():
    parser = build_parser()
    args = parser.parse_args(["reconstruct", "p.star", "-o", "run", "--paper", "--lambda-plus", "3e-2"])
    settings = _settings_from(args, optimizer="sgd")
    assert settings.nyquist_fraction == pytest.approx(0.1) and settings.marching_stages == 1
    assert (settings.lambda_plus, settings.lambda_minus) == (3e-2, Settings().lambda_minus)
    args = parser.parse_args(["compare", "p.star", "-o", "run", "--lambda-minus", "1e-3"])
    settings = _settings_from(args)
    assert settings.nyquist_fraction == pytest.approx(0.25) and settings.lambda_minus == 1e-3


def test_negative_prior_rate_is_refused(small_set):
    with pytest.raises(InputError, match="--lambda-plus -1 is not a non-negative number"):
        reconstruct(small_set, Settings(lambda_plus=-1.0, test_size=20))


def test_learning_rate_is_tuned_without_the_test_images(small_set, monkeypatch):
    settings = Settings(test_size=20, tune_steps=2, seed=1)
    dataset = rc.load_dataset(small_set, test_size=settings.test_size, seed=settings.seed)
    tuning, validation = rc.tuning_split(dataset, tune_images=settings.tune_images, validation_size=settings.test_size)
    assert not set(tuning) & set(validation) and set(tuning) | set(validation) <= set(dataset.train)
    assert len(validation) == 20
    read = []
    real = rc.Dataset.images

    def spy(self, index):
        read.extend(np.atleast_1d(index).tolist())
        return real(self, index)

    monkeypatch.setattr(rc.Dataset, "images", spy)
    volume = rc.initial_density(small_set.box, dataset, seed=settings.seed)
    read.clear()
    kern = rc.build_kernel(3.0, small_set.box, small_set.pixel_size, settings)
    rate = rc.tune_rate("sgd", dataset, kern, DensityPrior(1e-4, 1e-4), volume, lambda v: v, len(dataset.train),
                        seed=settings.seed, tune_steps=settings.tune_steps, validation_size=settings.test_size)
    assert rate > 0
    assert read and not set(read) & set(dataset.test.tolist())
    assert set(validation.tolist()) <= set(read)


def test_checkpoint_resumes_with_another_device_precision_budget_or_interval(small_set, tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    base = dict(learning_rate=0.5, epochs=1.0, test_size=20, resolution=48.0, seed=2, evaluations=2)
    first = reconstruct(small_set, Settings(**base, precision="auto", checkpoint_every=60.0), checkpoint=ckpt,
                        stop_after=1)
    assert first.log[-1]["step"] == 1
    elsewhere = Settings(**base, precision="float32", memory_budget=1 << 26, checkpoint_every=0.0, device="cpu")
    resumed = reconstruct(small_set, elsewhere, checkpoint=ckpt)
    assert resumed.log[0]["step"] == 1 and resumed.log[-1]["step"] > 1
    with pytest.raises(InputError, match="other settings"):
        reconstruct(small_set, Settings(**{**base, "seed": 3}), checkpoint=ckpt)
