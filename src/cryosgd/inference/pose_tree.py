"""The tree of the pruned search's poses: which fine rotations and shifts are children of each coarse
one, and the fine candidates of an image's kept coarse poses (:class:`.search.PrunedLikelihood`).

A fine rotation ``B_f T_u`` is a child of the coarse rotation ``B_c T_w`` when ``B_c`` is among the
``neighbours`` coarse base rotations nearest to ``B_f`` (:func:`.rotation_set.rotation_parents`, which
also gives the variant ``u`` relating them); a fine shift is a child of its ``neighbours`` nearest
coarse shifts.  With one neighbour the children partition the fine grid; with more, kept cells are
dilated, for fine posteriors that straddle a coarse cell's edge.
"""
from __future__ import annotations

import numpy as np
import torch

from .rotation_set import RotationSet, rotation_parents, variant_tables

__all__ = ["PoseTree", "keep_count"]


def keep_count(log_marginal: torch.Tensor, epsilon: float, lo: int, hi: int,
               log_total: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``(B, K)`` log masses: order (descending; at least as many entries as the largest count)
    and the size of the smallest prefix with ``1 - epsilon`` of the mass, clamped to ``[lo, hi]``.

    log_total: ``(B, 1)`` float64 log of each row's total mass, when known (the rotation and the shift
    marginals of an image share it); otherwise it is computed.

    The order is first taken to ``2 lo`` (at least 64) entries, and to ``hi`` only if some row's prefix
    needs more: near convergence, at 128 px, the ordering of 512 of 100,800 coarse rotations took 6 ms
    of a 50-image group's 200, and 32 were kept."""
    hi = min(hi, log_marginal.shape[1])
    if log_total is None:
        log_total = torch.logsumexp(log_marginal.double(), 1, keepdim=True)
    for k in (min(hi, max(2 * lo, 64)), hi):
        top, order = torch.topk(log_marginal, k, dim=1, sorted=True)
        p = torch.exp(top.double() - log_total)
        below = (p.cumsum(1) < 1 - epsilon).sum(1) + 1                                 # prefix reaching 1 - eps
        if k == hi or int(below.max()) <= k:
            break
    return order, below.clamp(min=lo, max=hi)


