"""Marginal likelihood of images and its exact gradient, as matrix products.

For image b (band-limited half-plane coefficients ``d_b``, CTF ``c_b``),
shift s (phase ``phi_s``) and rotation r (slice ``y_r``), with half-plane
weights ``w`` (2, or 1 at the origin) and noise std sigma::

    E_bsr = sum_k w_k |d_bk - phi_sk c_bk y_rk|^2
          = sum w|d|^2 - 2 Re sum w conj(d) phi c y + sum w c^2 |y|^2
    log p(I_b | V) = logsumexp_{s,r} ( log w_s + log w_r - E_bsr / (2 sigma^2) ) - (P_full / 2) log(2 pi sigma^2)

(``P_full`` counts the coefficients of the full disc.)  The cross term is one
real matrix product, rows = (image, symmetry, shift), columns = base
rotations (see :mod:`.rotation_set`); the norm term is a second, S times
smaller one.  The gradient with respect to the slices is the same two
products transposed, weighted by the posterior responsibilities; it then goes
back through the slicing operator's adjoint and :class:`.BandTransform`'s.

Rotations are processed in chunks so the score matrix stays within a memory
budget; when all scores fit they are kept (one pass), otherwise they are
recomputed for the gradient (two passes).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..forward.bandvolume import BandTransform
from ..forward.ctf import CTFParams, compute_ctf
from ..forward.shift import phase_shifts
from ..forward.sparse_slicing import SparseSlicing
from ..fourier import fft2c
from ..runtime.device import exp_floored_, flush_denormals, tf32_products
from ..runtime.memory import default_memory_budget
from .rotation_set import RotationSet, expand_variants, half_plane_permutations

__all__ = ["half_plane_frequencies", "LikelihoodBatch", "LikelihoodResult", "MarginalLikelihood"]

def half_plane_frequencies(band_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer frequencies ``(P, 2)`` with ``|k| <= band_limit`` on the half plane and their weights ``(P,)``.

    The half plane is ``ky > 0`` or ``ky == 0, kx >= 0``; every point but the
    origin stands for itself and its Hermitian mirror (weight 2).
    """
    r = int(math.floor(band_limit))
    ky, kx = np.mgrid[0:r + 1, -r:r + 1]
    kx, ky = kx.ravel(), ky.ravel()
    keep = (kx**2 + ky**2 <= band_limit**2) & ((ky > 0) | (kx >= 0))
    k = np.stack([kx[keep], ky[keep]], 1).astype(np.float64)
    w = np.where((k[:, 0] == 0) & (k[:, 1] == 0), 1.0, 2.0)
    return k, w


@dataclass
class LikelihoodBatch:
    """A minibatch prepared for the kernel (all tensors on the kernel's device)."""

    data: torch.Tensor        # (B, P) complex: band-limited half-plane coefficients
    ctf: torch.Tensor         # (B, P) real
    data_norm: torch.Tensor   # (B,) sum w |d|^2

    def __len__(self) -> int:
        return self.data.shape[0]


@dataclass
class LikelihoodResult:
    log_likelihood: torch.Tensor        # (B,) log p(I_b | V) in nats
    gradient: torch.Tensor | None       # (N, N, N) gradient of -sum_b log p(I_b | V)
    best_rotation: np.ndarray | None    # (B, 3, 3) most probable rotation (None unless poses were asked for)
    best_shift: np.ndarray | None       # (B, 2) most probable origin offset (pixels)
    best_probability: np.ndarray | None  # (B,) posterior probability of that (rotation, shift)


LOG_ZERO = -1e30  # the log weight of a rotation outside the quadrature: exp() is 0, and 0 * LOG_ZERO is 0


