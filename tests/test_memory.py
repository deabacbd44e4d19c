"""clearml_pipeline.memory: with glibc's malloc tuned, memory freed by one batch serves the next without faults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clearml_pipeline.memory import USER_SETTINGS, retain_freed_memory

ROOT = Path(__file__).resolve().parents[1]

# Eight 16 MB blocks touched and freed per round, like a batch's activations; the faults of rounds 2-5 counted.
PROBE = """
import ctypes, resource, sys
if sys.argv[1] == "tuned":
    from clearml_pipeline.memory import retain_freed_memory
    assert retain_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 16 << 20

def batch():
    blocks = [libc.malloc(size) for _ in range(8)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)

batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip())


def test_tuned_malloc_keeps_freed_batches_and_stops_refaulting_them() -> None:
    default, tuned = faults("default"), faults("tuned")
    pages = 4 * 8 * (16 << 20) // os.sysconf("SC_PAGE_SIZE")  # every byte of rounds 2-5, faulted again
    assert default >= pages // 2  # glibc's own thresholds hand the freed heap top back and fault it again
    assert tuned <= pages // 50


@pytest.mark.parametrize("name", ["MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD"])
def test_a_users_own_allocator_settings_are_left_alone(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "x")
    assert retain_freed_memory() is False


def test_objects_frozen_keeps_what_is_loaded_out_of_the_collectors_walks() -> None:
    import gc

    from clearml_pipeline.memory import objects_frozen

    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the cyclic collector frees it

    loaded = [{"weights": list(range(10))} for _ in range(20_000)]  # a loaded model's many small objects
    walked_before = len(gc.get_objects())  # what a full collection walks
    with objects_frozen():
        assert gc.get_freeze_count() >= len(loaded)
        assert len(gc.get_objects()) < walked_before - len(loaded)
        garbage = Node()
        del garbage
        assert gc.collect() > 0  # what the work leaves in cycles is still collected
    assert gc.get_freeze_count() == 0  # handed back afterwards
    assert len(gc.get_objects()) >= len(loaded)
