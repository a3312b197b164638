"""The contrast sign of particle images: is the protein bright, as the model expects, or dark?

The forward model (``forward/ctf.py``, RELION's sign) has the CTF positive at
zero frequency, so a projection keeps the sign of the density at low
resolution: protein is *bright* in correctly prepared images.  Images extracted
without inverting the contrast show the protein *dark*; reconstructed as they
are, they give a negative, meaningless map with no error raised.

The sign is read from the low frequencies, where every view of a particle
looks alike: a positive blob at the image centre.  Each image is correlated
with that blob as its own CTF would show it (a matched filter):

    s_i = sum_k  CTF_i(k) B(k) Re I_i(k),     0 < |k| (Fourier pixels) <= k_max

with ``B`` the transform of a Gaussian of standard deviation ``radius / 2``
pixels centred on pixel ``N // 2`` (real and positive) and ``I_i`` the centred
unitary transform of image i.  The zero frequency is left out, so the images'
offsets (however they were normalised) do not count.  Bright protein gives
``s_i > 0`` on average, dark protein ``s_i < 0``; the decision rests on
``z = mean(s) / (std(s) / sqrt(n))``, the mean in standard errors.

Measured (tests/test_contrast.py): 5FUU, 64 px at 3 Å, SNR 0.05, real CTFs
from EMPIAR-10026's table, shifts of 3 px std: ``z = +13`` for 1,000 images and
``-13`` for their inverted copies; |z| grows as sqrt(n), so about 60 images
reach |z| = 3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..forward.ctf import CTFParams, ctf_grid
from ..fourier import fft2c, frequency_grid_2d

__all__ = ["ContrastSign", "contrast_scores", "detect_contrast_sign", "resolve_contrast", "CONTRAST_CHOICES"]

CONTRAST_CHOICES = ("yes", "no", "auto")  # invert the images, keep them, or decide from the data


@dataclass(frozen=True)
class ContrastSign:
    """sign: +1 protein bright (use the images as they are), -1 dark (multiply them by -1).
    z: the signed mean score in standard errors (positive: bright).
    confidence: ``Phi(|z|)``, the probability the sign is right under a normal approximation.
    n_images: how many images were scored.
    decided: ``|z| >= z_min``; when False, ``sign`` is +1 (the images are left alone).
    """

    sign: int
    z: float
    confidence: float
    n_images: int
    decided: bool

    def describe(self) -> str:
        if not self.decided:
            return (f"the contrast sign is unclear from {self.n_images} images (z = {self.z:+.1f}); "
                    "the images are used as they are")
        look = "bright" if self.sign > 0 else "dark"
        return f"protein is {look} in the images (z = {self.z:+.1f} from {self.n_images} images)"


def _blob_spectrum(box: int, radius: float, dtype=torch.float64) -> torch.Tensor:
    """``(box, box)`` centred transform of a unit-mass Gaussian of std ``radius / 2`` at pixel ``box // 2``."""
    sigma = radius / 2
    k2 = (frequency_grid_2d(box, dtype=dtype) ** 2).sum(-1)  # Fourier pixels squared
    return torch.exp(-2 * math.pi ** 2 * sigma ** 2 * k2 / box ** 2)


def contrast_scores(images, ctf: CTFParams, pixel_size: float, *, radius: float | None = None,
                    k_max: float | None = None, batch: int = 256) -> np.ndarray:
    """Per-image matched-filter scores ``s_i`` (see the module docstring): ``(n,)``, positive = bright.

    images:     ``(n, N, N)`` particle images, the particle near pixel ``N // 2``.
    ctf:        their ``n`` CTFs (RELION's sign).
    pixel_size: Å per pixel.
    radius:     particle radius in pixels (default ``0.3 N``).
    k_max:      highest frequency used, Fourier pixels (default: where ``B`` falls to 1%).
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (n, N, N), got {images.shape}")
    n, box = images.shape[0], images.shape[-1]
    if len(ctf) != n:
        raise ValueError(f"{n} images but {len(ctf)} CTFs")
    radius = 0.3 * box if radius is None else float(radius)
    blob = _blob_spectrum(box, radius)
    if k_max is None:  # exp(-2 pi^2 sigma^2 k^2 / N^2) = 0.01
        k_max = box / (math.pi * radius) * math.sqrt(2 * math.log(100))
    k = frequency_grid_2d(box, dtype=torch.float64).norm(dim=-1)
    weight = torch.where((k > 0) & (k <= k_max), blob, torch.zeros_like(blob))
    out = np.empty(n)
    for start in range(0, n, batch):
        sl = slice(start, min(n, start + batch))
        spec = fft2c(torch.as_tensor(images[sl], dtype=torch.float64)).real
        c = ctf_grid(ctf[sl], box, pixel_size)
        out[sl] = (spec * c * weight).sum((-2, -1)).numpy()
    return out


def detect_contrast_sign(images, ctf: CTFParams, pixel_size: float, *, radius: float | None = None,
                         z_min: float = 3.0) -> ContrastSign:
    """Whether the protein is bright (+1) or dark (-1) in ``images``, with the evidence.

    Arguments as :func:`contrast_scores`.  The sign is decided when the mean score is at least
    ``z_min`` standard errors from zero (default 3: wrong about once in 700 sets of pure noise).
    """
    s = contrast_scores(images, ctf, pixel_size, radius=radius)
    n = len(s)
    if n < 2 or not np.std(s) > 0:
        return ContrastSign(1, 0.0, 0.5, n, False)
    z = float(np.mean(s) / (np.std(s, ddof=1) / math.sqrt(n)))
    confidence = 0.5 * (1 + math.erf(abs(z) / math.sqrt(2)))
    decided = abs(z) >= z_min
    return ContrastSign(-1 if (decided and z < 0) else 1, z, confidence, n, decided)


def resolve_contrast(setting: str, images, ctf: CTFParams, pixel_size: float, *,
                     radius: float | None = None) -> tuple[float, str | None]:
    """``--invert-contrast yes|no|auto`` -> (factor for the images, a one-line notice or None).

    ``yes``: -1; ``no``: +1; ``auto``: :func:`detect_contrast_sign` on ``images`` (a sample), -1 with a
    notice when the protein is dark, +1 otherwise (a notice too when the sign is unclear).
    """
    setting = str(setting).lower()
    if setting in ("yes", "true", "invert"):
        return -1.0, None
    if setting in ("no", "false"):
        return 1.0, None
    if setting != "auto":
        raise ValueError(f"invert_contrast must be yes, no or auto, not {setting!r}")
    found = detect_contrast_sign(images, ctf, pixel_size, radius=radius)
    if not found.decided:
        return 1.0, found.describe()
    if found.sign < 0:
        return -1.0, f"{found.describe()}: inverting them (--invert-contrast no to keep them as they are)"
    return 1.0, None
