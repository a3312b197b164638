"""The MAP objective (paper eq. 6), its minibatch estimate and the held-out NLL.

Scaling: the objective is reported *per image*,

    f(V) = (1/K) [ -sum_i log p(I_i | V) - log p(V) ],

whose minibatch estimate is ``-(1/B) sum_{b in batch} log p(I_b | V) - (1/K) log p(V)``.
This is the paper's eq. 6 divided by K: the same minimiser, and learning
rates that do not depend on the size of the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.parallel import sum_across
from .likelihood import LikelihoodBatch, LikelihoodResult, MarginalLikelihood
from .prior import DensityPrior

__all__ = ["Objective", "ObjectiveValue"]


@dataclass
class ObjectiveValue:
    value: float                 # minibatch estimate of f(V) (nats per image)
    gradient: torch.Tensor       # (N, N, N)
    result: LikelihoodResult     # per-image log-likelihoods (no poses)


@dataclass
class Objective:
    likelihood: MarginalLikelihood
    prior: DensityPrior
    n_images: int                # K, the training set size

    def __call__(self, volume: torch.Tensor, batch: LikelihoodBatch, total: int | None = None) -> ObjectiveValue:
        """The minibatch objective; ``batch`` may be this process's share of ``total`` images."""
        res = self.likelihood(volume, batch, gradient=True, poses=False)
        nll = -res.log_likelihood.sum().to(torch.float64).reshape(1)
        grad = res.gradient.clone()
        sum_across(nll, grad)
        b = total or len(batch)
        value = float(nll) / b + float(self.prior.negative_log(volume)) / self.n_images
        grad = grad / b + self.prior.gradient(volume) / self.n_images
        return ObjectiveValue(value, grad, res)

    def test_nll(self, volume: torch.Tensor, batch: LikelihoodBatch, total: int | None = None) -> float:
        """Mean negative log-likelihood (nats per image) of held-out images (summed across processes)."""
        res = self.likelihood(volume, batch, gradient=False, poses=False)
        nll = -res.log_likelihood.sum().to(torch.float64).reshape(1)
        sum_across(nll)
        return float(nll) / (total or len(batch))