class PoseTree:
    """Children of coarse rotations and shifts.

    fine_rotations, coarse_rotations: the two levels' rotation sets (base rotations x 8 variants).
    fine_shifts ``(Sf, 2)``, coarse_shifts ``(Sc, 2)``: pixels.
    """

    def __init__(self, fine_rotations: RotationSet, coarse_rotations: RotationSet, fine_shifts: torch.Tensor,
                 coarse_shifts: torch.Tensor, neighbours: int, device):
        self.device = torch.device(device or "cpu")
        self.n_fine = len(fine_rotations.base)
        tt = dict(device=self.device)
        # shifts: each fine shift's nearest coarse shifts; children (Sc, Sf) boolean
        d2 = ((fine_shifts[:, None, :] - coarse_shifts[None]) ** 2).sum(-1)
        self.shift_children = torch.zeros((len(coarse_shifts), len(fine_shifts)), dtype=torch.bool, **tt)
        k = min(int(neighbours), len(coarse_shifts))
        near = torch.as_tensor(np.argsort(d2, axis=1, kind="stable")[:, :k])             # (Sf, k)
        self.shift_children[near, torch.arange(len(fine_shifts))[:, None].expand_as(near)] = True
        # rotations: children of coarse base c, sorted by c, with each child's parent variant u
        u, c = rotation_parents(fine_rotations.base, coarse_rotations, int(neighbours))
        fine = np.repeat(np.arange(self.n_fine), u.shape[1])
        u, c = u.ravel(), c.ravel()
        order = np.argsort(c, kind="stable")
        self.child_base = torch.as_tensor(fine[order], **tt)                             # fine base indices
        self.child_variant = torch.as_tensor(u[order], **tt)
        counts = np.bincount(c, minlength=len(coarse_rotations.base))
        self.child_count = torch.as_tensor(counts, **tt)
        self.child_start = torch.as_tensor(np.concatenate([[0], np.cumsum(counts)[:-1]]), **tt)
        self.solve = torch.as_tensor(variant_tables()[1], **tt)

    def select(self, rot: torch.Tensor, shift: torch.Tensor, epsilon: float, rotations: tuple, shifts: tuple):
        """Fine candidates from coarse log masses: rotations ``rot`` ``(B, 8, Mc)`` (variant, base) and
        shifts ``shift`` ``(B, Sc)``.  Per image, the smallest sets of coarse rotations and of coarse
        shifts holding ``1 - epsilon`` of their marginal are kept, at least ``rotations[0]`` and at most
        ``rotations[1]`` (``None``: no cap) rotations, and likewise ``shifts``.

        Returns per image padded lists: fine rotations ``(B, n)`` as base index and variant (``-1``
        pads), fine shift indices ``(B, s)`` (``-1`` pads), the kept coarse rotations and shifts
        ``(B,)`` and the fine rotations and shifts ``(B,)`` of each.
        """
        b, _, mc = rot.shape
        dev = self.device
        # both marginals hold each image's whole coarse mass: its total from the short one
        total = torch.logsumexp(shift.double(), 1, keepdim=True)                          # (B, 1)
        r_order, r_keep = keep_count(rot.reshape(b, -1), epsilon, rotations[0], rotations[1] or 8 * mc, total)
        s_order, s_keep = keep_count(shift, epsilon, shifts[0], shifts[1] or shift.shape[1], total)
        # rotations: kept coarse (image, variant w, base c) -> children (image, solve[u, w], child base)
        kmax = int(r_keep.max())
        valid = torch.arange(kmax, device=dev)[None] < r_keep[:, None]
        img = torch.arange(b, device=dev)[:, None].expand(b, kmax)[valid]
        flat = r_order[:, :kmax][valid]
        w, c = flat // mc, flat % mc
        n_child = self.child_count[c]
        img_f = img.repeat_interleave(n_child)
        first = self.child_start[c].repeat_interleave(n_child)
        offs = torch.arange(len(img_f), device=dev) - torch.cumsum(n_child, 0).sub(n_child).repeat_interleave(n_child)
        pos = first + offs
        fb = self.child_base[pos]
        fv = self.solve[self.child_variant[pos], w.repeat_interleave(n_child)]
        # a fine rotation reached from several kept coarse ones counts once
        key = torch.unique((img_f * 8 + fv) * self.n_fine + fb)
        img_f, rest = key // (8 * self.n_fine), key % (8 * self.n_fine)
        fv, fb = rest // self.n_fine, rest % self.n_fine
        per = torch.bincount(img_f, minlength=b)
        n = int(per.max()) if len(per) else 0
        slot = torch.arange(len(img_f), device=dev) - (torch.cumsum(per, 0) - per)[img_f]
        base = torch.full((b, n), -1, dtype=torch.long, device=dev)
        var = torch.full((b, n), -1, dtype=torch.long, device=dev)
        base[img_f, slot], var[img_f, slot] = fb, fv
        # shifts: union of the kept coarse shifts' children
        smax = int(s_keep.max())
        kept = torch.zeros_like(shift, dtype=torch.bool)
        sval = torch.arange(smax, device=dev)[None] < s_keep[:, None]
        kept.scatter_(1, s_order[:, :smax], sval)
        fine_mask = (kept.to(torch.float32) @ self.shift_children.to(torch.float32)) > 0   # (B, Sf)
        ns = fine_mask.sum(1)
        sidx = torch.full((b, int(ns.max())), -1, dtype=torch.long, device=dev)
        rows, cols = fine_mask.nonzero(as_tuple=True)
        sidx[rows, torch.arange(len(rows), device=dev) - (torch.cumsum(ns, 0) - ns)[rows]] = cols
        return base, var, sidx, r_keep, s_keep, per, ns
