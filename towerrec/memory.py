"""Giving memory back to the system after a large, finished piece of work."""
from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """Collects Python's cycles (TensorFlow objects hold many), then gives the C heap's free
    pages back to the system, so that the next stage starts from what is still in use
    rather than from the last peak. A full collection can take a second: not for serving."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Gives the C heap's free pages back to the system (glibc's malloc_trim); cheap next to
    a collection, and what a server calls after a large request."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
