"""glibc malloc tuning for processes that run eager PyTorch forwards.

glibc serves allocations above its mmap threshold (128 KB at start, raised dynamically up to
32 MB) with fresh ``mmap`` calls and returns them on free, so every forward of a
convolutional net re-faults its multi-megabyte activation buffers page by page. Raising the
threshold (and the trim threshold with it) keeps those buffers in the heap for reuse: ~10 %
faster lite-generator forwards on this machine, more off the main thread
(docs/performance.md). The cost is memory kept by the process after a forward: bounded by the
largest working set, tens of MB for the generators. Equivalent to starting the process with
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``; a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Apply the thresholds with ``mallopt``; True when glibc accepted both."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("mallopt unavailable (not glibc): allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not ok:
        log.warning("mallopt refused the thresholds: allocator left as it is")
    return ok
