"""``Server-Timing`` (W3C) for one request: where its milliseconds went, visible to every client.

Each service names its phases (``infer``, ``chain``, ``png``...); the gateway adds its own
(``upload``, ``classify``, ``progress``, ``mask``) and passes the backends' on with their name
as a prefix (``generator-chain``), so one response header breaks a ``/progression`` down
across the three services. Browsers show it in the network panel; the benchmark and
``curl -i`` read it too. Durations only: no values, no identifiers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

HEADER = "Server-Timing"
_ENTRY = re.compile(r"^\s*([A-Za-z0-9_.-]{1,40})\s*;\s*dur=([0-9]+(?:\.[0-9]+)?)\s*$")


class ServerTiming:
    """Named durations of one request, in the order they were added."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, float]] = []

    def add(self, name: str, seconds: float) -> None:
        self.entries.append((name, seconds * 1000.0))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def extend(self, prefix: str, header_value: str | None) -> None:
        """Add a backend's ``Server-Timing`` entries as ``<prefix>-<name>`` (malformed ones are skipped)."""
        for part in (header_value or "").split(",")[:16]:
            m = _ENTRY.match(part)
            if m:
                self.entries.append((f"{prefix}-{m.group(1)}", float(m.group(2))))

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.1f}" for name, ms in self.entries)

    def as_headers(self) -> dict[str, str]:
        return {HEADER: self.header()} if self.entries else {}
