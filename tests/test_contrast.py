"""The contrast sign read from the data: simulated sets and their inverted copies."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from cryosgd.forward.density import density_from_model
from cryosgd.forward.simulate import draw_ctfs, simulate_particles
from cryosgd.inference.contrast import contrast_scores, detect_contrast_sign, resolve_contrast
from cryosgd.io import load_particles


@pytest.fixture(scope="module")
def simulated(test_data):
    """1,000 images of 5FUU (48 px, 4 Å), SNR 0.05, CTFs from a real table, shifts of 3 px std."""
    rng = np.random.default_rng(1)
    volume = density_from_model(test_data / "5fuu.pdb.gz", 48, 4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the table has no amplitude contrast: 0.1 is assumed
        table = load_particles(test_data / "empiar10026_ctf.star", require_images=False).ctf
    return simulate_particles(volume, 1000, pixel_size=4.0, snr=0.05, ctf=draw_ctfs(1000, rng, table=table),
                              shift_sigma=3.0, rng=rng)


def test_sign_of_a_set_and_its_inverted_copy(simulated):
    """Measured: z = +103 and -103 (1,000 images)."""
    bright = detect_contrast_sign(simulated.images, simulated.ctf, 4.0)
    dark = detect_contrast_sign(-simulated.images, simulated.ctf, 4.0)
    assert (bright.sign, bright.decided) == (1, True) and bright.z > 20
    assert (dark.sign, dark.decided) == (-1, True) and dark.z < -20
    assert np.isclose(bright.z, -dark.z) and bright.confidence > 0.999
    # an offset per image (another normalisation) changes nothing: the zero frequency is not used
    offsets = np.random.default_rng(2).normal(0, 5, (len(simulated.images), 1, 1)).astype(np.float32)
    assert np.isclose(detect_contrast_sign(-simulated.images + offsets, simulated.ctf, 4.0).z, dark.z, rtol=1e-3)


def test_how_many_images_it_needs(simulated):
    """Each disjoint set of 10 images decides the sign, right, both ways (measured: |z| >= 3 for
    3 images in 96% of random draws, for 5 in 99.8%, for 10 in all)."""
    scores = contrast_scores(simulated.images, simulated.ctf, 4.0)
    assert (scores > 0).mean() > 0.95
    for start in range(0, 1000, 10):
        sl = slice(start, start + 10)
        for sign in (1, -1):
            found = detect_contrast_sign(sign * simulated.images[sl], simulated.ctf[sl], 4.0)
            assert found.decided and found.sign == sign, (start, sign, found)


def test_noise_alone_is_undecided(simulated):
    noise = np.random.default_rng(3).standard_normal(simulated.images.shape).astype(np.float32)
    found = detect_contrast_sign(noise, simulated.ctf, 4.0)
    assert not found.decided and found.sign == 1 and abs(found.z) < 3


def test_resolve_contrast(simulated):
    images, ctf = simulated.images[:200], simulated.ctf[:200]
    assert resolve_contrast("auto", images, ctf, 4.0) == (1.0, None)
    factor, notice = resolve_contrast("auto", -images, ctf, 4.0)
    assert factor == -1.0 and "dark" in notice and "\n" not in notice
    assert resolve_contrast("yes", images, ctf, 4.0) == (-1.0, None)
    assert resolve_contrast("no", -images, ctf, 4.0) == (1.0, None)
    with pytest.raises(ValueError):
        resolve_contrast("maybe", images, ctf, 4.0)


def _particle_set(tmp_path, images, ctf, pixel_size):
    from cryosgd.io import ParticleSet, write_stack

    write_stack(tmp_path / "p.mrcs", images, pixel_size)
    n, box = len(images), images.shape[-1]
    return ParticleSet(tmp_path / "p.star", [tmp_path / "p.mrcs"] * n, np.arange(n), pixel_size, box, ctf)


def test_reconstruct_loads_dark_images_inverted(tmp_path, simulated):
    """``Settings.invert_contrast``: auto inverts dark images with a one-line notice; yes/no are obeyed."""
    from cryosgd.reconstruct import load_dataset

    dark = _particle_set(tmp_path, -simulated.images[:300], simulated.ctf[:300], 4.0)
    with pytest.warns(UserWarning, match=r"^protein is dark in the images \(z = -\d+\.\d from 300 images\): "
                                          r"inverting them"):
        data = load_dataset(dark, test_size=100, seed=0, invert_contrast="auto")
    assert data.contrast == -1.0
    idx = np.arange(5)
    np.testing.assert_allclose(data.images(idx), simulated.images[:5] / data.noise_std, rtol=1e-6)
    assert load_dataset(dark, test_size=100, seed=0, invert_contrast="no").contrast == 1.0
    bright = _particle_set(tmp_path, simulated.images[:300], simulated.ctf[:300], 4.0)
    assert load_dataset(bright, test_size=100, seed=0).contrast == 1.0  # auto, no notice (warnings are errors here)
    assert load_dataset(bright, test_size=100, seed=0, invert_contrast="yes").contrast == -1.0


def test_cli_invert_contrast_option():
    from cryosgd.cli import _settings_from, build_parser

    for argv, expected in ((["reconstruct", "p.star", "-o", "out"], "auto"),
                           (["reconstruct", "p.star", "-o", "out", "--invert-contrast", "yes"], "yes")):
        args = build_parser().parse_args(argv)
        assert _settings_from(args).invert_contrast == expected
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reconstruct", "p.star", "-o", "out", "--invert-contrast", "maybe"])
