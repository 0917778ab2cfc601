"""services.common.malloc: glibc thresholds for processes running eager PyTorch."""

from __future__ import annotations


def test_malloc_thresholds_are_accepted_on_glibc():
    import platform

    from services.common.malloc import keep_large_buffers

    if platform.libc_ver()[0] == "glibc":
        assert keep_large_buffers() is True
    else:
        assert keep_large_buffers() is False
