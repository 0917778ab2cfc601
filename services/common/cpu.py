"""How many CPUs this process may really use (affinity and the container's cgroup quota)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota_cpus() -> float | None:
    # cgroup v2: "max 100000" or "200000 100000" (quota, period in microseconds).
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            if quota != "max":
                return int(quota) / int(period)
            return None
        # cgroup v1
        q = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        p = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q.is_file() and p.is_file():
            quota_us, period_us = int(q.read_text()), int(p.read_text())
            if quota_us > 0 and period_us > 0:
                return quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def available_cpus() -> int:
    """min(CPU affinity, ceil(cgroup quota)), at least 1: what a thread pool should be sized to."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)
