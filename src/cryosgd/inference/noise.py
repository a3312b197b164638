"""Noise level of particle images, from the background outside the particle."""
from __future__ import annotations

import numpy as np

__all__ = ["background_mask", "estimate_noise_std"]


def background_mask(box: int, radius: float) -> np.ndarray:
    """``(box, box)`` bool: pixels farther than ``radius`` pixels from the centre ``box // 2``."""
    y, x = np.mgrid[:box, :box] - box // 2
    return x**2 + y**2 > radius**2


def estimate_noise_std(images: np.ndarray, radius: float) -> float:
    """Robust noise std of ``(n, box, box)`` images from pixels outside a disc of ``radius`` pixels.

    Each image's background mean is removed first; the std is taken from the
    median absolute deviation (``1.4826 * MAD``), which the particle's own
    tails barely move.
    """
    imgs = np.asarray(images, dtype=np.float64)
    mask = background_mask(imgs.shape[-1], radius)
    if mask.sum() < 16:
        raise ValueError(f"too few background pixels outside radius {radius}")
    bg = imgs[:, mask]
    bg = bg - np.median(bg, axis=1, keepdims=True)
    return float(1.4826 * np.median(np.abs(bg)))
