"""glibc malloc tuned for model processes: freed tensor memory is kept for the next batch, not handed back.

Why: by default glibc returns the free top of its heap to the kernel once it exceeds a trim threshold that
follows the largest recent mmap'd block (at most 64 MB), and serves blocks above a dynamic mmap threshold with
a fresh mmap each time. A stage that allocates and frees its activations on every batch then page-faults (and
the kernel zeroes) the same memory again and again. Measured in the bench's streaming run here (AMD EPYC,
2 cores, fixture models): 20-35 % of the CPU time was system time, mostly page faults (`perf`: exc_page_fault,
clear_page_erms, unmap_page_range); with this tuning it fell to 3-10 %. Throughput on that guest varied more
between runs than the change did (streaming 4.0-5.2 items/s with it, 4.3-4.8 without: benchmarks/README.md).

What it sets: M_MMAP_THRESHOLD to 32 MB, the most mallopt accepts (blocks up to it come from the heap), and
M_TRIM_THRESHOLD to 1 GB (a free heap top is kept up to that much). Setting either one alone makes glibc drop
its dynamic thresholds and is worse than the defaults (measured: 17-25x their page faults), so both are set or none.
The memory kept is what the process already used at its peak: peak RSS does not grow, RSS just stays near it
between batches instead of falling.

Not applied where the user decided otherwise: a MALLOC_* or GLIBC_TUNABLES variable in the environment, or
another allocator preloaded (LD_PRELOAD, e.g. jemalloc or tcmalloc); nor off glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for it on 64-bit (HEAP_MAX_SIZE / 2): mallopt refuses more
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def retain_freed_memory() -> bool:
    """Tune this process's glibc malloc as the module docstring says; True when both settings took effect.
    Call it early in every process that runs a stage (the command line, each worker, each step task)."""
    if any(os.environ.get(name) for name in USER_SETTINGS) or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
