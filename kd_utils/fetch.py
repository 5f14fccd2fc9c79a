"""What every data source shares (the registry artifacts of :mod:`kd_utils.data.sources` and the web
downloads of :mod:`kd_utils.data.web`): the error a failed fetch raises and the note a slow one prints."""
from __future__ import annotations

import sys


class DataError(RuntimeError):
    """A data set could not be obtained: no client, client failed, checksum mismatch, bad archive."""


def note(message: str) -> None:
    """One-time events (a fetch, a cache build) take tens of seconds: say so, or a notebook looks hung."""
    print(f"[kd_utils.data] {message}", file=sys.stderr, flush=True)
