"""Keep chunk buffers on a heap that is reused, and resident size bounded (proxies, writers).

Every chunk passes through a few large buffers: the 1 MiB read, the zstd output, the 4 MiB
batch message and its frames (on a writer: the received frame, the decoded payloads, the
decompressed chunk). glibc's default serves such blocks from fresh mmap()s until
the first one is freed and from per-thread arenas afterwards: per-thread arenas keep freed
memory, so resident size grew far past what was in flight (224-635 MiB for a 118 MiB chunk
budget). The first fix, a fixed 256 KiB mmap threshold, bounded that but made every buffer
a new mapping that the kernel zeroes and faults in page by page: page faults and munmap took
a third of the proxy's CPU (perf, bench/RESULTS.md, Proxy).

So: one arena for every thread (nothing stranded per thread), an mmap threshold above the
largest buffer the pipeline makes (freed buffers are reused in place, never faulted in
again), and a trim threshold that keeps at most 32 MiB of free memory at the top of the
heap (a lower one hands back and faults in again whatever oscillates above it). The peak
is then about the chunk budget plus what is being encoded (bench/RESULTS.md, Proxy).
"""

from __future__ import annotations

import ctypes
import ctypes.util

from common.logging import get_logger

log = get_logger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
MAX_MMAP_THRESHOLD = 32 << 20


def limit_heap_retention(
    mmap_threshold: int = 16 << 20, arenas: int = 1, trim_threshold: int = 32 << 20
) -> bool:
    """Apply the settings above; False where the C library has no mallopt (not glibc) or
    refuses a value. Each setting is applied even when another is refused."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    refused = [
        label
        for label, param, value in (
            ("mmap_threshold", _M_MMAP_THRESHOLD, min(mmap_threshold, MAX_MMAP_THRESHOLD)),
            ("trim_threshold", _M_TRIM_THRESHOLD, trim_threshold),
            ("arena_max", _M_ARENA_MAX, arenas),
        )
        if mallopt(param, value) != 1
    ]
    if refused:
        log.warning("mallopt_refused", settings=refused)
    return not refused
