"""Data parallelism on ``torch.distributed``: each process takes a share of every minibatch.

Every process holds the whole density and the same optimiser state; for each
minibatch it computes the likelihood and gradient of its share of the images,
the sums are all-reduced, and every process then takes the same step.  Only
rank 0 writes files.  With one process every function here is a no-op, so the
single-process path is the same code.

Start with ``torchrun --nproc-per-node N -m cryosgd reconstruct ...`` (any
launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) or
with ``cryosgd reconstruct --nproc N`` (processes on this machine).  The
backend is gloo on CPU and NCCL on CUDA.
"""
from __future__ import annotations

import atexit
import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["rank", "world_size", "is_main", "shard", "sum_across", "broadcast_object", "gather_objects",
           "init_from_environment", "DistributedFailure"]


class DistributedFailure(RuntimeError):
    """A process of a distributed run died or timed out."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(indices: np.ndarray) -> np.ndarray:
    """This process's share of ``indices`` (every ``world_size``-th, from ``rank``)."""
    return np.asarray(indices)[rank()::world_size()]


def _guard(fn, *args):
    try:
        return fn(*args)
    except (RuntimeError, dist.DistBackendError) as err:  # a peer died or the collective timed out
        raise DistributedFailure(f"a process of the distributed run failed or timed out ({err})") from None


def sum_across(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All-reduce (sum) the tensors in place across processes; returns them."""
    if active():
        for t in tensors:
            _guard(dist.all_reduce, t)
    return tensors


def broadcast_object(obj):
    """Rank 0's ``obj`` on every process."""
    if not active():
        return obj
    box = [obj]
    _guard(dist.broadcast_object_list, box, 0)
    return box[0]


def gather_objects(obj) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not active():
        return [obj]
    out = [None] * world_size()
    _guard(dist.all_gather_object, out, obj)
    return out


def _leave() -> None:
    """Leave the process group before the interpreter exits: a group left to the C++ destructors at exit
    can end the process with "terminate called without an active exception" (exit -6) while its
    communication threads still run.  Local: it waits for no other process."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def init_from_environment(device: str = "cpu") -> bool:
    """Join the process group described by the environment (``WORLD_SIZE > 1``); returns True if joined."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return active()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    minutes = float(os.environ.get("CRYOSGD_DIST_TIMEOUT_MIN", "10"))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=minutes))
    atexit.register(_leave)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True
