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

from ..fourier import fft2c
from ..forward.ctf import CTFParams, compute_ctf
from ..forward.interp import interpolation_taps
from ..forward.shift import phase_shifts
from ..forward.slicing import slice_coordinates
from .bandvolume import BandTransform
from .rotation_set import RotationSet, half_plane_permutations

__all__ = ["half_plane_frequencies", "LikelihoodBatch", "LikelihoodResult", "MarginalLikelihood"]

torch.set_flush_denormal(True)  # responsibilities far below 1e-38 otherwise slow the products 100-fold


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


def _slicing_matrices(index: torch.Tensor, weight: torch.Tensor, n_cols: int, device):
    """The slicing operator as a CSR matrix (rows: base rotation x point) and its transpose.

    Every row has exactly ``T`` taps, so the row pointers are ``0, T, 2T, ...`` and the matrix
    is built without sorting; 32-bit indices make the products about 10x faster on CPU.
    Taps outside the grid carry weight 0 (repeated columns in a row simply add up).
    """
    n_rows, taps = index.shape[0] * index.shape[1], index.shape[-1]
    crow = torch.arange(0, n_rows * taps + 1, taps, dtype=torch.int32)
    col = index.reshape(-1).to(torch.int32)
    val = weight.reshape(-1).contiguous()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        op = torch.sparse_csr_tensor(crow, col, val, (n_rows, n_cols), check_invariants=False)
        csc = op.to_sparse_csc()  # the CSC of S is the CSR of S^T
        op_t = torch.sparse_csr_tensor(csc.ccol_indices().to(torch.int32), csc.row_indices().to(torch.int32),
                                       csc.values(), (n_cols, n_rows), check_invariants=False)
    return op.to(device), op_t.to(device)


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
    best_rotation: np.ndarray           # (B, 3, 3) most probable rotation
    best_shift: np.ndarray              # (B, 2) most probable origin offset (pixels)
    best_probability: np.ndarray        # (B,) posterior probability of that (rotation, shift)


