"""The paper's density prior.

Per voxel: ``p(v) ∝ exp(-lambda_plus * v)`` for ``v >= 0`` (an exponential,
favouring sparse density) and ``p(v) ∝ exp(-lambda_minus * |v|**shape)`` for
``v < 0`` (a generalised normal; ``shape = 1``, the paper's choice, is a
Laplace tail).  The paper used ``lambda_plus = lambda_minus = 1e-4`` on
synthetic data and ``lambda_plus = 3e-2, lambda_minus = 1e-4`` on real data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DensityPrior"]


@dataclass(frozen=True)
class DensityPrior:
    lambda_plus: float = 1e-4
    lambda_minus: float = 1e-4
    shape: float = 1.0

    def negative_log(self, volume: torch.Tensor) -> torch.Tensor:
        """``-log p(V)`` up to a constant (a scalar)."""
        pos = torch.clamp(volume, min=0)
        neg = torch.clamp(volume, max=0).abs()
        return self.lambda_plus * pos.sum() + self.lambda_minus * (neg**self.shape).sum()

    def gradient(self, volume: torch.Tensor) -> torch.Tensor:
        """Gradient of :meth:`negative_log` (the subgradient ``lambda_plus`` at 0)."""
        neg = volume < 0
        g_neg = -self.lambda_minus * self.shape * volume.abs() ** (self.shape - 1)
        return torch.where(neg, g_neg, torch.full_like(volume, self.lambda_plus))
