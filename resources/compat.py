"""Compatibility shims for pinned third-party code, applied before that code is imported."""

from __future__ import annotations

import scipy.signal
import scipy.signal.windows


def patch_scipy_kaiser() -> None:
    """parallel_wavegan 0.6.1 does `from scipy.signal import kaiser`; SciPy 1.13 moved it to scipy.signal.windows."""
    if not hasattr(scipy.signal, "kaiser"):
        scipy.signal.kaiser = scipy.signal.windows.kaiser  # type: ignore[attr-defined]
