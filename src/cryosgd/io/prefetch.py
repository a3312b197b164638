"""Loading the next items in a background thread while the caller computes.

A training loop alternates reading a minibatch from disk and computing with
it; with :class:`Prefetcher` the reads of the next minibatches happen while
the current one is being computed, so the computation waits on the disk only
when the disk is slower than the computation.  One background thread is
enough: file reads (``os.preadv``), numpy's conversions and torch's kernels
all release the GIL, so the thread's I/O and the caller's compute overlap.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

__all__ = ["Prefetcher"]

K = TypeVar("K")
V = TypeVar("V")


class Prefetcher(Generic[K, V]):
    """Iterate ``(key, load(key))`` over ``keys`` in order, loading ``depth`` items ahead.

    load:  ``load(key) -> value``, called in one background thread, one key at a
           time, in the order of ``keys``.  It must be safe to call while the
           caller's thread runs (:meth:`ParticleSet.read_images
           <cryosgd.io.particles.ParticleSet.read_images>` is).
    keys:  any iterable, consumed lazily (it may be endless); loading of the
           first ``depth`` keys starts at once.
    depth: how many items are loaded ahead of the one the caller has; the
           prefetcher holds at most ``depth + 1`` loaded values.

    An exception raised by ``load`` (or by ``keys``) is raised by the iteration
    at the item that failed, after the items before it; the prefetcher is then
    closed.  :meth:`close` (or leaving a ``with`` block) cancels the loads not
    yet started and waits for the one running, so no thread outlives it::

        keys = (batch_indices(step) for step in range(n_steps))
        with Prefetcher(dataset.images, keys, depth=2) as batches:
            for index, images in batches:
                volume = update(volume, images, ctf[index])  # the next reads run meanwhile
    """

    def __init__(self, load: Callable[[K], V], keys: Iterable[K], *, depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, not {depth}")
        self._load = load
        self._keys: Iterator[K] | None = iter(keys)
        self._depth = depth
        self._pending: deque[tuple[K, Future]] = deque()
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1,
                                                                       thread_name_prefix="prefetch")
        self._fill()

    def _fill(self) -> None:
        """Queue loads until ``depth`` are pending or the keys run out."""
        while self._keys is not None and len(self._pending) < self._depth:
            try:
                key = next(self._keys)
            except StopIteration:
                self._keys = None
                return
            except Exception as err:  # raised in its turn, after the items already queued
                failed: Future = Future()
                failed.set_exception(err)
                self._pending.append((None, failed))
                self._keys = None
                return
            self._pending.append((key, self._executor.submit(self._load, key)))

    def __iter__(self) -> Prefetcher[K, V]:
        return self

    def __next__(self) -> tuple[K, V]:
        if not self._pending:
            self.close()
            raise StopIteration
        key, future = self._pending.popleft()
        try:
            self._fill()  # keep depth loads queued behind this one
            value = future.result()
        except BaseException:
            self.close()
            raise
        return key, value

    def close(self) -> None:
        """Cancel the loads not yet started, wait for the running one; idempotent."""
        self._shutdown(wait=True)

    def _shutdown(self, *, wait: bool) -> None:
        executor, self._executor = getattr(self, "_executor", None), None
        self._keys = None
        for _, future in getattr(self, "_pending", ()):
            future.cancel()
        if hasattr(self, "_pending"):
            self._pending.clear()
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> Prefetcher[K, V]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self._shutdown(wait=False)
