"""The mixture of K densities (multi-class ab initio): its objective, gradient and held-out NLL.

With class proportions ``pi_k`` (summing to 1) and densities ``V_1..V_K`` ``(K, N, N, N)``::

    log p(I_b | V_1..V_K) = logsumexp_k ( log pi_k + log p(I_b | V_k) )
    gamma_bk = pi_k p(I_b | V_k) / sum_j pi_j p(I_b | V_j)          (the class posterior)
    d/dV_k [ -sum_b log p(I_b | V_1..V_K) ] = sum_b gamma_bk d/dV_k [ -log p(I_b | V_k) ]

The objective per image is the plain one (:mod:`.objective`) with the mixture in place of the
single density's likelihood and the prior summed over the classes::

    f(V_1..V_K) = (1/n) [ -sum_i log p(I_i | V_1..V_K) - sum_k log p(V_k) ]

Each class uses the same likelihood kernel.  A minibatch costs two passes per class: one without
gradient gives every class's log-likelihoods ``(B, K)`` and so the posteriors; one with gradient,
the images weighted by ``gamma_bk`` (the kernels' ``image_weights``, free), gives class k's
gradient.  The posteriors must be known before any gradient can be formed, and the kernels keep
no scores between calls, so the score products of the first pass are done again in the second:
a step costs K forward passes plus K forward-and-backward passes, ``K (1 + forward / step)`` times
a single-class step (3.2 times for K = 2 at 32 px, band limit 8 px, 29 shifts; BENCHMARKS.md).

``similarity`` ``s`` (0 to 1) replaces the posteriors that weight the gradients by
``(1 - s) gamma + s / K``: early in a run every class then learns from every image (the
annealing of class posteriors that keeps one class from taking all particles at the start, see
``docs/classes.md``).  With ``s > 0`` the gradient is not that of ``f``; the value always is.
With K = 1 the objective, gradient and held-out NLL are the plain ones (``pi_1 = 1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..runtime.parallel import sum_across
from .likelihood import LikelihoodBatch, LikelihoodResult, MarginalLikelihood
from .objective import ObjectiveValue
from .prior import DensityPrior

__all__ = ["mixture_log_likelihood", "class_log_likelihoods", "MixtureObjective", "MixtureValue"]


def mixture_log_likelihood(class_log_likelihood: torch.Tensor,
                           log_proportions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` per-class log-likelihoods and ``(K,)`` log proportions -> the mixture's
    log-likelihoods ``(B,)`` (nats) and the class posteriors ``(B, K)`` (rows sum to 1)."""
    joint = class_log_likelihood + log_proportions.to(class_log_likelihood)[None, :]
    total = torch.logsumexp(joint, dim=1)
    return total, torch.exp(joint - total[:, None])


def class_log_likelihoods(likelihood, volumes: torch.Tensor, batch) -> torch.Tensor:
    """``(B, K)`` log p(I_b | V_k) of ``volumes`` ``(K, N, N, N)`` (no gradient, no poses)."""
    cols = [likelihood(v, batch, gradient=False, poses=False).log_likelihood for v in volumes]
    return torch.stack(cols, 1)


@dataclass
class MixtureValue(ObjectiveValue):
    posteriors: torch.Tensor | None = None        # (B, K) class posteriors gamma (exact, not annealed)
    class_log_likelihood: torch.Tensor | None = None  # (B, K) log p(I_b | V_k)


@dataclass
class MixtureObjective:
    """The mixture objective for ``volumes`` ``(K, N, N, N)``; ``log_proportions`` ``(K,)``."""

    likelihood: MarginalLikelihood
    prior: DensityPrior
    n_images: int                 # n, the training set size
    log_proportions: torch.Tensor
    similarity: float = 0.0       # 0: exact gradient; > 0: annealed posteriors weight the gradients

    def __call__(self, volumes: torch.Tensor, batch: LikelihoodBatch, total: int | None = None) -> MixtureValue:
        """The minibatch objective; ``batch`` may be this process's share of ``total`` images."""
        k = volumes.shape[0]
        ll = class_log_likelihoods(self.likelihood, volumes, batch)
        mix, gamma = mixture_log_likelihood(ll, self.log_proportions)
        weights = gamma if self.similarity == 0 else (1 - self.similarity) * gamma + self.similarity / k
        grads = torch.stack([self.likelihood(volumes[j], batch, gradient=True, poses=False,
                                             image_weights=weights[:, j]).gradient for j in range(k)])
        nll = -mix.sum().to(torch.float64).reshape(1)
        sum_across(nll, grads)
        b = total or len(batch)
        value = float(nll) / b + float(self.prior.negative_log(volumes)) / self.n_images
        grad = grads / b + self.prior.gradient(volumes) / self.n_images
        return MixtureValue(value, grad, LikelihoodResult(mix, None, None, None, None), gamma, ll)

    def test_nll(self, volumes: torch.Tensor, batch: LikelihoodBatch, total: int | None = None) -> float:
        """Mean negative mixture log-likelihood (nats per image) of held-out images."""
        mix, _ = mixture_log_likelihood(class_log_likelihoods(self.likelihood, volumes, batch),
                                        self.log_proportions)
        nll = -mix.sum().to(torch.float64).reshape(1)
        sum_across(nll)
        return float(nll) / (total or len(batch))
