"""Progress bars with rate and ETA on stderr, for the command line (tqdm); silent when asked
(``CRYOSGD_QUIET=1``) and in every process of a distributed run but the first."""
from __future__ import annotations

import os
import sys

from .fourier import resolution_A
from .runtime import parallel

__all__ = ["quiet", "counter", "LazyCounter", "StepBar"]


def quiet() -> bool:
    """No progress bars: asked for (``CRYOSGD_QUIET=1``), or not the first process of a distributed run."""
    return os.environ.get("CRYOSGD_QUIET") == "1" or not parallel.is_main()


def counter(total: int, desc: str, unit: str = "img"):
    """A bar over ``total`` items; use as a context manager, ``bar.update(n)`` as the progress callback."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=quiet())


class LazyCounter:
    """A :func:`counter` that appears with its first update: ``bar(n)`` counts ``n`` more items."""

    def __init__(self, total: int, desc: str, unit: str = "img"):
        self.total, self.desc, self.unit, self.bar = total, desc, unit, None

    def __call__(self, n: int) -> None:
        if self.bar is None:
            self.bar = counter(self.total, self.desc, self.unit)
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepBar:
    """The training steps of one run: ``bar(done, total, row)`` is :func:`cryosgd.reconstruct.reconstruct`'s
    ``progress``.  The bar appears with the first step (so bad input ends with its one line alone) and
    counts its rate and ETA from there, also on a resumed run; it shows the band limit in Å and the
    held-out NLL.  A row with ``"stage"`` (the learning-rate search before the first step) shows that
    stage; the rate and ETA then count from the first step."""

    def __init__(self, label: str, box: int, pixel_size: float):
        self.label, self.box, self.pixel_size, self.bar = label, box, pixel_size, None
        self.staged = False

    def __call__(self, done: int, total: int, row: dict) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(desc=self.label, unit="step", file=sys.stderr, dynamic_ncols=True, total=total,
                            initial=done, disable=quiet())
        elif self.staged and "stage" not in row:
            self.bar.reset(total=total)   # the rate and ETA count from the first step
            self.bar.initial = done
        self.staged = "stage" in row
        self.bar.total, self.bar.n = total, done
        info = {"res": f"{resolution_A(row['band_limit'], self.box, self.pixel_size):.1f}A"}
        if self.staged:
            info["stage"] = row["stage"]
        if "test_nll" in row:
            info["test_nll"] = f"{row['test_nll']:.2f}"
        self.bar.set_postfix(info, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
