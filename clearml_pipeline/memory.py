"""Memory settings for model processes: glibc malloc keeps freed tensor memory for the next batch instead of
handing it back, and the objects of loaded models are kept out of the garbage collector's walks; and how much
memory this process may still use (`machine_memory`, for the streaming planner).

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
import gc
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


def freeze_loaded_objects() -> None:
    """Take every object alive now (the loaded models, the imported libraries) out of the cyclic garbage
    collector's walks (gc.freeze), the garbage of loading collected first.

    Why: torch, transformers and ESPnet leave millions of tracked objects, and every full collection walked them
    all again while a stage worked. Measured with `perf record -a -g` over the bench's streaming run (2 cores,
    fixture models, Intel Xeon): the collector took 7 % (speech translation), 12 % (each speech synthesis
    worker) and 31 % (machine translation) of a worker's CPU samples; frozen, 0.1-1 %. Reference counting
    still frees frozen objects; only a reference cycle among them would outlive its use."""
    gc.collect()
    gc.freeze()


@contextmanager
def objects_frozen() -> Iterator[None]:
    """freeze_loaded_objects() for the block, handed back to the collector after it (a process that goes on to
    other work, such as a test session, then collects them as before)."""
    freeze_loaded_objects()
    try:
        yield
    finally:
        gc.unfreeze()


# Where the kernel shows this process's memory cgroup: v2's unified tree, or v1's memory controller.
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_FILES = {  # version: (limit, usage, memory.stat's reclaimable page cache)
    "v2": ("memory.max", "memory.current", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def machine_memory() -> tuple[int, int]:
    """(available, total) bytes for this process: the machine's (psutil), or its memory cgroup's where a limit
    there is lower (a ClearML agent's docker container, or a systemd slice, where psutil reads the host's). A
    cgroup's usage counts page cache, so the cache the kernel would reclaim first (inactive files) is left out,
    as `docker stats` does."""
    import psutil

    memory = psutil.virtual_memory()
    available, total = memory.available, memory.total
    for folder, (limit_name, usage_name, cache_name) in _cgroup_folders():
        try:
            limit_text = (folder / limit_name).read_text().strip()
            usage = int((folder / usage_name).read_text())
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= total:
            continue  # "max", or v1's "no limit" (a huge number)
        stat = _stat(folder / "memory.stat")
        total = int(limit_text)
        available = min(available, max(0, total - usage + stat.get(cache_name, 0)))
    return available, total


def _cgroup_folders() -> list[tuple[Path, tuple[str, str, str]]]:
    """This process's memory cgroup folders, from its own up to the root (a limit may sit on any of them)."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        version = "v2" if controllers == "" else "v1" if "memory" in controllers.split(",") else None
        if version is None:
            continue
        base = CGROUP_ROOT if version == "v2" else CGROUP_ROOT / "memory"
        parts = [p for p in path.split("/") if p]
        folders += [(base.joinpath(*parts[:n]), CGROUP_FILES[version]) for n in range(len(parts), -1, -1)]
    return folders


def _stat(path: Path) -> dict[str, int]:
    try:
        pairs = (line.split() for line in path.read_text().splitlines())
        return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2 and pair[1].isdigit()}
    except OSError:
        return {}
