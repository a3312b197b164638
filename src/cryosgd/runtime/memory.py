"""The process's memory use: resident set size now and at its peak.

Resident memory (RSS) is the process's pages held in RAM: its own arrays and
libraries, and the pages of files it has memory-mapped and touched.  The
kernel's page cache of files read with ``read``/``pread`` is not counted.
"""
from __future__ import annotations

import os
import sys

import torch

__all__ = ["peak_rss_bytes", "current_rss_bytes", "available_bytes", "default_memory_budget", "format_bytes",
           "reuse_freed_memory"]


def peak_rss_bytes() -> int:
    """The largest resident set size of this process so far, in bytes (Unix)."""
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere


def reuse_freed_memory(threshold: int = 1 << 30) -> bool:
    """Ask the C library (glibc) to keep freed memory for reuse; ``True`` if it agreed.

    By default glibc serves each allocation above 32 MiB with a fresh ``mmap`` and unmaps it when
    freed, so every temporary of the kernel is page-faulted in again on each call: a reconstruction
    at 64 px and 15 Å took 37 million page faults and 80 s of system time in 244 s.  With blocks
    up to ``threshold`` bytes served from the heap, and the heap not trimmed, one pruned likelihood
    call there went from 2.8 to 2.1 s (``BENCHMARKS.md``); the peak resident memory is the
    same, but memory freed after the peak stays with the process.  Threads share the one heap (one
    arena): another thread's arena serves blocks over 64 MiB with a fresh ``mmap`` whatever the
    threshold, and the threads of a split call (:mod:`.threads`) page-faulted their temporaries in
    again on each call.  The setting is process-wide; the command line and
    :func:`.reconstruct.reconstruct` make it.  Elsewhere than glibc it does nothing.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    ok = mallopt(m_mmap_threshold, ctypes.c_int(int(threshold)))
    ok = ok and mallopt(m_arena_max, ctypes.c_int(1))
    return bool(ok and mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1)))


def current_rss_bytes() -> int | None:
    """This process's resident set size now, in bytes; ``None`` without ``/proc/self/statm`` (Linux)."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])  # fields: size resident shared text lib data dt
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) and errors read as None


def available_bytes() -> int | None:
    """Memory this process may still use, in bytes: the system's available memory, or what is left
    under a cgroup limit (containers, batch schedulers) if that is smaller; ``None`` if unknown.
    """
    candidates = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroups = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),                   # v2
               ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))  # v1
    for limit, usage in cgroups:
        lim, used = _read_int(limit), _read_int(usage)
        if lim is not None and used is not None and lim < 1 << 60:
            candidates.append(max(0, lim - used))
    return min(candidates) if candidates else None


def default_memory_budget(device) -> int:
    """Bytes the likelihood's score matrix may take on ``device`` when no budget is given: a quarter of the
    memory available to the process on a CPU (cgroup limits included; at least 256 MiB), half the free
    memory of a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    available = available_bytes()
    return max(256 << 20, available // 4) if available is not None else 1 << 30


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units: ``"512 B"``, ``"3.2 MiB"``, ``"12.0 GiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(n)} B" if unit == 0 else f"{value:.1f} {units[unit]}"