class MarginalLikelihood:
    """The likelihood kernel for one band limit, quadrature and box.

    box:          image side N (pixels); pixel_size: Å/pixel.
    band_limit:   r (Fourier pixels); only ``|k| <= r`` is used.
    rotations:    a :class:`RotationSet`.
    shifts:       ``(S, 2)`` origin offsets (pixels) and ``shift_weights`` ``(S,)`` summing to 1.
    noise_std:    sigma per pixel (1 for normalised images).
    memory_budget: bytes for the score matrix; sets the rotation chunk.
    """

    def __init__(self, box: int, pixel_size: float, band_limit: float, rotations: RotationSet,
                 shifts=None, shift_weights=None, *, noise_std: float = 1.0, oversampling: int = 2,
                 kernel: str = "trilinear", dtype=torch.float32, device=None, memory_budget: int = 1 << 30):
        self.box, self.pixel_size, self.band_limit = box, pixel_size, band_limit
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        self.cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.noise_std = float(noise_std)
        self.memory_budget = memory_budget
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
        self.log_rot_weights = torch.as_tensor(rotations.log_weights, **tt)
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
        coords = slice_coordinates(torch.as_tensor(rotations.base), freqs_t) * oversampling
        idx, w = interpolation_taps(coords, self.band.size, kernel)
        self.slice_op, self.slice_op_t = _slicing_matrices(idx, w.to(dtype), self.band.size**3, self.device)
        n_rows_per_image = 8 * len(self.shifts)
        if self.device.type == "cuda":  # the score matrix may use half of the free device memory
            memory_budget = min(memory_budget, torch.cuda.mem_get_info(self.device)[0] // 2)
        self.chunk = max(1, min(len(rotations.base), int(memory_budget // (4 * 100 * n_rows_per_image))))

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
    def slices(self, volume: torch.Tensor) -> torch.Tensor:
        """``(Mb, P)`` complex slices of the base rotations."""
        cube = self.band.forward_pairs(volume.to(self.device, self.dtype))
        y = self.slice_op @ cube.reshape(-1, 2)
        return torch.view_as_complex(y.reshape(len(self.rotations.base), self.n_points, 2).contiguous())

    def slices_adjoint(self, grad_slices: torch.Tensor) -> torch.Tensor:
        """Adjoint of :meth:`slices`: ``(Mb, P)`` complex -> ``(N, N, N)`` real."""
        g = self.slice_op_t @ torch.view_as_real(grad_slices.reshape(-1)).contiguous()
        return self.band.adjoint_pairs(g.reshape((self.band.size,) * 3 + (2,)))

    # ---------------------------------------------------------------- kernel
    def _rows(self, batch: LikelihoodBatch):
        """Data-side matrices: cross rows ``(B*8*S, 2P+1)`` and norm rows ``(B*8, P)``."""
        b, p = batch.data.shape
        s = len(self.shifts)
        inv2 = 1.0 / self.noise_std**2
        h = (self.weights * batch.ctf)[:, None, :] * batch.data.conj()[:, None, :] * self.phases[None]  # (B,S,P)
        # variant v puts data point p at slice point index[v, p]
        g = torch.zeros((b, 8, s, p), dtype=self.cdtype, device=self.device)
        hv = torch.where(self.sym_conj[None, :, None, :], h.conj()[:, None], h[:, None])   # (B,8,S,P)
        g.scatter_(3, self.sym_index[None, :, None, :].expand(b, 8, s, p), hv)
        c2 = (self.weights * batch.ctf**2)                                                 # (B,P)
        c2v = torch.zeros((b, 8, p), dtype=self.dtype, device=self.device)
        c2v.scatter_(2, self.sym_index[None].expand(b, 8, p), c2[:, None, :].expand(b, 8, p))
        row_bias = (self.log_shift_weights[None, :] - 0.5 * inv2 * batch.data_norm[:, None]
                    - 0.5 * self.n_full * math.log(2 * math.pi * self.noise_std**2))          # (B,S)
        cross = torch.cat([g.real * inv2, -g.imag * inv2,
                           row_bias[:, None, :, None].expand(b, 8, s, 1)], dim=3)          # (B,8,S,2P+1)
        return cross.reshape(b * 8 * s, 2 * p + 1), c2v.reshape(b * 8, p)

    def _scores(self, cross, c2v, ycols, ynorm, start, stop, b):
        """Log joint scores for base rotations ``start:stop``: ``(B, 8, S, C)``."""
        s = len(self.shifts)
        sc = cross @ ycols[:, start:stop]                                                  # (B8S, C)
        nt = torch.addmm(self.log_rot_weights[None, start:stop], c2v, ynorm[:, start:stop],
                         alpha=-0.5 / self.noise_std**2)                                   # (B8, C)
        sc = sc.view(b * 8, s, stop - start).add_(nt[:, None, :])
        return sc.view(b, 8, s, stop - start)

    def __call__(self, volume: torch.Tensor, batch: LikelihoodBatch, *, gradient: bool = True) -> LikelihoodResult:
        """Log-likelihoods, the gradient of their negative sum, and the best poses.

        A GPU that runs out of memory gets a smaller rotation chunk and a retry, not a crash.
        """
        while True:
            try:
                return self._evaluate(volume, batch, gradient)
            except torch.OutOfMemoryError:
                if self.chunk == 1:
                    raise
                self.chunk = max(1, self.chunk // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(f"out of device memory: rotation chunk reduced to {self.chunk}", stacklevel=2)

    def _evaluate(self, volume: torch.Tensor, batch: LikelihoodBatch, gradient: bool) -> LikelihoodResult:
        y = self.slices(volume)                                                            # (Mb, P)
        b, mb = len(batch), y.shape[0]
        ycols = torch.cat([y.real.T, y.imag.T, torch.ones((1, mb), dtype=self.dtype, device=self.device)])
        ynorm = (y.real**2 + y.imag**2).T.contiguous()                                    # (P, Mb)
        cross, c2v = self._rows(batch)
        chunks = [(i, min(i + self.chunk, mb)) for i in range(0, mb, self.chunk)]
        keep = len(chunks) == 1
        # pass 1: per-image log-sum-exp (and the best pose)
        m = torch.full((b,), -math.inf, dtype=self.dtype, device=self.device)
        z = torch.zeros(b, dtype=self.dtype, device=self.device)
        best_val = torch.full((b,), -math.inf, dtype=self.dtype, device=self.device)
        best_idx = torch.zeros((b, 3), dtype=torch.long, device=self.device)
        stored = None
        for start, stop in chunks:
            sc = self._scores(cross, c2v, ycols, ynorm, start, stop, b)
            flat = sc.view(b, -1)
            cmax, carg = flat.max(1)
            better = cmax > best_val
            if better.any():
                c = stop - start
                s_ = len(self.shifts)
                best_idx[better, 0] = carg[better] // (s_ * c)
                best_idx[better, 1] = (carg[better] // c) % s_
                best_idx[better, 2] = carg[better] % c + start
                best_val = torch.where(better, cmax, best_val)
            new_m = torch.maximum(m, cmax)
            if keep:
                flat.sub_(new_m[:, None]).exp_()
                z = z * torch.exp(m - new_m) + flat.sum(1)
                stored = sc
            else:
                z = z * torch.exp(m - new_m) + torch.exp(flat - new_m[:, None]).sum(1)
            m = new_m
        lse = m + torch.log(z)
        grad = None
        if gradient:
            s = len(self.shifts)
            inv2 = 1.0 / self.noise_std**2
            gcols = torch.empty((2 * self.n_points, mb), dtype=self.dtype, device=self.device)
            gnorm = torch.empty((self.n_points, mb), dtype=self.dtype, device=self.device)
            cross_t = cross[:, :-1].T.contiguous()                                         # (2P, B8S)
            if keep:  # stored holds exp(sc - m); fold 1/z into the small row matrices, not the big one
                inv_z = (1.0 / z).repeat_interleave(8 * s)
                cross_t = cross_t * inv_z[None, :]
                c2v_t = (c2v * (1.0 / z).repeat_interleave(8)[:, None]).T.contiguous()
            else:
                c2v_t = c2v.T.contiguous()
            for start, stop in chunks:
                if keep:
                    resp = stored.view(b * 8 * s, -1)
                else:
                    sc = self._scores(cross, c2v, ycols, ynorm, start, stop, b)
                    resp = sc.view(b, -1).sub_(lse[:, None]).exp_().view(b * 8 * s, -1)
                gcols[:, start:stop] = cross_t @ resp            # d(sum log p)/d[Re y; Im y] from the cross term
                rb = resp.view(b * 8, s, -1).sum(1) if s > 1 else resp                     # (B8, C)
                gnorm[:, start:stop] = c2v_t @ rb
            # gradient of -sum log p: cross part -gcols; norm part (1/sigma^2) c^2 y
            gy = torch.complex(-gcols[:self.n_points] + inv2 * gnorm * y.real.T,
                               -gcols[self.n_points:] + inv2 * gnorm * y.imag.T).T.contiguous()
            grad = self.slices_adjoint(gy)
        bi = best_idx.cpu().numpy()
        best_rot = self.rotations.rotation(bi[:, 0], bi[:, 2])
        best_prob = torch.exp(best_val - lse).cpu().numpy()
        return LikelihoodResult(lse, grad, best_rot, self.shifts[bi[:, 1]], best_prob)
