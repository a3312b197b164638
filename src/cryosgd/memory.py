"""The process's memory use: resident set size now and at its peak.

Resident memory (RSS) is the process's pages held in RAM: its own arrays and
libraries, and the pages of files it has memory-mapped and touched.  The
kernel's page cache of files read with ``read``/``pread`` is not counted.
"""
from __future__ import annotations

import os
import sys

__all__ = ["peak_rss_bytes", "current_rss_bytes", "format_bytes"]


def peak_rss_bytes() -> int:
    """The largest resident set size of this process so far, in bytes (Unix)."""
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere


def current_rss_bytes() -> int | None:
    """This process's resident set size now, in bytes; ``None`` without ``/proc/self/statm`` (Linux)."""
    try:
        with open("/proc/self/statm") as statm:
            resident_pages = int(statm.read().split()[1])  # fields: size resident shared text lib data dt
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def format_bytes(n: int) -> str:
    """``n`` bytes in binary units: ``"512 B"``, ``"3.2 MiB"``, ``"12.0 GiB"``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(n)} B" if unit == 0 else f"{value:.1f} {units[unit]}"
