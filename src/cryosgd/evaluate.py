"""Map comparison: Fourier shell correlation and resolution."""
from __future__ import annotations

import numpy as np
import torch

from .fourier import fft3c, shell_index

__all__ = ["fsc", "resolution_at"]


def fsc(a, b) -> np.ndarray:
    """Fourier shell correlation of two ``(N, N, N)`` maps, one value per shell 0 .. N//2."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    fa, fb = fft3c(a), fft3c(b)
    n = a.shape[-1]
    shells = shell_index(n, 3).reshape(-1)
    nshell = n // 2 + 1
    keep = shells < nshell
    s = shells[keep]

    def acc(x):
        return torch.zeros(nshell, dtype=torch.float64).index_add_(0, s, x.reshape(-1)[keep])

    num = acc((fa * fb.conj()).real)
    den = torch.sqrt(acc(fa.abs() ** 2) * acc(fb.abs() ** 2))
    return (num / den.clamp(min=1e-300)).numpy()


def resolution_at(curve: np.ndarray, box: int, pixel_size: float, threshold: float) -> float:
    """Resolution (Å) where the FSC first falls below ``threshold`` (linear interpolation between shells)."""
    below = np.nonzero(curve[1:] < threshold)[0]
    if len(below) == 0:
        shell = len(curve) - 1.0
    else:
        i = below[0] + 1  # first shell below
        f0, f1 = curve[i - 1], curve[i]
        shell = (i - 1) + (f0 - threshold) / (f0 - f1) if f0 != f1 else float(i)
    return float(box * pixel_size / max(shell, 1e-9))
