"""Keep the proxy's resident memory close to its chunk budget.

glibc raises its mmap threshold each time a large block is freed, after which 1 MiB chunk
buffers come from per-thread arenas that keep freed memory: resident size then grows far past
what is in flight (measured: 224-635 MiB RSS for a 118 MiB budget peak). A fixed threshold
keeps every chunk-sized buffer in its own mapping, returned to the kernel when freed, and a
small arena count bounds what the remaining small allocations can strand.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from common.logging import get_logger

log = get_logger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def limit_heap_retention(mmap_threshold: int = 256 * 1024, arenas: int = 2) -> bool:
    """Apply the settings above; False where the C library has no mallopt (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, mmap_threshold),
            (_M_TRIM_THRESHOLD, 2 * mmap_threshold),
            (_M_ARENA_MAX, arenas),
        )
    )
    if not ok:
        log.warning("mallopt_refused")
    return ok
