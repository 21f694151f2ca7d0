"""Terminal output shared by the commands: a console that never hard-wraps piped output, and
silence for library noise a user cannot act on."""

from __future__ import annotations

import sys


def make_console():
    """rich Console on stderr; when stderr is not a terminal, one line per message (rich would
    otherwise wrap at 80 columns, splitting paths that grep looks for)."""
    from rich.console import Console

    # markup off: log lines name config sections like "[data] max_seq_length", not rich styles
    console = Console(stderr=True, highlight=False, markup=False)
    console.soft_wrap = not console.is_terminal
    return console


def quiet_libraries(debug: bool) -> None:
    """Silence what a user cannot act on (kept with --debug): transformers' and torch's
    FutureWarnings and info logs, bitsandbytes' optional-kernel notices, and progress bars
    (tqdm, huggingface_hub) when stderr is not a terminal."""
    import logging
    import os
    import warnings

    if debug:
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*kernels-community.*")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("bitsandbytes", "transformers", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
