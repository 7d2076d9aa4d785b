"""Progress and warnings for people: one line each on stderr, prefixed ``[conscience]``.

Results go to stdout or files; everything a person watches while a command runs comes through here.
"""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """``[conscience] message`` on stderr, flushed (progress lines interleave with tqdm bars)."""
    print(f"[conscience] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """``[conscience] warning: message`` on stderr."""
    log(f"warning: {message}")
