"""The CTF read from real metadata matches the Thon rings in the real images.

For each dataset: average the power spectra of the (Hann-tapered) particle
images, average them over rings of 0.25 Fourier pixel, subtract a smooth
background from the log profile (a running median 12 pixels wide, wider than
the ring spacing near the first zero in all three sets) and locate the first
minimum with a least-squares parabola over +-1.5 pixels.  The same
measurement on the rotationally averaged |CTF|^2 built from the metadata with
``ctf_grid`` gives the predicted first zero; the two must agree within 5%.

The search is restricted to 0.6-1.3 times the predicted first zero: below it
the spectrum is dominated by the particle's own shape, and the second CTF
zero lies beyond sqrt(2) times the first, so the window holds exactly one
ring minimum.  The window is far wider than the 5% tolerance, and a control
checks that a 20% defocus error would be caught.

All three datasets show clear rings despite their few images (7, 17 and 5);
run with ``-s`` to see the numbers.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d, median_filter

from cryosgd.forward.ctf import ctf_first_zero, ctf_grid
from cryosgd.io import load_particles

BIN = 0.25  # Fourier pixels per radial bin
BACKGROUND_WIDTH = 12.0  # Fourier pixels
FIT_HALF_WIDTH = 1.5  # Fourier pixels


def radial_profile(power: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, n)`` centred power spectrum -> (radii, mean power) in rings of ``BIN`` pixels."""
    n = power.shape[-1]
    k = np.arange(n) - n // 2
    radius = np.hypot(*np.meshgrid(k, k, indexing="ij")).ravel()
    bins = int(n // 2 / BIN)
    which = (radius / BIN).astype(int)
    inside = which < bins
    total = np.bincount(which[inside], power.ravel()[inside], bins)
    count = np.bincount(which[inside], None, bins)
    centres = (np.arange(bins) + 0.5) * BIN
    return centres[count > 0], total[count > 0] / count[count > 0]


def ring_minimum(radii: np.ndarray, profile: np.ndarray, low: float, high: float) -> float:
    """Sub-pixel position of the deepest minimum of ``profile`` in ``[low, high]``."""
    window = (radii >= low) & (radii <= high)
    centre = radii[window][np.argmin(profile[window])]
    for _ in range(2):  # refit around the parabola's vertex
        near = np.abs(radii - centre) <= FIT_HALF_WIDTH
        a, b, _ = np.polyfit(radii[near] - centre, profile[near], 2)
        assert a > 0, "no minimum here"
        centre -= b / (2 * a)
    return float(centre)


def measured_profile(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(k, n, n)`` images -> (radii, background-subtracted log power)."""
    n = images.shape[-1]
    images = images - images.mean(axis=(1, 2), keepdims=True)
    taper = np.outer(np.hanning(n), np.hanning(n))  # no cross from the box edges
    spectra = np.fft.fftshift(np.fft.fft2(images * taper), axes=(-2, -1))
    radii, power = radial_profile((np.abs(spectra) ** 2).mean(axis=0))
    log_power = np.log(power)
    background = median_filter(log_power, size=int(BACKGROUND_WIDTH / BIN), mode="nearest")
    return radii, gaussian_filter1d(log_power - background, 2)


@pytest.mark.parametrize("relative_path", [
    "cryodrgn_real_particles/empiar_10076_7.star",
    "aspire_experimental_particles/sample_relion_data.star",
    "cryodrgn_real_particles/relion31.star",
])
def test_first_thon_ring_matches_ctf(shared_data, relative_path):
    path = shared_data / relative_path
    if path.name == "relion31.star":  # its MRC header says 1 Å/px, the STAR 2.806
        with pytest.warns(UserWarning, match="MRC header pixel size"):
            particles = load_particles(path)
    else:
        particles = load_particles(path)
    images = particles.read_images(np.arange(len(particles))).astype(np.float64)
    n, pixel_size, ctf = particles.box, particles.pixel_size, particles.ctf
    to_pixels = n * pixel_size  # 1/Å -> Fourier pixels

    mean_defocus = float(np.mean((ctf.defocus_u + ctf.defocus_v) / 2))
    analytic = ctf_first_zero(mean_defocus, ctf.voltage[0], ctf.cs[0], ctf.amplitude_contrast[0]) * to_pixels
    low, high = 0.6 * analytic, 1.3 * analytic
    ctf_radii, ctf_power = radial_profile((ctf_grid(ctf, n, pixel_size).numpy() ** 2).mean(axis=0))
    predicted = ring_minimum(ctf_radii, ctf_power, low, high)
    radii, profile = measured_profile(images)
    measured = ring_minimum(radii, profile, low, high)

    error = measured / predicted - 1
    wrong_defocus = ctf_first_zero(1.2 * mean_defocus, ctf.voltage[0], ctf.cs[0],
                                   ctf.amplitude_contrast[0]) * to_pixels
    print(f"\n{path.name}: {len(particles)} images of {n} px at {pixel_size:.4g} Å, mean defocus "
          f"{mean_defocus:.0f} Å; first zero predicted {predicted:.2f} px ({predicted / to_pixels:.5f} 1/Å, "
          f"analytic {analytic:.2f} px), measured {measured:.2f} px ({measured / to_pixels:.5f} 1/Å): "
          f"{100 * error:+.1f}%")
    assert abs(predicted / analytic - 1) < 0.02  # astigmatism and binning move the ring little
    assert abs(error) <= 0.05
    assert abs(measured / wrong_defocus - 1) > 0.05  # a 20% defocus error would fail
