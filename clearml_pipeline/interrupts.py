"""Signals, once for every runtime: SIGTERM is Ctrl-C, and no process of a run outlives it.

Stdlib only, and imported before anything heavy: a signal that arrives while torch is still importing must
already be handled. Why each piece:
- SIGTERM is what `kill`, systemd, `docker stop` and a ClearML agent's abort send. Handled like SIGINT (a
  KeyboardInterrupt where the program is), so the same cleanup runs: every row written, workers stopped;
- only the first signal interrupts. A second Ctrl-C, or the SIGINT that reaches a step process both directly
  (the terminal's process group) and from its parent, must not break the cleanup, which is bounded in time;
  a third signal ends the process at once, for a cleanup that is stuck;
- code that must not be cut at an arbitrary bytecode runs inside `deferred()`: there the signal raises only
  where the code checks (`check_interrupt()`) and at the block's end. A KeyboardInterrupt can land between a
  lock's acquire and the `with` that would release it (a multiprocessing queue's, in the streaming router's
  put) or halfway through stopping workers; that once left the router hung at exit (CI, 2026-12-06: its
  Ctrl-C landed in the join of the calibration's workers, and the run never ended);
- the exit status says which signal: 128 + its number (130 SIGINT, 143 SIGTERM), as a shell reports it;
- child processes ask the kernel to be signalled when their parent dies (Linux PR_SET_PDEATHSIG; elsewhere a
  thread that watches the parent id), so a SIGKILLed run leaves no orphans holding gigabytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)
FORCE_AFTER = 3  # the signal that ends a stuck cleanup at once
_received: list[int] = []
_deferring = 0  # depth of the deferred() blocks the main thread is in
_pending = False  # the interrupting signal arrived in a deferred() block and has not been raised yet
PR_SET_PDEATHSIG = 1


def handle_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt (the first one only) in the main thread."""
    for signum in HANDLED:
        signal.signal(signum, _on_signal)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _pending
    _received.append(signum)
    if len(_received) >= FORCE_AFTER:
        os._exit(128 + _received[0])
    if len(_received) == 1:
        if _deferring:
            _pending = True
        else:
            raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside, the interrupting signal raises KeyboardInterrupt only at check_interrupt() and where the outermost
    block ends, however it ends: an exception of its own is then the interrupt's __context__, and the user's
    Ctrl-C is never lost to it. A third signal still ends the process at once. Needs handle_signals' handler:
    under Python's default one, SIGINT raises wherever it lands."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring:
            check_interrupt()


def check_interrupt() -> None:
    """Raise the KeyboardInterrupt that a signal deferred (nothing if none is pending)."""
    global _pending
    if _pending:
        _pending = False
        raise KeyboardInterrupt


def hold_signals() -> None:
    """Hold SIGINT and SIGTERM back (delivered at release_signals): for the seconds while a command's parser
    imports torch, before the command knows its inputs and so cannot yet write a row for each."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, set(HANDLED))


def release_signals() -> None:
    """Deliver what hold_signals held back: call it inside the code that handles the interrupt."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, set(HANDLED))


def received() -> int | None:
    """The signal that interrupted this process (None: none did, or a plain KeyboardInterrupt)."""
    return _received[0] if _received else None


def interrupted_exit_code() -> int:
    """128 + the signal that interrupted the run: 130 for Ctrl-C (also a KeyboardInterrupt from elsewhere), 143
    for SIGTERM."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """Have `signum` sent to this process when its parent (`parent`, the pid that started it) goes away."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    else:  # no prctl: poll the parent id (it changes when the parent dies and the process is re-parented)
        threading.Thread(target=_watch_parent, args=(parent, signum), daemon=True, name="parent-watch").start()
    if os.getppid() != parent:  # the parent died before we asked: nobody would signal us
        os.kill(os.getpid(), signum)


def _watch_parent(parent: int, signum: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signum)


def child_entry(payload: bytes, parent: int, *shared: object) -> None:
    """A worker process's target, in this light module: ignore SIGINT (the parent owns shutdown; a terminal's
    Ctrl-C reaches the whole process group) and die with the parent (SIGKILL: a worker keeps no state worth
    saving) before the seconds of heavy imports that unpickling the real target and its arguments brings.

    `payload` is pickle.dumps((target, args)); `shared` (queues, which only travel as process arguments) are
    appended to args."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent, signal.SIGKILL)
    import pickle

    target, args = pickle.loads(payload)
    target(*args, *shared)
