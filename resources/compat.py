"""Compatibility shims for pinned third-party code, applied before that code is imported."""

from __future__ import annotations

import scipy.signal
import scipy.signal.windows


def patch_scipy_kaiser() -> None:
    """parallel_wavegan 0.6.1 does `from scipy.signal import kaiser`; SciPy 1.13 moved it to scipy.signal.windows."""
    if not hasattr(scipy.signal, "kaiser"):
        scipy.signal.kaiser = scipy.signal.windows.kaiser  # type: ignore[attr-defined]


# What espnet's transformer attention prints at import wherever the optional flash_attn package is missing (every
# CPU install): it then uses its own attention, which is what the stages want, so the line only alarms readers of
# a run's log (once per streaming worker).
FLASH_ATTN_NOTICE = "Failed to import Flash Attention"


def import_espnet_quietly() -> None:
    """Import espnet's transformer attention with its flash_attn notice left out; anything else it prints passes."""
    import contextlib
    import io
    import sys

    if "espnet.nets.pytorch_backend.transformer.attention" in sys.modules:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            import espnet.nets.pytorch_backend.transformer.attention  # noqa: F401
    finally:  # what it printed before a failed import is shown too
        for line in printed.getvalue().splitlines():
            if not line.startswith(FLASH_ATTN_NOTICE):
                print(line)
