"""Giving memory back to the system after a large, finished piece of work."""
from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """Collects Python's cycles (TensorFlow objects hold many), then gives the C heap's free
    pages back to the system (glibc's malloc_trim), so that the next stage, or the next
    request, starts from what is still in use rather than from the last peak."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
