"""Logging set-up shared by the command line and the worker processes."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    """Keep the terminal for our progress and summary: library chatter that is not actionable goes."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # ESPnet logs this on the root logger for every utterance.
    logging.getLogger().addFilter(lambda record: "make_pad_mask" not in record.getMessage())
    warnings.filterwarnings("ignore", message=".*weight_norm.*is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
