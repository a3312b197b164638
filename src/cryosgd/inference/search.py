"""Pruned pose search: a coarse-to-fine estimator of the marginal likelihood and its gradient.

The exhaustive kernel (:class:`.likelihood.MarginalLikelihood`) scores every rotation x shift of the
quadrature chosen for band limit r.  This module scores them in two levels:

1. **Coarse**: the exhaustive quadrature of the lower band ``r_c = r / 2`` (about 8x fewer
   rotations; shifts on a grid of three (or two) times the fine step, which nests in the fine one; 4x fewer
   coefficients), with the exhaustive kernel's products.  Per image it gives the posterior marginal
   over coarse rotations and the one over coarse shifts.
2. **Fine** (:class:`.pose_tree.PoseTree`): per image, keep the smallest set of coarse rotations
   holding ``1 - epsilon`` of the rotation marginal and the smallest set of coarse shifts holding
   ``1 - epsilon`` of the shift marginal (at least ``min_rotations`` and ``min_shifts``, at most
   ``max_rotations`` and ``max_shifts``).  Every fine rotation is a child of its ``neighbours``
   nearest coarse rotations and every fine shift of its ``neighbours`` nearest coarse shifts (with 1
   these cells would partition the fine grid).
   The children of the kept rotations times the children of the kept shifts are scored at the full
   band with their exhaustive quadrature weights; the log-likelihood is their log-sum-exp and the
   gradient back-propagates their responsibilities.

Relation to the exact marginal.  Every evaluated term is the exhaustive kernel's term, so with Z
the exhaustive sum and Z_K the sum over the evaluated set K, ``Z_K <= Z`` and
``log Z - log Z_K = -log(1 - m)``, m the exhaustive posterior mass outside K: the log-likelihood is
biased low, never high.  The responsibilities are the exhaustive ones renormalised on K (total
variation m), so the gradient of one image moves by at most ``2 m max_j |g_j|``.  If the coarse
posterior were the fine one, m would be at most ``2 epsilon`` (one epsilon lost in rotations, one in
shifts); m is measured against exhaustive search in ``tests/test_search.py`` and
``benchmarks/search.py``.  Keeping everything (``epsilon = 0`` and no cap) is exhaustive search.

The fine slices are interpolated for the union of the minibatch's candidate rotations only.  When
the full-band slicing operator would exceed ``operator_limit`` (1 GiB; it grows as r^5) nothing at
the full band is stored and the candidates' interpolation taps are computed on every call; the
coarse kernel stores its operator at ``r / 2`` (1/32 of the full one).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..forward.candidate_slicing import CandidateSlicing
from ..forward.interp import KERNELS
from ..runtime.device import exp_floored_, flush_denormals, tf32_products
from ..runtime.threads import MIN_GROUP, map_in_threads, thread_groups
from .asymmetric_unit import restrict_to_asymmetric_unit
from .likelihood import LOG_ZERO, LikelihoodBatch, LikelihoodResult, MarginalLikelihood
from .pose_tree import PoseTree
from .quadrature import (
    choose_quadrature,
    shift_step_for_band_limit,
)
from .rotation_set import RotationSet, rotation_set_for_band
from .search_stats import fractions, merge_stats

__all__ = ["PrunedBatch", "PrunedLikelihood", "BLOCK_BYTES"]

BLOCK_BYTES = 4 << 20  # a block of coarse scores: about a core's share of the last-level cache
FINE_BYTES = 8 << 20   # a group of fine candidates on one CPU thread


@dataclass
class PrunedBatch:
    """A minibatch prepared at both levels."""

    coarse: LikelihoodBatch
    fine: LikelihoodBatch

    def __len__(self) -> int:
        return len(self.fine)

    def subset(self, rows: slice) -> PrunedBatch:
        """The images ``rows`` of both levels."""
        return PrunedBatch(*(LikelihoodBatch(b.data[rows], b.ctf[rows], b.data_norm[rows])
                             for b in (self.coarse, self.fine)))


class PrunedLikelihood:
    """Coarse-to-fine likelihood kernel with the interface of :class:`.MarginalLikelihood`.

    box, pixel_size, band_limit: as for the exhaustive kernel (pixels, Å/pixel, Fourier pixels).
    max_shift, shift_sigma: the shift disc (pixels) and its normal prior (default ``max_shift / 2``).
    coarse_band:  the coarse level's band limit (default ``band_limit / 2``).
    epsilon:      posterior mass each level may drop (rotation and shift marginals, each).
    min_rotations, min_shifts: at least this many coarse rotations and shifts per image (if there are
                  as many).  Strong signals make the coarse posterior narrower than the coarse grid: its
                  mass then sits on one grid point while the fine optimum lies near another (up to the
                  30th ranked of 12,600 in 128 px images at SNR 0.05), so a mass criterion alone is not
                  enough.
    max_rotations, max_shifts: at most this many coarse rotations and shifts per image (``None``: no
                  cap).  They bound the cost where the coarse posterior is broad (a random start, the
                  held-out images at the final band early in a run); what they cut is lost mass,
                  counted in ``last_stats["rotation_cap_hits"]``.
    neighbours:   each fine rotation is a child of its ``neighbours`` nearest coarse rotations and
                  each fine shift of its ``neighbours`` nearest coarse shifts (1: a partition; more:
                  kept cells are dilated, for fine posteriors that straddle a coarse cell's edge).
    fine_memory:  bytes for the gathered fine slices of an image group (shared among the threads; default:
                  256 MiB on a GPU, :data:`FINE_BYTES` per thread on the CPU, where groups that stay in
                  the cache were 5-10% faster than groups of 128 MiB, 64 and 128 px).
    workers, min_group: threads a call is split over, by images (``None``: PyTorch's intra-op thread
                  count on the CPU, one elsewhere), at least ``min_group`` images each.
    operator_limit: bytes; when the full-band slicing operator fits, it is stored (in an exhaustive
                  kernel, for broad posteriors) and so is a table of every fine rotation's interpolation
                  taps; otherwise the candidates' taps are computed on each call.
    memory_budget: bytes for a chunk of coarse scores (default 1 GiB; the exhaustive kernel's
                  own budget where it is built).
    coarse_shift_step: the coarse shift grid's spacing in fine steps.  Default: 3 where that leaves at
                  least 3 coarse steps across the shift radius, else 2 (at 64 px, 15 Å and shifts within
                  6.4 px, 3 gives 29 coarse shifts against 69, half the time of a call, errors as small;
                  4 lost 5 nats on one image; on a radius of under 3 coarse steps, 3 lost 0.18 nats on
                  one image of a random start: BENCHMARKS.md, tests/test_search.py).
    dense_above:  with the operator stored, a minibatch whose candidates exceed this fraction of the
                  exhaustive poses is scored by the exhaustive kernel (the same sum, faster there).
    symmetry:     a point group (name or ``(|G|, 3, 3)``; ``None``: C1): both levels' quadratures are
                  restricted to one asymmetric unit (:mod:`.asymmetric_unit`).  Fine rotations of the
                  unit whose nearest coarse rotations lie just outside it are reached through their
                  second neighbours: against the exhaustive kernel over the unit, 32 px, r = 6, SNR
                  0.05, the loss is at most 3e-4 (D7) and 3e-3 (C7) nats per image
                  (``tests/test_symmetric_training.py``).  A coarse unit dilated by two coarse steps
                  cuts it to 6e-5 with no cap, but at r / 2 = 3 that covers nearly all coarse
                  rotations, and the cap of 512 kept ones then loses nats; so no dilation.

    After each call ``last_stats`` holds the pose counts of that call (see :meth:`_stats`).
    """

    def __init__(self, box: int, pixel_size: float, band_limit: float, *, max_shift: float = 0.0,
                 shift_sigma: float | None = None, coarse_band: float | None = None, epsilon: float = 1e-3,
                 min_rotations: int = 32, min_shifts: int = 4, max_rotations: int | None = 512,
                 max_shifts: int | None = 16,
                 neighbours: int = 2, noise_std: float = 1.0, oversampling: int = 2,
                 kernel: str = "trilinear", dtype=torch.float32, device=None, memory_budget: int | None = None,
                 tf32: bool = False, fine_memory: int | None = None, operator_limit: int = 1 << 30,
                 dense_above: float = 0.1, coarse_shift_step: float | None = None, symmetry=None,
                 workers: int | None = None, min_group: int = MIN_GROUP):
        self.box, self.pixel_size, self.band_limit = box, pixel_size, band_limit
        self.epsilon, self.max_rotations, self.max_shifts = float(epsilon), max_rotations, max_shifts
        self.min_rotations, self.min_shifts = int(min_rotations), int(min_shifts)
        self.workers, self.min_group = workers, int(min_group)
        self.dense_above = float(dense_above)
        self.coarse_memory = 1 << 30 if memory_budget is None else int(memory_budget)
        self.dtype, self.device = dtype, torch.device(device or "cpu")
        self.fine_memory = fine_memory if fine_memory is not None else 256 << 20 if self.device.type != "cpu" else None
        self.tf32 = bool(tf32) and self.device.type == "cuda" and dtype == torch.float32
        self.noise_std = float(noise_std)
        self.coarse_band = band_limit / 2 if coarse_band is None else float(coarse_band)
        fine_q = choose_quadrature(band_limit, box, max_shift=max_shift, shift_sigma=shift_sigma)
        self.rotations = rotation_set_for_band(band_limit, fine_q.n_inplane)
        step = shift_step_for_band_limit(band_limit, box)
        if coarse_shift_step is None:
            coarse_shift_step = 3.0 if max_shift >= 3 * 3.0 * step else 2.0
        coarse_q = choose_quadrature(self.coarse_band, box, max_shift=max_shift, shift_sigma=shift_sigma,
                                     shift_step=coarse_shift_step * step)
        self.coarse_rotations = rotation_set_for_band(self.coarse_band, coarse_q.n_inplane)
        if symmetry is not None:
            self.rotations = restrict_to_asymmetric_unit(self.rotations, symmetry)
            self.coarse_rotations = restrict_to_asymmetric_unit(self.coarse_rotations, symmetry)
        kw = dict(noise_std=noise_std, oversampling=oversampling, kernel=kernel, dtype=dtype, device=self.device,
                  tf32=tf32)
        self.coarse = MarginalLikelihood(box, pixel_size, self.coarse_band, self.coarse_rotations, coarse_q.shifts,
                                         coarse_q.shift_weights, memory_budget=memory_budget, **kw)
        # the fine level's data side (frequencies, phases, band transform, prepare) without its operator:
        # an exhaustive kernel over one base rotation
        one = RotationSet(self.rotations.base[:1], self.rotations.log_weights[:1])
        self.frame = MarginalLikelihood(box, pixel_size, band_limit, one, fine_q.shifts, fine_q.shift_weights,
                                        memory_budget=1 << 20, **kw)
        self.shifts = self.frame.shifts                                                  # (Sf, 2)
        self.n_points, self.n_full = self.frame.n_points, self.frame.n_full
        self.tree = PoseTree(self.rotations, self.coarse_rotations, self.shifts, self.coarse.shifts,
                             int(neighbours), self.device)
        self.log_rot_weights = torch.as_tensor(np.maximum(self.rotations.variant_log_weights(), LOG_ZERO),
                                               dtype=dtype, device=self.device)          # (Mf, 8)
        taps = (2 * KERNELS[kernel]) ** 3
        fine_bytes = 2 * len(self.rotations.base) * self.n_points * taps * (4 + torch.finfo(dtype).bits // 8)
        self.exhaustive = None   # the exhaustive kernel, when its operator fits: for broad posteriors
        if fine_bytes <= operator_limit:
            self.exhaustive = MarginalLikelihood(box, pixel_size, band_limit, self.rotations, fine_q.shifts,
                                                 fine_q.shift_weights, memory_budget=memory_budget, **kw)
        # the candidates' slices, interpolated per call (a table of taps only for non-trilinear kernels)
        self.candidates = CandidateSlicing(self.rotations.base, self.frame.freqs, self.frame.band.size, oversampling,
                                           kernel, dtype=dtype, device=self.device,
                                           store_taps=fine_bytes <= operator_limit)
        self.chunk = self.coarse.chunk
        self.operator_bytes = self.coarse.operator_bytes + self.frame.operator_bytes + \
            (3 * fine_bytes // 2 if self.exhaustive is not None else 0)
        self.last_stats: dict = {}

    # ------------------------------------------------------------------ data
    def prepare(self, images, ctf) -> PrunedBatch:
        """``(B, N, N)`` real images -> a :class:`PrunedBatch` (both levels' coefficients)."""
        return PrunedBatch(self.coarse.prepare(images, ctf), self.frame.prepare(images, ctf))

    # ----------------------------------------------------------- coarse level
    def coarse_marginals(self, volume: torch.Tensor, batch: LikelihoodBatch,
                         slices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log posterior masses (unnormalised, nats) of the coarse level: rotations ``(B, 8, Mc)``
        (full rotation ``B_c T_v`` at ``[:, v, c]``) and shifts ``(B, Sc)``; ``slices``: the coarse
        slices of ``volume``, when made already.

        The scores are made and reduced in blocks of images x rotations of about :data:`BLOCK_BYTES`,
        so that the five passes over each block (product, maximum, exponential, two sums) run in the
        cache: in blocks of a gigabyte, memory-bound, they took twice as long (64 px, 15 Å).  The scores'
        columns are ordered shift first, so the maxima and sums over shifts run over whole rows (over
        a last axis of 13 shifts they took twice as long, 128 px)."""
        k = self.coarse
        y = k.slices_pairs(volume) if slices is None else slices
        b, mc, s = len(batch), y.shape[0], len(k.shifts)
        width = torch.finfo(self.dtype).bits // 8
        group = max(1, min(b, BLOCK_BYTES // (256 * 8 * s * width)))                  # images per block
        rot = torch.empty((b, 8, mc), dtype=self.dtype, device=self.device)
        shift = torch.full((b, s), -math.inf, dtype=self.dtype, device=self.device)
        for g0 in range(0, b, group):
            g = slice(g0, min(g0 + group, b))
            sub = LikelihoodBatch(batch.data[g], batch.ctf[g], batch.data_norm[g])
            nb = len(sub)
            scores, _, _ = k._score_function(sub, y, shifts_first=True)   # reduced over shifts: whole rows
            chunk = max(1, min(mc, BLOCK_BYTES // (nb * 8 * s * width), self.coarse_memory // (nb * 8 * s * width)))
            for start in range(0, mc, chunk):
                stop = min(start + chunk, mc)
                sc = scores(start, stop).view(stop - start, s, nb, 8)
                # each rotation against its own best shift: far-off ones keep their rank (not -inf together)
                m = sc.amax(1)                                                          # (C, G, 8)
                e = exp_floored_(sc.sub_(m[:, None]))
                rot[g, :, start:stop] = (e.sum(1).log_() + m).permute(1, 2, 0)
                top = m.amax((0, 2))                                                    # (G,)
                wm = exp_floored_(m - top[None, :, None])                                 # (C, G, 8)
                # sum over rotations of their weight times e: scaled in place, summed over leading axes
                mass = e.mul_(wm[:, None]).sum(0).sum(2)                                    # (S, G)
                shift[g] = torch.logaddexp(shift[g], mass.T.log() + top[:, None])
        return rot, shift

    def select(self, rot: torch.Tensor, shift: torch.Tensor):
        """Fine candidates from the coarse marginals (:meth:`.PoseTree.select` with this kernel's bounds)."""
        return self.tree.select(rot, shift, self.epsilon, (self.min_rotations, self.max_rotations),
                                (self.min_shifts, self.max_shifts))

    # ------------------------------------------------------------- fine level
    def __call__(self, volume: torch.Tensor, batch: PrunedBatch, *, gradient: bool = True,
                 poses: bool = True, image_weights: torch.Tensor | None = None) -> LikelihoodResult:
        """Log-likelihoods ``(B,)`` (nats), the gradient ``(N, N, N)`` of their negative sum, best poses.

        ``image_weights`` ``(B,)``: the gradient of ``-sum_b w_b log p(I_b | V)`` instead (as
        :meth:`MarginalLikelihood.__call__`); ``None`` leaves the result bit for bit as without.
        On the CPU the images are split into groups scored in threads (:mod:`cryosgd.runtime.threads`;
        ``workers``); each image's terms are the same, only the sums' order of the gradient changes."""
        volume = volume.to(self.device, self.dtype)
        groups = thread_groups(len(batch), self.device, self.workers, self.min_group)
        band = self.frame.band

        def one(g: slice):
            part = batch if len(groups) == 1 else batch.subset(g)
            w = None if image_weights is None else image_weights[g]
            budget = FINE_BYTES if self.fine_memory is None else self.fine_memory // len(groups)
            return self._evaluate(volume, cube, coarse_slices, part, gradient, poses, w, budget)

        with torch.no_grad(), tf32_products(self.tf32), flush_denormals():
            # the band cube and the coarse slices are the groups' common start, made once on all threads
            cube = band.forward_pairs(volume)                                           # (K, K, K, 2)
            coarse_slices = self.coarse.slicing.forward_pairs(self.coarse_cube(cube))  # (Mc, Pc, 2)
            parts = map_in_threads(one, groups)
            grad = None
            if gradient:   # the fine level's gradients are on the band cube: summed, then one adjoint
                on_cube = [r.gradient for r, st in parts if not st["dense"]]
                total = [band.adjoint_pairs(sum(on_cube[1:], on_cube[0]))] if on_cube else []
                total += [r.gradient for r, st in parts if st["dense"]]                # on the volume
                grad = sum(total[1:], total[0])
        self.last_stats = merge_stats(parts, self.coarse.n_points, self.n_points)
        res = [r for r, _ in parts]
        best = [None if res[0].best_rotation is None else np.concatenate([getattr(r, k) for r in res])
                for k in ("best_rotation", "best_shift", "best_probability")]
        return LikelihoodResult(torch.cat([r.log_likelihood for r in res]), grad, *best)

    def coarse_cube(self, cube: torch.Tensor) -> torch.Tensor:
        """The coarse level's band cube, cut from the centre of the full band's ``cube`` (both sample the
        same transform at the same spacing; the coarse one stops at its own band)."""
        h, hc = self.frame.band.half, self.coarse.band.half
        return cube[h - hc:h + hc + 1, h - hc:h + hc + 1, h - hc:h + hc + 1].contiguous()

    def _evaluate(self, volume, cube, coarse_slices, batch: PrunedBatch, gradient, poses, image_weights, fine_memory):
        """One group's ``(result, stats)``: coarse marginals, candidates, then the fine level (its gradient
        on the band cube) or, where the candidates are many, the exhaustive kernel (on the volume)."""
        rot, shift = self.coarse_marginals(volume, batch.coarse, coarse_slices)
        base, var, sidx, r_keep, s_keep, n_rot, n_shift = self.select(rot, shift)
        counts = (r_keep, s_keep, n_rot, n_shift, rot.shape)
        exhaustive_poses = len(batch) * self.rotations.size * len(self.shifts)
        if self.exhaustive is not None and float((n_rot * n_shift).sum()) > self.dense_above * exhaustive_poses:
            res = self.exhaustive(volume, batch.fine, gradient=gradient, poses=poses, image_weights=image_weights)
            return res, self._stats(counts, len(self.rotations.base), dense=True)
        return self._fine(cube, batch.fine, base, var, sidx, gradient, poses, counts, image_weights, fine_memory)

    def _fine(self, cube, batch, base, var, sidx, gradient, poses, counts, weights, fine_memory):
        """Score candidates ``base``/``var`` ``(B, n)`` x shifts ``sidx`` ``(B, s)`` (-1: padding) against
        the band ``cube``: ``(result, stats)``, the gradient on the cube, the groups' gathered slices
        within ``fine_memory`` bytes."""
        f, p = self.frame, self.n_points
        b = len(batch)
        inv2 = 1.0 / self.noise_std ** 2
        dev = self.device
        # the full rotations B T_v in use, their base rotations, and their slices
        rot_ok, sh_ok = base >= 0, sidx >= 0
        full, inv = torch.unique(torch.where(rot_ok, base * 8 + var, 0), return_inverse=True)   # (U8,), (B, n)
        ub, uv = full // 8, full % 8
        union, binv = torch.unique(ub, return_inverse=True)
        y = self.candidates.forward(cube, union, keep=gradient)                         # (2, U, P): re, im
        # the slice of B T_v at data point p is the slice of B at index[v, p] (conjugated where conj);
        # a row holds the real parts, then the imaginary parts
        gidx = (binv[:, None] * p + f.sym_index[uv]).view(-1)                           # (U8 P,)
        sign = torch.where(f.sym_conj[uv], -1.0, 1.0).to(self.dtype)                  # (U8, P)
        yf2 = torch.stack([y[0].view(-1).index_select(0, gidx).view(-1, p),
                           y[1].view(-1).index_select(0, gidx).view(-1, p).mul_(sign)], 1).view(-1, 2 * p)
        c2 = ((f.weights * batch.ctf ** 2) * inv2).repeat(1, 2)                          # (B, 2P): on re and im
        log_w = self.log_rot_weights[ub, uv]                                             # (U8,)
        bias = f.shift_bias(batch).gather(1, sidx.clamp(min=0))                           # (B, s)
        lse = torch.empty(b, dtype=self.dtype, device=dev)
        best = torch.zeros((b, 3), dtype=torch.long)
        best_p = np.zeros(b)
        if gradient:
            g8 = torch.zeros_like(yf2)
        wts = None if weights is None else torch.as_tensor(weights, dtype=self.dtype, device=dev)
        _, _, n_rot, n_shift, _ = counts
        for idx, nr, ns in self._groups(n_rot, n_shift, p, fine_memory):
            gi = inv[idx, :nr]                                                           # (G, nr)
            sg = sidx[idx, :ns]                                                          # (G, ns)
            ok = rot_ok[idx, :nr][:, :, None] & sh_ok[idx, :ns][:, None, :]              # (G, nr, ns)
            h = (f.weights * batch.ctf[idx])[:, None] * batch.data[idx].conj()[:, None] * f.phases[sg.clamp(min=0)]
            hp = torch.cat([h.real, -h.imag], -1).mul_(inv2)                             # (G, ns, 2P)
            rows = yf2.index_select(0, gi.reshape(-1)).view(len(idx), nr, 2 * p)          # (G, nr, 2P)
            c2g = c2[idx][:, None, :]                                                    # (G, 1, 2P)
            sc = torch.bmm(rows, hp.transpose(1, 2))                                     # (G, nr, ns)
            quad = torch.bmm(rows.square(), c2g.transpose(1, 2))                         # (G, nr, 1): |c y|^2/s^2
            sc += (log_w[gi][:, :, None] - 0.5 * quad) + bias[idx, :ns][:, None, :]
            sc.masked_fill_(~ok, -math.inf)
            flat = sc.view(len(idx), -1)
            top, arg = flat.max(1)
            total = exp_floored_(flat.sub_(top[:, None])).sum(1)                       # sc: exp(score - top)
            lse[idx] = top + total.log()
            if poses:
                ri, si = (arg // ns).cpu(), (arg % ns).cpu()
                r_, ic = torch.arange(len(ri)), idx.cpu()
                best[ic] = torch.stack([var[idx, :nr].cpu()[r_, ri], base[idx, :nr].cpu()[r_, ri],
                                        sg.cpu()[r_, si]], 1)
                best_p[ic.numpy()] = (1.0 / total).cpu().numpy()
            if gradient:
                resp = sc.div_(total[:, None, None]).masked_fill_(~ok, 0.0)              # (G, nr, ns)
                if wts is not None:
                    resp.mul_(wts[idx][:, None, None])
                # d(-lse)/d rows: the cross term, then the norm term; padding rows point at some candidate
                # and add zeros to it
                grow = torch.bmm(resp, hp).neg_().addcmul_(rows, resp.sum(2, keepdim=True) * c2g)  # (G, nr, 2P)
                g8.index_add_(0, gi.reshape(-1), grow.view(-1, 2 * p))
        grad = None
        if gradient:
            gf = g8.view(-1, 2, p)
            gy = torch.zeros_like(y)
            gy[0].view(-1).scatter_add_(0, gidx, gf[:, 0].reshape(-1))
            gy[1].view(-1).scatter_add_(0, gidx, (gf[:, 1] * sign).view(-1))
            grad = self.candidates.adjoint(gy, union).view(cube.shape)
        stats = self._stats(counts, len(union))
        if not poses:
            return LikelihoodResult(lse, grad, None, None, None), stats
        bi = best.numpy()
        return LikelihoodResult(lse, grad, self.rotations.rotation(bi[:, 0], bi[:, 1]), self.shifts[bi[:, 2]],
                                best_p), stats

    def _groups(self, n_rot: torch.Tensor, n_shift: torch.Tensor, p: int, fine_memory: int):
        """Images in groups of similar candidate counts, so that padding to a group's largest count costs
        little: ``(images, rotations, shifts)`` per group, each group's gathered slices and scores
        within ``fine_memory`` bytes (per candidate: its row, the row squared, its gradient row and the
        norm term's weights, 2P numbers each, and its scores).  In one group, a few images at the
        rotation cap made every image of a minibatch pay for thousands of padded candidates (64 px,
        15 Å: 7.3 s a call instead of 3.1)."""
        width = torch.finfo(self.dtype).bits // 8
        order = torch.argsort(n_rot * (int(n_shift.max()) + 1) + n_shift)             # by rotations, then shifts
        nr, ns = n_rot[order].tolist(), n_shift[order].tolist()
        start = 0
        while start < len(nr):
            stop, smax = start + 1, ns[start]
            while stop < len(nr):
                s2 = max(smax, ns[stop])
                if (stop + 1 - start) * nr[stop] * (8 * p + 2 * s2) * width > fine_memory:
                    break
                stop, smax = stop + 1, s2
            yield order[start:stop].to(self.device), max(1, nr[stop - 1]), max(1, smax)
            start = stop

    def _stats(self, counts, n_union, dense: bool = False) -> dict:
        """Pose counts of the last call: ``coarse_poses`` and ``fine_poses`` scored, ``exhaustive_poses``
        (all of them at the full band), mean kept coarse rotations and shifts, ``rotation_cap_hits``,
        ``dense`` (the exhaustive kernel scored the minibatch)."""
        r_keep, s_keep, n_rot, n_shift, shape = counts
        b, _, mc = shape
        fine = b * self.rotations.size * len(self.shifts) if dense else int((n_rot * n_shift).sum())
        coarse = b * 8 * mc * len(self.coarse.shifts)
        exhaustive = b * self.rotations.size * len(self.shifts)
        cap = self.max_rotations or 8 * mc
        return {"coarse_poses": coarse, "fine_poses": fine, "exhaustive_poses": exhaustive,
                **fractions(coarse, fine, exhaustive, self.coarse.n_points, self.n_points),
                "kept_rotations": float(r_keep.float().mean()), "kept_shifts": float(s_keep.float().mean()),
                "fine_rotations": float(n_rot.float().mean()), "fine_shifts": float(n_shift.float().mean()),
                "union_rotations": n_union, "rotation_cap_hits": int((r_keep >= cap).sum()), "dense": dense}

