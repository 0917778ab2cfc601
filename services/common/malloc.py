"""glibc malloc tuning for eager PyTorch serving: :func:`alzprog.inference.runtime.keep_large_buffers`."""

from alzprog.inference.runtime import (  # noqa: F401 - re-exported
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD_BYTES,
    TRIM_THRESHOLD_BYTES,
    keep_large_buffers,
)
