"""One call split over groups of images, each group in its own thread (CPU only).

PyTorch runs a matrix product on all of its intra-op threads, but some of the pruned search's
operations on one core whatever their count: ``index_select`` and ``index_add_`` (the candidates'
gathers and scatters).  On a 2-core machine they held a quarter of a pruned call's time at 2
threads.  The minibatch's halves, each in a thread with one intra-op thread, keep both cores busy
through them.  Measured on that machine (``benchmarks/threads.py``, 100 images, the median call):
at 64 px and 15 Å 1.57 -> 1.28 s without the gradient and 2.45 -> 2.14 s with it; at 128 px and 16% of
Nyquist 5% less.
Work done once per call (the volume's transform, the coarse slices) is then done once per group,
so a group keeps at least :data:`MIN_GROUP` images; the exhaustive kernel, one large product,
was slower split (0.35 -> 0.43 s at 36 Å) and is not split.

The threads are a private pool; each group runs with denormals flushed to zero in its thread
(:func:`.device.flush_denormals` covers the calling thread only) and without autograd; while they run,
PyTorch's intra-op thread count is divided among them.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait

import torch

from .device import flush_denormals

__all__ = ["MIN_GROUP", "thread_groups", "map_in_threads"]

MIN_GROUP = 32   # images per group, at least

_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_lock = threading.Lock()


def thread_groups(n: int, device: torch.device, workers: int | None = None, min_group: int = MIN_GROUP) -> list[slice]:
    """Contiguous groups of ``n`` images: one per worker thread, ``workers`` (default: PyTorch's
    intra-op thread count on the CPU; one group elsewhere), each of at least ``min_group``."""
    if workers is None:
        workers = torch.get_num_threads() if device.type == "cpu" else 1
    k = max(1, min(int(workers), n // max(1, min_group)))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def map_in_threads(fn: Callable, groups: Sequence) -> list:
    """``[fn(g) for g in groups]``, each in a thread of the pool with ``T // len(groups)`` intra-op
    threads (T: the count before the call, restored after it; the first exception is raised)."""
    global _pool, _pool_size
    if len(groups) == 1:
        return [fn(groups[0])]
    with _lock:   # one split call at a time: the intra-op count is process-wide
        if _pool is None or _pool_size < len(groups):
            if _pool is not None:
                _pool.shutdown()
            _pool, _pool_size = ThreadPoolExecutor(len(groups), "cryosgd-split"), len(groups)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // len(groups)))
        try:
            futures = [_pool.submit(_in_worker, fn, g) for g in groups]
            wait(futures)   # all of them, before the thread count is restored
            return [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)


def _in_worker(fn: Callable, group):
    with torch.no_grad(), flush_denormals():   # both are the thread's own settings
        return fn(group)
