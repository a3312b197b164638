"""Where and how precisely the kernel computes: the device, the arithmetic, and the CPU's denormals.

These choose how fast a run goes, never what it computes beyond rounding: a run may resume from its
checkpoint on another device or precision (``reconstruct/checkpoint.py``).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

from ..io import InputError

__all__ = ["resolve_device", "resolve_precision", "tf32_products", "flush_denormals", "exp_floored_", "EXP_FLOOR",
           "PRECISIONS"]

PRECISIONS = ("auto", "float32", "tf32", "float64")


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (a GPU when one is present)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device", "CUDA was asked for but no GPU is visible to PyTorch")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """``(dtype, tf32)`` for the kernel.

    ``auto``: float32 everywhere, with TF32 inputs to the score products on CUDA GPUs of compute
    capability 8.0 or newer.  TF32 changes the gradient by about 0.1% and a log-likelihood by at
    most 0.3 nats (``benchmarks/precision.py``), while the gradient differs by 65-140% from one
    minibatch to the next.  ``float32``: never TF32.  ``tf32``: insist on it.  ``float64``: for checks.
    """
    has_tf32 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    if name == "auto":
        return torch.float32, has_tf32
    if name == "float32":
        return torch.float32, False
    if name == "float64":
        return torch.float64, False
    if name == "tf32":
        if not has_tf32:
            raise InputError("--precision", "tf32 needs an NVIDIA GPU of compute capability 8.0 or newer")
        return torch.float32, True
    raise InputError("--precision", f"unknown precision {name!r}; choose auto, float32, tf32 or float64")


@contextmanager
def tf32_products(enabled: bool):
    """CUDA float32 matrix products with TF32 inputs inside the block (the setting is restored after)."""
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    key, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    old = getattr(matmul, key)
    setattr(matmul, key, value)
    try:
        yield
    finally:
        setattr(matmul, key, old)


_flush = threading.local()  # per thread, the depth of nested blocks: the outermost one switches flushing


@contextmanager
def flush_denormals():
    """Denormal floats flushed to zero on the CPU inside the block, and not outside it, in the
    calling thread (the setting is the thread's: :mod:`.threads` enters a block in each of its own).

    Posterior responsibilities far below 1e-38 are denormals; without flushing, the gradient
    products that read them run up to 100 times slower (docs/reconstruction.md).  PyTorch offers
    no way to read the setting, so flushing is off again after the outermost block.
    """
    depth = getattr(_flush, "depth", 0)
    if depth == 0:
        torch.set_flush_denormal(True)
    _flush.depth = depth + 1
    try:
        yield
    finally:
        _flush.depth = depth
        if depth == 0:
            torch.set_flush_denormal(False)


EXP_FLOOR = -80.0  # exp(-80) = 1.8e-35: above float32's smallest normal number (exp(-87.3))


def exp_floored_(x: torch.Tensor) -> torch.Tensor:
    """In place ``exp(max(x, EXP_FLOOR))`` of log-weights relative to their largest (``x <= 0``).

    Where exp underflows (below about -87 in float32) the CPU's vectorised exp takes a slow path,
    even with denormals flushed: on 16 million scores spread over thousands of nats it took 77 ms
    against 8 ms with the floor (2 threads).  The floor adds at most ``n * 1.8e-35`` to a sum of
    ``n`` terms relative to its largest, and gives a pose of weight zero (``-inf``) a weight of
    1.8e-35 of the best pose instead of 0."""
    return x.clamp_(min=EXP_FLOOR).exp_()
