"""Giving freed heap memory back to the operating system between the phases of a long job.

Contract: `release()` runs the garbage collector and, on glibc, `malloc_trim(0)`; elsewhere it only
collects. Python objects freed by a phase (strings of a decoded slice, request contexts) leave holes in
glibc's heap that the process keeps as resident memory; trimming returns them, so the next phase's peak
does not stack on the last one's leftovers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release() -> None:
    gc.collect()
    if (trim := _malloc_trim()) is not None:
        trim(0)
