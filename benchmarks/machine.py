"""What machine a benchmark ran on, for the records in BENCHMARKS.md."""
from __future__ import annotations

import platform
from pathlib import Path


def matmul_peak(n: int = 3072, repeats: int = 5) -> float:
    """The float32 matrix product's rate on this machine, GFLOP/s: the best of ``repeats`` ``n x n``
    products on PyTorch's intra-op threads (the reference a benchmark's figures are put against)."""
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def cpu_model() -> str:
    """The processor's model name (``lscpu``'s "Model name"), or the platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def run_for(cmd: list[str], *, cwd, log_path, minutes: float, env=None) -> tuple[bool, int | None]:
    """Run ``cmd`` in ``cwd`` (its own process group; stdout and stderr to ``log_path``) for at most
    ``minutes``; then the whole group is stopped.  Returns ``(finished, returncode)``."""
    import os
    import signal
    import subprocess

    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            proc.wait(timeout=minutes * 60)
            return True, proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            return False, proc.returncode
