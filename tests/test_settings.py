"""Settings: the paper's plain setting, tuning on validation images, resuming with other devices."""
from pathlib import Path

import numpy as np
import pytest
import torch

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
    # the default marches from 36 Å to 15 Å (64 px, 3 Å/pixel: band limits 5.33 to 12.8 Fourier pixels)
    assert band_schedule(Settings(), 64, 3.0, 100) == [(0, pytest.approx(64 * 3 / 36)), (25, pytest.approx(9.067, abs=1e-3)),
                                                       (50, pytest.approx(12.8))]


def test_command_line_paper_and_prior():
    parser = build_parser()
    args = parser.parse_args(["reconstruct", "p.star", "-o", "run", "--paper", "--lambda-plus", "3e-2"])
    settings = _settings_from(args, optimizer="sgd")
    assert settings.nyquist_fraction == pytest.approx(0.1) and settings.marching_stages == 1
    assert (settings.lambda_plus, settings.lambda_minus) == (3e-2, Settings().lambda_minus)
    args = parser.parse_args(["compare", "p.star", "-o", "run", "--lambda-minus", "1e-3"])
    settings = _settings_from(args)
    assert settings.nyquist_fraction is None and settings.lambda_minus == 1e-3
    assert settings.search == "auto" and settings.max_shift is None and settings.tune_rate is True
    args = parser.parse_args(["reconstruct", "p.star", "-o", "run", "--probe-rate"])
    assert _settings_from(args).tune_rate is False


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
                        seed=settings.seed, steps=settings.tune_steps, validation_size=settings.test_size)
    assert rate > 0
    assert read and not set(read) & set(dataset.test.tolist())
    assert set(validation.tolist()) <= set(read)


class _CountingObjective:
    """The plain objective, counting its minibatch evaluations at one volume."""

    def __init__(self, inner, start):
        self.inner, self.start, self.at_start = inner, start, 0

    def __call__(self, p, batch, total):
        self.at_start += p is self.start
        return self.inner(p, batch, total=total)

    def test_nll(self, p, batch, total):
        return self.inner.test_nll(p, batch, total=total)


def test_the_search_evaluates_its_start_once(small_set, monkeypatch):
    """The probe and every candidate's first step evaluate the first minibatch at the start volume: once,
    with the same rate as when each evaluates it again; a start changed in place is evaluated anew."""
    from cryosgd.inference.objective import Objective
    from cryosgd.reconstruct import tuning

    settings = Settings(test_size=20, seed=1)
    dataset = rc.load_dataset(small_set, test_size=settings.test_size, seed=settings.seed)
    volume = rc.initial_density(small_set.box, dataset, seed=settings.seed)
    kern = rc.build_kernel(3.0, small_set.box, small_set.pixel_size, settings)
    prior, n = DensityPrior(1e-4, 1e-4), len(dataset.train)

    def search():
        counting = _CountingObjective(Objective(kern, prior, n), volume)
        rate = rc.tune_rate("sgd", dataset, kern, prior, volume, lambda v: v, n, seed=1, steps=3,
                            validation_size=20, objective=counting)
        return rate, counting.at_start

    shared, once = search()
    real = tuning._minibatch_objectives
    monkeypatch.setattr(tuning, "_minibatch_objectives", lambda *a, start=None, **kw: real(*a, **kw))
    again, each = search()
    assert once == 1 and each >= 4            # the probe and at least three candidates
    assert shared == again

    counting = _CountingObjective(Objective(kern, prior, n), volume)
    subset, _ = rc.tuning_split(dataset, tune_images=300, validation_size=20)
    start = volume.clone()
    grad_fn = next(real(dataset, kern, counting, subset, seed=1, batch_size=50, steps=1, start=start))
    first = grad_fn(start)
    first[1].zero_()                          # a caller's change to its copy stays its own
    assert torch.equal(grad_fn(start)[1], real(dataset, kern, Objective(kern, prior, n), subset, seed=1,
                                               batch_size=50, steps=1).__next__()(start)[1])
    start.mul_(2.0)
    assert grad_fn(start)[0] != first[0]


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


def test_default_target_shift_range_and_search():
    """15 Å unless Nyquist forbids it (then 4 pixels), marched from at least 36 Å; shifts within 10% of
    the box; every pose scored while an image has at most 2 million, the pruned search above."""
    from cryosgd.inference.likelihood import MarginalLikelihood
    from cryosgd.inference.search import PrunedLikelihood
    from cryosgd.reconstruct import build_kernel
    from cryosgd.reconstruct.schedule import shift_range_px, target_resolution

    assert target_resolution(None, 64, 3.5) == 15.0
    assert target_resolution(None, 64, 6.0) == 24.0       # Nyquist 12 Å: 15 Å would be 80% of it
    assert target_resolution(20.0, 64, 6.0) == 20.0
    assert band_schedule(Settings(), 32, 6.0, 10)[0][1] == pytest.approx(32 * 6 / 48)  # twice 24 Å
    assert shift_range_px(Settings(), 64) == pytest.approx(6.4) and shift_range_px(Settings(max_shift=0.0), 64) == 0
    centred = build_kernel(64 * 3.5 / 20, 64, 3.5, Settings(max_shift=0.0))
    assert isinstance(centred, MarginalLikelihood)
    picked = build_kernel(64 * 3.5 / 20, 64, 3.5, Settings())              # 20 Å, shifts within 6.4 px
    assert isinstance(picked, PrunedLikelihood)