def _pad_columns(x: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """``x`` with zero columns appended up to a multiple of ``multiple``: products whose inner or
    outer size is a multiple of the vector width run up to a third faster, and zeros change nothing."""
    pad = -x.shape[1] % multiple
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


class MarginalLikelihood:
    """The likelihood kernel for one band limit, quadrature and box.

    box:          image side N (pixels); pixel_size: Å/pixel.
    band_limit:   r (Fourier pixels); only ``|k| <= r`` is used.
    rotations:    a :class:`RotationSet`.
    shifts:       ``(S, 2)`` origin offsets (pixels) and ``shift_weights`` ``(S,)`` summing to 1.
    noise_std:    sigma per pixel (1 for normalised images).
    tf32:         on CUDA, TF32 inputs (float32 accumulation) for the products (see
                  :func:`cryosgd.runtime.device.resolve_precision`); ignored elsewhere.
    memory_budget: bytes for the score matrix; sets the rotation chunk.  ``None``: a quarter of the
                  memory available to the process on CPU (at least 256 MiB), half the free memory
                  on a GPU; a given budget is also capped at half the free memory of a GPU.
    """

    def __init__(self, box: int, pixel_size: float, band_limit: float, rotations: RotationSet,
                 shifts=None, shift_weights=None, *, noise_std: float = 1.0, oversampling: int = 2,
                 kernel: str = "trilinear", dtype=torch.float32, device=None, memory_budget: int | None = None,
                 tf32: bool = False):
        self.box, self.pixel_size, self.band_limit = box, pixel_size, band_limit
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        self.cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.noise_std = float(noise_std)
        self.tf32 = bool(tf32) and self.device.type == "cuda" and dtype == torch.float32
        self.rotations = rotations
        if shifts is None:
            shifts, shift_weights = np.zeros((1, 2)), np.ones(1)
        self.shifts = np.array(shifts, dtype=np.float64)
        freqs, weights = half_plane_frequencies(band_limit)
        self.freqs = freqs
        self.n_points = len(freqs)
        self.n_full = int(2 * len(freqs) - 1)  # coefficients of the full disc
        tt = dict(dtype=dtype, device=self.device)
        self.weights = torch.as_tensor(weights, **tt)
        self.log_shift_weights = torch.as_tensor(np.log(np.asarray(shift_weights, dtype=np.float64)), **tt)
        # (Mb,) or (Mb, 8) per variant (a quadrature restricted to an asymmetric unit); a rotation outside
        # the quadrature (-inf) gets LOG_ZERO, which the products carry without 0 * inf = nan
        self.log_rot_weights = torch.as_tensor(np.maximum(rotations.log_weights, LOG_ZERO), **tt)
        self.per_variant = self.log_rot_weights.dim() == 2
        freqs_t = torch.as_tensor(freqs, dtype=torch.float64)
        self.phases = phase_shifts(freqs_t, torch.as_tensor(self.shifts), box).to(self.device, self.cdtype)  # (S, P)
        self._freqs_cycles = (freqs_t / box)
        # symmetries: for variant v, data point p goes to slice point index[v, p] (conjugated where conj)
        index, conj = half_plane_permutations(freqs)
        self.sym_index = torch.as_tensor(index, device=self.device)
        self.sym_conj = torch.as_tensor(conj, device=self.device)
        # the transform cube and the slicing operator (built once for this band limit and quadrature)
        self.band = BandTransform(box, band_limit, oversampling=oversampling, kernel=kernel, dtype=dtype,
                                  device=self.device)
        self.slicing = SparseSlicing(torch.as_tensor(rotations.base), freqs_t, oversampling, self.band.size, kernel,
                                     dtype, self.device)
        self.slice_op, self.slice_op_t = self.slicing.matrix, self.slicing.matrix_t
        # the operator and its transpose: values and column indices, one entry per tap; grows as
        # the fifth power of the band limit (rotations ~ r^3 times points ~ r^2)
        self.operator_bytes = self.slicing.nbytes
        self.memory_budget = default_memory_budget(self.device) if memory_budget is None else int(memory_budget)
        if self.device.type == "cuda":  # the score matrix may use half of the free device memory
            self.memory_budget = min(self.memory_budget, torch.cuda.mem_get_info(self.device)[0] // 2)
        # rotations per chunk for a minibatch of 100 (scaled to the batch at each call)
        bytes_per_rotation = torch.finfo(dtype).bits // 8 * 100 * 8 * len(self.shifts)
        self.chunk = max(1, min(len(rotations.base), self.memory_budget // bytes_per_rotation))

    # ------------------------------------------------------------------ data
    def prepare(self, images, ctf: CTFParams | None) -> LikelihoodBatch:
        """``(B, N, N)`` real images (noise std ``noise_std``) -> a :class:`LikelihoodBatch`."""
        imgs = torch.as_tensor(np.asarray(images), dtype=torch.float64)
        spectra = fft2c(imgs)
        n = self.box
        kx = torch.as_tensor(self.freqs[:, 0], dtype=torch.long) + n // 2
        ky = torch.as_tensor(self.freqs[:, 1], dtype=torch.long) + n // 2
        data = spectra[:, ky, kx]
        if ctf is None:
            c = torch.ones(data.shape, dtype=torch.float64)
        else:
            c = compute_ctf(ctf, self._freqs_cycles, self.pixel_size)
        w = self.weights.double().cpu()
        norm = (w * data.abs() ** 2).sum(1)
        return LikelihoodBatch(data.to(self.device, self.cdtype), c.to(self.device, self.dtype),
                               norm.to(self.device, self.dtype))

    # ---------------------------------------------------------------- slices
    def slices_pairs(self, volume: torch.Tensor) -> torch.Tensor:
        """``(Mb, P, 2)`` real (re, im) slices of the base rotations."""
        cube = self.band.forward_pairs(volume.to(self.device, self.dtype))
        return self.slicing.forward_pairs(cube)

    def slices_adjoint_pairs(self, grad_pairs: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`slices_pairs`: ``(Mb, P, 2)`` -> ``(N, N, N)`` real."""
        return self.band.adjoint_pairs(self.slicing.adjoint_pairs(grad_pairs))

    def slices(self, volume: torch.Tensor) -> torch.Tensor:
        """``(Mb, P)`` complex slices of the base rotations."""
        return torch.view_as_complex(self.slices_pairs(volume))

    def slices_adjoint(self, grad_slices: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`slices`: ``(Mb, P)`` complex -> ``(N, N, N)`` real."""
        return self.slices_adjoint_pairs(torch.view_as_real(grad_slices.contiguous()))

    # ---------------------------------------------------------------- kernel
    def shift_bias(self, batch: LikelihoodBatch) -> torch.Tensor:
        """``(B, S)`` the terms of a pose's log joint score that depend on the image and shift only:
        ``log w_s - |d|^2 / (2 sigma^2) - (n_full / 2) log(2 pi sigma^2)`` (nats)."""
        return (self.log_shift_weights[None, :] - 0.5 / self.noise_std**2 * batch.data_norm[:, None]
                - 0.5 * self.n_full * math.log(2 * math.pi * self.noise_std**2))

    def _rows(self, batch: LikelihoodBatch):
        """Data-side matrices: cross rows ``(B*8*S, 2P+1)`` and norm rows ``(B*8, P)``.

        A cross row holds ``(Re g_1, -Im g_1, Re g_2, -Im g_2, ..., bias)``: point by point in the
        (re, im) order of the slices' pairs, so ``row . [y pairs, 1] = Re sum g y + bias``.
        """
        b, p = batch.data.shape
        s = len(self.shifts)
        inv2 = 1.0 / self.noise_std**2
        h = (self.weights * batch.ctf)[:, None, :] * batch.data.conj()[:, None, :] * self.phases[None]  # (B,S,P)
        g, c2v = expand_variants(h, self.weights * batch.ctf**2, self.sym_index, self.sym_conj)  # (B,8,S,P), (B,8,P)
        row_bias = self.shift_bias(batch)                                                 # (B,S)
        pairs = torch.stack([g.real, -g.imag], -1).view(b, 8, s, 2 * p) * inv2
        cross = torch.cat([pairs, row_bias[:, None, :, None].expand(b, 8, s, 1)], dim=3)   # (B,8,S,2P+1)
        return cross.reshape(b * 8 * s, 2 * p + 1), c2v.reshape(b * 8, p)

    def _score_function(self, batch: LikelihoodBatch, y: torch.Tensor, shifts_first: bool = False):
        """Log joint scores of base rotations ``start:stop`` as ``(C, B*8*S)`` (columns: image, variant, shift;
        with ``shifts_first``: shift, image, variant, so that reductions over shifts run over whole rows).

        Rotations run down the rows so the big product is ``(C, D) @ (D, B*8*S)``, the
        orientation the BLAS runs fastest, and the gradient products need no transposes.
        Returns ``scores(start, stop)`` and the data-side rows ``cross (B*8*S, 2P+1)`` (in the columns'
        order), ``c2v (B*8, P)``.
        """
        b, s, mb = len(batch), len(self.shifts), y.shape[0]
        inv2 = 1.0 / self.noise_std**2
        cross, c2v = self._rows(batch)
        ones = torch.ones((mb, 1), dtype=self.dtype, device=self.device)
        ynorm = y.square().sum(-1)                                                         # (Mb, P)
        y = y.view(mb, -1)                                                                 # (Mb, 2P): (re, im) pairs
        lw = self.log_rot_weights if self.per_variant else self.log_rot_weights[:, None]  # (Mb, 8) or (Mb, 1)
        if s == 1:  # one product: the norm term and the rotation weights ride along as extra columns
            # per-variant weights: a one-hot of each row's variant (data side) picks its column of lw
            pick = torch.eye(8, **dict(dtype=self.dtype, device=self.device)).repeat(b, 1) if self.per_variant \
                else torch.ones_like(c2v[:, :1])                                           # (B8, 8) or (B8, 1)
            left = _pad_columns(torch.cat([cross, (-0.5 * inv2) * c2v, pick], 1))
            right = _pad_columns(torch.cat([y, ones, ynorm, lw], 1))                       # (Mb, 3P+2+pad)
            left = left.T.contiguous()                                                     # (3P+2+pad, B8)

            def scores(start, stop):
                return right[start:stop] @ left
        else:
            if shifts_first:
                cross = cross.view(b, 8, s, -1).permute(2, 0, 1, 3).reshape(s * b * 8, -1)
            cross_t, c2v_t = _pad_columns(cross).T.contiguous(), c2v.T.contiguous()        # (2P+1+pad, B8S), (P, B8)
            ycols = _pad_columns(torch.cat([y, ones], 1))                                  # (Mb, 2P+1+pad)

            def scores(start, stop):
                sc = ycols[start:stop] @ cross_t                                           # (C, B8S)
                nt = torch.mm(ynorm[start:stop], c2v_t).mul_(-0.5 * inv2)                 # (C, B8)
                nt.view(stop - start, b, -1).add_(lw[start:stop, None, :])                 # (C, B, 8): + log w_r
                if shifts_first:
                    sc.view(stop - start, s, b * 8).add_(nt[:, None, :])
                else:
                    sc.view(stop - start, b * 8, s).add_(nt[:, :, None])
                return sc
        return scores, cross, c2v

    def __call__(self, volume: torch.Tensor, batch: LikelihoodBatch, *, gradient: bool = True,
                 poses: bool = True, image_weights: torch.Tensor | None = None) -> LikelihoodResult:
        """Log-likelihoods, the gradient of their negative sum, and (with ``poses``) the best poses.

        ``image_weights`` ``(B,)``: the gradient is that of ``-sum_b w_b log p(I_b | V)`` instead (a
        mixture's class posteriors, :mod:`.mixture`); it scales each image's responsibilities, where
        they are normalised, so it costs nothing.  ``None`` leaves the result bit for bit as without.

        A GPU that runs out of memory gets a smaller rotation chunk and a retry, not a crash.
        """
        while True:
            try:
                with tf32_products(self.tf32), flush_denormals():
                    return self._evaluate(volume, batch, gradient, poses, image_weights)
            except torch.OutOfMemoryError:
                if self.chunk == 1:
                    raise
                self.chunk = max(1, self.chunk // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(f"out of device memory: rotation chunk reduced to {self.chunk}", stacklevel=2)

    def _evaluate(self, volume: torch.Tensor, batch: LikelihoodBatch, gradient: bool,
                  poses: bool, image_weights: torch.Tensor | None = None) -> LikelihoodResult:
        y = self.slices_pairs(volume)                                                      # (Mb, P, 2)
        b, mb, s, p = len(batch), y.shape[0], len(self.shifts), self.n_points
        inv2 = 1.0 / self.noise_std**2
        scores, cross, c2v = self._score_function(batch, y)
        chunk = max(1, self.chunk * 100 // b)
        chunks = [(i, min(i + chunk, mb)) for i in range(0, mb, chunk)]
        keep = len(chunks) == 1
        # pass 1: per-image log-sum-exp (and the best pose)
        tt = dict(dtype=self.dtype, device=self.device)
        m = torch.full((b,), -math.inf, **tt)
        z = torch.zeros(b, **tt)
        best_val = torch.full((b,), -math.inf, **tt)
        best_idx = torch.zeros((b, 3), dtype=torch.long, device=self.device)
        stored = None
        for start, stop in chunks:
            sc = scores(start, stop)                                                       # (C, B8S)
            col_max = sc.amax(0).view(b, 8 * s)
            cmax, col = col_max.max(1)                                                     # (B,): best (variant, shift)
            better = cmax > best_val
            if poses and better.any():
                sel = better.nonzero()[:, 0]
                row = sc.index_select(1, sel * 8 * s + col[sel]).argmax(0)                 # best rotation in the chunk
                best_idx[sel, 0], best_idx[sel, 1], best_idx[sel, 2] = col[sel] // s, col[sel] % s, row + start
                best_val = torch.where(better, cmax, best_val)
            new_m = torch.maximum(m, cmax)
            if keep:
                exp_floored_(sc.sub_(new_m.repeat_interleave(8 * s)[None, :]))
                z = z * torch.exp(m - new_m) + sc.sum(0).view(b, -1).sum(1)
                stored = sc
            else:
                per_image = sc.view(stop - start, b, 8 * s)
                z = z * torch.exp(m - new_m) + exp_floored_(per_image - new_m[None, :, None]).sum((0, 2))
            m = new_m
        lse = m + torch.log(z)
        grad = None
        if gradient:
            # responsibilities (C, B8S) times the data-side rows give d(sum log p)/d[Re y, Im y] (cross term)
            # and the weights of c^2 |y|^2 (norm term); with one pass, 1/z is folded into the small rows
            scale = (1.0 / z) if keep else torch.ones_like(z)
            if image_weights is not None:
                scale = scale * torch.as_tensor(image_weights, **tt)
            cross_b = cross[:, :-1] * scale.repeat_interleave(8 * s)[:, None]              # (B8S, 2P)
            c2v_b = c2v * scale.repeat_interleave(8)[:, None]                              # (B8, P)
            if s == 1:  # both terms in one product
                back = _pad_columns(torch.cat([cross_b, c2v_b], 1), 8)                     # (B8, 3P+pad)
            else:
                back, cross_b = None, _pad_columns(cross_b, 8)                             # (B8S, 2P+pad)
            gall = None if keep else torch.empty((mb, 3 * p if back is None else back.shape[1]), **tt)
            for start, stop in chunks:
                if keep:
                    resp = stored
                else:
                    resp = scores(start, stop)
                    exp_floored_(resp.view(stop - start, b, 8 * s).sub_(lse[None, :, None]))
                if back is not None:
                    part = resp @ back
                else:
                    part = torch.cat([(resp @ cross_b)[:, :2 * p],
                                      resp.view(stop - start, b * 8, s).sum(2) @ c2v_b], 1)  # (C, 3P)
                if keep:
                    gall = part
                else:
                    gall[start:stop] = part
            # gradient of -sum log p: cross part -gcols; norm part (1/sigma^2) c^2 y
            gcols, gnorm = gall[:, :2 * p].view(mb, p, 2), gall[:, 2 * p:3 * p]
            grad = self.slices_adjoint_pairs(torch.addcmul(-gcols, gnorm[:, :, None], y, value=inv2))
        if not poses:
            return LikelihoodResult(lse, grad, None, None, None)
        bi = best_idx.cpu().numpy()
        best_rot = self.rotations.rotation(bi[:, 0], bi[:, 2])
        best_prob = torch.exp(best_val - lse).cpu().numpy()
        return LikelihoodResult(lse, grad, best_rot, self.shifts[bi[:, 1]], best_prob)
