"""The contrast transfer function, as RELION 3.1 computes it.

Units: defocus in Å (positive = underfocus), astigmatism angle in radians
(from the image x axis to the direction of ``defocus_u``), voltage in kV,
spherical aberration in mm, phase shift in radians, B-factor in Å², spatial
frequency in 1/Å.  With ``s`` the spatial frequency and ``alpha`` its azimuth::

    lambda = 12.2643247 / sqrt(V (1 + 0.978466e-6 V))      [Å, V in volts]
    df(alpha) = (dfU + dfV)/2 + (dfU - dfV)/2 cos(2 (alpha - angle))
    chi = pi lambda df s^2 - pi/2 Cs lambda^3 s^4 + phase_shift
    ctf = sqrt(1 - w^2) sin(chi) + w cos(chi)     (times exp(-B s^2 / 4))

The sign is RELION's: the CTF is positive (+w) at zero frequency, so images
keep the sign of the projected density at low resolution ("white particles").
``tests/test_relion_agreement.py`` checks it against ``relion_project --ctf``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from ..fourier import frequency_grid_2d

__all__ = ["CTFParams", "electron_wavelength", "compute_ctf", "ctf_grid", "ctf_first_zero"]


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Å for an accelerating voltage in kV."""
    v = voltage_kv * 1e3
    return 12.2643247 / (v * (1 + 0.978466e-6 * v)) ** 0.5


@dataclass(frozen=True)
class CTFParams:
    """Per-image CTF parameters; every field is a float array of shape ``(n,)``."""

    defocus_u: np.ndarray  # Å
    defocus_v: np.ndarray  # Å
    defocus_angle: np.ndarray  # radians
    voltage: np.ndarray  # kV
    cs: np.ndarray  # mm
    amplitude_contrast: np.ndarray  # fraction
    phase_shift: np.ndarray  # radians
    bfactor: np.ndarray  # Å^2

    def __post_init__(self):
        n = len(np.atleast_1d(self.defocus_u))
        for f in fields(self):
            a = np.broadcast_to(np.asarray(getattr(self, f.name), dtype=np.float64), (n,)).copy()
            object.__setattr__(self, f.name, a)

    @classmethod
    def make(cls, defocus_u, defocus_v=None, defocus_angle=0.0, voltage=300.0, cs=2.7,
             amplitude_contrast=0.1, phase_shift=0.0, bfactor=0.0) -> CTFParams:
        """Build from scalars or arrays; ``defocus_v`` defaults to ``defocus_u``."""
        return cls(defocus_u, defocus_u if defocus_v is None else defocus_v, defocus_angle,
                   voltage, cs, amplitude_contrast, phase_shift, bfactor)

    def __len__(self) -> int:
        return len(self.defocus_u)

    def __getitem__(self, index) -> CTFParams:
        return CTFParams(*(np.atleast_1d(getattr(self, f.name)[index]) for f in fields(self)))

    @staticmethod
    def concatenate(parts) -> CTFParams:
        return CTFParams(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(CTFParams)))


def compute_ctf(ctf: CTFParams, freqs: torch.Tensor, pixel_size: float) -> torch.Tensor:
    """CTF values at arbitrary 2D frequencies.

    ctf:        n images' parameters.
    freqs:      ``(..., 2)`` frequencies (kx, ky) in cycles per pixel
                (Fourier pixel index divided by the box size).
    pixel_size: Å per pixel.
    Returns ``(n, ...)`` real tensor in the dtype of ``freqs``.
    """
    dtype, device = freqs.dtype, freqs.device

    def col(a):
        t = torch.as_tensor(a, dtype=dtype, device=device)
        return t.reshape((-1,) + (1,) * (freqs.ndim - 1))

    sx = freqs[..., 0] / pixel_size  # cycles/pixel / (Å/pixel) = 1/Å
    sy = freqs[..., 1] / pixel_size
    s2 = sx**2 + sy**2
    azimuth = torch.atan2(sy, sx)
    lam = col(electron_wavelength(ctf.voltage))
    df = 0.5 * (col(ctf.defocus_u) + col(ctf.defocus_v)) + 0.5 * (
        col(ctf.defocus_u) - col(ctf.defocus_v)) * torch.cos(2 * (azimuth - col(ctf.defocus_angle)))
    cs = col(ctf.cs) * 1e7  # mm -> Å
    chi = np.pi * lam * df * s2 - 0.5 * np.pi * cs * lam**3 * s2**2 + col(ctf.phase_shift)
    w = col(ctf.amplitude_contrast)
    out = torch.sqrt(1 - w**2) * torch.sin(chi) + w * torch.cos(chi)
    return out * torch.exp(-col(ctf.bfactor) * s2 / 4)


def ctf_grid(ctf: CTFParams, box: int, pixel_size: float, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """``(n, box, box)`` CTF on the centred 2D Fourier grid of a square image."""
    return compute_ctf(ctf, frequency_grid_2d(box, dtype=dtype, device=device) / box, pixel_size)


def ctf_first_zero(defocus: float, voltage: float, cs: float, amplitude_contrast: float) -> float:
    """Spatial frequency (1/Å) of the first CTF zero for a round (non-astigmatic) CTF."""
    lam = electron_wavelength(voltage)
    # smallest s > 0 with chi(s) = pi - atan2(w, sqrt(1-w^2)) (solve the quadratic in s^2)
    target = np.pi - np.arctan2(amplitude_contrast, np.sqrt(1 - amplitude_contrast**2))
    a = -0.5 * np.pi * cs * 1e7 * lam**3
    b = np.pi * lam * defocus
    if abs(a) < 1e-30:
        return float(np.sqrt(target / b))
    disc = b * b + 4 * a * target
    s2 = (-b + np.sqrt(disc)) / (2 * a)
    return float(np.sqrt(s2))
